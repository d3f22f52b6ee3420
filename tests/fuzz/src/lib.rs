//! The checks behind hivesync's fuzz targets, one public function per target.
//!
//! The fuzz targets in `tests/fuzz/fuzz_targets/` call these, and so does the regression test
//! `tests/fuzz_regressions.rs` (which includes this file as a module), so every input kept in
//! `tests/fuzz/regressions/<target>/` and `tests/fuzz/corpus/<target>/` is checked by plain
//! `cargo test` exactly as the fuzzer checked it. A check fails by panicking: an error returned
//! by the code under test is fine, a panic in it or a broken invariant is not.

use std::collections::HashSet;
use std::fmt::Debug;

use hivesync::apply;
use hivesync::model::{Change, Kind, Op, WriteOp};
use hivesync::protocol::{
    self, Action, AuthError, Authorizer, ClientMsg, Encoding, ErrorCode, ErrorMsg, Frame,
    Principal, Scope, ServerMsg, Session, Subscribe, MAX_CLIENT_ID, MAX_OPS_PER_WRITE,
    MAX_SUBS_PER_CONNECTION,
};
use hivesync::query::{self, ChangeFilter};
use hivesync::rusqlite::Connection;
use hivesync::{ops, schema};

/// The fuzz targets, by name (each has a folder of that name under `corpus/` and
/// `regressions/`).
pub const TARGETS: [&str; 5] = [
    "decode_json",
    "decode_bin",
    "session",
    "apply",
    "import_line",
];

/// Run target `target`'s check on one input.
pub fn check(target: &str, data: &[u8]) {
    match target {
        "decode_json" => decode_json(data),
        "decode_bin" => decode_bin(data),
        "session" => session(data),
        "apply" => apply(data),
        "import_line" => import_line(data),
        other => panic!("unknown fuzz target {other:?}"),
    }
}

/// Equal, or (for values holding NaN, which is never equal to itself) printed the same.
fn same<T: PartialEq + Debug>(what: &str, a: &T, b: &T) {
    if a != b && format!("{a:?}") != format!("{b:?}") {
        panic!("{what}: the values differ\n first:  {a:?}\n second: {b:?}");
    }
}

// ------------------------------------------------------------------------------ decode_json

/// `decode_json`: the input, when UTF-8, is given to `decode_client_json` and to
/// `decode_server_json`. Neither may panic. What decodes must survive re-encoding: a client
/// message through JSON and through binary; a node message through binary, and through JSON
/// when its embeddings are finite (the JSON encoder writes a non-finite value as `null`, which
/// is refused on decode: such values never reach the wire, since writes and apply refuse them).
/// A `changes` frame assembled from per-change fragments (the node's fan-out path) must be
/// byte-identical to the message encoded whole.
pub fn decode_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = protocol::decode_client_json(text) {
        client_roundtrips(&m);
    }
    if let Ok(m) = protocol::decode_server_json(text) {
        if embeddings_finite(&m) {
            let t = protocol::encode_server_json(&m);
            let back = protocol::decode_server_json(&t).unwrap_or_else(|e| {
                panic!("a re-encoded node message does not decode: {e}\n{t}\nfrom {m:?}")
            });
            same("node message, JSON round trip", &m, &back);
        }
        server_bin_roundtrip(&m);
        frames_agree(&m);
    }
}

fn embeddings_finite(m: &ServerMsg) -> bool {
    let rows = match m {
        ServerMsg::Snapshot { rows, .. } => rows,
        ServerMsg::Changes { changes, .. } => changes,
        _ => return true,
    };
    rows.iter()
        .all(|c| c.embedding.iter().flatten().all(|x| x.is_finite()))
}

/// A client message must come back the same through both encodings, and its binary encoding
/// must be stable.
fn client_roundtrips(m: &ClientMsg) {
    let t = protocol::encode_client_json(m);
    let back = protocol::decode_client_json(&t)
        .unwrap_or_else(|e| panic!("a re-encoded client message does not decode: {e}\n{t}"));
    same("client message, JSON round trip", m, &back);
    let b = protocol::encode_client_bin(m);
    let back = protocol::decode_client_bin(&b)
        .unwrap_or_else(|e| panic!("a re-encoded binary client message does not decode: {e}"));
    same("client message, binary round trip", m, &back);
    assert_eq!(
        protocol::encode_client_bin(&back),
        b,
        "the binary encoding of a client message is not stable"
    );
}

fn server_bin_roundtrip(m: &ServerMsg) {
    let b = protocol::encode_server_bin(m);
    let back = protocol::decode_server_bin(&b)
        .unwrap_or_else(|e| panic!("a re-encoded binary node message does not decode: {e}"));
    same("node message, binary round trip", m, &back);
    assert_eq!(
        protocol::encode_server_bin(&back),
        b,
        "the binary encoding of a node message is not stable"
    );
}

