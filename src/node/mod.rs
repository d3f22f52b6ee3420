//! The sync node (native): a tokio server on one port with the WebSocket feed at `/v1/sync`,
//! `/healthz`, `/metrics` and the demo page at `/`.
//!
//! Laid out by what each part is (this file: the options, the state every connection shares,
//! and start-up):
//! - `serve/`: the serving path: sockets accepted and gated before `hello`, one connection
//!   (`conn`: the protocol session's shell), its subscriptions (`sub`), the fan-out `hub`,
//!   the byte budgets, the node's role and where writes go (`role`), the writer thread, and
//!   the background work (tailer, file watchers, retention).
//! - `link/`: the links to other nodes and brokers: an edge's `upstream` link and its NATS
//!   feed (`follow`; the head probe is the session's), the NATS [`publish`]er and its signatures (`vouch`),
//!   and the native clients' [`dial`]er.
//! - `operate/`: the operator's surface: the [`config`] file, `auth`, `metrics`, the
//!   `web` files and the HTTP routes (`/healthz`, `/metrics`).

mod link;
mod operate;
mod serve;

pub use link::bootstrap::bootstrap_from_image;
pub use link::{dial, publish};
pub(crate) use link::{follow, upstream, vouch};
pub(crate) use operate::{auth, http, metrics, web};
pub use operate::{config, jwt};
pub(crate) use serve::hub;
pub(crate) use serve::{accept, background, budget, conn, gate, out, role, sub, writer};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

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
    /// The file that token was read from: read again when it changes (a rotation tool renewing
    /// a JWT), and the fresh token sent on the open connection.
    pub upstream_token_file: Option<PathBuf>,
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
    /// Database images for new replicas (`GET /v1/image`).
    pub(crate) images: serve::image::Images,
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
    let auth = Auth::new(config.clone(), addr)?;
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
    let (role, publish) = spec.start(&store, &hub, &metrics, &shutdown_rx)?;
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
        images: Default::default(),
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
    let watchers = background::spawn_background(&node, config_path, !edge, poll);
    let triage = http::triage_routes(node.clone());
    let app = http::routes(node, web::WebFiles::choose(args.web.as_deref())?);
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
