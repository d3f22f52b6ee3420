//! The CLI as a user runs it: real binary, real database files.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn hs(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hivesync"))
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

fn ok(db: &Path, args: &[&str]) -> String {
    let o = hs(db, args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn put_get_search_neighbors_knn_with_json_output() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("h.db");
    ok(
        &db,
        &[
            "put",
            "entity",
            r#"{"id":"ada","kind":"person","name":"Ada Lovelace"}"#,
        ],
    );
    ok(
        &db,
        &[
            "put",
            r#"{"op":"upsert","kind":"entity","ns":"default","data":{"id":"cb","kind":"person","name":"Charles Babbage"}}"#,
        ],
    );
    let put = json_lines(&ok(
        &db,
        &[
            "--json",
            "put",
            "edge",
            r#"{"source":"ada","target":"cb","relation":"knew"}"#,
        ],
    ));
    assert_eq!(put[0]["seq"], 3);
    let got = json_lines(&ok(&db, &["--json", "get", "entity", "ada"]));
    assert_eq!(got[0]["name"], "Ada Lovelace");
    let hits = json_lines(&ok(&db, &["--json", "search", "lovelace"]));
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["id"], "ada");
    let n = json_lines(&ok(&db, &["--json", "neighbors", "ada"]));
    assert_eq!(n[0]["node"], "cb");
    ok(
        &db,
        &[
            "put",
            "vector",
            r#"{"subject":"ada","model":"m","embedding":[1,0]}"#,
        ],
    );
    ok(
        &db,
        &[
            "put",
            "vector",
            r#"{"subject":"cb","model":"m","embedding":[0,1]}"#,
        ],
    );
    let k = json_lines(&ok(
        &db,
        &[
            "--json", "knn", "--model", "m", "--vector", "[0.1,1]", "-k", "1",
        ],
    ));
    assert_eq!(k[0]["subject"], "cb");
    let k = json_lines(&ok(
        &db,
        &["--json", "knn", "--model", "m", "--like", "ada", "-k", "2"],
    ));
    assert_eq!(k[0]["subject"], "ada");
    ok(&db, &["delete", "entity", "cb"]);
    let o = hs(&db, &["get", "entity", "cb"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no entity"));
    // The cascade was logged: entity delete, its edge, its vector.
    let ch = json_lines(&ok(&db, &["changes", "--from", "5"]));
    let kinds: Vec<_> = ch
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                c["op"].as_str().unwrap(),
                c["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(kinds, ["delete:entity", "delete:edge", "delete:vector"]);
    assert!(ok(&db, &["check"]).contains("ok"));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("h.db");
    for (args, want) in [
        (vec!["put", "entity", "{nope"], "not valid JSON"),
        (vec!["put", "widget", "{}"], "unknown kind"),
        (
            vec!["put", "entity", r#"{"name":"x","bogus":1}"#],
            "unknown field",
        ),
        (
            vec![
                "put",
                "edge",
                r#"{"source":"a","target":"b","relation":"r"}"#,
            ],
            "write the entity first",
        ),
        (
            vec!["knn", "--model", "none", "--vector", "[1]"],
            "no vectors",
        ),
        (vec!["put", "entity"], "give the row as JSON"),
    ] {
        let o = hs(&db, &args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn import_reports_line_numbers_and_export_roundtrips() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("h.db");
    let mut lines = Vec::new();
    for i in 0..25 {
        lines.push(format!(r#"{{"op":"upsert","kind":"entity","ns":"default","data":{{"id":"e{i}","name":"entity {i}"}}}}"#));
    }
    lines.push(String::new());
    lines.push(
        r#"{"op":"upsert","kind":"note","data":{"id":"n1","content":"about entity 3"}}"#.into(),
    );
    let good = d.path().join("good.jsonl");
    std::fs::write(&good, lines.join("\n")).unwrap();

    // A malformed line: nothing is imported.
    let mut bad = lines.clone();
    bad[12] = "{broken".into();
    let badf = d.path().join("bad.jsonl");
    std::fs::write(&badf, bad.join("\n")).unwrap();
    let o = hs(&db, &["import", badf.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 13") && err.contains("nothing was imported"),
        "{err}"
    );
    // Lines are checked before the file is opened: not even an empty database is left.
    assert!(!db.exists(), "a refused import created the database");

    // A line the database refuses: earlier batches stay, its batch is rolled back.
    let mut refused = lines.clone();
    refused[17] =
        r#"{"op":"upsert","kind":"edge","data":{"source":"e1","target":"ghost","relation":"r"}}"#
            .into();
    let reff = d.path().join("refused.jsonl");
    std::fs::write(&reff, refused.join("\n")).unwrap();
    let o = hs(&db, &["import", "--batch", "10", reff.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 18")
            && err.contains("ghost")
            && err.contains("10 ops before this batch were committed"),
        "{err}"
    );
    assert_eq!(json_lines(&ok(&db, &["changes"])).len(), 10);

    let out = ok(&db, &["--json", "import", good.to_str().unwrap()]);
    assert_eq!(json_lines(&out)[0]["imported"], 26);
    let exported = d.path().join("export.jsonl");
    ok(&db, &["export", "-o", exported.to_str().unwrap()]);
    let db2 = d.path().join("copy.db");
    ok(&db2, &["import", exported.to_str().unwrap()]);
    let a = ok(&db, &["export"]);
    let b = ok(&db2, &["export"]);
    assert_eq!(a, b, "export -> import -> export is the identity");
    assert_eq!(a.lines().count(), 26);
}

#[test]
fn a_row_inserted_with_the_sqlite3_shell_is_searchable_and_captured() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("h.db");
    ok(&db, &["init"]);
    let o = Command::new("sqlite3")
        .arg(&db)
        .arg("insert into entities(ns, id, kind, name) values ('default', 'grace', 'person', 'Grace Hopper')")
        .output()
        .expect("the sqlite3 shell is needed for this test (Debian package sqlite3; tests/run.sh installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hits = json_lines(&ok(&db, &["--json", "search", "hopper"]));
    assert_eq!(hits[0]["id"], "grace");
    let ch = json_lines(&ok(&db, &["changes"]));
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0]["data"]["name"], "Grace Hopper");
    assert!(ok(&db, &["check"]).contains("ok"));
}

#[test]
fn trigram_databases_find_cjk_substrings() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("cjk.db");
    ok(&db, &["init", "--tokenizer", "trigram"]);
    ok(
        &db,
        &[
            "put",
            "note",
            r#"{"id":"n","content":"東京都は日本の首都です"}"#,
        ],
    );
    assert_eq!(
        json_lines(&ok(&db, &["--json", "search", "日本の"]))[0]["id"],
        "n"
    );
    let o = hs(&db, &["init", "--tokenizer", "unicode61"]);
    assert!(
        !o.status.success(),
        "the tokenizer of an existing file cannot change"
    );
}

/// A new user's first hour (issue 13): read commands on a mistyped path say so and create
/// nothing; `list` and `changes` say when they stopped at their limit and how to go on; an
/// error's cause is printed once; `export | head` ends quietly; `digest` counts entities;
/// `neighbors` shows both directions; someone else's SQLite file is refused, even by a
/// read-only follower, and left untouched.
#[test]
fn first_hour_friction() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("typo.db");
    for args in [
        &["search", "ada"][..],
        &["get", "entity", "ada"],
        &["list", "entity"],
        &["neighbors", "ada"],
        &["knn", "--model", "m", "--vector", "[1,0]"],
        &["changes"],
        &["digest"],
        &["check"],
        &["export"],
        &["delete", "entity", "ada"],
    ] {
        let o = hs(&missing, args);
        assert!(!o.status.success(), "{args:?} succeeded on a missing file");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("no database at") && err.contains("typo.db"),
            "{args:?}: {err}"
        );
        assert!(!missing.exists(), "{args:?} created the file");
    }

    let db = d.path().join("h.db");
    ok(
        &db,
        &[
            "put",
            "entity",
            r#"{"id":"ada","kind":"person","name":"Ada"}"#,
        ],
    );
    ok(
        &db,
        &[
            "put",
            "entity",
            r#"{"id":"cb","kind":"person","name":"Charles"}"#,
        ],
    );
    ok(
        &db,
        &[
            "put",
            "entity",
            r#"{"id":"eve","kind":"person","name":"Eve"}"#,
        ],
    );
    ok(
        &db,
        &[
            "put",
            "edge",
            r#"{"source":"ada","target":"cb","relation":"knew"}"#,
        ],
    );

    // Limits.
    let o = hs(&db, &["list", "entity", "--limit", "2"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--after cb"), "{err}");
    let o = hs(&db, &["list", "entity", "--after", "cb", "--limit", "2"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "eve\tEve");
    assert!(o.stderr.is_empty(), "the last page says nothing: {o:?}");
    let o = hs(&db, &["changes", "--limit", "3"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--from 3"), "{err}");
    let o = hs(&db, &["changes", "--from", "3"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
    assert!(o.stderr.is_empty(), "{o:?}");

    // An error's cause, once.
    let o = hs(
        &db,
        &[
            "put",
            "edge",
            r#"{"source":"nobody","target":"ada","relation":"r"}"#,
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("is not an entity").count(), 1, "{err}");
    assert!(!err.contains('\x1b'), "colour codes on a pipe: {err}");

    // `export | head -1`: the reader goes away; no error, success.
    let lines: String = (0..20_000)
        .map(|i| format!("{{\"op\":\"upsert\",\"kind\":\"note\",\"data\":{{\"id\":\"m{i}\",\"content\":\"bulk {i}\"}}}}\n"))
        .collect();
    let file = d.path().join("bulk.jsonl");
    std::fs::write(&file, lines).unwrap();
    ok(&db, &["import", file.to_str().unwrap()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hivesync"))
        .arg("--db")
        .arg(&db)
        .arg("export")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    // The reader is dropped here, as `head` exits.
    let o = child.wait_with_output().unwrap();
    assert!(first.starts_with('{'));
    assert!(o.status.success(), "export to a closed pipe: {o:?}");
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // digest says entities; neighbors shows both directions.
    let digest = ok(&db, &["digest"]);
    assert!(digest.contains("entities=3"), "{digest}");
    let around_cb = ok(&db, &["neighbors", "cb"]);
    assert!(around_cb.contains("cb <-[knew]- ada"), "{around_cb}");
    let around_ada = ok(&db, &["neighbors", "ada"]);
    assert!(around_ada.contains("ada -[knew]-> cb"), "{around_ada}");
    assert_eq!(ok(&db, &["neighbors", "cb", "--direction", "out"]), "");

    // Someone else's database.
    let foreign = d.path().join("invoices.db");
    let c = rusqlite::Connection::open(&foreign).unwrap();
    c.execute_batch("CREATE TABLE invoices(id INTEGER PRIMARY KEY AUTOINCREMENT, total REAL); INSERT INTO invoices(total) VALUES (1)")
        .unwrap();
    drop(c);
    for args in [
        &["serve", "--read-only", "--listen", "127.0.0.1:0"][..],
        &["serve", "--listen", "127.0.0.1:0"],
        &["search", "x"],
        &["put", "entity", r#"{"name":"x"}"#],
    ] {
        let o = hs(&foreign, args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("not a hivesync database"), "{args:?}: {err}");
    }
    let c = rusqlite::Connection::open(&foreign).unwrap();
    let tables: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1, "hivesync wrote into someone else's database");
}

/// Logs on a pipe carry no colour codes; `--log-format json` writes one JSON object per line.
#[test]
fn logs_are_plain_on_a_pipe_and_json_on_request() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("h.db");
    for json in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hivesync"));
        cmd.arg("--db").arg(&db);
        if json {
            cmd.args(["--log-format", "json"]);
        }
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stderr.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(line.contains("hivesync serving"), "{line}");
        assert!(!line.contains('\x1b'), "colour codes on a pipe: {line:?}");
        if json {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["level"], "INFO", "{v}");
            assert!(v["fields"]["message"].as_str().unwrap().contains("serving"));
        }
    }
}

/// An edge fed from NATS names the primary too; a mistaken combination says what to add or
/// drop, before anything listens.
#[test]
fn edge_feed_flags_are_checked_with_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("e.db");
    for (args, says) in [
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "nats://127.0.0.1:1",
            ][..],
            "add --primary ws://",
        ),
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "ws://127.0.0.1:1/v1/sync",
                "--primary",
                "ws://127.0.0.1:2/v1/sync",
            ],
            "--primary is for an edge fed from NATS",
        ),
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--primary",
                "ws://127.0.0.1:2/v1/sync",
            ],
            "--upstream",
        ),
    ] {
        let o = hs(&db, args);
        assert!(!o.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