/// The fan-out path (`changes_frame` over fragments from `encode_change_*`) and the plain
/// encoders must produce the same frame.
fn frames_agree(m: &ServerMsg) {
    let ServerMsg::Changes { sub, prev, changes } = m else {
        return;
    };
    let parts = |f: fn(&mut Vec<u8>, &Change)| -> Vec<Vec<u8>> {
        changes
            .iter()
            .map(|c| {
                let mut v = Vec::new();
                f(&mut v, c);
                v
            })
            .collect()
    };
    let json = parts(protocol::encode_change_json);
    let frame = protocol::changes_frame(Encoding::Json, sub, *prev, json.iter().map(Vec::as_slice));
    assert_eq!(
        frame,
        Frame::Text(protocol::encode_server_json(m)),
        "JSON changes frame from fragments differs from the message encoded whole"
    );
    let bin = parts(protocol::encode_change_bin);
    let frame = protocol::changes_frame(Encoding::Bin, sub, *prev, bin.iter().map(Vec::as_slice));
    assert_eq!(
        frame,
        Frame::Binary(protocol::encode_server_bin(m)),
        "binary changes frame from fragments differs from the message encoded whole"
    );
}

// ------------------------------------------------------------------------------- decode_bin

/// `decode_bin`: the input is given to `decode_client_bin` and to `decode_server_bin`. Neither
/// may panic; whatever decodes must re-encode and decode to the same value (a client message
/// through JSON as well), with a stable encoding, and the fan-out frame must match the whole
/// encoding. (The decoders ignore bytes after a complete message, so the input itself need not
/// be canonical.)
pub fn decode_bin(data: &[u8]) {
    if let Ok(m) = protocol::decode_client_bin(data) {
        client_roundtrips(&m);
    }
    if let Ok(m) = protocol::decode_server_bin(data) {
        server_bin_roundtrip(&m);
        frames_agree(&m);
    }
}

// ---------------------------------------------------------------------------------- session

/// The fixed authorizer of the `session` target.
///
/// | token         | read            | write          |
/// |---------------|-----------------|----------------|
/// | `r`           | `a`, `b*`       | `a`            |
/// | `w`           | `*`             | `b*`, `c`      |
/// | `all`         | `*`             | `*`            |
/// | `none`        | (nothing)       | (nothing)      |
/// | absent or ""  | `pub*` if anonymous access is on, else refused |
/// | anything else | refused         |                |
pub struct FixedAuth {
    /// Whether clients without a token are let in.
    pub anonymous: bool,
}

fn scope(p: &[&str]) -> Scope {
    Scope(p.iter().map(|s| s.to_string()).collect())
}

impl Authorizer for FixedAuth {
    fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let (name, read, write) = match token {
            None | Some("") if self.anonymous => ("anonymous", scope(&["pub*"]), scope(&[])),
            None | Some("") => return Err(AuthError("a token is required".into())),
            Some("r") => ("r", scope(&["a", "b*"]), scope(&["a"])),
            Some("w") => ("w", scope(&["*"]), scope(&["b*", "c"])),
            Some("all") => ("all", scope(&["*"]), scope(&["*"])),
            Some("none") => ("none", scope(&[]), scope(&[])),
            Some(_) => return Err(AuthError("unknown token".into())),
        };
        Ok(Principal {
            name: name.into(),
            read,
            write,
            expires: None,
        })
    }
}

/// The scope rule, written out again so the check does not trust `Scope::allows`: `*` is
/// everything, `prefix*` every name starting with `prefix`, anything else that exact name.
fn may(s: &Scope, ns: &str) -> bool {
    s.0.iter().any(|p| {
        p == "*"
            || p == ns
            || (p.ends_with('*') && ns.as_bytes().starts_with(&p.as_bytes()[..p.len() - 1]))
    })
}

fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CLIENT_ID
}

/// What the check knows of the connection, kept independently of the session.
#[derive(Default)]
struct Model {
    principal: Option<Principal>,
    subs: HashSet<String>,
}

fn is_error(a: &Action, code: ErrorCode) -> bool {
    matches!(a, Action::Send(ServerMsg::Error(ErrorMsg { code: c, .. })) if *c == code)
}

