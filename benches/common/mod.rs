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
