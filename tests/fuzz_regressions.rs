//! The fuzz targets' checks without the fuzzer: every input kept under
//! `tests/fuzz/regressions/<target>/` (crashes the fuzzer found, fixed since) and under
//! `tests/fuzz/corpus/<target>/` (the seed corpus) goes through the same check as in
//! `tests/fuzz/fuzz_targets/<target>.rs`, so `cargo test` keeps them fixed. The checks live in
//! `tests/fuzz/src/lib.rs`, included here as a module.
//!
//! To rewrite the seed corpus after a protocol change:
//! `cargo test --test fuzz_regressions -- --ignored write_seed_corpus`.
#![allow(clippy::unwrap_used)]

#[allow(dead_code, unreachable_pub)]
#[path = "fuzz/src/lib.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

/// Run every file under `tests/fuzz/<kind>/<target>/` through its target's check; returns how
/// many files were checked, and fails listing every file that broke a check.
fn run_all(kind: &str) -> usize {
    let mut failures = Vec::new();
    let mut n = 0;
    for target in checks::TARGETS {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.into_iter().filter(|f| f.is_file()) {
            let data = std::fs::read(&f).unwrap();
            n += 1;
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| checks::check(target, &data))) {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {why}", f.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} inputs failed their fuzz check:\n{}",
        failures.len(),
        failures.join("\n")
    );
    n
}

#[test]
fn regression_inputs_pass_the_fuzz_checks() {
    let n = run_all("regressions");
    println!("{n} regression inputs checked");
}

#[test]
fn seed_corpus_passes_the_fuzz_checks() {
    let n = run_all("corpus");
    assert!(n > 0, "the seed corpus is missing");
    println!("{n} seed inputs checked");
}

/// The seeds on disk are the ones the encoders make today (so a protocol change that makes
/// them stale is noticed).
#[test]
fn seed_corpus_is_current() {
    for (target, name, bytes) in checks::seeds() {
        let p = fuzz_dir().join("corpus").join(target).join(&name);
        let on_disk = std::fs::read(&p).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is stale or missing: cargo test --test fuzz_regressions -- --ignored write_seed_corpus",
            p.display()
        );
    }
}

#[test]
#[ignore = "writes the seed corpus; run by hand after a protocol change"]
fn write_seed_corpus() {
    for (target, name, bytes) in checks::seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Found by the `decode_json` target (regressions/decode_json/float-roundtrip-vector-data.json):
/// serde_json's default float parser is not correctly rounded, so a float parsed from JSON,
/// written back with the shortest round-trip digits and parsed again could come back one ulp
/// off. Row images are parsed and re-serialized at every hop (write, change log, replica
/// apply), so a property like `6.888888888888889e96` was stored differently by the node and by
/// its replicas and their state digests disagreed. Fixed by serde_json's `float_roundtrip`
/// feature (Cargo.toml).
#[test]
fn floats_survive_write_log_and_replica_unchanged() {
    use hivesync::model::WriteOp;
    use hivesync::query::{self, ChangeFilter};
    use hivesync::{apply, ops, schema};

    let big = format!("6{}", "8".repeat(96));
    let line = format!(
        r#"{{"op":"upsert","kind":"entity","ns":"a","data":{{"id":"e1","name":"x","properties":{{"v":{big},"w":6.888888888888889e96}}}}}}"#
    );
    let node = schema::open_in_memory(&Default::default()).unwrap();
    ops::execute(&node, &WriteOp::from_json(&line).unwrap(), 1).unwrap();
    let props = |c: &hivesync::rusqlite::Connection| -> String {
        c.query_row("SELECT properties FROM entities", [], |r| r.get(0))
            .unwrap()
    };
    // The value sent is the value stored (the big integer is the nearest double to it).
    assert_eq!(
        props(&node),
        r#"{"v":6.888888888888889e+96,"w":6.888888888888889e+96}"#
    );
    let log = query::changes_since(&node, 0, &ChangeFilter::default(), 10).unwrap();
    let replica = schema::open_in_memory(&Default::default()).unwrap();
    apply::apply_changes(&replica, 0, &log).unwrap();
    assert_eq!(props(&replica), props(&node));
    assert_eq!(
        query::digest(&replica, None).unwrap(),
        query::digest(&node, None).unwrap()
    );
    // And the wire: a change decoded from JSON and encoded again is byte-identical.
    let path = fuzz_dir().join("regressions/decode_json/float-roundtrip-vector-data.json");
    checks::check("decode_json", &std::fs::read(path).unwrap());
}

/// Found by the `decode_bin` check (regressions/decode_bin/write-delete-null-data.bin): a
/// binary `write` whose op carries `data` as the JSON text `null` decoded to `Some(Null)`,
/// while the same op in JSON (`"data":null`) decodes to no data, so one message meant two
/// things: the delete below was refused over binary ("a delete carries `id` ..., not `data`")
/// and applied over JSON. Both encodings now decode it to no data.
#[test]
fn binary_write_with_null_data_decodes_as_json_does() {
    use hivesync::model::{Kind, WriteOp};
    use hivesync::protocol::{decode_client_bin, decode_client_json, ClientMsg};

    let path = fuzz_dir().join("regressions/decode_bin/write-delete-null-data.bin");
    let bin = decode_client_bin(&std::fs::read(path).unwrap()).unwrap();
    let json = decode_client_json(
        r#"{"type":"write","req":"w","ops":[{"op":"delete","kind":"entity","ns":"a","id":"x","data":null}]}"#,
    )
    .unwrap();
    let want = ClientMsg::Write {
        req: "w".into(),
        ops: vec![WriteOp::delete(Kind::Entity, "a", "x")],
        client: None,
        n: None,
        entries: None,
    };
    assert_eq!(bin, want);
    assert_eq!(json, want);
}