/// `session`: byte 0 holds flags (bit 0: the connection speaks binary, else JSON; bit 1:
/// anonymous access is on). Then frames, each a header byte, a little-endian u16 length and
/// that many payload bytes (fewer at the end of the input). The header byte modulo 8 picks
/// what happens: 0-2 a text frame (the payload as lossy UTF-8), 3-5 a binary frame, 6 an
/// oversized frame, 7 the shell ending the subscription named by the payload.
///
/// The session must never panic; no `Subscribe`, `Write`, `Unsubscribe` or `Ack` before a
/// `Welcome`; at most one `Welcome`, and only for a `hello` whose token the authorizer accepts;
/// every `Write` only with ops inside the principal's write scope, exactly the ops sent, 1 to
/// `MAX_OPS_PER_WRITE` of them; every `Subscribe` only for readable namespaces, with the
/// principal's read scope, a fresh id and at most `MAX_SUBS_PER_CONNECTION` at once. In the
/// other direction, a valid in-scope `hello`, `write` or `subscribe` must not be refused, and a
/// `forbidden` must name a real scope violation.
pub fn session(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let enc = if flags & 1 == 0 {
        Encoding::Json
    } else {
        Encoding::Bin
    };
    let auth = FixedAuth {
        anonymous: flags & 2 != 0,
    };
    let mut s = Session::new(enc);
    let mut m = Model::default();
    let mut frames = 0;
    while let Some((&h, r)) = rest.split_first() {
        let (len, r) = match r {
            [a, b, tail @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), tail),
            _ => (r.len(), &r[r.len()..]),
        };
        let (payload, r) = r.split_at(len.min(r.len()));
        rest = r;
        frames += 1;
        if frames > 256 {
            break;
        }
        session_step(&mut s, &auth, &mut m, enc, h % 8, payload);
        assert_eq!(
            s.principal(),
            m.principal.as_ref(),
            "the session's principal"
        );
        let subs: HashSet<String> = s.subscriptions().map(str::to_string).collect();
        assert_eq!(subs, m.subs, "the session's subscriptions");
    }
}

