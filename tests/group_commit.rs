//! Group commit (`Store::write_group`): many writes in one transaction, each in a savepoint.
//! Property: for any sequence of writes (valid, refused, from numbered clients, replayed), the
//! group answers each write as writing them one by one does, and leaves the same rows and the
//! same change log (seqs, `tx` groups, ids), so replicas cannot tell the difference.
#![allow(clippy::unwrap_used)]

use hivesync::model::{Kind, Origin, WriteOp};
use hivesync::query::{ChangeFilter, ListQuery};
use hivesync::store::{GroupWrite, Store, StoreOptions, WriteResult};
use proptest::prelude::*;
use serde_json::json;

#[derive(Clone, Debug)]
enum OpSpec {
    Entity(u8, u8),
    /// An edge between two entity ids; refused when either is missing.
    Edge(u8, u8),
    Note(u8),
    DelEntity(u8),
    /// A vector of 3 or (refused once the model has 3) 4 dimensions.
    Vector(u8, bool),
}

fn op(s: &OpSpec) -> WriteOp {
    match *s {
        OpSpec::Entity(id, name) => WriteOp::upsert(
            Kind::Entity,
            "d",
            json!({"id": format!("e{id}"), "kind": "k", "name": format!("name {name}")}),
        ),
        OpSpec::Edge(a, b) => WriteOp::upsert(
            Kind::Edge,
            "d",
            json!({"id": format!("r{a}-{b}"), "source": format!("e{a}"), "target": format!("e{b}"), "relation": "r"}),
        ),
        OpSpec::Note(id) => WriteOp::upsert(
            Kind::Note,
            "d",
            json!({"id": format!("n{id}"), "content": format!("note {id}")}),
        ),
        OpSpec::DelEntity(id) => WriteOp::delete(Kind::Entity, "d", format!("e{id}")),
        OpSpec::Vector(id, wrong) => WriteOp::upsert(
            Kind::Vector,
            "d",
            json!({"subject": format!("e{id}"), "model": "m",
                   "embedding": if wrong { vec![0.5f32; 4] } else { vec![0.25f32, 0.5, f32::from(id)] }}),
        ),
    }
}

#[derive(Clone, Debug)]
struct WriteSpec {
    ops: Vec<OpSpec>,
    /// (client, n): numbers may repeat (a replay) or go back.
    origin: Option<(u8, u8)>,
}

fn op_spec() -> impl Strategy<Value = OpSpec> {
    prop_oneof![
        4 => (0u8..6, any::<u8>()).prop_map(|(a, b)| OpSpec::Entity(a, b)),
        2 => (0u8..6, 0u8..6).prop_map(|(a, b)| OpSpec::Edge(a, b)),
        2 => (0u8..4).prop_map(OpSpec::Note),
        1 => (0u8..6).prop_map(OpSpec::DelEntity),
        1 => (0u8..6, prop::bool::weighted(0.2)).prop_map(|(a, w)| OpSpec::Vector(a, w)),
    ]
}

fn write_spec() -> impl Strategy<Value = WriteSpec> {
    (
        prop::collection::vec(op_spec(), 1..4),
        prop::option::weighted(0.4, (0u8..2, 1u8..8)),
    )
        .prop_map(|(ops, origin)| WriteSpec { ops, origin })
}

/// What a write answered, without the parts that depend on the clock.
fn answer(r: &hivesync::Result<WriteResult>) -> Result<(i64, Vec<String>, bool), String> {
    match r {
        Ok(w) => Ok((w.seq, w.ids.clone(), w.replayed)),
        Err(e) => Err(e.to_string()),
    }
}

/// A change log entry without its timestamp: seq, tx, kind, op, id, model.
type LogEntry = (i64, i64, String, String, String, Option<String>);

/// The change log and the rows, without timestamps.
fn state(s: &Store) -> (Vec<LogEntry>, Vec<String>) {
    let log = s
        .changes_since(0, &ChangeFilter::default(), 100_000)
        .unwrap()
        .into_iter()
        .map(|c| {
            (
                c.seq,
                c.tx,
                c.kind.as_str().to_string(),
                c.op.as_str().to_string(),
                c.id,
                c.model,
            )
        })
        .collect();
    let mut rows = Vec::new();
    for kind in [Kind::Entity, Kind::Edge, Kind::Note] {
        for mut v in s
            .list_json(
                kind,
                &ListQuery {
                    ns: "d".into(),
                    kind: None,
                    after: None,
                    limit: 1000,
                },
            )
            .unwrap()
        {
            if let Some(o) = v.as_object_mut() {
                o.remove("created_at");
                o.remove("updated_at");
            }
            rows.push(format!("{kind:?} {v}"));
        }
    }
    for id in 0..6 {
        if let Some(v) = s.get_vector("d", &format!("e{id}"), "m").unwrap() {
            rows.push(format!("vector e{id} {:?}", v.embedding));
        }
    }
    rows.sort();
    (log, rows)
}

