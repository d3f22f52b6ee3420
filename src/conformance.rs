//! Native/wasm conformance: one deterministic dataset and one set of queries, run by the same
//! code on both targets and compared with one golden file (`tests/golden/conformance.json`).
//! If the native run and the wasm run each equal the golden file, they equal each other.
//! Regenerate the file (natively) with `HIVESYNC_BLESS=1 cargo test --lib conformance`.

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::model::{Kind, WriteOp};
use crate::query::{self, ChangeFilter, Direction, KnnQuery, ListQuery, SearchQuery};
use crate::{ops, protocol, schema};

const NOW: i64 = 1_764_000_000_000_000;
const WORDS: [&str; 24] = [
    "graph",
    "vector",
    "sync",
    "replica",
    "node",
    "edge",
    "search",
    "index",
    "query",
    "commit",
    "log",
    "snapshot",
    "browser",
    "offline",
    "stream",
    "cursor",
    "schema",
    "trigger",
    "token",
    "scope",
    "namespace",
    "hybrid",
    "rank",
    "neighbor",
];

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn word(&mut self) -> &'static str {
        WORDS[(self.next() % WORDS.len() as u64) as usize]
    }
    fn unit(&mut self) -> f64 {
        (self.next() % 2001) as f64 / 1000.0 - 1.0
    }
}

fn dataset(conn: &Connection) -> crate::Result<()> {
    let mut r = Lcg(42);
    let mut ops_: Vec<WriteOp> = Vec::new();
    for i in 0..60 {
        let ns = if i % 3 == 0 { "b" } else { "a" };
        let name = format!("{} {} {i}", r.word(), r.word());
        let desc: Vec<&str> = (0..12).map(|_| r.word()).collect();
        let kind = ["person", "project", "topic"][i % 3];
        ops_.push(WriteOp::upsert(
            Kind::Entity,
            ns,
            json!({"id": format!("e{i}"), "kind": kind, "name": name, "description": desc.join(" "),
                   "tags": [r.word()], "created_at": NOW + i as i64, "updated_at": NOW + i as i64}),
        ));
        let emb: Vec<f64> = (0..8).map(|_| r.unit()).collect();
        ops_.push(WriteOp::upsert(
            Kind::Vector,
            ns,
            json!({"subject": format!("e{i}"), "model": "m8", "embedding": emb,
            "created_at": NOW, "updated_at": NOW}),
        ));
    }
    for i in 0..30 {
        let ns = if i % 3 == 0 { "b" } else { "a" };
        let content: Vec<&str> = (0..20).map(|_| r.word()).collect();
        ops_.push(WriteOp::upsert(
            Kind::Note,
            ns,
            json!({"id": format!("n{i}"), "content": content.join(" "), "salience": (i % 5) as f64 / 4.0,
                   "created_at": NOW, "updated_at": NOW}),
        ));
    }
    for i in 0..60usize {
        for step in [1usize, 7] {
            let j = (i + step * 3) % 60;
            if i % 3 == j % 3 || (i % 3 != 0 && j % 3 != 0) {
                let ns = if i % 3 == 0 { "b" } else { "a" };
                ops_.push(WriteOp::upsert(Kind::Edge, ns, json!({"id": format!("x{i}-{j}"), "source": format!("e{i}"),
                    "target": format!("e{j}"), "relation": if step == 1 { "links" } else { "cites" },
                    "weight": (i % 4) as f64, "created_at": NOW, "updated_at": NOW})));
            }
        }
    }
    conn.execute_batch("BEGIN")?;
    for op in &ops_ {
        ops::execute(conn, op, NOW)?;
    }
    ops::execute(conn, &WriteOp::delete(Kind::Entity, "a", "e4"), NOW)?;
    schema::drain_fts_queue(conn)?;
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Round floats so last-bit differences between libms do not count.
fn round(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => json!((n.as_f64().unwrap_or(0.0) * 1e6).round() / 1e6),
        Value::Array(a) => Value::Array(a.into_iter().map(round).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, round(v))).collect()),
        v => v,
    }
}

