//! OPFS persistence: only inside a dedicated Worker in a browser (run with
//! WASM_BINDGEN_USE_BROWSER=1).
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)]

use hivesync::model::{Change, Kind, Op};
use hivesync::protocol::{encode_server_bin, ServerMsg};
use hivesync_wasm::Replica;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

fn entity(seq: i64, id: &str) -> Change {
    Change {
        seq,
        tx: seq,
        ts: 1,
        ns: "default".into(),
        kind: Kind::Entity,
        op: Op::Upsert,
        id: id.into(),
        model: None,
        data: Some(format!(
            r#"{{"id":"{id}","kind":"k","name":"persisted {id}","description":"","properties":{{}},"tags":[],"created_at":1,"updated_at":1}}"#
        )),
        embedding: None,
    }
}

#[wasm_bindgen_test]
async fn a_persistent_replica_survives_reopening() {
    let name = format!("t{}", js_sys_now());
    {
        let mut r = Replica::open_persistent(name.clone()).await.unwrap();
        assert_eq!(r.storage(), "opfs");
        let b = ServerMsg::Changes {
            sub: "s".into(),
            prev: 0,
            changes: vec![entity(1, "a"), entity(2, "b")],
        };
        r.handle_frame(&encode_server_bin(&b)).unwrap();
    }
    let r = Replica::open_persistent(name).await.unwrap();
    assert_eq!(r.applied_seq().unwrap(), 2.0);
    assert!(r
        .search(r#"{"text":"persisted"}"#)
        .unwrap()
        .contains("\"b\""));
}

#[wasm_bindgen_test]
async fn an_idle_checkpoint_copies_the_wal_and_keeps_every_row() {
    let name = format!("c{}", js_sys_now());
    {
        let mut r = Replica::open_persistent(name.clone()).await.unwrap();
        let b = ServerMsg::Changes {
            sub: "s".into(),
            prev: 0,
            changes: (1..=50).map(|i| entity(i, &format!("e{i}"))).collect(),
        };
        r.handle_frame(&encode_server_bin(&b)).unwrap();
        assert!(r.checkpoint().unwrap() > 0, "the WAL held the batch");
        assert_eq!(r.checkpoint().unwrap(), 0, "nothing left to copy");
        let c = ServerMsg::Changes {
            sub: "s".into(),
            prev: 50,
            changes: vec![entity(51, "after")],
        };
        r.handle_frame(&encode_server_bin(&c)).unwrap();
    }
    let r = Replica::open_persistent(name).await.unwrap();
    assert_eq!(r.applied_seq().unwrap(), 51.0);
    assert!(r.search(r#"{"text":"e7"}"#).unwrap().contains("\"e7\""));
    assert!(r
        .get("entity", "default", "after", None)
        .unwrap()
        .contains("persisted after"));
    // A replica in memory has no WAL.
    assert_eq!(Replica::open_memory().unwrap().checkpoint().unwrap(), 0);
}

fn js_sys_now() -> u64 {
    // A name per run, so a previous run's file does not count.
    (hivesync::ops::now_us(&hivesync::rusqlite::Connection::open_in_memory().unwrap()).unwrap())
        as u64
}

#[wasm_bindgen_test]
async fn a_persistent_replica_imports_a_file_with_another_page_size() {
    // The native node writes 4096-byte pages, the wasm build 8192-byte ones.
    let mut src = hivesync::rusqlite::Connection::open_in_memory().unwrap();
    src.execute_batch("PRAGMA page_size = 4096").unwrap();
    hivesync::schema::register_extensions();
    hivesync::schema::configure(&src).unwrap();
    hivesync::schema::migrate(&src, &Default::default()).unwrap();
    let op = hivesync::model::WriteOp::upsert(
        hivesync::model::Kind::Entity,
        "default",
        serde_json::json!({"id": "imp", "name": "imported row"}),
    );
    hivesync::ops::execute(&src, &op, 1).unwrap();
    hivesync::schema::drain_fts_queue(&src).unwrap();
    let bytes = src.serialize(hivesync::rusqlite::MAIN_DB).unwrap().to_vec();
    let mut r = Replica::open_persistent(format!("imp{}", js_sys_now()))
        .await
        .unwrap();
    r.import_bytes(&bytes).unwrap();
    assert!(r
        .search(r#"{"text":"imported"}"#)
        .unwrap()
        .contains("\"imp\""));
}
