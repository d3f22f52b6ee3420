#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;
use crate::model::{Kind, WriteOp};
use crate::{outbox, schema};

fn conn() -> Connection {
    schema::register_extensions();
    schema::open_in_memory(&Default::default()).unwrap()
}

fn entity(ns: &str, id: &str, name: &str) -> WriteOp {
    WriteOp::upsert(
        Kind::Entity,
        ns,
        json!({"id": id, "kind": "doc", "name": name}),
    )
}

fn edge(ns: &str, id: &str, s: &str, t: &str) -> WriteOp {
    WriteOp::upsert(
        Kind::Edge,
        ns,
        json!({"id": id, "source": s, "target": t, "relation": "r"}),
    )
}

fn write(c: &Connection, ops: Vec<WriteOp>) -> i64 {
    outbox::write_local(c, ops).unwrap().n
}

fn read(name: &str, args: serde_json::Value) -> Read {
    Read::from_args(name, args.as_array().unwrap()).unwrap()
}

#[test]
fn a_search_reruns_for_its_namespace_only_and_reports_what_changed() {
    let c = conn();
    write(&c, vec![entity("a", "e1", "sailing knots")]);
    let mut live = LiveSet::default();
    let first = live
        .open(&c, read("search", json!([{"text": "sailing", "ns": "a"}])))
        .unwrap();
    assert_eq!(first.diff.added, vec!["entity/a/e1"]);
    // Another namespace, and another kind of row: nothing to run.
    write(&c, vec![entity("b", "e2", "sailing too")]);
    write(&c, vec![edge("a", "x1", "e1", "e1")]);
    assert_eq!(live.note(&c).unwrap(), 0);
    assert!(live.rerun(&c).is_empty());
    assert_eq!(live.runs(first.id), Some(1));
    // Its namespace: it runs, and says what came.
    write(&c, vec![entity("a", "e3", "sailing far")]);
    assert_eq!(live.note(&c).unwrap(), 1);
    let r = live.rerun(&c);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].diff.added, vec!["entity/a/e3"]);
    assert_eq!(r[0].runs, 2);
    assert_eq!(
        r[0].result,
        read("search", json!([{"text": "sailing", "ns": "a"}]))
            .run(&c)
            .unwrap()
    );
    // A row of its namespace that it neither holds nor finds: nothing runs (only scores could
    // move: bm25 weighs terms by all the text).
    write(&c, vec![entity("a", "e4", "nothing to find")]);
    assert_eq!(live.note(&c).unwrap(), 0);
    assert_eq!(live.runs(first.id), Some(2));
    // A row it holds, written the same again: it runs (the scores e4 moved come up to date),
    // and no row comes or goes.
    c.execute(
        "UPDATE entities SET updated_at = updated_at WHERE id = 'e3'",
        [],
    )
    .unwrap();
    assert_eq!(live.note(&c).unwrap(), 1);
    let r = live.rerun(&c);
    assert!(r
        .iter()
        .all(|r| r.diff.added.is_empty() && r.diff.removed.is_empty()));
    assert_eq!(live.runs(first.id), Some(3));
    // Again: now the answer is equal, and not delivered.
    c.execute(
        "UPDATE entities SET updated_at = updated_at WHERE id = 'e3'",
        [],
    )
    .unwrap();
    assert_eq!(live.note(&c).unwrap(), 1);
    assert!(live.rerun(&c).is_empty());
    assert_eq!(live.runs(first.id), Some(4));
    // A row it held that no longer matches: it runs, and the row goes.
    write(&c, vec![entity("a", "e3", "renamed away")]);
    assert_eq!(live.note(&c).unwrap(), 1);
    assert_eq!(live.rerun(&c)[0].diff.removed, vec!["entity/a/e3"]);
}

#[test]
fn a_get_reruns_for_its_row_only_and_a_refused_write_taken_back_counts() {
    let c = conn();
    write(&c, vec![entity("a", "e1", "one"), entity("a", "e2", "two")]);
    let mut live = LiveSet::default();
    let q = live
        .open(&c, read("get", json!(["entity", "a", "e1"])))
        .unwrap();
    write(&c, vec![entity("a", "e2", "two again")]);
    assert_eq!(live.note(&c).unwrap(), 0);
    let n = write(&c, vec![entity("a", "e1", "renamed")]);
    live.note(&c).unwrap();
    let r = live.rerun(&c);
    assert_eq!(r[0].diff.changed, vec!["e1"]);
    assert_eq!(r[0].result["name"], "renamed");
    // The node refuses that write: it is taken back here, and the query sees it.
    outbox::reject(&c, n).unwrap();
    live.note(&c).unwrap();
    let r = live.rerun(&c);
    assert_eq!(r[0].result["name"], "one");
    assert_eq!(live.runs(q.id), Some(3));
}