fn session_step(
    s: &mut Session,
    auth: &FixedAuth,
    m: &mut Model,
    enc: Encoding,
    kind: u8,
    payload: &[u8],
) {
    // What the frame says, decoded here independently (None: not a message for this
    // connection: wrong frame type or malformed).
    let (acts, msg) = match kind {
        0..=2 => {
            let text = String::from_utf8_lossy(payload);
            let msg = (enc == Encoding::Json)
                .then(|| protocol::decode_client_json(&text).ok())
                .flatten();
            (s.on_text(&text, auth), msg)
        }
        3..=5 => {
            let msg = (enc == Encoding::Bin)
                .then(|| protocol::decode_client_bin(payload).ok())
                .flatten();
            (s.on_binary(payload, auth), msg)
        }
        6 => {
            let acts = s.on_oversized();
            assert!(
                acts.len() == 2
                    && is_error(&acts[0], ErrorCode::TooLarge)
                    && matches!(acts[1], Action::Close { .. }),
                "oversized frame: {acts:?}"
            );
            return;
        }
        _ => {
            let sub = String::from_utf8_lossy(payload);
            s.subscription_ended(&sub);
            m.subs.remove(sub.as_ref());
            return;
        }
    };
    let Some(msg) = msg else {
        assert!(
            acts.len() == 1 && is_error(&acts[0], ErrorCode::BadRequest),
            "a frame that does not decode must get one bad_request: {acts:?}"
        );
        return;
    };
    let effects: Vec<&Action> = acts
        .iter()
        .filter(|a| !matches!(a, Action::Send(_)))
        .collect();
    assert!(
        effects.len() <= 1 || matches!(effects[..], [_, Action::Close { .. }]),
        "more than one effect for one frame: {acts:?}"
    );
    let Some(p) = m.principal.clone() else {
        // Before a successful hello only a hello can do anything.
        for a in &acts {
            assert!(
                matches!(
                    a,
                    Action::Send(ServerMsg::Error(_)) | Action::Welcome | Action::Close { .. }
                ),
                "{a:?} before a successful hello"
            );
        }
        match msg {
            ClientMsg::Hello { token, .. } => match auth.authenticate(token.as_deref()) {
                Ok(p) => {
                    assert_eq!(acts, [Action::Welcome], "accepted hello");
                    m.principal = Some(p);
                }
                Err(_) => {
                    assert!(
                        acts.len() == 2
                            && is_error(&acts[0], ErrorCode::Unauthorized)
                            && matches!(acts[1], Action::Close { .. }),
                        "refused hello: {acts:?}"
                    );
                }
            },
            other => assert!(
                acts.len() == 1 && is_error(&acts[0], ErrorCode::BadRequest),
                "{other:?} before hello: {acts:?}"
            ),
        }
        return;
    };
    // A renewal (`auth`) is the one message after hello that may end the connection.
    if let ClientMsg::Auth { token } = &msg {
        match auth.authenticate(Some(token)) {
            Ok(q) => {
                let rescoped = q.read != p.read;
                assert!(
                    acts.iter().all(|a| matches!(a, Action::Rescope { .. }))
                        && acts.len() == usize::from(rescoped),
                    "accepted renewal: {acts:?}"
                );
                m.principal = Some(q);
            }
            Err(_) => {
                assert!(
                    acts.len() == 2
                        && is_error(&acts[0], ErrorCode::Unauthorized)
                        && matches!(acts[1], Action::Close { .. }),
                    "refused renewal: {acts:?}"
                );
                m.principal = None;
                m.subs.clear();
            }
        }
        return;
    }
    for a in &acts {
        assert!(
            !matches!(a, Action::Welcome | Action::Close { .. }),
            "{a:?} after hello"
        );
        if let Action::Send(ServerMsg::Error(e)) = a {
            assert_ne!(e.code, ErrorCode::Unauthorized, "unauthorized after hello");
        }
    }
    match msg {
        ClientMsg::Hello { .. } => assert!(
            acts.len() == 1 && is_error(&acts[0], ErrorCode::BadRequest),
            "second hello: {acts:?}"
        ),
        ClientMsg::Auth { .. } => unreachable!("handled above"),
        ClientMsg::Write {
            req,
            ops,
            client,
            n,
            entries,
        } => {
            let out_of_scope = ops.iter().any(|o| !may(&p.write, &o.ns));
            let entries_ok = |e: &[u32], n: i64| {
                e.is_empty()
                    || (!e.contains(&0)
                        && e.iter().map(|&k| k as u64).sum::<u64>() == ops.len() as u64
                        && e.len() as i64 <= n)
            };
            let origin_ok = match (&client, n, &entries) {
                (None, None, None) => true,
                (Some(c), Some(n), e) => {
                    id_ok(c) && n >= 1 && entries_ok(e.as_deref().unwrap_or(&[]), n)
                }
                _ => false,
            };
            let valid =
                id_ok(&req) && !ops.is_empty() && ops.len() <= MAX_OPS_PER_WRITE && origin_ok;
            match &acts[..] {
                [Action::Write {
                    req: r,
                    ops: o,
                    origin,
                }] => {
                    let sent = origin.clone().map(|o| (o.client, o.n)).unzip();
                    assert_eq!(sent, (client, n), "Write lost or changed its origin");
                    let sent_entries = origin
                        .as_ref()
                        .map(|o| o.entries.clone())
                        .unwrap_or_default();
                    assert_eq!(
                        sent_entries,
                        entries.clone().unwrap_or_default(),
                        "Write changed its entries"
                    );
                    assert!(
                        !out_of_scope,
                        "Write outside the write scope {:?}: {o:?}",
                        p.write
                    );
                    assert!(
                        valid,
                        "Write of an invalid request: {req:?}, {} ops",
                        o.len()
                    );
                    assert_eq!((r, o), (&req, &ops), "Write differs from the request");
                }
                [Action::Send(ServerMsg::Error(e))] => {
                    assert!(
                        out_of_scope || !valid,
                        "a valid in-scope write was refused: {e:?}"
                    );
                    if e.code == ErrorCode::Forbidden {
                        assert!(out_of_scope, "forbidden without a scope violation: {e:?}");
                    }
                }
                other => panic!("unexpected answer to a write: {other:?}"),
            }
        }
        ClientMsg::Subscribe(Subscribe {
            sub,
            from,
            namespaces,
            kinds,
        }) => {
            let forbidden = namespaces.iter().flatten().any(|n| !may(&p.read, n));
            let valid = id_ok(&sub)
                && !m.subs.contains(&sub)
                && m.subs.len() < MAX_SUBS_PER_CONNECTION
                && from.is_none_or(|f| f >= 0);
            match &acts[..] {
                [Action::Subscribe {
                    sub: s2,
                    from: f2,
                    filter,
                    read,
                }] => {
                    assert!(!forbidden, "Subscribe to unreadable namespaces: {filter:?}");
                    assert!(valid, "Subscribe of an invalid request {sub:?}");
                    assert_eq!(read, &p.read, "Subscribe carries the read scope");
                    assert_eq!((s2, f2), (&sub, &from));
                    assert_eq!(
                        filter,
                        &ChangeFilter { namespaces, kinds },
                        "Subscribe filter differs from the request"
                    );
                    m.subs.insert(sub);
                }
                [Action::Send(ServerMsg::Error(e))] => {
                    assert!(forbidden || !valid, "a valid subscribe was refused: {e:?}");
                    if e.code == ErrorCode::Forbidden {
                        assert!(forbidden, "forbidden without a scope violation: {e:?}");
                    }
                }
                other => panic!("unexpected answer to a subscribe: {other:?}"),
            }
        }
        ClientMsg::Unsubscribe { sub } => {
            if m.subs.remove(&sub) {
                assert_eq!(acts, [Action::Unsubscribe { sub }]);
            } else {
                assert!(
                    acts.len() == 1 && is_error(&acts[0], ErrorCode::BadRequest),
                    "unsubscribe of an unknown subscription: {acts:?}"
                );
            }
        }
        ClientMsg::Ack { sub, seq } => {
            if m.subs.contains(&sub) {
                assert_eq!(acts, [Action::Ack { sub, seq }]);
            } else {
                assert!(
                    acts.len() == 1 && is_error(&acts[0], ErrorCode::BadRequest),
                    "ack of an unknown subscription: {acts:?}"
                );
            }
        }
    }
}

