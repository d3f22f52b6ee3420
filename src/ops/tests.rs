use super::validate::{entity_row, entity_row_text};
use super::*;
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn db() -> Connection {
    schema::open_in_memory(&Default::default()).unwrap()
}

/// The write path reads entity upserts without serde's visitor; it must accept, refuse
/// (with serde's message) and produce exactly what the serde path does.
#[test]
fn the_fast_entity_reader_agrees_with_serde() {
    let c = db();
    let cases = [
        json!({"id": "a", "name": "n", "kind": "k", "description": "d", "properties": {"x": [1, 2.5, null, "é\n"], "y": {"z": true}}, "tags": ["t1", "t2"], "created_at": 5, "updated_at": 6}),
        json!({"id": "a", "name": "n"}),
        json!({"id": null, "kind": null, "name": "n", "created_at": null, "updated_at": null}),
        json!({"id": "a"}),
        json!({"id": "a", "name": "n", "colour": 1}),
        json!({"id": "a", "name": 3}),
        json!({"id": "a", "name": "n", "tags": ["t", 1]}),
        json!({"id": "a", "name": "n", "tags": null}),
        json!({"id": "a", "name": "n", "properties": null}),
        json!({"id": "a", "name": "n", "properties": [1]}),
        json!({"id": "a", "name": "n", "description": null}),
        json!({"id": "a", "name": "n", "created_at": 1.5}),
        json!({"id": "a", "name": "n", "updated_at": u64::MAX}),
        json!({"id": "a", "name": " "}),
        json!({"id": "", "name": "n"}),
        json!({"id": 7, "name": "n"}),
        json!([1]),
    ];
    for data in cases {
        let fast = entity_row_text(&c, &data, 9);
        let slow = entity_row(&c, &data, 9).and_then(|e| {
            let text = json_obj("entity properties", &e.properties)?;
            Ok((e, text))
        });
        match (fast, slow) {
            (Ok((f, ft)), Ok((mut s, st))) => {
                assert!(f.properties.is_empty(), "{data}");
                s.properties = Map::new();
                if data["id"].is_null() {
                    // Generated: a fresh id each time.
                    assert_eq!(f.id.len(), 36);
                    s.id = f.id.clone();
                }
                assert_eq!(f, s, "{data}");
                assert_eq!(ft, st, "{data}");
            }
            (Err(f), Err(s)) => assert_eq!(f.to_string(), s.to_string(), "{data}"),
            (f, s) => panic!("{data}: fast {f:?}, serde {s:?}"),
        }
    }
}

#[test]
fn generated_ids_are_uuid_v4() {
    let c = db();
    let id = new_id(&c).unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert_ne!(id, new_id(&c).unwrap());
}

#[test]
fn bad_ops_are_refused_with_reasons() {
    let c = db();
    let now = 1;
    let cases = [
        (
            WriteOp::upsert(Kind::Entity, "default", json!({"name": ""})),
            "empty",
        ),
        (
            WriteOp::upsert(Kind::Entity, "default", json!({"name": "a", "colour": 1})),
            "unknown field",
        ),
        (
            WriteOp::upsert(Kind::Entity, "", json!({"name": "a"})),
            "namespace",
        ),
        (
            WriteOp::upsert(Kind::Entity, "default", json!([1])),
            "JSON object",
        ),
        (
            WriteOp::upsert(
                Kind::Edge,
                "default",
                json!({"source": "a", "target": "b", "relation": "r"}),
            ),
            "write the entity first",
        ),
        (
            WriteOp::upsert(
                Kind::Vector,
                "default",
                json!({"subject": "a", "model": "m", "embedding": [1.0]}),
            ),
            "write it first",
        ),
        (WriteOp::delete(Kind::Event, "default", "x"), "append-only"),
        (WriteOp::delete(Kind::Vector, "default", "x"), "model"),
    ];
    for (op, want) in cases {
        let e = execute(&c, &op, now).unwrap_err().to_string();
        assert!(e.contains(want), "{op:?}: {e}");
    }
    let big = "x".repeat(MAX_TEXT + 1);
    let e = execute(
        &c,
        &WriteOp::upsert(Kind::Entity, "d", json!({"name": "a", "description": big})),
        now,
    )
    .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
}

/// A store with the entity `d/a`, for vectors of it.
fn db_with_subject() -> Connection {
    let c = db();
    execute(
        &c,
        &WriteOp::upsert(Kind::Entity, "d", json!({"id": "a", "name": "A"})),
        1,
    )
    .unwrap();
    c
}

/// An upsert of `d/a`'s vector under model `m`.
fn v(emb: Value) -> WriteOp {
    WriteOp::upsert(
        Kind::Vector,
        "d",
        json!({"subject": "a", "model": "m", "embedding": emb}),
    )
}

#[test]
fn embeddings_must_be_finite_and_match_the_model() {
    let c = db_with_subject();
    execute(&c, &v(json!([1.0, 0.0, 0.0])), 1).unwrap();
    let e = execute(&c, &v(json!([1.0, 0.0])), 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 dimensions"), "{e}");
    let e = execute(&c, &v(json!([1.0, 1e300, 0.0])), 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("f32"), "{e}");
    assert!(check_embedding(&[f32::NAN, 1.0])
        .unwrap_err()
        .to_string()
        .contains("NaN"));
    assert!(check_embedding(&[f32::INFINITY]).is_err());
    assert!(check_embedding(&[0.0, 0.0]).is_err());
}

#[test]
fn an_embedding_may_be_written_as_base64_of_packed_f32() {
    let c = db_with_subject();
    // 0.5, -1.0, 2.0 as little-endian f32.
    execute(&c, &v(json!("AAAAPwAAgL8AAABA")), 1).unwrap();
    let stored: Vec<u8> = c
        .query_row(
            &format!(
                "SELECT {} FROM vectors",
                crate::schema::embedding_sql("vectors.")
            ),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        crate::model::blob_to_embedding(&stored).unwrap(),
        [0.5, -1.0, 2.0]
    );
    // Checked as arrays are: dimensions, finiteness; and a broken string says what is wrong.
    for (emb, says) in [
        (json!("AAAAPwAAgL8="), "3 dimensions"),
        (json!("AACAfwAAgL8AAABA"), "only finite"),
        (json!("AAAAPwAAgL8AAAB"), "not base64"),
        (json!("AAAAPwAAgL8AAA=="), "whole number of f32"),
        (json!({"x": 1}), "array of numbers, or a base64 string"),
        (json!([1, "x", 3]), "invalid vector data"),
    ] {
        let e = execute(&c, &v(emb.clone()), 1).unwrap_err().to_string();
        assert!(e.contains(says), "{emb}: {e}");
    }
}
