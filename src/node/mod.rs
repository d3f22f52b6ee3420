//! The sync node (native): a tokio server on one port with the WebSocket feed at `/v1/sync`,
//! `/healthz`, `/metrics` and the demo page at `/`.
//!
//! - [`config`]: the TOML config (tokens, anonymous access, retention).
//! - [`auth`]: token checks, reloaded when the config file changes.
//! - [`hub`]: the change-log tailer and the shared in-memory window of encoded changes.
//! - `conn`: one connection: the protocol session's shell, subscriptions and writes.
//! - [`metrics`]: Prometheus counters.

mod accept;
pub mod auth;
mod budget;
pub mod config;
mod conn;
pub mod dial;
mod follow;
mod gate;
pub mod hub;
pub mod metrics;
mod out;
mod probe;
pub mod publish;
mod role;
mod sub;
pub mod upstream;
pub mod vouch;
pub mod web;
mod writer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::watch as tokio_watch;

use crate::store::Store;
use auth::Auth;
use config::Config;
use hub::{Hub, WindowLimits};
use metrics::Metrics;

/// How a node runs (`hivesync serve` builds these from its command line).
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Follower mode: never write; stream what appears in a file something else replicates.
    pub read_only: bool,
    /// Edge mode: replicate from this node (ws://host:port/v1/sync) and serve the local copy;
    /// writes received here are forwarded to it.
    pub upstream: Option<String>,
    /// The token this edge presents to its upstream.
    pub upstream_token: Option<String>,
    /// For an edge whose `upstream` is a NATS server (`nats://host:port`): the primary's feed
    /// (ws://host:port/v1/sync), which serves its snapshots and catch-ups and takes its writes.
    pub primary: Option<String>,
    /// Milliseconds between checks of the log for commits made by other processes, beside
    /// file notifications (default 1000, or 100 in read-only mode where notifications may
    /// not arrive).
    pub poll_ms: Option<u64>,
    /// A directory laid out as `wasm/web` to serve instead of the built-in replica.
    pub web: Option<PathBuf>,
    /// Most open sockets (HTTP and WebSocket); default: the open-files limit less what the
    /// node keeps for its own files.
    pub max_connections: Option<usize>,
    /// Publish the change feed to this NATS server's JetStream (`nats://host:port`); overrides
    /// `url` in the config's `[publish]`.
    pub publish: Option<String>,
    /// Web origins whose pages may use the node without a token (`--allow-origin`), besides
    /// its own and the config's `allowed_origins`.
    pub allow_origins: Vec<String>,
}

/// Everything a connection needs.
pub(crate) struct NodeState {
    pub(crate) store: Arc<Store>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) auth: Auth,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) name: String,
    pub(crate) shutdown: tokio_watch::Receiver<bool>,
    pub(crate) next_conn: AtomicU64,
    pub(crate) stall_timeout: Duration,
    /// Primary, follower or edge ([`role`]).
    pub(crate) role: role::Role,
    /// Bytes of write frames queued or committing, node-wide ([`budget::NODE_WRITE_BYTES`]).
    pub(crate) write_budget: Arc<tokio::sync::Semaphore>,
    /// The same for frames up to [`budget::SMALL_WRITE_BYTES`] ([`budget::NODE_SMALL_WRITE_BYTES`]).
    pub(crate) small_write_budget: Arc<tokio::sync::Semaphore>,
    /// Frames larger than [`budget::SMALL_WRITE_BYTES`] being decoded at once (half the cores,
    /// at least 2): what their ops take decoded is counted only once they are.
    pub(crate) large_decodes: Arc<tokio::sync::Semaphore>,
    /// Readers snapshots and catch-ups may hold at once: all but one of the pool's, so
    /// hellos, health checks and the tailer always find one.
    pub(crate) bulk_reads: Arc<tokio::sync::Semaphore>,
    /// The socket limit.
    pub(crate) sockets: Arc<accept::Sockets>,
    /// The key this node signs its NATS stream with, base64 (`welcome` carries it), when it
    /// publishes.
    pub(crate) publish_key: Option<String>,
    /// `--allow-origin`: web origins whose pages may use the node without a token.
    pub(crate) allow_origins: Vec<String>,
    /// Bytes of frames waiting for sockets past each connection's first few ([`budget::NODE_OUT_BYTES`]).
    pub(crate) bulk_out: Arc<tokio::sync::Semaphore>,
}

