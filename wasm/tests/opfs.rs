//! OPFS persistence: only inside a dedicated Worker in a browser (run with
//! WASM_BINDGEN_USE_BROWSER=1).
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)]

use hivesync::model::{Change, Kind, Op};
use hivesync::protocol::{encode_server_bin, ServerMsg};
use hivesync_wasm::Replica;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

/// A string argument, as JavaScript passes it.
fn js(s: impl AsRef<str>) -> JsValue {
    JsValue::from_str(s.as_ref())
}

/// A bytes argument, as JavaScript passes it.
fn bin(b: impl AsRef<[u8]>) -> JsValue {
    js_sys::Uint8Array::from(b.as_ref()).into()
}

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
        let mut r = Replica::open_persistent(js(name.clone())).await.unwrap();
        assert_eq!(r.storage(), "opfs");
        let b = ServerMsg::Changes {
            sub: "s".into(),
            prev: 0,
            changes: vec![entity(1, "a"), entity(2, "b")],
        };
        r.handle_frame(bin(encode_server_bin(&b))).unwrap();
    }
    let r = Replica::open_persistent(js(name)).await.unwrap();
    assert_eq!(r.applied_seq().unwrap(), 2.0);
    assert!(r
        .search(js(r#"{"text":"persisted"}"#))
        .unwrap()
        .contains("\"b\""));
}

#[wasm_bindgen_test]
async fn an_idle_checkpoint_copies_the_wal_and_keeps_every_row() {
    let name = format!("c{}", js_sys_now());
    {
        let mut r = Replica::open_persistent(js(name.clone())).await.unwrap();
        let b = ServerMsg::Changes {
            sub: "s".into(),
            prev: 0,
            changes: (1..=50).map(|i| entity(i, &format!("e{i}"))).collect(),
        };
        r.handle_frame(bin(encode_server_bin(&b))).unwrap();
        assert!(r.checkpoint().unwrap() > 0, "the WAL held the batch");
        assert_eq!(r.checkpoint().unwrap(), 0, "nothing left to copy");
        let c = ServerMsg::Changes {
            sub: "s".into(),
            prev: 50,
            changes: vec![entity(51, "after")],
        };
        r.handle_frame(bin(encode_server_bin(&c))).unwrap();
    }
    let r = Replica::open_persistent(js(name)).await.unwrap();
    assert_eq!(r.applied_seq().unwrap(), 51.0);
    assert!(r.search(js(r#"{"text":"e7"}"#)).unwrap().contains("\"e7\""));
    assert!(r
        .get(js("entity"), js("default"), js("after"), JsValue::UNDEFINED)
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
    let mut r = Replica::open_persistent(js(format!("imp{}", js_sys_now())))
        .await
        .unwrap();
    r.import_bytes(bin(&bytes)).unwrap();
    assert!(r
        .search(js(r#"{"text":"imported"}"#))
        .unwrap()
        .contains("\"imp\""));
}

#[wasm_bindgen_test]
async fn replicas_of_different_names_persist_side_by_side() {
    // Each name has a pool of its own: both stay open, both persist.
    let (a, b) = (
        format!("a{}", js_sys_now()),
        format!("b {}/é", js_sys_now()),
    );
    {
        let mut ra = Replica::open_persistent(js(&a)).await.unwrap();
        let mut rb = Replica::open_persistent(js(&b)).await.unwrap();
        assert_eq!((ra.storage(), rb.storage()), ("opfs".into(), "opfs".into()));
        let one = ServerMsg::Changes {
            sub: "s".into(),
            prev: 0,
            changes: vec![entity(1, "in-a")],
        };
        ra.handle_frame(bin(encode_server_bin(&one))).unwrap();
        let two = ServerMsg::Changes {
            sub: "s".into(),
            prev: 0,
            changes: vec![entity(1, "in-b"), entity(2, "more-b")],
        };
        rb.handle_frame(bin(encode_server_bin(&two))).unwrap();
    }
    let ra = Replica::open_persistent(js(&a)).await.unwrap();
    let rb = Replica::open_persistent(js(&b)).await.unwrap();
    assert_eq!(
        (ra.applied_seq().unwrap(), rb.applied_seq().unwrap()),
        (1.0, 2.0)
    );
    let found = ra.search(js(r#"{"text":"persisted"}"#)).unwrap();
    assert!(found.contains("in-a") && !found.contains("in-b"), "{found}");
    // A name is 1 to 128 bytes.
    assert!(Replica::open_persistent(js("")).await.is_err());
    assert!(Replica::open_persistent(js("x".repeat(129))).await.is_err());
}

#[wasm_bindgen_test]
async fn a_replica_kept_in_the_shared_pool_by_an_older_release_moves_to_its_own() {
    // Before each name had a pool, every replica lived in `.hivesync`: make one there as that
    // release did, with a pending local write, and open it by name.
    use hivesync::rusqlite::{Connection, OpenFlags};
    let name = format!("old{}", js_sys_now());
    let cfg = sqlite_wasm_vfs::sahpool::OpfsSAHPoolCfgBuilder::new()
        .vfs_name("hivesync-opfs")
        .directory(".hivesync")
        .build();
    let pool = sqlite_wasm_vfs::sahpool::install::<sqlite_wasm_rs::WasmOsCallback>(&cfg, false)
        .await
        .unwrap();
    pool.resume().await.unwrap();
    {
        hivesync::schema::register_extensions();
        let c = Connection::open_with_flags_and_vfs(
            format!("{name}.db"),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            "hivesync-opfs",
        )
        .unwrap();
        c.pragma_update(None, "locking_mode", "EXCLUSIVE").unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        hivesync::schema::configure(&c).unwrap();
        hivesync::schema::migrate(&c, &Default::default()).unwrap();
        let op: hivesync::model::WriteOp = serde_json::from_str(
            r#"{"op":"upsert","kind":"entity","data":{"id":"kept","name":"written offline long ago"}}"#,
        )
        .unwrap();
        hivesync::outbox::write_local(&c, vec![op]).unwrap();
    }
    pool.pause().unwrap();

    let r = Replica::open_persistent(js(&name)).await.unwrap();
    assert!(r
        .get(js("entity"), js("default"), js("kept"), JsValue::UNDEFINED)
        .unwrap()
        .contains("long ago"));
    assert!(
        r.outbox_pending().unwrap().contains("\"kept\""),
        "the pending write moved too"
    );
    drop(r);
    // Gone from the shared pool; opened again, it is still there (now from its own pool).
    use rsqlite_vfs::VfsFilesManager;
    pool.resume().await.unwrap();
    assert!(!pool.names().unwrap().iter().any(|f| f.contains(&name)));
    pool.pause().unwrap();
    let r = Replica::open_persistent(js(&name)).await.unwrap();
    assert!(r.outbox_pending().unwrap().contains("\"kept\""));
}