#[test]
fn graph_reads_rerun_for_edges_at_the_nodes_they_reached() {
    let c = conn();
    write(
        &c,
        vec![
            entity("g", "a", "a"),
            entity("g", "b", "b"),
            entity("g", "c", "c"),
            entity("g", "z", "z"),
            edge("g", "ab", "a", "b"),
        ],
    );
    let mut live = LiveSet::default();
    let walk = live
        .open(&c, read("traverse", json!(["g", "a", {"depth": 3}])))
        .unwrap();
    let near = live.open(&c, read("neighbors", json!(["g", "a"]))).unwrap();
    assert_eq!(walk.diff.added, vec!["b"]);
    // An edge far from both: nothing runs.
    write(&c, vec![edge("g", "zz", "z", "z")]);
    assert_eq!(live.note(&c).unwrap(), 0);
    // An edge from b (reached by the walk, not a neighbour of a): the walk only.
    write(&c, vec![edge("g", "bc", "b", "c")]);
    assert_eq!(live.note(&c).unwrap(), 1);
    let r = live.rerun(&c);
    assert_eq!(
        (r[0].id, r[0].diff.added.clone()),
        (walk.id, vec!["c".to_string()])
    );
    // Deleting a cascades to its edges: both.
    write(&c, vec![WriteOp::delete(Kind::Entity, "g", "a")]);
    assert_eq!(live.note(&c).unwrap(), 2);
    let r = live.rerun(&c);
    assert_eq!(r.len(), 2);
    assert_eq!(live.runs(near.id), Some(2));
}

#[test]
fn a_snapshot_marks_every_query_and_is_not_logged_row_by_row() {
    let c = conn();
    let mut live = LiveSet::default();
    let q = live.open(&c, read("list", json!(["entity", "a"]))).unwrap();
    live.snapshot(&c, true).unwrap();
    let filter = crate::query::ChangeFilter::default();
    crate::apply::snapshot_begin(&c, &filter).unwrap();
    crate::apply::snapshot_finish(&c, 5).unwrap();
    live.snapshot(&c, false).unwrap();
    let logged: i64 = c
        .query_row("SELECT count(*) FROM temp.live_touched", [], |r| r.get(0))
        .unwrap();
    assert_eq!(logged, 0);
    live.note(&c).unwrap();
    live.rerun(&c);
    assert_eq!(live.runs(q.id), Some(2));
}

#[test]
fn sql_and_knn_depend_on_what_they_read() {
    let c = conn();
    let mut live = LiveSet::default();
    let s = live
        .open(&c, read("sql", json!(["SELECT count(*) FROM notes"])))
        .unwrap();
    write(&c, vec![entity("a", "e1", "not a note")]);
    assert_eq!(live.note(&c).unwrap(), 0);
    write(
        &c,
        vec![WriteOp::upsert(
            Kind::Note,
            "a",
            json!({"id": "n1", "content": "a note"}),
        )],
    );
    live.note(&c).unwrap();
    let r = live.rerun(&c);
    assert_eq!(r[0].id, s.id);
    assert_eq!(r[0].result["rows"], json!([[1]]));
    // KNN of a model nobody wrote yet opens with that error, and answers once vectors come.
    let k = live
        .open(
            &c,
            read(
                "knn",
                json!([{"model": "m", "embedding": [1.0, 0.0], "k": 3, "ns": "a"}]),
            ),
        )
        .unwrap();
    assert!(k.error.as_deref().unwrap().contains("no vectors"));
    // A query that cannot run at all is refused.
    assert!(live
        .open(&c, read("sql", json!(["SELEC nonsense"])))
        .is_err());
    write(
        &c,
        vec![WriteOp::upsert(
            Kind::Vector,
            "a",
            json!({"subject": "e1", "model": "m", "embedding": [1.0, 0.0]}),
        )],
    );
    live.note(&c).unwrap();
    let r = live.rerun(&c);
    assert_eq!(
        r.iter().find(|r| r.id == k.id).unwrap().diff.added,
        vec!["a/e1"]
    );
}

#[test]
fn closing_the_last_query_takes_the_log_of_touched_rows_away() {
    let c = conn();
    let mut live = LiveSet::default();
    let a = live.open(&c, read("list", json!(["entity", "a"]))).unwrap();
    let b = live
        .open(&c, read("get", json!(["entity", "a", "e1"])))
        .unwrap();
    let logged = |c: &Connection| -> bool {
        c.query_row(
            "SELECT EXISTS (SELECT 1 FROM temp.sqlite_master WHERE name = 'live_touched')",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(live.close(&c, a.id).unwrap());
    assert!(logged(&c), "one query still open");
    assert!(live.close(&c, b.id).unwrap());
    assert!(!logged(&c), "nothing listens: no write logs its rows");
    assert!(!live.close(&c, b.id).unwrap());
    write(&c, vec![entity("a", "e1", "written with nothing open")]);
    // Opened again, it is back, and answers.
    let again = live
        .open(&c, read("get", json!(["entity", "a", "e1"])))
        .unwrap();
    assert_eq!(again.result["name"], "written with nothing open");
    write(&c, vec![entity("a", "e1", "renamed")]);
    assert_eq!(live.note(&c).unwrap(), 1);
}