/// Build the dataset in a fresh database and run every query; the results as one JSON value.
pub(crate) fn run() -> crate::Result<Value> {
    let c = schema::open_in_memory(&Default::default())?;
    dataset(&c)?;
    let mut out = serde_json::Map::new();
    for (name, text, ns, kind) in [
        ("search_graph", "graph", None, None),
        ("search_phrase", "\"sync replica\"", None, None),
        ("search_prefix_ns", "sna*", Some("a"), None),
        ("search_kind", "vector index", None, Some("person")),
        ("search_hostile", "AND (\" NEAR", None, None),
    ] {
        let q = SearchQuery {
            text: text.into(),
            ns: ns.map(Into::into),
            kind: kind.map(Into::into),
            records: None,
            limit: 15,
        };
        out.insert(
            name.into(),
            serde_json::to_value(query::search(&c, &q, NOW)?)?,
        );
    }
    let probe = vec![0.5, -0.25, 0.1, 0.9, -0.6, 0.3, 0.0, -0.1];
    for (name, ns, kind) in [
        ("knn_all", None, None),
        ("knn_ns", Some("b"), None),
        ("knn_kind", None, Some("project")),
    ] {
        let q = KnnQuery {
            model: "m8".into(),
            embedding: probe.clone(),
            k: 7,
            ns: ns.map(Into::into),
            kind: kind.map(Into::into),
        };
        out.insert(name.into(), serde_json::to_value(query::knn(&c, &q)?)?);
    }
    let t = SearchQuery {
        text: "graph".into(),
        limit: 20,
        ..Default::default()
    };
    let k = KnnQuery {
        model: "m8".into(),
        embedding: probe,
        k: 20,
        ..Default::default()
    };
    out.insert(
        "hybrid".into(),
        serde_json::to_value(query::hybrid(&c, &t, &k, 10, NOW)?)?,
    );
    out.insert(
        "neighbors".into(),
        serde_json::to_value(query::neighbors(&c, "a", "e2", Direction::Both, None, 50)?)?,
    );
    out.insert(
        "traverse".into(),
        serde_json::to_value(query::traverse(
            &c,
            "a",
            "e2",
            Direction::Out,
            Some("links"),
            4,
            30,
        )?)?,
    );
    let l = ListQuery {
        ns: "a".into(),
        kind: Some("topic".into()),
        after: Some("e2".into()),
        limit: 5,
    };
    out.insert(
        "list".into(),
        serde_json::to_value(query::list_entities(&c, &l)?)?,
    );
    let f = ChangeFilter {
        namespaces: Some(vec!["b".into()]),
        kinds: Some(vec![Kind::Edge, Kind::Entity]),
    };
    let ch: Vec<Value> = query::changes_since(&c, 100, &f, 10)?
        .iter()
        .map(|c| json!([c.seq, c.tx, c.ns, c.kind, c.op, c.id, c.data]))
        .collect();
    out.insert("changes".into(), Value::Array(ch));
    out.insert("head".into(), json!(query::head(&c)?));
    out.insert(
        "digest".into(),
        serde_json::to_value(query::digest(&c, None)?)?,
    );
    out.insert(
        "digest_b".into(),
        serde_json::to_value(query::digest(&c, Some(&["b".to_string()]))?)?,
    );
    vector_wire(&c, &mut out)?;
    Ok(round(Value::Object(out)))
}

/// Vectors on the wire: two vector changes in each encoding (JSON arrays, JSON base64 of packed
/// little-endian f32, postcard's raw f32), and a replica that applies the whole log from a
/// `hivesync.v1.json-b64` frame: its knn answer and its digest.
fn vector_wire(c: &Connection, out: &mut serde_json::Map<String, Value>) -> crate::Result<()> {
    let all = query::changes_since(c, 0, &ChangeFilter::default(), 100_000)?;
    let wire: Vec<Value> = all
        .iter()
        .filter(|ch| ch.embedding.is_some())
        .take(2)
        .map(|ch| {
            // `ts` is the clock at commit: fixed here, as the other fields are.
            let ch = &crate::model::Change { ts: NOW, ..ch.clone() };
            let (mut j, mut b, mut bin) = (Vec::new(), Vec::new(), Vec::new());
            protocol::encode_change_json(&mut j, ch);
            protocol::encode_change_json_as(&mut b, ch, protocol::VectorForm::Base64);
            protocol::encode_change_bin(&mut bin, ch);
            let hex: String = bin.iter().map(|x| format!("{x:02x}")).collect();
            json!({"json": String::from_utf8_lossy(&j), "json_b64": String::from_utf8_lossy(&b), "bin": hex})
        })
        .collect();
    out.insert("vector_wire".into(), Value::Array(wire));
    let frame = protocol::encode_server_json_as(
        &protocol::ServerMsg::Changes {
            sub: "g".into(),
            prev: 0,
            changes: all,
        },
        protocol::VectorForm::Base64,
    );
    let protocol::ServerMsg::Changes { changes, .. } = protocol::decode_server_json(&frame)? else {
        return Err(crate::Error::invalid(
            "a changes frame decoded as another message",
        ));
    };
    let replica = schema::open_in_memory(&Default::default())?;
    crate::apply::apply_changes(&replica, 0, &changes)?;
    let q = KnnQuery {
        model: "m8".into(),
        embedding: vec![0.5, -0.25, 0.1, 0.9, -0.6, 0.3, 0.0, -0.1],
        k: 7,
        ..Default::default()
    };
    out.insert(
        "replica_b64_knn".into(),
        serde_json::to_value(query::knn(&replica, &q)?)?,
    );
    out.insert(
        "replica_b64_digest".into(),
        serde_json::to_value(query::digest(&replica, None)?)?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const GOLDEN: &str = include_str!("../tests/golden/conformance.json");

    #[test]
    fn same_queries_same_results_on_every_target() {
        let got = super::run().unwrap_or_else(|e| panic!("conformance run failed: {e}"));
        #[cfg(not(target_arch = "wasm32"))]
        if std::env::var_os("HIVESYNC_BLESS").is_some() {
            let text = serde_json::to_string_pretty(&got).unwrap_or_default() + "\n";
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/conformance.json"),
                text,
            )
            .unwrap_or_else(|e| panic!("cannot write the golden file: {e}"));
            return;
        }
        let want: serde_json::Value = serde_json::from_str(GOLDEN).unwrap_or_default();
        assert!(
            want.as_object().is_some_and(|o| o.len() > 10),
            "golden file is empty: bless it natively first"
        );
        for (k, v) in want.as_object().into_iter().flatten() {
            assert_eq!(
                got.get(k),
                Some(v),
                "query {k} differs from the golden result"
            );
        }
        assert_eq!(got, want);
    }
}
