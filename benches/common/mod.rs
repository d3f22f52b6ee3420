//! Helpers shared by the benchmark programs (included with `#[path]`; not a benchmark itself).
#![allow(dead_code, unreachable_pub)]

/// The CPU model and core count, from /proc/cpuinfo.
pub fn machine_info() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    format!("{model}, {cores} cores (/proc/cpuinfo)")
}

/// The 1/5/15-minute load averages: other work on the machine skews wall-clock timings.
pub fn load_average() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The raw-SQLite baselines' schema: the store's entities table and its FTS5 index (same
/// tokenizer), with no triggers and no change log.
pub const BASELINE_DDL: &str = "
CREATE TABLE entities(
  ns TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '', properties TEXT NOT NULL DEFAULT '{}',
  tags TEXT NOT NULL DEFAULT '[]', created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
  UNIQUE(ns, id));
CREATE INDEX entities_kind ON entities(ns, kind);
CREATE VIRTUAL TABLE entities_fts USING fts5(
  name, description, tags, content='entities', content_rowid='rowid',
  tokenize='unicode61 remove_diacritics 2');
";

/// Run `node wasm/bench/SCRIPT ARGS...` and parse its last line of output as JSON (None, with
/// the script's stderr printed, when it failed).
pub fn node_script(script: &str, args: &[&str]) -> Option<serde_json::Value> {
    let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wasm");
    let out = std::process::Command::new("node")
        .arg(wasm.join("bench").join(script))
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    if v.is_none() || !out.status.success() {
        eprintln!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    v
}
