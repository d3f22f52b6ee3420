//! Property test: random op sequences run against the store and against a simple in-memory
//! model must leave the same state; replaying the change log into an empty database must
//! give that state again (which is what every replica relies on).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use hivesync::model::{Kind, WriteOp};
use hivesync::query::{ChangeFilter, ListQuery};
use hivesync::store::{Store, StoreOptions};
use proptest::prelude::*;
use serde_json::json;

const NS: [&str; 2] = ["a", "b"];
const IDS: [&str; 4] = ["x", "y", "z", "w"];

#[derive(Clone, Debug)]
enum Step {
    Entity {
        ns: usize,
        id: usize,
        name: u8,
    },
    DelEntity {
        ns: usize,
        id: usize,
    },
    Edge {
        ns: usize,
        src: usize,
        dst: usize,
        rel: u8,
        weight: u8,
    },
    DelEdgeOf {
        ns: usize,
        src: usize,
        dst: usize,
        rel: u8,
    },
    Note {
        ns: usize,
        id: usize,
        salience: u8,
    },
    DelNote {
        ns: usize,
        id: usize,
    },
    Event {
        ns: usize,
        id: usize,
    },
    Vector {
        ns: usize,
        id: usize,
        a: i8,
        b: i8,
    },
    DelVector {
        ns: usize,
        id: usize,
    },
    /// An entity of the bulk id space (`b0`, `b1`...), written in long runs.
    Bulk {
        ns: usize,
        id: usize,
        name: u8,
    },
    DelBulk {
        ns: usize,
        id: usize,
    },
}

const BULK_IDS: usize = 12;

fn bulk_key(ns: usize, id: usize) -> (String, String) {
    (NS[ns].to_string(), format!("b{id}"))
}

fn bulk_step() -> impl Strategy<Value = Step> {
    (0..NS.len(), 0..BULK_IDS, 0u8..4).prop_map(|(ns, id, name)| Step::Bulk { ns, id, name })
}

/// One write: a long run of entity upserts (the store writes runs of 8 or more itself, not
/// through the triggers) with other ops, and deletes of bulk rows, around it.
fn bulk_write() -> impl Strategy<Value = Vec<Step>> {
    let other = prop_oneof![
        3 => step(),
        1 => (0..NS.len(), 0..BULK_IDS).prop_map(|(ns, id)| Step::DelBulk { ns, id }),
    ];
    (
        prop::collection::vec(other.clone(), 0..3),
        prop::collection::vec(bulk_step(), 6..16),
        prop::collection::vec(other, 0..3),
        prop::collection::vec(bulk_step(), 0..10),
    )
        .prop_map(|(a, b, c, d)| [a, b, c, d].concat())
}

fn step() -> impl Strategy<Value = Step> {
    let ns = 0..NS.len();
    let id = 0..IDS.len();
    prop_oneof![
        3 => (ns.clone(), id.clone(), 0u8..4).prop_map(|(ns, id, name)| Step::Entity { ns, id, name }),
        1 => (ns.clone(), id.clone()).prop_map(|(ns, id)| Step::DelEntity { ns, id }),
        3 => (ns.clone(), id.clone(), id.clone(), 0u8..2, 0u8..3).prop_map(|(ns, src, dst, rel, weight)| Step::Edge { ns, src, dst, rel, weight }),
        1 => (ns.clone(), id.clone(), id.clone(), 0u8..2).prop_map(|(ns, src, dst, rel)| Step::DelEdgeOf { ns, src, dst, rel }),
        2 => (ns.clone(), id.clone(), 0u8..3).prop_map(|(ns, id, salience)| Step::Note { ns, id, salience }),
        1 => (ns.clone(), id.clone()).prop_map(|(ns, id)| Step::DelNote { ns, id }),
        1 => (ns.clone(), id.clone()).prop_map(|(ns, id)| Step::Event { ns, id }),
        2 => (ns.clone(), id.clone(), -3i8..4, -3i8..4).prop_map(|(ns, id, a, b)| Step::Vector { ns, id, a, b }),
        1 => (ns, id).prop_map(|(ns, id)| Step::DelVector { ns, id }),
    ]
}