fn origins(w: &[WriteSpec]) -> Vec<Option<Origin>> {
    w.iter()
        .map(|w| {
            w.origin.map(|(c, n)| Origin {
                client: format!("c{c}"),
                n: i64::from(n),
                entries: Vec::new(),
                principal: None,
            })
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("GROUP_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_group_answers_and_writes_what_writing_one_by_one_does(
        before in prop::collection::vec(write_spec(), 0..4),
        group in prop::collection::vec(write_spec(), 1..12),
    ) {
        let one = Store::open_in_memory(StoreOptions::default()).unwrap();
        let grouped = Store::open_in_memory(StoreOptions::default()).unwrap();
        // The same history before, one by one in both.
        for (w, o) in before.iter().zip(origins(&before)) {
            let ops: Vec<WriteOp> = w.ops.iter().map(op).collect();
            let a = one.write_from(&ops, o.as_ref());
            let b = grouped.write_from(&ops, o.as_ref());
            prop_assert_eq!(answer(&a), answer(&b));
        }
        let ops: Vec<Vec<WriteOp>> = group.iter().map(|w| w.ops.iter().map(op).collect()).collect();
        let os = origins(&group);
        let alone: Vec<_> = ops.iter().zip(&os).map(|(ops, o)| answer(&one.write_from(ops, o.as_ref()))).collect();
        let writes: Vec<GroupWrite<'_>> = ops.iter().zip(&os).map(|(ops, o)| (ops.as_slice(), o.as_ref())).collect();
        let together: Vec<_> = grouped.write_group(&writes).unwrap().iter().map(answer).collect();
        prop_assert_eq!(&alone, &together);
        prop_assert_eq!(state(&one), state(&grouped));
        prop_assert!(grouped.check().unwrap().ok, "{:?}", grouped.check().unwrap().problems);
    }
}

#[test]
fn a_refused_write_fails_alone_and_its_neighbours_commit_with_their_own_seqs() {
    let s = Store::open_in_memory(StoreOptions::default()).unwrap();
    let a = vec![op(&OpSpec::Entity(1, 1)), op(&OpSpec::Entity(2, 2))];
    let bad = vec![op(&OpSpec::Entity(3, 3)), op(&OpSpec::Edge(1, 5))];
    let c = vec![op(&OpSpec::Edge(1, 2))];
    let r = s
        .write_group(&[(&a, None), (&bad, None), (&c, None)])
        .unwrap();
    assert_eq!(r[0].as_ref().unwrap().seq, 2);
    let e = r[1].as_ref().unwrap_err();
    assert!(e.to_string().contains("e5"), "{e}");
    assert_eq!(
        r[2].as_ref().unwrap().seq,
        3,
        "no gap where the refused write was"
    );
    assert!(
        s.get_entity("d", "e3").unwrap().is_none(),
        "nothing of the refused write is left"
    );
    let log = s.changes_since(0, &ChangeFilter::default(), 10).unwrap();
    // Each write keeps its own tx (the seq of its first change), as if committed alone.
    assert_eq!(
        log.iter().map(|c| (c.seq, c.tx)).collect::<Vec<_>>(),
        [(1, 1), (2, 1), (3, 3)]
    );
}

#[test]
fn a_row_deleted_in_one_write_and_its_rowid_reused_by_the_next_keeps_the_index_whole() {
    // Write A deletes the newest entity (its rowid is free again); write B, in the same group,
    // inserts a new entity, which takes that rowid, with words the old row had. Each write's
    // full-text work must be done before the next write's starts.
    let s = Store::open_in_memory(StoreOptions::default()).unwrap();
    let named = |id: &str, name: &str| {
        WriteOp::upsert(
            Kind::Entity,
            "d",
            json!({"id": id, "kind": "k", "name": name}),
        )
    };
    s.write(&[named("e1", "name 7"), named("e2", "name 7 alpha beta")])
        .unwrap();
    let a = vec![op(&OpSpec::DelEntity(2))];
    let b = vec![named("e3", "name 7 beta gamma")];
    for r in s.write_group(&[(&a, None), (&b, None)]).unwrap() {
        r.unwrap();
    }
    let rowid: i64 = s
        .read(|c| {
            Ok(
                c.query_row("SELECT rowid FROM entities WHERE id = 'e3'", [], |r| {
                    r.get(0)
                })?,
            )
        })
        .unwrap();
    assert_eq!(rowid, 2, "the new row took the deleted row's rowid");
    let report = s.check().unwrap();
    assert!(report.ok, "{:?}", report.problems);
    let hits = s
        .search(&hivesync::query::SearchQuery {
            text: "name 7".into(),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let mut ids: Vec<_> = hits.iter().map(|h| h.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["e1", "e3"]);
    for (word, want) in [
        ("alpha", vec![]),
        ("beta", vec!["e3"]),
        ("gamma", vec!["e3"]),
    ] {
        let hits = s
            .search(&hivesync::query::SearchQuery {
                text: word.into(),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
            want,
            "{word}"
        );
    }
}
