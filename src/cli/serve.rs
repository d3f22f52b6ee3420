//! `hivesync serve`: the node's command line, its config file and signals, around
//! [`hivesync::node::start`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hivesync::node::config::Config;
use hivesync::node::NodeOptions;
use hivesync::store::{PoolConfig, Store, StoreOptions};

/// `hivesync serve` options.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on: HOST:PORT (127.0.0.1:7070, localhost:7070, 0.0.0.0:7070), :PORT
    /// (every interface) or PORT (loopback).
    #[arg(long, env = "HIVESYNC_LISTEN", default_value = "127.0.0.1:7070")]
    pub(crate) listen: String,
    /// TOML config file (tokens, retention); reloaded when it changes.
    #[arg(long, env = "HIVESYNC_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Follower mode: never write; stream what appears in a file something else replicates.
    #[arg(long)]
    pub(crate) read_only: bool,
    /// Edge mode: replicate from this node (ws://host:port/v1/sync) and serve the local copy;
    /// writes received here are forwarded to it. Or from the NATS JetStream stream a primary
    /// publishes to (nats://host:port, with --primary; stream name and credentials in the
    /// config's [follow]).
    #[arg(long, env = "HIVESYNC_UPSTREAM")]
    pub(crate) upstream: Option<String>,
    /// For an edge fed from NATS: the primary's feed (ws://host:port/v1/sync), which serves
    /// snapshots and catch-ups when the stream does not hold them, and takes forwarded writes.
    #[arg(long, env = "HIVESYNC_PRIMARY", requires = "upstream")]
    pub(crate) primary: Option<String>,
    /// Token this edge presents to its upstream. On the command line it shows in the process
    /// list: prefer the environment variable or --upstream-token-file.
    #[arg(long, env = "HIVESYNC_UPSTREAM_TOKEN", hide_env_values = true)]
    pub(crate) upstream_token: Option<String>,
    /// File holding the token this edge presents to its upstream (surrounding whitespace is
    /// ignored).
    #[arg(
        long,
        env = "HIVESYNC_UPSTREAM_TOKEN_FILE",
        conflicts_with = "upstream_token"
    )]
    pub(crate) upstream_token_file: Option<PathBuf>,
    /// Milliseconds between checks of the log for commits made by other processes, beside
    /// file notifications (default 1000, or 100 in read-only mode where notifications may
    /// not arrive).
    #[arg(long)]
    pub(crate) poll_ms: Option<u64>,
    /// Read connections in the pool.
    #[arg(long, default_value_t = 4)]
    pub(crate) readers: usize,
    /// A directory laid out as wasm/web to serve instead of the browser replica built in.
    #[arg(long, env = "HIVESYNC_WEB")]
    pub(crate) web: Option<PathBuf>,
    /// Most open sockets (HTTP and WebSocket); default: the open-files limit less what the
    /// node keeps for its own files.
    #[arg(long)]
    pub(crate) max_connections: Option<usize>,
    /// Publish every committed change, in seq order, to NATS JetStream at this URL
    /// (nats://host:port; credentials and the stream's name go in the config's [publish]).
    #[arg(long, env = "HIVESYNC_PUBLISH")]
    pub(crate) publish: Option<String>,
    /// A web origin (https://app.example.com) whose pages may use this node without a token,
    /// besides the node's own; repeat for more (also `allowed_origins` in the config).
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub(crate) allow_origins: Vec<String>,
}

/// The token an edge presents upstream: from --upstream-token (or its variable), or read from
/// --upstream-token-file.
fn upstream_token(args: &ServeArgs) -> Result<Option<String>> {
    match &args.upstream_token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the upstream token file {}", p.display()))?;
            let t = t.trim();
            anyhow::ensure!(
                !t.is_empty(),
                "the upstream token file {} is empty",
                p.display()
            );
            Ok(Some(t.to_string()))
        }
        None => Ok(args.upstream_token.clone()),
    }
}

/// Run `hivesync serve` until SIGINT or SIGTERM.
pub(crate) fn serve(db: &Path, args: &ServeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let signal = shutdown_signal()?;
        let config = match &args.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        let opts = NodeOptions {
            read_only: args.read_only,
            upstream: args.upstream.clone(),
            upstream_token: upstream_token(args)?,
            upstream_token_file: args.upstream_token_file.clone(),
            primary: args.primary.clone(),
            poll_ms: args.poll_ms,
            web: args.web.clone(),
            max_connections: args.max_connections,
            publish: args.publish.clone(),
            allow_origins: args.allow_origins.clone(),
        };
        // Options that contradict each other stop here, before the port or the file is touched.
        hivesync::node::check_options(&opts, &config)?;
        // The port before the database: a node that cannot listen leaves no file behind.
        let addr = listen_addr(&args.listen).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}: is another node running there? pick another address with --listen"))?;
        // An edge starting on an empty database takes its upstream's image first.
        let link = match opts.upstream.as_deref() {
            Some(u) if u.starts_with("nats") => opts.primary.as_deref(),
            u => u,
        };
        if let Some(feed) = link {
            hivesync::node::bootstrap_from_image(feed, opts.upstream_token.as_deref(), db).await;
        }
        let store_opts = StoreOptions { pool: PoolConfig { readers: args.readers, read_only: args.read_only, ..Default::default() }, ..Default::default() };
        let db2 = db.to_path_buf();
        let store = Arc::new(
            tokio::task::spawn_blocking(move || Store::open(&db2, store_opts))
                .await?
                .with_context(|| format!("opening {}", db.display()))?,
        );
        let handle = hivesync::node::start(store.clone(), listener, config, args.config.clone(), &opts).await?;
        tracing::info!(
            "hivesync serving {} on http://{} (feed ws://{}/v1/sync, head seq {}{})",
            db.display(),
            handle.addr,
            handle.addr,
            store.head()?,
            if args.read_only { ", read-only follower" } else { "" }
        );
        signal.await;
        tracing::info!("shutting down: closing connections");
        tokio::time::timeout(Duration::from_secs(10), handle.stop()).await.ok();
        drop(store);
        tracing::info!("stopped");
        Ok(())
    })
}

/// The address `--listen` names: HOST:PORT (a host name is resolved), :PORT for every
/// interface, PORT for loopback.
async fn listen_addr(s: &str) -> Result<SocketAddr> {
    let s = s.trim();
    let usage = || {
        anyhow::anyhow!(
            "--listen {s:?}: expected HOST:PORT (127.0.0.1:7070, localhost:7070, 0.0.0.0:7070), :PORT (every interface) or PORT (loopback)"
        )
    };
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| usage())?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(usage());
    }
    let mut found = tokio::net::lookup_host(s)
        .await
        .with_context(|| format!("--listen {s:?}: cannot resolve the host name"))?;
    found.next().ok_or_else(usage)
}

/// Register SIGINT and SIGTERM handlers now (before the port is bound, so a signal that comes
/// right after startup still shuts down cleanly) and return a future that ends on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
