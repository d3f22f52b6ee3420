//! The node's background work: file watchers (config, database), the tailer, retention.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch as tokio_watch;

use crate::node::auth::Auth;
use crate::node::hub::{self, Hub};
use crate::node::NodeState;
use crate::store::Store;

/// The node's background work: file watchers (config, database), the tailer, retention.
pub(crate) fn spawn_background(
    node: &Arc<NodeState>,
    config_path: Option<PathBuf>,
    watch_file: bool,
    poll: Duration,
) -> Vec<notify::RecommendedWatcher> {
    let mut watchers = Vec::new();
    if let Some(p) = config_path {
        watchers.extend(node.auth.watch(p));
    }
    // An edge's database is written only by its upstream link, which publishes what it applies
    // itself: file notifications there would only wake the tailer for nothing, once per commit.
    if watch_file {
        if let Some(db) = node.store.pool().path() {
            watchers.extend(watch_db(db, node.hub.clone()));
        }
    }
    // The identity provider's keys, fetched and refreshed (a loop that sleeps without `[jwt]`,
    // since a reload may add the section).
    tokio::spawn(node.auth.clone().keep_keys(node.shutdown.clone()));
    tokio::spawn(hub::run_tailer(
        node.store.clone(),
        node.hub.clone(),
        poll,
        node.shutdown.clone(),
    ));
    if !node.role.read_only() {
        tokio::spawn(run_retention(
            node.store.clone(),
            node.auth.clone(),
            node.shutdown.clone(),
        ));
    }
    watchers
}

/// Notice commits by other processes: a notification on the database or its WAL wakes the
/// tailer (the tailer's poll catches what notifications miss).
fn watch_db(db: &Path, hub: Arc<Hub>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let name = db.file_name()?.to_string_lossy().to_string();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        let ours = ev.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&name))
        });
        if (ev.kind.is_modify() || ev.kind.is_create()) && ours {
            hub.wake();
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "no file notifications; relying on polling"))
    .ok()?;
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    w.watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, "no file notifications; relying on polling"))
        .ok()?;
    Some(w)
}

async fn run_retention(store: Arc<Store>, auth: Auth, mut shutdown: tokio_watch::Receiver<bool>) {
    loop {
        let r = auth.config().retention.clone();
        let every = Duration::from_secs(r.interval_secs.unwrap_or(60).max(1));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if r.max_changes.is_none() && r.max_age_secs.is_none() {
            continue;
        }
        let s = store.clone();
        let age = r.max_age_secs.map(|a| a as i64 * 1_000_000);
        match tokio::task::spawn_blocking(move || s.trim_changes(r.max_changes, age)).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "change log trimmed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "trimming the change log failed"),
            _ => {}
        }
    }
}