/// The reference model: what a correct store holds.
#[derive(Default, Clone, Debug, PartialEq)]
struct Model {
    entities: BTreeMap<(String, String), String>,
    /// (ns, source, target, relation) -> weight
    edges: BTreeMap<(String, String, String, String), f64>,
    notes: BTreeMap<(String, String), f64>,
    events: BTreeSet<(String, String)>,
    vectors: BTreeMap<(String, String), Vec<f32>>,
}

fn key(ns: usize, id: usize) -> (String, String) {
    (NS[ns].to_string(), IDS[id].to_string())
}

/// Apply to the model; `Err` where the store must refuse the op.
fn model_apply(m: &mut Model, s: &Step) -> Result<(), ()> {
    match *s {
        Step::Entity { ns, id, name } => {
            m.entities.insert(key(ns, id), format!("name{name}"));
        }
        Step::Bulk { ns, id, name } => {
            m.entities.insert(bulk_key(ns, id), format!("name{name}"));
        }
        Step::DelBulk { ns, id } => {
            m.entities.remove(&bulk_key(ns, id));
        }
        Step::DelEntity { ns, id } => {
            let (n, i) = key(ns, id);
            if m.entities.remove(&(n.clone(), i.clone())).is_some() {
                m.edges
                    .retain(|(en, s, t, _), _| !(*en == n && (*s == i || *t == i)));
                if !m.notes.contains_key(&(n.clone(), i.clone())) {
                    m.vectors.remove(&(n, i));
                }
            }
        }
        Step::Edge {
            ns,
            src,
            dst,
            rel,
            weight,
        } => {
            let (n, s) = key(ns, src);
            let t = IDS[dst].to_string();
            if !m.entities.contains_key(&(n.clone(), s.clone()))
                || !m.entities.contains_key(&(n.clone(), t.clone()))
            {
                return Err(());
            }
            m.edges.insert((n, s, t, format!("r{rel}")), weight as f64);
        }
        Step::DelEdgeOf { ns, src, dst, rel } => {
            let (n, s) = key(ns, src);
            m.edges
                .remove(&(n, s, IDS[dst].to_string(), format!("r{rel}")));
        }
        Step::Note { ns, id, salience } => {
            m.notes.insert(key(ns, id), salience as f64 / 2.0);
        }
        Step::DelNote { ns, id } => {
            let k = key(ns, id);
            if m.notes.remove(&k).is_some() && !m.entities.contains_key(&k) {
                m.vectors.remove(&k);
            }
        }
        Step::Event { ns, id } => {
            m.events.insert(key(ns, id));
        }
        Step::Vector { ns, id, a, b } => {
            let k = key(ns, id);
            if (a == 0 && b == 0) || (!m.entities.contains_key(&k) && !m.notes.contains_key(&k)) {
                return Err(());
            }
            m.vectors.insert(k, vec![a as f32, b as f32]);
        }
        Step::DelVector { ns, id } => {
            m.vectors.remove(&key(ns, id));
        }
    }
    Ok(())
}

fn edge_id(src: usize, dst: usize, rel: u8) -> String {
    format!("{}-r{rel}-{}", IDS[src], IDS[dst])
}

