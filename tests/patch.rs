//! Patch writes from several replicas: random interleavings of patches, upserts and deletes
//! made offline and online on three replicas and at the node, uploads whose answers are lost
//! (sent again), partial feeds. In the end every replica equals the node, and the node's rows
//! are what applying each committed write in the node's commit order gives, so every field
//! whose last writer was a patch holds that patch's value (and one edited by an upsert after
//! it holds the upsert's).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use hivesync::model::{Kind, Origin, WriteOp};
use hivesync::outbox;
use hivesync::query;
use hivesync::schema::{self, SchemaOptions};
use hivesync::store::{Store, StoreOptions};
use proptest::prelude::*;
use rusqlite::Connection;
use serde_json::{json, Map, Value};

const REPLICAS: usize = 3;
const IDS: u8 = 3;

/// One replica: its database and client id.
struct Replica {
    db: Connection,
    client: String,
}

/// The node, the replicas, and the model: each row as the node's commit order makes it.
struct World {
    node: Store,
    replicas: Vec<Replica>,
    model: BTreeMap<String, Map<String, Value>>,
}

/// The fields a row's model keeps (what writes here change).
const FIELDS: [&str; 4] = ["name", "description", "properties", "tags"];

impl World {
    fn new() -> World {
        let replicas = (0..REPLICAS)
            .map(|_| {
                let db = schema::open_in_memory(&SchemaOptions::default()).unwrap();
                let client = outbox::client_id(&db).unwrap();
                Replica { db, client }
            })
            .collect();
        World {
            node: Store::open_in_memory(StoreOptions::default()).unwrap(),
            replicas,
            model: BTreeMap::new(),
        }
    }

    /// Apply the node's log to replica `r` in batches of `batch` (never splitting a write).
    fn feed(&self, r: usize, batch: usize) {
        common::feed_replica(&self.node, &self.replicas[r].db, batch, None);
    }

    /// The highest write number of `client` the node has committed.
    fn ledger(&self, client: &str) -> i64 {
        self.node
            .read(|c| {
                Ok(c.query_row(
                    "SELECT coalesce(max(n), 0) FROM client_writes WHERE client = ?1",
                    [client],
                    |r| r.get(0),
                )?)
            })
            .unwrap()
    }

    /// Upload replica `r`'s unconfirmed entries, `batch` per write (a refused batch goes again
    /// one by one, a refused entry is taken back); `lose`: the answers are lost.
    fn upload(&mut self, r: usize, lose: bool, batch: usize) {
        let unsent: Vec<_> = outbox::pending(&self.replicas[r].db)
            .unwrap()
            .into_iter()
            .filter(|p| p.seq.is_none())
            .collect();
        for chunk in unsent.chunks(batch.max(1)) {
            if chunk.len() > 1 && self.send(r, chunk, lose) {
                continue;
            }
            for p in chunk {
                if !self.send(r, std::slice::from_ref(p), lose) {
                    outbox::reject(&self.replicas[r].db, p.n).unwrap();
                }
            }
        }
    }

    /// One write of entries `g`: false when the node refused it. The entries it committed now
    /// (not replays: the ledger moved past them) go into the model, in order.
    fn send(&mut self, r: usize, g: &[outbox::Pending], lose: bool) -> bool {
        let client = self.replicas[r].client.clone();
        let before = self.ledger(&client);
        let origin = Origin {
            client: client.clone(),
            n: g[g.len() - 1].n,
            entries: if g.len() > 1 {
                g.iter().map(|p| p.ops.len() as u32).collect()
            } else {
                Vec::new()
            },
            principal: None,
        };
        let ops: Vec<WriteOp> = g.iter().flat_map(|p| p.ops.clone()).collect();
        let Ok(res) = self.node.write_from(&ops, Some(&origin)) else {
            return false;
        };
        let after = self.ledger(&client);
        for p in g.iter().filter(|p| p.n > before && p.n <= after) {
            for op in &p.ops {
                self.model_apply(op);
            }
        }
        if !lose {
            for p in g {
                outbox::confirm(&self.replicas[r].db, p.n, res.seq).unwrap();
            }
        }
        true
    }

    /// A write made at the node directly (another client's).
    fn node_write(&mut self, ops: &[WriteOp]) {
        if self.node.write(ops).is_ok() {
            for op in ops {
                self.model_apply(op);
            }
        }
    }

