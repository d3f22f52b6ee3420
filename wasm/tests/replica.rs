//! The browser replica's API, in wasm32 (Node and headless Chromium).
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)]

use hivesync::model::{Change, Kind, Op};
use hivesync::protocol::{encode_server_bin, encode_server_json, ServerMsg};
use hivesync_wasm::Replica;
use serde_json::{json, Value};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::wasm_bindgen_test as test;

/// A string argument, as JavaScript passes it.
fn js(s: impl AsRef<str>) -> JsValue {
    JsValue::from_str(s.as_ref())
}

/// A bytes argument, as JavaScript passes it.
fn bin(b: impl AsRef<[u8]>) -> JsValue {
    js_sys::Uint8Array::from(b.as_ref()).into()
}

fn entity(seq: i64, id: &str, name: &str) -> Change {
    Change {
        seq,
        tx: seq,
        ts: 1,
        ns: "default".into(),
        kind: Kind::Entity,
        op: Op::Upsert,
        id: id.into(),
        model: None,
        data: Some(json!({"id": id, "kind": "person", "name": name, "description": "", "properties": {}, "tags": [],
            "created_at": 1, "updated_at": 1}).to_string()),
        embedding: None,
    }
}

fn vector(seq: i64, subject: &str, emb: Vec<f32>) -> Change {
    Change {
        seq,
        tx: seq,
        ts: 1,
        ns: "default".into(),
        kind: Kind::Vector,
        op: Op::Upsert,
        id: subject.into(),
        model: Some("m".into()),
        data: Some(json!({"subject": subject, "model": "m", "kind": "person", "created_at": 1, "updated_at": 1}).to_string()),
        embedding: Some(emb),
    }
}

fn ev(s: String) -> Value {
    serde_json::from_str(&s).unwrap()
}

