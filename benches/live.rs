//! Live queries under load (issue 29), in headless Chromium against the node binary, one run
//! (`wasm/bench/live.mjs`): 100 live queries of mixed kinds open while a writer commits 1,000
//! changes/s; goals: p99 from a write to the callback of a live query holding it <= 50 ms, a
//! catch-up applied with the 100 open at >= 0.8x the rate with none open, and a local write to
//! its live query's callback p50 <= 5 ms. Needs `npm ci` in wasm/. Run: `cargo bench --bench
//! live` (HIVESYNC_LIVE_SECS, default 10; HIVESYNC_LIVE_CATCHUP changes, default 20,000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[path = "common/mod.rs"]
mod common;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("wasm");
    println!(
        "# live query benchmark on {}, load {}",
        common::machine_info(),
        common::load_average()
    );
    if !wasm.join("node_modules/playwright-core").is_dir() {
        println!("skipped: run `npm ci` in wasm/ first");
        return;
    }
    let secs = std::env::var("HIVESYNC_LIVE_SECS").unwrap_or_else(|_| "10".into());
    let catchup = std::env::var("HIVESYNC_LIVE_CATCHUP").unwrap_or_else(|_| "20000".into());
    let Some(v) = common::node_script(
        "live.mjs",
        &[env!("CARGO_BIN_EXE_hivesync"), &secs, &catchup],
    ) else {
        return;
    };
    let f = |p: &str| v.pointer(p).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "{} live queries open, {} changes written at 1,000/s:",
        v["open"], v["changes"]
    );
    println!(
        "  write to callback: p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms over {} answers (goal p99 <= 50 ms: {})",
        f("/commitToCallback/p50"),
        f("/commitToCallback/p99"),
        f("/commitToCallback/max"),
        v["commitToCallback"]["n"],
        verdict(f("/commitToCallback/p99") <= 50.0)
    );
    println!(
        "  runs per query: {} to {} ({} in all)",
        v["runs"]["min"], v["runs"]["max"], v["runs"]["total"]
    );
    println!(
        "catch-up of {} changes: {:.0} ms with the 100 open, {:.0} ms with none: {:.2}x (goal >= 0.8x: {})",
        v["catchUp"]["changes"],
        f("/catchUp/withLiveMs"),
        f("/catchUp/withNoneMs"),
        f("/catchUp/ratio"),
        verdict(f("/catchUp/ratio") >= 0.8)
    );
    println!(
        "local write to its live get's callback: p50 {:.1} ms, p99 {:.1} ms over {} (goal p50 <= 5 ms: {})",
        f("/localWriteToCallback/p50"),
        f("/localWriteToCallback/p99"),
        v["localWriteToCallback"]["n"],
        verdict(f("/localWriteToCallback/p50") <= 5.0)
    );
    println!("load avg at end: {}", common::load_average());
}