/// The op the store gets. Edges carry an id derived from their triple, so deletes name it.
fn to_op(s: &Step) -> WriteOp {
    match *s {
        Step::Entity { ns, id, name } => WriteOp::upsert(
            Kind::Entity,
            NS[ns],
            json!({"id": IDS[id], "name": format!("name{name}")}),
        ),
        Step::DelEntity { ns, id } => WriteOp::delete(Kind::Entity, NS[ns], IDS[id]),
        Step::Edge {
            ns,
            src,
            dst,
            rel,
            weight,
        } => WriteOp::upsert(
            Kind::Edge,
            NS[ns],
            json!({"id": edge_id(src, dst, rel), "source": IDS[src], "target": IDS[dst], "relation": format!("r{rel}"), "weight": weight as f64}),
        ),
        Step::DelEdgeOf { ns, src, dst, rel } => {
            WriteOp::delete(Kind::Edge, NS[ns], edge_id(src, dst, rel))
        }
        Step::Note { ns, id, salience } => WriteOp::upsert(
            Kind::Note,
            NS[ns],
            json!({"id": IDS[id], "content": "c", "salience": salience as f64 / 2.0}),
        ),
        Step::DelNote { ns, id } => WriteOp::delete(Kind::Note, NS[ns], IDS[id]),
        Step::Event { ns, id } => {
            WriteOp::upsert(Kind::Event, NS[ns], json!({"id": IDS[id], "verb": "did"}))
        }
        Step::Vector { ns, id, a, b } => WriteOp::upsert(
            Kind::Vector,
            NS[ns],
            json!({"subject": IDS[id], "model": "m", "embedding": [a as f64, b as f64]}),
        ),
        Step::DelVector { ns, id } => {
            let mut op = WriteOp::delete(Kind::Vector, NS[ns], IDS[id]);
            op.model = Some("m".into());
            op
        }
        Step::Bulk { ns, id, name } => WriteOp::upsert(
            Kind::Entity,
            NS[ns],
            json!({"id": format!("b{id}"), "name": format!("name{name}")}),
        ),
        Step::DelBulk { ns, id } => WriteOp::delete(Kind::Entity, NS[ns], format!("b{id}")),
    }
}

/// Every entity name must find exactly the model's entities of that name, and the full-text
/// indexes must agree with the tables.
fn check_search(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    for ns in NS {
        for n in 0..4 {
            let name = format!("name{n}");
            let q = hivesync::query::SearchQuery {
                text: name.clone(),
                ns: Some(ns.into()),
                records: Some(vec![Kind::Entity]),
                limit: 1000,
                ..Default::default()
            };
            let found: BTreeSet<String> = store
                .search(&q)
                .unwrap()
                .into_iter()
                .map(|h| h.id)
                .collect();
            let want: BTreeSet<String> = model
                .entities
                .iter()
                .filter(|((en, _), v)| en == ns && **v == name)
                .map(|((_, id), _)| id.clone())
                .collect();
            prop_assert_eq!(found, want, "search {:?} in {}", name, ns);
        }
    }
    let report = store.check().unwrap();
    prop_assert!(report.ok, "{:?}", report);
    Ok(())
}

/// Read the store back into the model's shape.
fn observe(store: &Store) -> Model {
    let mut m = Model::default();
    for ns in NS {
        let q = ListQuery {
            ns: ns.into(),
            limit: 1000,
            ..Default::default()
        };
        for e in store.list_entities(&q).unwrap() {
            m.entities.insert((ns.into(), e.id), e.name);
        }
        for e in store.list_edges(&q).unwrap() {
            m.edges
                .insert((ns.into(), e.source, e.target, e.relation), e.weight);
        }
        for n in store.list_notes(&q).unwrap() {
            m.notes.insert((ns.into(), n.id), n.salience);
        }
        for e in store.list_events(&q).unwrap() {
            m.events.insert((ns.into(), e.id));
        }
        for id in IDS {
            if let Some(v) = store.get_vector(ns, id, "m").unwrap() {
                m.vectors.insert((ns.into(), id.into()), v.embedding);
            }
        }
    }
    m
}