/// A running node (for tests and embedding).
pub struct NodeHandle {
    /// The bound address.
    pub addr: SocketAddr,
    shutdown: tokio_watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
    _watchers: Vec<notify::RecommendedWatcher>,
}

/// The WebSocket settings of every native hivesync client (the relay link, `watch`, the
/// tests): frames up to [`crate::protocol::MAX_SERVER_FRAME_BYTES`], the most a node sends.
pub fn client_ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    use crate::protocol::MAX_SERVER_FRAME_BYTES;
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_SERVER_FRAME_BYTES))
        .max_frame_size(Some(MAX_SERVER_FRAME_BYTES))
}

/// Longest wait, on stop, for WebSocket connections to send their close frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

impl NodeHandle {
    /// Stop the node and wait for it to finish.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.join.await;
        // The server's graceful shutdown does not wait for upgraded (WebSocket) connections:
        // wait for them to send their close frames (1001), or a process exiting right after
        // would reset them instead.
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        let open = || self.metrics.connections.load(Relaxed);
        while open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Start a node on `listener` over `store`.
pub async fn start(
    store: Arc<Store>,
    listener: tokio::net::TcpListener,
    config: Config,
    config_path: Option<PathBuf>,
    args: &NodeOptions,
) -> crate::Result<NodeHandle> {
    let addr = listener.local_addr()?;
    let auth = Auth::new(config.clone(), addr);
    let nofile = accept::nofile_limit();
    let budget = accept::socket_budget(nofile);
    let sockets = Arc::new(accept::Sockets::new(
        args.max_connections.map_or(budget, |m| m.clamp(1, budget)),
    ));
    tracing::debug!(
        nofile,
        max_connections = sockets.max,
        "socket limit (raise the open-files limit for more)"
    );
    if !auth.anonymous_allowed() && config.tokens.is_empty() {
        tracing::warn!("no tokens configured and anonymous access is off for {addr}: every client will be refused; add [[token]] entries to the config");
    }
    let spec = role::RoleSpec::parse(args, &config)?;
    let signing = match &spec {
        role::RoleSpec::Primary { publish: Some(_) } => Some(signing_key(&store).await?),
        _ => None,
    };
    let (shutdown_tx, shutdown_rx) = tokio_watch::channel(false);
    let s = store.clone();
    let head = tokio::task::spawn_blocking(move || s.head())
        .await
        .map_err(|e| crate::Error::invalid(format!("reading the log head failed: {e}")))??;
    let hub = Hub::new(head, WindowLimits::default());
    let read_only = matches!(spec, role::RoleSpec::Follower);
    let poll = Duration::from_millis(args.poll_ms.unwrap_or(if read_only { 100 } else { 1000 }));
    let metrics = Arc::new(Metrics::default());
    let (role, publish) = match spec {
        role::RoleSpec::Primary { publish } => {
            let (tx, rx) = tokio::sync::mpsc::channel(writer::WRITE_QUEUE);
            writer::spawn_writer(store.clone(), hub.clone(), metrics.clone(), rx)?;
            (role::Role::Primary { writes: tx }, publish)
        }
        role::RoleSpec::Follower => (role::Role::Follower, None),
        role::RoleSpec::Edge { link, nats, token } => (
            role::Role::Edge(upstream::start(
                link,
                nats,
                token,
                store.clone(),
                hub.clone(),
                shutdown_rx.clone(),
            )?),
            None,
        ),
    };
    let edge = role.upstream().is_some();
    let node = Arc::new(NodeState {
        store: store.clone(),
        hub: hub.clone(),
        auth: auth.clone(),
        metrics: metrics.clone(),
        name: config
            .name
            .clone()
            .unwrap_or_else(|| format!("hivesync@{addr}")),
        shutdown: shutdown_rx.clone(),
        next_conn: AtomicU64::new(1),
        stall_timeout: Duration::from_secs(config.stall_timeout_secs.unwrap_or(30)),
        role,
        write_budget: Arc::new(tokio::sync::Semaphore::new(budget::NODE_WRITE_BYTES)),
        small_write_budget: Arc::new(tokio::sync::Semaphore::new(budget::NODE_SMALL_WRITE_BYTES)),
        large_decodes: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, |n| (n.get() / 2).max(2)),
        )),
        bulk_reads: Arc::new(tokio::sync::Semaphore::new(
            store.pool().readers().saturating_sub(1).max(1),
        )),
        sockets: sockets.clone(),
        publish_key: signing.as_ref().map(|k| k.public()),
        allow_origins: args.allow_origins.clone(),
        bulk_out: Arc::new(tokio::sync::Semaphore::new(budget::NODE_OUT_BYTES)),
    });
    if let (Some(publish), Some(key)) = (publish, signing) {
        tokio::spawn(publish::run(
            store.clone(),
            hub.clone(),
            metrics.clone(),
            publish,
            key,
            shutdown_rx.clone(),
        ));
    }
    let watchers = spawn_background(&node, config_path, !edge, poll);
    let triage = triage_routes(node.clone());
    let app = routes(node, web::WebFiles::choose(args.web.as_deref())?);
    let join = tokio::spawn(accept::serve(
        listener,
        app,
        triage,
        sockets,
        shutdown_rx.clone(),
    ));
    Ok(NodeHandle {
        addr,
        shutdown: shutdown_tx,
        join,
        metrics,
        _watchers: watchers,
    })
}