// -------------------------------------------------------------------------- database checks

/// Consistency of a database with no open transaction: SQLite's integrity check, both FTS5
/// indexes against their base tables, an empty full-text queue, and the vec0 tables (one per
/// dimension count) against the `vectors` table.
pub fn check_db(conn: &Connection) {
    assert!(conn.is_autocommit(), "a transaction was left open");
    let msgs: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("PRAGMA integrity_check runs");
    assert_eq!(msgs, ["ok"], "PRAGMA integrity_check");
    for fts in ["entities_fts", "notes_fts"] {
        if let Err(e) = conn.execute(
            &format!("INSERT INTO {fts}({fts}, rank) VALUES ('integrity-check', 1)"),
            [],
        ) {
            panic!("{fts} disagrees with its base table: {e}");
        }
    }
    let queued: i64 = conn
        .query_row("SELECT count(*) FROM fts_queue", [], |r| r.get(0))
        .expect("count fts_queue");
    assert_eq!(
        queued, 0,
        "full-text updates left in the queue after a commit"
    );
    let problems = schema::vec_index_problems(conn).expect("check the vec0 tables");
    assert!(problems.is_empty(), "vec0 out of step: {problems:?}");
}

/// Everything an apply or an op could change, cheaply comparable.
#[derive(Debug, PartialEq, Eq)]
struct DbState {
    digest: String,
    applied: i64,
    head: i64,
    log: (i64, i64, i64),
    models: i64,
}

