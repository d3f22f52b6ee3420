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
    assert!(json_lines(&ok(&db, &["changes"])).is_empty());

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
