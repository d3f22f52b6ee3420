//! A replica's own state carried from one copy of its data to the next: when a replica starts
//! again from a database image (a first sync, or a cursor that fell behind the node's log), the
//! image holds the node's rows only. What is the replica's alone (its client id, the numbers
//! its writes have used, its pending writes and the last upload error) is read from the old
//! file ([`carry_out`]) and written into the new one with every pending write redone on top of
//! the image ([`carry_in`]), in one transaction, so the writes are uploaded exactly once (same
//! client id, same numbers) and stay visible.

use rusqlite::{params, Connection};

use super::{meta, redo_all, set_meta};
use crate::applying::{applied_seq, in_tx};
use crate::error::Result;

/// The `meta` key [`carry_in`] sets, in the transaction that carries the outbox in: a copy
/// holding it has taken over a replica's state (one without it was cut off before).
pub const CARRIED: &str = "carried_in_at";

/// What a replica's file holds that no image of the node's rows does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Carried {
    client_id: Option<String>,
    outbox_n: Option<String>,
    error: Option<String>,
    /// `(n, ops, created_us, seq)`, oldest first.
    entries: Vec<(i64, String, i64, Option<i64>)>,
}

impl Carried {
    /// Pending writes carried.
    pub fn pending(&self) -> usize {
        self.entries.len()
    }
}

/// Read the replica's own state from `conn` (its current file).
pub fn carry_out(conn: &Connection) -> Result<Carried> {
    let entries = conn
        .prepare("SELECT n, ops, created_us, seq FROM outbox ORDER BY n")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Carried {
        client_id: meta(conn, "client_id")?,
        outbox_n: meta(conn, "outbox_n")?,
        error: meta(conn, "outbox_error")?,
        entries,
    })
}

/// Take `carried` over into `conn`, a fresh copy of the node's rows (an image at its applied
/// seq), in one transaction: the client id and write numbers, then each pending write redone
/// on top (those the node confirmed at or below the image's seq are in its rows already and
/// leave), and [`CARRIED`] set. Fails, leaving `conn` as it was, if it holds writes of its own.
pub fn carry_in(conn: &Connection, carried: &Carried) -> Result<()> {
    super::ensure_capture(conn)?;
    in_tx(conn, || {
        let own: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
        if own > 0 {
            return Err(crate::Error::invalid(
                "the new copy holds pending writes of its own: it is not a fresh image",
            ));
        }
        for (key, v) in [
            ("client_id", &carried.client_id),
            ("outbox_n", &carried.outbox_n),
            ("outbox_error", &carried.error),
        ] {
            set_meta(conn, key, v.as_deref())?;
        }
        let mut put = conn.prepare_cached(
            "INSERT INTO outbox(n, ops, created_us, seq) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (n, ops, created_us, seq) in &carried.entries {
            put.execute(params![n, ops, created_us, seq])?;
        }
        let at = applied_seq(conn)?;
        redo_all(conn, at)?;
        set_meta(conn, CARRIED, Some(&at.to_string()))
    })
}