impl DbState {
    fn read(conn: &Connection) -> DbState {
        DbState {
            digest: query::digest(conn, None).expect("digest").sha256,
            applied: apply::applied_seq(conn).expect("applied seq"),
            head: query::head(conn).expect("log head"),
            log: conn
                .query_row(
                    "SELECT count(*), coalesce(sum(seq), 0), coalesce(sum(length(data)), 0)
                     FROM changes",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .expect("log summary"),
            models: conn
                .query_row("SELECT count(*) FROM vector_models", [], |r| r.get(0))
                .expect("model count"),
        }
    }
}

/// A fresh in-memory database with the schema. Migrating one takes milliseconds, most of a
/// run of the database targets, so a migrated image is made once per thread and each database
/// is a copy of it (`sqlite3_deserialize`), configured as `schema::open_in_memory` does.
fn memory_db() -> Connection {
    thread_local! {
        static IMAGE: Vec<u8> = {
            let mut c = schema::open_in_memory(&Default::default()).expect("in-memory database");
            let image = c.serialize(hivesync::rusqlite::MAIN_DB).expect("serialize");
            image.to_vec()
        };
    }
    let mut conn = Connection::open_in_memory().expect("in-memory database");
    IMAGE.with(|image| {
        conn.deserialize_read_exact(hivesync::rusqlite::MAIN_DB, &image[..], image.len(), false)
            .expect("deserialize the schema image")
    });
    schema::configure(&conn).expect("configure");
    conn
}

// ------------------------------------------------------------------------------------ apply

/// The namespaces a snapshot line covers, from its `sub`: `*` all, else a comma-separated list.
fn snapshot_filter(sub: &str) -> ChangeFilter {
    ChangeFilter {
        namespaces: (sub != "*").then(|| sub.split(',').map(str::to_string).collect()),
        kinds: None,
    }
}

/// `apply`: the input, when UTF-8, is up to 16 lines, each a node message in JSON
/// (`decode_server_json`); `changes` lines are applied with `apply::apply_changes` (their
/// `prev` as given), `snapshot` lines with `apply::apply_snapshot` (covering the namespaces in
/// `sub`: `*` for all, else a comma-separated list), all to one in-memory database; other lines
/// are skipped. Errors are fine, panics are not. After each line: no transaction is left open
/// and the database passes [`check_db`]; after an error nothing changed (state digest, applied
/// seq, log, models); after a success the applied seq is the outcome's, and applying the same
/// batch again skips every change and changes nothing.
pub fn apply(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut db = None;
    for line in text.lines().take(16) {
        let Ok(msg) = protocol::decode_server_json(line) else {
            continue;
        };
        if !matches!(msg, ServerMsg::Changes { .. } | ServerMsg::Snapshot { .. }) {
            continue;
        }
        let conn: &Connection = db.get_or_insert_with(memory_db);
        let before = DbState::read(conn);
        let res = match &msg {
            ServerMsg::Changes { prev, changes, .. } => apply::apply_changes(conn, *prev, changes),
            ServerMsg::Snapshot { sub, at, rows, .. } => {
                apply::apply_snapshot(conn, &snapshot_filter(sub), *at, rows)
            }
            _ => unreachable!("filtered above"),
        };
        check_db(conn);
        let after = DbState::read(conn);
        match res {
            Err(e) => {
                assert_eq!(before, after, "a failed apply ({e}) changed the database");
            }
            Ok(out) => {
                assert_eq!(after.applied, out.seq, "applied seq after {out:?}");
                if let ServerMsg::Changes { prev, changes, .. } = &msg {
                    assert_eq!(out.applied + out.skipped, changes.len(), "{out:?}");
                    let again = apply::apply_changes(conn, *prev, changes)
                        .unwrap_or_else(|e| panic!("re-applying a batch failed: {e}"));
                    assert_eq!(
                        (again.applied, again.skipped),
                        (0, changes.len()),
                        "re-applying a batch"
                    );
                    check_db(conn);
                    assert_eq!(
                        DbState::read(conn),
                        after,
                        "re-applying a batch changed state"
                    );
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------ import_line

/// The clock of the `import_line` target (microseconds).
const NOW: i64 = 1_764_000_000_000_000;

/// `import_line`: the input, when UTF-8, is up to 32 lines, each parsed with
/// `WriteOp::from_json` (lines that do not parse are skipped) and executed with `ops::execute`
/// in one write transaction set up as the store does, each op inside a savepoint. No panic; an
/// op that fails is rolled back to its savepoint and must leave nothing (state digest, log,
/// models unchanged). After the commit the database passes [`check_db`], and its change log,
/// applied to a fresh replica with `apply::apply_changes`, gives the same state digest.
pub fn import_line(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ops: Vec<WriteOp> = text
        .lines()
        .take(32)
        .filter_map(|l| WriteOp::from_json(l.trim()).ok())
        .collect();
    if ops.is_empty() {
        return;
    }
    let conn = memory_db();
    let sql = |s: &str| conn.execute_batch(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    sql(&format!(
        "BEGIN IMMEDIATE; INSERT INTO sync_ctx(one, tx, ts, applying) VALUES (1, 1, {NOW}, 0);"
    ));
    let mut ok = 0;
    for op in &ops {
        let before = DbState::read(&conn);
        sql("SAVEPOINT op");
        match ops::execute(&conn, op, NOW) {
            Ok(r) => {
                sql("RELEASE op");
                assert!(!r.id.is_empty(), "an op succeeded with an empty id: {op:?}");
                ok += 1;
            }
            Err(e) => {
                sql("ROLLBACK TO op; RELEASE op");
                assert_eq!(
                    before,
                    DbState::read(&conn),
                    "a failed op ({e}) left something behind: {op:?}"
                );
            }
        }
    }
    schema::drain_fts_queue(&conn).expect("drain the full-text queue");
    sql("DELETE FROM sync_ctx; COMMIT");
    check_db(&conn);
    if ok == 0 {
        return;
    }
    let log =
        query::changes_since(&conn, 0, &ChangeFilter::default(), 1_000_000).expect("read the log");
    let replica = memory_db();
    if let Err(e) = apply::apply_changes(&replica, 0, &log) {
        panic!("the log of committed writes does not apply to a replica: {e}\n{log:#?}");
    }
    check_db(&replica);
    same(
        "state digest, writer vs replica",
        &query::digest(&conn, None).expect("digest"),
        &query::digest(&replica, None).expect("digest"),
    );
}

// ------------------------------------------------------------------------------- seed corpus

fn change(seq: i64, ns: &str, kind: Kind, op: Op, id: &str, data: Option<&str>) -> Change {
    Change {
        seq,
        tx: seq,
        ts: NOW + seq,
        ns: ns.into(),
        kind,
        op,
        id: id.into(),
        model: None,
        data: data.map(str::to_string),
        embedding: None,
    }
}

/// Client messages the seeds are made of.
fn seed_client_msgs() -> Vec<ClientMsg> {
    use serde_json::json;
    vec![
        ClientMsg::Hello {
            token: Some("r".into()),
            client: Some("fuzz".into()),
        },
        ClientMsg::Hello {
            token: None,
            client: None,
        },
        ClientMsg::Subscribe(Subscribe {
            sub: "s1".into(),
            from: Some(0),
            namespaces: Some(vec!["a".into(), "b1".into()]),
            kinds: Some(vec![Kind::Entity, Kind::Vector]),
        }),
        ClientMsg::Subscribe(Subscribe {
            sub: "s2".into(),
            from: None,
            namespaces: None,
            kinds: None,
        }),
        ClientMsg::Write {
            req: "w1".into(),
            ops: vec![
                WriteOp::upsert(
                    Kind::Entity,
                    "a",
                    json!({"id": "e1", "kind": "person", "name": "Ada", "tags": ["x"],
                           "properties": {"n": 1.5}}),
                ),
                WriteOp {
                    model: Some("m".into()),
                    ..WriteOp::delete(Kind::Vector, "a", "e1")
                },
            ],
            client: Some("tab-1".into()),
            n: Some(7),
            entries: None,
        },
        ClientMsg::Write {
            req: "w2".into(),
            ops: vec![WriteOp::delete(Kind::Edge, "zz", "x1")],
            client: None,
            n: None,
            entries: None,
        },
        ClientMsg::Unsubscribe { sub: "s1".into() },
        ClientMsg::Ack {
            sub: "s1".into(),
            seq: 42,
        },
    ]
}

fn seed_changes() -> Vec<Change> {
    let ent = r#"{"id":"e1","kind":"person","name":"Ada Lovelace","description":"first programmer","properties":{"born":1815},"tags":["math"],"created_at":1,"updated_at":2}"#;
    let ent2 = r#"{"id":"e2","kind":"person","name":"Charles Babbage","description":"","properties":{},"tags":[],"created_at":1,"updated_at":1}"#;
    let edge = r#"{"id":"x1","source":"e1","target":"e2","relation":"knows","weight":0.5,"properties":{},"created_at":3,"updated_at":3}"#;
    let note = r#"{"id":"n1","kind":"note","name":"engine","content":"the analytical engine","salience":0.9,"expires_at":null,"properties":{},"created_at":4,"updated_at":4}"#;
    let event = r#"{"id":"v1","verb":"login","actor":"e1","outcome":"ok","target":null,"data":{"ip":"::1"},"duration_us":12,"created_at":5}"#;
    let vector = r#"{"subject":"e1","model":"m","kind":"person","created_at":6,"updated_at":6}"#;
    let mut v = change(6, "a", Kind::Vector, Op::Upsert, "e1", Some(vector));
    v.model = Some("m".into());
    v.embedding = Some(vec![1.0, 0.5, -0.25]);
    let mut vd = change(9, "a", Kind::Vector, Op::Delete, "e1", None);
    vd.model = Some("m".into());
    vec![
        change(1, "a", Kind::Entity, Op::Upsert, "e1", Some(ent)),
        change(2, "a", Kind::Entity, Op::Upsert, "e2", Some(ent2)),
        change(3, "a", Kind::Edge, Op::Upsert, "x1", Some(edge)),
        change(4, "b", Kind::Note, Op::Upsert, "n1", Some(note)),
        change(5, "a", Kind::Event, Op::Upsert, "v1", Some(event)),
        v,
        change(7, "a", Kind::Edge, Op::Delete, "x1", None),
        change(8, "b", Kind::Note, Op::Delete, "n1", None),
        vd,
        change(10, "a", Kind::Entity, Op::Delete, "e2", None),
    ]
}

fn seed_server_msgs() -> Vec<ServerMsg> {
    let cs = seed_changes();
    vec![
        ServerMsg::Welcome {
            protocol: protocol::PROTOCOL_VERSION,
            node: "n".into(),
            head: 10,
            horizon: 1,
            publish_key: None,
        },
        ServerMsg::Snapshot {
            sub: "s1".into(),
            at: 6,
            rows: cs[..6].to_vec(),
            done: true,
        },
        ServerMsg::Changes {
            sub: "s1".into(),
            prev: 0,
            changes: cs.clone(),
        },
        ServerMsg::Live {
            sub: "s1".into(),
            seq: 10,
        },
        ServerMsg::Written {
            req: "w1".into(),
            seq: 10,
        },
        ServerMsg::Error(ErrorMsg {
            code: ErrorCode::Forbidden,
            message: "no".into(),
            sub: Some("s1".into()),
            req: None,
        }),
    ]
}

/// Append one `session` frame record.
fn frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    let len = u16::try_from(payload.len()).expect("seed frames are small");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The seed corpus, made with the crate's own encoders: (target, file name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use serde_json::json;
    let mut out = Vec::new();
    for (i, m) in seed_client_msgs().iter().enumerate() {
        out.push((
            "decode_json",
            format!("client-{i}.json"),
            protocol::encode_client_json(m).into_bytes(),
        ));
        out.push((
            "decode_bin",
            format!("client-{i}.bin"),
            protocol::encode_client_bin(m),
        ));
    }
    for (i, m) in seed_server_msgs().iter().enumerate() {
        out.push((
            "decode_json",
            format!("server-{i}.json"),
            protocol::encode_server_json(m).into_bytes(),
        ));
        out.push((
            "decode_bin",
            format!("server-{i}.bin"),
            protocol::encode_server_bin(m),
        ));
    }

    // Sessions: a hello with each token, then every seed message, in both encodings.
    for (flags, enc) in [
        (0u8, Encoding::Json),
        (1, Encoding::Bin),
        (2, Encoding::Json),
        (3, Encoding::Bin),
    ] {
        for token in [
            Some("r"),
            Some("w"),
            Some("all"),
            Some("none"),
            None,
            Some("bad"),
        ] {
            let mut s = vec![flags];
            let mut msgs = vec![ClientMsg::Hello {
                token: token.map(str::to_string),
                client: None,
            }];
            msgs.extend(seed_client_msgs().into_iter().skip(2));
            for m in &msgs {
                match enc {
                    Encoding::Json | Encoding::JsonB64 => {
                        frame(&mut s, 0, protocol::encode_client_json(m).as_bytes())
                    }
                    Encoding::Bin => frame(&mut s, 3, &protocol::encode_client_bin(m)),
                }
            }
            frame(&mut s, 7, b"s2");
            let name = format!("{}-{}-{}", enc.name(), flags, token.unwrap_or("anon"));
            out.push(("session", name, s));
        }
    }

    // Apply: the seed changes in one batch, in two batches, and as a snapshot then changes.
    let cs = seed_changes();
    let batch = |prev: i64, changes: &[Change]| {
        protocol::encode_server_json(&ServerMsg::Changes {
            sub: "s".into(),
            prev,
            changes: changes.to_vec(),
        })
    };
    let snap = |sub: &str, at: i64, rows: &[Change]| {
        protocol::encode_server_json(&ServerMsg::Snapshot {
            sub: sub.into(),
            at,
            rows: rows
                .iter()
                .map(|c| Change {
                    seq: at,
                    ..c.clone()
                })
                .collect(),
            done: true,
        })
    };
    out.push(("apply", "one-batch".into(), batch(0, &cs).into_bytes()));
    out.push((
        "apply",
        "two-batches".into(),
        format!(
            "{}\n{}\n{}",
            batch(0, &cs[..5]),
            batch(5, &cs[5..]),
            batch(7, &cs[7..])
        )
        .into_bytes(),
    ));
    out.push((
        "apply",
        "snapshot-then-changes".into(),
        format!(
            "{}\n{}\n{}",
            snap("*", 6, &cs[..6]),
            batch(6, &cs[6..]),
            snap("a", 10, &cs[..2])
        )
        .into_bytes(),
    ));

    // Import: the one write shape, one op a line.
    let lines = [
        json!({"op":"upsert","kind":"entity","ns":"a","data":{"id":"e1","kind":"person","name":"Ada Lovelace","tags":["math"],"properties":{"born":1815}}}),
        json!({"op":"upsert","kind":"entity","ns":"a","data":{"id":"e2","name":"Charles Babbage","description":"engines"}}),
        json!({"op":"upsert","kind":"edge","ns":"a","data":{"source":"e1","target":"e2","relation":"knows","weight":0.3}}),
        json!({"op":"upsert","kind":"note","ns":"a","data":{"id":"n1","content":"the analytical engine","salience":0.25}}),
        json!({"op":"upsert","kind":"event","ns":"a","data":{"verb":"login","actor":"e1","duration_us":7}}),
        json!({"op":"upsert","kind":"vector","ns":"a","data":{"subject":"e1","model":"m","embedding":[1.0,0.5,-0.25]}}),
        json!({"op":"upsert","kind":"vector","ns":"a","data":{"subject":"n1","model":"m","embedding":[0.1,0.2,0.3]}}),
        json!({"op":"delete","kind":"vector","ns":"a","id":"n1","model":"m"}),
        json!({"op":"delete","kind":"entity","ns":"a","id":"e2"}),
        json!({"op":"upsert","kind":"entity","ns":"a","data":{"id":"e1","name":"Ada, Countess of Lovelace"}}),
        json!({"op":"delete","kind":"note","id":"n1"}),
    ];
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    out.push((
        "import_line",
        "all-kinds".into(),
        text.join("\n").into_bytes(),
    ));
    out.push(("import_line", "entity".into(), text[0].clone().into_bytes()));
    out.push((
        "import_line",
        "failing-op-between".into(),
        format!("{}\n{}\n{}", text[0], text[2], text[1]).into_bytes(),
    ));
    out
}