#[test]
fn snapshot_chunks_then_changes_then_queries() {
    let mut r = Replica::open_memory().unwrap();
    let chunk1 = ServerMsg::Snapshot {
        sub: "s".into(),
        at: 3,
        rows: vec![entity(3, "ada", "Ada Lovelace")],
        done: false,
    };
    let chunk2 = ServerMsg::Snapshot {
        sub: "s".into(),
        at: 3,
        rows: vec![entity(3, "cb", "Charles Babbage")],
        done: true,
    };
    assert_eq!(
        ev(r.handle_frame(bin(encode_server_bin(&chunk1))).unwrap())["done"],
        false
    );
    assert_eq!(
        r.applied_seq().unwrap(),
        0.0,
        "nothing is committed before the last chunk"
    );
    assert_eq!(
        ev(r.handle_text(js(encode_server_json(&chunk2))).unwrap())["type"],
        "snapshot"
    );
    assert_eq!(r.applied_seq().unwrap(), 3.0);
    let batch = ServerMsg::Changes {
        sub: "s".into(),
        prev: 3,
        changes: vec![
            vector(4, "ada", vec![1.0, 0.0]),
            vector(5, "cb", vec![0.0, 1.0]),
            entity(6, "grace", "Grace Hopper"),
        ],
    };
    let e = ev(r.handle_frame(bin(encode_server_bin(&batch))).unwrap());
    assert_eq!(
        (e["type"].as_str(), e["seq"].as_i64(), e["applied"].as_i64()),
        (Some("applied"), Some(6), Some(3))
    );
    // Re-delivery is harmless.
    let e = ev(r.handle_frame(bin(encode_server_bin(&batch))).unwrap());
    assert_eq!(e["skipped"], 3);
    let hits = ev(r.search(js(r#"{"text":"hopper"}"#)).unwrap());
    assert_eq!(hits[0]["id"], "grace");
    let knn = ev(r
        .knn(js(r#"{"model":"m","embedding":[0.1,1.0],"k":1}"#))
        .unwrap());
    assert_eq!(knn[0]["subject"], "cb");
    assert_eq!(
        ev(
            r.get(js("entity"), js("default"), js("ada"), JsValue::UNDEFINED)
                .unwrap()
        )["name"],
        "Ada Lovelace"
    );
    assert_eq!(
        ev(r.get(js("vector"), js("default"), js("ada"), js("m"))
            .unwrap())["embedding"],
        json!([1.0, 0.0])
    );
    assert_eq!(
        ev(r.list(
            js("entity"),
            js("default"),
            JsValue::UNDEFINED,
            JsValue::UNDEFINED,
            10
        )
        .unwrap())
        .as_array()
        .unwrap()
        .len(),
        3
    );
    let rows = ev(r
        .sql(
            js("SELECT id FROM entities WHERE name LIKE ?1 ORDER BY id"),
            js(r#"["%a%"]"#),
        )
        .unwrap());
    assert_eq!(rows["rows"], json!([["ada"], ["cb"], ["grace"]]));
    assert!(
        r.sql(js("DELETE FROM entities"), JsValue::UNDEFINED)
            .is_err(),
        "a replica refuses writes through SQL"
    );
    assert_eq!(
        ev(r.models().unwrap()),
        json!([{"ns": "default", "model": "m", "dims": 2}])
    );
}

#[test]
fn a_gap_is_reported_and_nothing_applied() {
    let mut r = Replica::open_memory().unwrap();
    let b = ServerMsg::Changes {
        sub: "s".into(),
        prev: 0,
        changes: vec![entity(1, "a", "A")],
    };
    r.handle_frame(bin(encode_server_bin(&b))).unwrap();
    let gap = ServerMsg::Changes {
        sub: "s".into(),
        prev: 5,
        changes: vec![entity(6, "b", "B")],
    };
    assert_eq!(
        ev(r.handle_frame(bin(encode_server_bin(&gap))).unwrap())["type"],
        "gap"
    );
    assert_eq!(r.applied_seq().unwrap(), 1.0);
    assert!(
        r.handle_frame(bin([0xff, 0x00, 0x13])).is_err(),
        "garbage is an error, not a panic"
    );
    assert!(r.handle_text(js("{\"type\":\"changes\"")).is_err());
    assert_eq!(r.applied_seq().unwrap(), 1.0);
}

#[test]
fn export_and_import_bytes_roundtrip() {
    let mut r = Replica::open_memory().unwrap();
    let b = ServerMsg::Changes {
        sub: "s".into(),
        prev: 0,
        changes: vec![entity(1, "ada", "Ada Lovelace"), entity(2, "cb", "Charles")],
    };
    r.handle_frame(bin(encode_server_bin(&b))).unwrap();
    let bytes = r.export_bytes().unwrap();
    assert_eq!(&bytes[..16], b"SQLite format 3\0");
    let mut r2 = Replica::open_memory().unwrap();
    r2.import_bytes(bin(&bytes)).unwrap();
    assert_eq!(r2.applied_seq().unwrap(), 2.0);
    assert_eq!(
        ev(r2.search(js(r#"{"text":"lovelace"}"#)).unwrap())[0]["id"],
        "ada"
    );
    assert!(r2.import_bytes(bin(b"definitely not a database")).is_err());
    let mut damaged = bytes.clone();
    for b in damaged.iter_mut().skip(4096).take(8192) {
        *b = 0x5a;
    }
    assert!(
        r2.import_bytes(bin(&damaged)).is_err(),
        "a damaged file is refused"
    );
    assert_eq!(
        r2.applied_seq().unwrap(),
        2.0,
        "and the replica keeps its state"
    );
}

#[test]
fn client_messages_are_the_nodes_binary_encoding() {
    let hello = Replica::encode_hello(js("t"), JsValue::UNDEFINED).unwrap();
    assert!(matches!(
        hivesync::protocol::decode_client_bin(&hello).unwrap(),
        hivesync::protocol::ClientMsg::Hello { token: Some(_), .. }
    ));
    let sub = Replica::encode_subscribe(js("s"), Some(42.0), js(r#"["a"]"#)).unwrap();
    let hivesync::protocol::ClientMsg::Subscribe(s) =
        hivesync::protocol::decode_client_bin(&sub).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (s.from, s.namespaces),
        (Some(42), Some(vec!["a".to_string()]))
    );
    let w = Replica::encode_write(
        js("w1"),
        js(r#"[{"op":"upsert","kind":"entity","data":{"name":"x"}}]"#),
    )
    .unwrap();
    assert!(hivesync::protocol::decode_client_bin(&w).is_ok());
    assert!(Replica::encode_write(js("w1"), js(r#"[{"op":"nope"}]"#)).is_err());
}

#[test]
fn arguments_of_the_wrong_type_are_type_errors_never_traps() {
    // wasm-bindgen's own string and byte glue trusted its input: an object where a string
    // belongs reached `memory access out of bounds`. Each is a TypeError naming the signature,
    // and the replica goes on working.
    let mut r = Replica::open_memory().unwrap();
    let obj: JsValue = js_sys::Object::new().into();
    let arr: JsValue = js_sys::Array::new().into();
    let wrong = [
        obj.clone(),
        arr,
        JsValue::from(5),
        JsValue::NULL,
        JsValue::UNDEFINED,
        JsValue::TRUE,
    ];
    let is_type_error = |e: JsValue, sig: &str| {
        let e = e.dyn_into::<js_sys::TypeError>().expect("a TypeError");
        let msg = String::from(e.message());
        assert!(msg.contains(sig), "{msg}");
    };
    for w in &wrong {
        is_type_error(
            r.get(w.clone(), js("default"), js("a"), JsValue::UNDEFINED)
                .unwrap_err(),
            "Replica.get(kind: string",
        );
        is_type_error(
            r.list(
                js("entity"),
                w.clone(),
                JsValue::UNDEFINED,
                JsValue::UNDEFINED,
                10,
            )
            .unwrap_err(),
            "Replica.list(",
        );
        is_type_error(r.search(w.clone()).unwrap_err(), "Replica.search(");
        is_type_error(r.knn(w.clone()).unwrap_err(), "Replica.knn(");
        is_type_error(r.write_local(w.clone()).unwrap_err(), "Replica.writeLocal(");
        is_type_error(
            r.handle_frame(w.clone()).unwrap_err(),
            "Replica.handleFrame(",
        );
        is_type_error(
            r.import_bytes(w.clone()).unwrap_err(),
            "Replica.importBytes(",
        );
        is_type_error(
            r.sql(w.clone(), JsValue::UNDEFINED).unwrap_err(),
            "Replica.sql(",
        );
    }
    // Optional strings: absent is fine, another type is not.
    is_type_error(r.digest(obj.clone()).unwrap_err(), "Replica.digest(");
    assert!(r.digest(JsValue::NULL).is_ok());
    is_type_error(
        r.get(js("entity"), js("default"), js("a"), obj)
            .unwrap_err(),
        "model",
    );
    // An ArrayBuffer is taken for bytes as well as a Uint8Array.
    let buf = js_sys::Uint8Array::from(&b"not a database, but bytes"[..]).buffer();
    let e = r.import_bytes(buf.into()).unwrap_err();
    assert!(
        e.dyn_ref::<js_sys::TypeError>().is_none(),
        "bytes of the right type"
    );
    // Still reads and writes.
    r.write_local(js(
        r#"[{"op":"upsert","kind":"entity","data":{"id":"a","name":"after"}}]"#,
    ))
    .unwrap();
    assert_eq!(
        ev(
            r.get(js("entity"), js("default"), js("a"), JsValue::UNDEFINED)
                .unwrap()
        )["name"],
        "after"
    );
}