fn run(steps: &[Vec<Step>]) -> Result<(), TestCaseError> {
    let store = Store::open_in_memory(StoreOptions::default()).unwrap();
    let mut model = Model::default();
    for tx in steps {
        // One transaction per group of steps: the model applies all of them or none.
        let mut next = model.clone();
        let ok = tx.iter().all(|s| model_apply(&mut next, s).is_ok());
        let ops: Vec<WriteOp> = tx.iter().map(to_op).collect();
        let res = store.write(&ops);
        prop_assert_eq!(
            res.is_ok(),
            ok,
            "store and model disagree on {:?}: {:?}",
            tx,
            res.err()
        );
        if ok {
            model = next;
        }
        prop_assert_eq!(&observe(&store), &model);
        check_search(&store, &model)?;
    }
    // The log must be gap-free and replay into an empty database to the same state.
    let changes = store
        .changes_since(0, &ChangeFilter::default(), 1_000_000)
        .unwrap();
    for (i, c) in changes.iter().enumerate() {
        prop_assert_eq!(c.seq, i as i64 + 1);
    }
    let replica = Store::open_in_memory(StoreOptions::default()).unwrap();
    let mut prev = 0;
    for chunk in changes.chunks(7) {
        // Deliver each chunk twice: applying is idempotent.
        let out = replica.apply_changes(prev, chunk).unwrap();
        let again = replica.apply_changes(prev, chunk).unwrap();
        prop_assert_eq!(again.applied, 0);
        prev = out.seq;
    }
    prop_assert_eq!(&observe(&replica), &model);
    // Again in larger batches, where long runs of entity upserts take the replica's own
    // multi-row path; every batch delivered twice, then the whole log once more.
    let big = Store::open_in_memory(StoreOptions::default()).unwrap();
    let mut prev = 0;
    for chunk in changes.chunks(50) {
        let out = big.apply_changes(prev, chunk).unwrap();
        prop_assert_eq!(big.apply_changes(prev, chunk).unwrap().applied, 0);
        prev = out.seq;
    }
    prop_assert_eq!(big.apply_changes(0, &changes).unwrap().applied, 0);
    prop_assert_eq!(&observe(&big), &model);
    check_search(&big, &model)?;
    prop_assert_eq!(store.digest(None).unwrap(), big.digest(None).unwrap());
    let a = store.snapshot(&ChangeFilter::default()).unwrap();
    let b = replica.snapshot(&ChangeFilter::default()).unwrap();
    prop_assert_eq!(a.at, b.at);
    prop_assert_eq!(a.rows, b.rows, "row images differ between node and replica");
    prop_assert!(replica.check().unwrap().ok);
    prop_assert_eq!(store.digest(None).unwrap(), replica.digest(None).unwrap());
    let b = ["b".to_string()];
    prop_assert_eq!(
        store.digest(Some(&b)).unwrap(),
        replica.digest(Some(&b)).unwrap()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_and_log_replays(steps in prop::collection::vec(prop::collection::vec(step(), 1..4), 1..30)) {
        run(&steps)?;
    }

    /// The same, with writes that hold long runs of entity upserts (new rows, rows written
    /// twice in a run, rows that exist, rows deleted and written again) among other ops.
    #[test]
    fn long_runs_of_upserts_match_the_model_and_replay(steps in prop::collection::vec(
        prop_oneof![2 => bulk_write(), 1 => prop::collection::vec(step(), 1..4)], 1..12)) {
        run(&steps)?;
    }
}

#[test]
fn a_gap_is_refused_and_nothing_is_applied() {
    let store = Store::open_in_memory(StoreOptions::default()).unwrap();
    for i in 0..5 {
        store
            .write(&[WriteOp::upsert(
                Kind::Entity,
                "a",
                json!({"id": format!("e{i}"), "name": "n"}),
            )])
            .unwrap();
    }
    let ch = store
        .changes_since(0, &ChangeFilter::default(), 10)
        .unwrap();
    let replica = Store::open_in_memory(StoreOptions::default()).unwrap();
    replica.apply_changes(0, &ch[..2]).unwrap();
    let e = replica.apply_changes(3, &ch[3..]).unwrap_err();
    assert!(e.to_string().contains("gap"), "{e}");
    assert_eq!(replica.head().unwrap(), 2);
    replica.apply_changes(2, &ch[2..]).unwrap();
    assert_eq!(replica.head().unwrap(), 5);
}

/// Text that JSON has to escape (quotes, backslashes, control characters including NUL) mixed
/// with text it must leave alone (slashes, DEL, line separators, non-ASCII).
fn odd_text(min: usize) -> impl Strategy<Value = String> {
    let c = prop_oneof![
        Just('"'),
        Just('\\'),
        Just('/'),
        Just('\u{0}'),
        Just('\u{8}'),
        Just('\u{c}'),
        Just('\n'),
        Just('\r'),
        Just('\t'),
        Just('\u{1b}'),
        Just('\u{1f}'),
        Just('\u{7f}'),
        Just('\u{2028}'),
        Just('é'),
        Just('😀'),
        proptest::char::range('a', 'z'),
        any::<char>(),
    ];
    prop::collection::vec(c, min..10).prop_map(|v| v.into_iter().collect())
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        odd_text(0).prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
            prop::collection::btree_map(odd_text(0), inner, 0..3)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

type OddRow = (
    String,
    String,
    String,
    String,
    BTreeMap<String, serde_json::Value>,
    Vec<String>,
);

fn odd_op(i: usize, r: &OddRow, updated_at: i64, desc: &str) -> WriteOp {
    let name = if r.2.trim().is_empty() {
        format!("n{}", r.2)
    } else {
        r.2.clone()
    };
    WriteOp::upsert(
        Kind::Entity,
        "a",
        json!({
            "id": format!("{i}{}", r.0.replace('\0', "")), "kind": format!("k{}", r.1),
            "name": name, "description": format!("{}{desc}", r.3), "properties": r.4,
            "tags": r.5.iter().map(|t| format!("t{t}")).collect::<Vec<_>>(),
            "updated_at": updated_at,
        }),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The write path builds the change images of runs of entity upserts itself, not through
    /// the trigger's `json_object`; each must be byte for byte the image SQLite makes of the
    /// stored row (which snapshots and plain-SQL writes use). Runs long and short (the short
    /// ones are left to the triggers), rows inserted and updated in the same run, rows updated
    /// in a later run (keeping their created_at), text changed or not.
    #[test]
    fn logged_entity_images_are_the_sql_images_of_the_rows(
        rows in prop::collection::vec(
            (odd_text(1), odd_text(1), odd_text(1), odd_text(0),
             prop::collection::btree_map(odd_text(0), json_value(), 0..4),
             prop::collection::vec(odd_text(1), 0..3)),
            1..10)
    ) {
        let store = Store::open_in_memory(StoreOptions::default()).unwrap();
        let mut first: Vec<WriteOp> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            first.push(odd_op(i, r, 1, ""));
            first.push(odd_op(i, r, 2, " again"));
        }
        let written = store.write(&first);
        prop_assert!(written.is_ok(), "{:?}", written);
        let later: Vec<WriteOp> = rows.iter().enumerate().map(|(i, r)| odd_op(i, r, 3, " again")).collect();
        store.write(&later).unwrap();
        let image = hivesync::schema::row_image_sql(Kind::Entity, "e.");
        let (logged, stored): (Vec<String>, Vec<String>) = store
            .read(|c| {
                let mut q = c.prepare(&format!(
                    "SELECT c.data, {image} FROM changes c JOIN entities e ON e.ns = c.ns AND e.id = c.id
                     WHERE c.seq IN (SELECT max(seq) FROM changes GROUP BY ns, id) ORDER BY c.seq"
                ))?;
                let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?.into_iter().unzip())
            })
            .unwrap();
        prop_assert_eq!(logged.len(), rows.len());
        prop_assert_eq!(logged, stored);
        let all = store.changes_since(0, &ChangeFilter::default(), 1000).unwrap();
        prop_assert_eq!(all.len(), rows.len() * 3);
        prop_assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        prop_assert!(store.check().unwrap().ok);
    }
}