    /// What an op the node committed does to the model's row.
    fn model_apply(&mut self, op: &WriteOp) {
        let data = op.data.as_ref().and_then(Value::as_object);
        match op.op {
            hivesync::model::Op::Upsert => {
                let d = data.unwrap();
                let id = d["id"].as_str().unwrap().to_string();
                let mut row = Map::new();
                row.insert("name".into(), d["name"].clone());
                row.insert(
                    "description".into(),
                    d.get("description").cloned().unwrap_or(json!("")),
                );
                row.insert(
                    "properties".into(),
                    d.get("properties").cloned().unwrap_or(json!({})),
                );
                row.insert("tags".into(), d.get("tags").cloned().unwrap_or(json!([])));
                self.model.insert(id, row);
            }
            hivesync::model::Op::Delete => {
                self.model.remove(op.id.as_deref().unwrap());
            }
            hivesync::model::Op::Patch => {
                let row = self
                    .model
                    .get_mut(op.id.as_deref().unwrap())
                    .expect("the node committed a patch of a missing row");
                for (k, v) in data.unwrap() {
                    match k.as_str() {
                        "properties" => {
                            let p = row.get_mut("properties").unwrap().as_object_mut().unwrap();
                            for (pk, pv) in v.as_object().unwrap() {
                                if pv.is_null() {
                                    p.remove(pk);
                                } else {
                                    p.insert(pk.clone(), pv.clone());
                                }
                            }
                        }
                        "tags" => {
                            let mut tags: Vec<Value> = row["tags"].as_array().unwrap().clone();
                            let o = v.as_object().unwrap();
                            let rm = o
                                .get("remove")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default();
                            tags.retain(|t| !rm.contains(t));
                            for t in o
                                .get("add")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default()
                            {
                                if !tags.contains(&t) {
                                    tags.push(t);
                                }
                            }
                            row.insert("tags".into(), Value::from(tags));
                        }
                        "updated_at" => {}
                        _ => {
                            row.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
    }

    /// The node's rows, as the model keeps them.
    fn node_rows(&self) -> BTreeMap<String, Map<String, Value>> {
        let mut out = BTreeMap::new();
        for i in 0..IDS {
            let id = format!("k{i}");
            if let Some(v) = self
                .node
                .read(|c| query::get_json(c, Kind::Entity, "default", &id, None))
                .unwrap()
            {
                let row = FIELDS
                    .iter()
                    .map(|f| (f.to_string(), v[*f].clone()))
                    .collect();
                out.insert(id, row);
            }
        }
        out
    }
}

/// An op from random numbers: an upsert, a patch of one to three fields, or a delete.
fn op(kind: u8, i: u8, v: u8) -> WriteOp {
    let id = format!("k{}", i % IDS);
    match kind % 6 {
        0 => WriteOp::upsert(
            Kind::Entity,
            "default",
            json!({"id": id, "kind": "task", "name": format!("n{v}"), "description": format!("d{v}"),
                   "properties": {"a": v % 3, "b": v % 5}, "tags": [format!("t{}", v % 3)]}),
        ),
        1 => WriteOp::delete(Kind::Entity, "default", &id),
        2 => WriteOp::patch(
            Kind::Entity,
            "default",
            &id,
            json!({"name": format!("p{v}")}),
        ),
        3 => WriteOp::patch(
            Kind::Entity,
            "default",
            &id,
            json!({"description": format!("q{v}")}),
        ),
        4 => {
            let key = ["a", "b", "c"][(v % 3) as usize];
            let value = if v.is_multiple_of(4) {
                Value::Null
            } else {
                json!(v)
            };
            WriteOp::patch(
                Kind::Entity,
                "default",
                &id,
                json!({"properties": {key: value}}),
            )
        }
        _ => WriteOp::patch(
            Kind::Entity,
            "default",
            &id,
            json!({"tags": {"add": [format!("t{}", v % 4)], "remove": [format!("t{}", (v / 4) % 4)]}}),
        ),
    }
}

#[derive(Clone, Debug)]
enum Step {
    Local(usize, Vec<(u8, u8, u8)>),
    Node(Vec<(u8, u8, u8)>),
    Feed(usize, usize),
    Upload { r: usize, lose: bool, batch: usize },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let ops = || prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..3);
    prop::collection::vec(
        prop_oneof![
            4 => (0..REPLICAS, ops()).prop_map(|(r, o)| Step::Local(r, o)),
            1 => ops().prop_map(Step::Node),
            2 => (0..REPLICAS, 1usize..6).prop_map(|(r, b)| Step::Feed(r, b)),
            2 => (0..REPLICAS, any::<bool>(), 1usize..4).prop_map(|(r, lose, batch)| Step::Upload { r, lose, batch }),
        ],
        1..40,
    )
}

fn cases() -> u32 {
    std::env::var("PATCH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn patches_from_several_replicas_converge_and_keep_each_fields_last_writer(steps in steps()) {
        let mut w = World::new();
        let seed: Vec<WriteOp> = (0..IDS).map(|i| op(0, i, i)).collect();
        w.node_write(&seed);
        for r in 0..REPLICAS {
            w.feed(r, 100);
        }
        for s in &steps {
            match s {
                Step::Local(r, v) => {
                    let ops: Vec<_> = v.iter().map(|(k, i, x)| op(*k, *i, *x)).collect();
                    // A patch of a row this replica does not have is refused here, like at the node.
                    if let Err(e) = outbox::write_local(&w.replicas[*r].db, ops) {
                        prop_assert!(e.to_string().contains("no such row"), "a local write failed: {e}");
                    }
                }
                Step::Node(v) => {
                    let ops: Vec<_> = v.iter().map(|(k, i, x)| op(*k, *i, *x)).collect();
                    w.node_write(&ops);
                }
                Step::Feed(r, b) => w.feed(*r, *b),
                Step::Upload { r, lose, batch } => w.upload(*r, *lose, *batch),
            }
        }
        // Everyone online: uploads, then feeds, until nothing is pending.
        for _ in 0..3 {
            for r in 0..REPLICAS {
                w.upload(r, false, 1);
            }
            for r in 0..REPLICAS {
                w.feed(r, 7);
            }
        }
        let node = w.node.digest(None).unwrap().sha256;
        for r in 0..REPLICAS {
            prop_assert_eq!(outbox::status(&w.replicas[r].db).unwrap().pending, 0, "replica {}", r);
            prop_assert_eq!(&query::digest(&w.replicas[r].db, None).unwrap().sha256, &node, "replica {}", r);
        }
        prop_assert_eq!(w.node_rows(), w.model.clone());
    }
}