/// Check that `opts` and `config` describe one role (primary, follower or edge) without
/// contradiction, before anything starts: what [`start`] checks first.
pub fn check_options(opts: &NodeOptions, config: &Config) -> crate::Result<()> {
    role::RoleSpec::parse(opts, config).map(|_| ())
}

/// The key the node signs its NATS stream with (made and kept in the database on first use).
async fn signing_key(store: &Arc<Store>) -> crate::Result<Arc<vouch::SigningKey>> {
    let s = store.clone();
    let key = tokio::task::spawn_blocking(move || vouch::SigningKey::load_or_create(&s))
        .await
        .map_err(|e| {
            crate::Error::invalid(format!("loading the NATS signing key failed: {e}"))
        })??;
    Ok(Arc::new(key))
}

/// The routes of the triage sockets: at the socket limit, /healthz and /metrics still answer
/// on a few sockets of their own.
fn triage_routes(node: Arc<NodeState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(accept::at_limit)
        .with_state(node)
}

/// The node's background work: file watchers (config, database), the tailer, retention.
fn spawn_background(
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

/// The HTTP routes: the feed, health, metrics, and the browser replica's files.
fn routes(node: Arc<NodeState>, web_files: web::WebFiles) -> Router {
    if let web::WebFiles::Dir(d) = &web_files {
        tracing::info!("serving the browser replica from {}", d.display());
    }
    web_files.warm();
    let web_routes = Router::new()
        .route("/", get(web::index))
        .route("/status", get(web::status))
        .route("/{name}", get(web::asset))
        .route("/pkg/{name}", get(web::pkg))
        .with_state(web_files);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/sync", get(accept::ws_upgrade))
        .with_state(node)
        .merge(web_routes)
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

async fn healthz(State(node): State<Arc<NodeState>>) -> Response {
    let s = node.store.clone();
    match tokio::task::spawn_blocking(move || s.head()).await {
        Ok(Ok(head)) => ([(header::CONTENT_TYPE, "application/json")], {
            // A relay that cannot reach its upstream still serves its copy, but stale: degraded.
            let down = node
                .role
                .upstream()
                .and_then(|u| u.state.down.lock().clone());
            // A message in the stream the primary did not sign: someone else can publish there.
            let forged = node.role.upstream().is_some_and(|u| {
                u.state
                    .nats_rejected_at
                    .lock()
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
            });
            let upstream = match node.role.upstream() {
                Some(u) => format!(
                    ",\"upstream\":{{\"connected\":{},\"live\":{},\"nats\":{},\"nats_rejected\":{},\"nats_stalls\":{},\"primary_head\":{},\"applied\":{}{}}}",
                    u.state.connected.load(Relaxed),
                    u.state.live.load(Relaxed),
                    u.state.nats.load(Relaxed),
                    u.state.nats_rejected.load(Relaxed),
                    u.state.nats_stalls.load(Relaxed),
                    u.state.primary_head.load(Relaxed),
                    u.state.applied.load(Relaxed),
                    down.as_ref().map_or(String::new(), |d| format!(
                        ",\"error\":{}",
                        serde_json::Value::String(d.clone())
                    ))
                ),
                None => String::new(),
            };
            let publish = node.publish_key.as_ref().map_or(String::new(), |_| {
                let m = &node.metrics;
                format!(
                    ",\"publish\":{{\"connected\":{},\"published\":{},\"behind\":{},\"errors\":{},\"foreign\":{},\"duplicates\":{}}}",
                    m.nats_connected.load(Relaxed) == 1,
                    m.nats_published.load(Relaxed),
                    head - m.nats_published.load(Relaxed),
                    m.nats_errors.load(Relaxed),
                    m.nats_foreign.load(Relaxed),
                    m.nats_duplicates.load(Relaxed),
                )
            });
            // The publisher failed within the last minute (NATS down, the stream refusing).
            let publisher_down = node
                .metrics
                .nats_error_at
                .lock()
                .is_some_and(|t| t.elapsed() < Duration::from_secs(60));
            let status = if down.is_some() || forged || publisher_down {
                "degraded"
            } else {
                "ok"
            };
            format!(
                "{{\"status\":\"{status}\",\"head\":{head},\"read_only\":{}{upstream}{publish}}}\n",
                node.role.read_only()
            )
        })
            .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"status\":\"unavailable\"}\n",
        )
            .into_response(),
    }
}

async fn metrics_text(State(node): State<Arc<NodeState>>) -> Response {
    use metrics::{COUNTER, GAUGE};
    let (reloads, failures) = node.auth.reload_counts();
    let mut extra = vec![
        (
            "hivesync_config_reloads_total",
            COUNTER,
            "Config file versions put in force.",
            reloads as i64,
        ),
        (
            "hivesync_config_reload_failures_total",
            COUNTER,
            "Config file versions refused (the previous config stayed).",
            failures as i64,
        ),
        (
            "hivesync_max_connections",
            GAUGE,
            "The socket limit.",
            node.sockets.max as i64,
        ),
    ];
    if let Some(u) = node.role.upstream() {
        let s = &u.state;
        extra.extend([
            (
                "hivesync_upstream_frames_total",
                COUNTER,
                "Change frames applied from the upstream.",
                s.frames.load(Relaxed) as i64,
            ),
            (
                "hivesync_upstream_applies_total",
                COUNTER,
                "Transactions they were applied in (frames that queued up share one).",
                s.applies.load(Relaxed) as i64,
            ),
            (
                "hivesync_upstream_nats_changes_total",
                COUNTER,
                "Changes applied from the NATS stream (an edge fed from NATS).",
                s.nats_changes.load(Relaxed) as i64,
            ),
            (
                "hivesync_upstream_nats_rejected_total",
                COUNTER,
                "Messages of the NATS stream dropped because the primary did not sign them.",
                s.nats_rejected.load(Relaxed) as i64,
            ),
            (
                "hivesync_upstream_nats_stalls_total",
                COUNTER,
                "Times the edge left the NATS stream because it stayed behind the primary's head.",
                s.nats_stalls.load(Relaxed) as i64,
            ),
            (
                "hivesync_upstream_primary_head",
                GAUGE,
                "The primary's head as the edge last saw it (edges fed from NATS).",
                s.primary_head.load(Relaxed),
            ),
            (
                "hivesync_upstream_nats",
                GAUGE,
                "1 while the live changes come from the NATS stream.",
                s.nats.load(Relaxed) as i64,
            ),
        ]);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(node.hub.head(), &extra),
    )
        .into_response()
}
