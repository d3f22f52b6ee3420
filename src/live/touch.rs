//! What changed, row by row, whatever changed it: per-connection temporary triggers on the five
//! base tables log every row inserted, updated or deleted (cascades included) into
//! `temp.live_touched`, so the feed's batches, local writes, the outbox's undo and redo and a
//! refused write taken back are all seen by one mechanism. A snapshot (which replaces
//! everything) turns the log off (`quiet`) and marks every live query instead.

use rusqlite::Connection;

use crate::error::Result;
use crate::model::Kind;

/// One row touched: its kind, namespace and id (a vector's subject); `sub` is an entity's or a
/// note's kind, a vector's model; `a`/`b` an edge's source and target (an update logs the
/// edge's old endpoints and its new ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TouchRow {
    /// The row's kind.
    pub kind: Kind,
    /// Its namespace.
    pub ns: String,
    /// Its id (a vector's subject).
    pub id: String,
    /// An entity's or note's kind, a vector's model.
    pub sub: Option<String>,
    /// An edge's source.
    pub a: Option<String>,
    /// An edge's target.
    pub b: Option<String>,
}

/// Install the log on `conn` (idempotent; per connection).
pub(super) fn ensure(conn: &Connection) -> Result<()> {
    let done: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM temp.sqlite_master WHERE name = 'live_touched')",
        )?
        .query_row([], |r| r.get(0))?;
    if done {
        return Ok(());
    }
    let mut sql = String::from(
        "CREATE TEMP TABLE IF NOT EXISTS live_touched(
           kind TEXT NOT NULL, ns TEXT NOT NULL, id TEXT NOT NULL, sub TEXT, a TEXT, b TEXT);
         CREATE TEMP TABLE IF NOT EXISTS live_ctl(quiet INTEGER NOT NULL);
         INSERT INTO live_ctl SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM live_ctl);\n",
    );
    for kind in Kind::ALL {
        let (id, sub, a, b) = match kind {
            Kind::Entity | Kind::Note => ("id", "{p}kind", "NULL", "NULL"),
            Kind::Edge => ("id", "NULL", "{p}source", "{p}target"),
            Kind::Event => ("id", "NULL", "NULL", "NULL"),
            Kind::Vector => ("subject", "{p}model", "NULL", "NULL"),
        };
        let row = |p: &str| {
            format!(
                "INSERT INTO temp.live_touched(kind, ns, id, sub, a, b) VALUES ('{}', {p}ns, {p}{id}, {}, {}, {});",
                kind.as_str(),
                sub.replace("{p}", p),
                a.replace("{p}", p),
                b.replace("{p}", p)
            )
        };
        let t = kind.table();
        for (when, body) in [
            ("AFTER INSERT", row("new.")),
            ("AFTER UPDATE", format!("{} {}", row("old."), row("new."))),
            ("AFTER DELETE", row("old.")),
        ] {
            let name = format!("live_{t}_{}", &when[6..7].to_lowercase());
            sql.push_str(&format!(
                "CREATE TEMP TRIGGER IF NOT EXISTS {name} {when} ON main.{t}
                 WHEN NOT (SELECT quiet FROM temp.live_ctl) BEGIN {body} END;\n"
            ));
        }
    }
    conn.execute_batch(&sql)?;
    Ok(())
}

/// Take the log off `conn`: its triggers and tables.
pub(super) fn remove(conn: &Connection) -> Result<()> {
    let mut sql = String::new();
    for kind in Kind::ALL {
        for op in ["i", "u", "d"] {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS temp.live_{}_{op};\n",
                kind.table()
            ));
        }
    }
    sql.push_str("DROP TABLE IF EXISTS temp.live_touched; DROP TABLE IF EXISTS temp.live_ctl;");
    conn.execute_batch(&sql)?;
    Ok(())
}

/// Turn the log off (a snapshot replaces everything: every live query runs again after it) or
/// on again.
pub(super) fn set_quiet(conn: &Connection, quiet: bool) -> Result<()> {
    conn.prepare_cached("UPDATE temp.live_ctl SET quiet = ?1")?
        .execute([quiet])?;
    Ok(())
}

/// The rows touched since the last call, and the log emptied.
pub(super) fn take(conn: &Connection) -> Result<Vec<TouchRow>> {
    let rows = conn
        .prepare_cached("SELECT DISTINCT kind, ns, id, sub, a, b FROM temp.live_touched")?
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    conn.prepare_cached("DELETE FROM temp.live_touched")?
        .execute([])?;
    rows.into_iter()
        .map(|(kind, ns, id, sub, a, b)| {
            Ok(TouchRow {
                kind: kind.parse()?,
                ns,
                id,
                sub,
                a,
                b,
            })
        })
        .collect()
}
