//! The listener: accepts sockets up to a limit derived from the descriptor limit, gives each
//! HTTP connection [`HEADER_TIMEOUT`] to send its request, and performs the WebSocket upgrade
//! itself so that the connection can cap what a client sends before `hello`
//! ([`HelloGate`]).
//!
//! One permit of [`Sockets`] per open socket: taken before `accept` (so at the limit the node
//! stops accepting and the kernel's backlog holds the rest, instead of failing on `EMFILE` with
//! its own database files), and moved into the WebSocket task on upgrade, so an upgraded
//! connection keeps its socket's permit until it closes. WebSockets may use all but
//! [`HTTP_RESERVE`] of them; upgraded connections that have not said `hello` yet may use three
//! quarters of those, and an eighth of that (at least 8) from one address, so strangers cannot hold the slots
//! of clients with tokens. When every socket is taken (half-open requests, say), a few more
//! ([`TRIAGE_SOCKETS`]) serve only `/healthz` and `/metrics`, with a short header timeout, so
//! those always answer.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::node::conn;
use crate::node::gate::{Gated, HelloGate, PreHello, Waiting};
use crate::node::NodeState;
use crate::protocol::{Encoding, MAX_FRAME_BYTES};

/// Time a client has to send a request's headers (and an idle keep-alive connection to send
/// its next request): 1,123 half-open upgrade requests otherwise held their sockets forever.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Sockets kept for plain HTTP (`/healthz`, `/metrics`, the page) when WebSockets take the rest.
pub(crate) const HTTP_RESERVE: usize = 32;
/// Sockets beyond the limit that answer only `/healthz` and `/metrics` (taken from the
/// descriptors kept for the node, [`FD_RESERVE`]), each given [`TRIAGE_HEADER_TIMEOUT`].
pub(crate) const TRIAGE_SOCKETS: usize = 8;
/// See [`TRIAGE_SOCKETS`].
pub(crate) const TRIAGE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Descriptors kept for the node's own files: the database, its WAL and shared memory for the
/// writer and every reader, the config file and its watches, logs, the checkpointer. At the
/// default limit of 1,024 descriptors and no reserve, 900 idle connections made the checkpoint
/// fail with "unable to open database file".
pub(crate) const FD_RESERVE: usize = 128;

/// The socket limit: open sockets (HTTP and WebSocket) never exceed it.
pub(crate) struct Sockets {
    permits: Arc<Semaphore>,
    /// [`TRIAGE_SOCKETS`].
    triage: Arc<Semaphore>,
    /// The limit.
    pub(crate) max: usize,
    /// Upgraded connections that have not said `hello`.
    pub(crate) pre_hello: Arc<PreHello>,
}

impl Sockets {
    /// A limit of `max` sockets.
    pub(crate) fn new(max: usize) -> Sockets {
        let ws = max.saturating_sub(HTTP_RESERVE).max(1);
        Sockets {
            permits: Arc::new(Semaphore::new(max)),
            triage: Arc::new(Semaphore::new(TRIAGE_SOCKETS)),
            max,
            pre_hello: Arc::new(PreHello::new((ws * 3 / 4).max(8))),
        }
    }

    /// Most WebSocket connections at once.
    pub(crate) fn max_websockets(&self) -> usize {
        self.max.saturating_sub(HTTP_RESERVE).max(1)
    }
}

/// The soft limit on open files of this process (1,024 when it cannot be read).
pub(crate) fn nofile_limit() -> usize {
    // /proc/self/limits: "Max open files            1024                 524288               files"
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// The socket limit for a process allowed `nofile` descriptors.
pub(crate) fn socket_budget(nofile: usize) -> usize {
    nofile.saturating_sub(FD_RESERVE).max(HTTP_RESERVE + 16)
}

/// The address a request came from.
#[derive(Clone, Copy)]
struct Peer(std::net::IpAddr);

/// Any request on a triage socket but `/healthz` and `/metrics`.
pub(crate) async fn at_limit() -> Response {
    bad(
        StatusCode::SERVICE_UNAVAILABLE,
        "this node is at its connection limit; retry later\n".into(),
    )
}

/// The permit of the socket a request came in on, for the upgrade to take along.
#[derive(Clone)]
struct SocketPermit(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

/// Accept and serve connections until `shutdown`; then give plain HTTP connections a moment to
/// finish (WebSocket connections watch `shutdown` themselves).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    triage_app: Router,
    sockets: Arc<Sockets>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let mut triage_http = hyper::server::conn::http1::Builder::new();
    triage_http
        .timer(TokioTimer::new())
        .header_read_timeout(TRIAGE_HEADER_TIMEOUT)
        .keep_alive(false);
    let mut warned_at: Option<std::time::Instant> = None;
    loop {
        // A socket of the limit, or when none is free, one of the triage sockets.
        let (permit, triage) = match sockets.permits.clone().try_acquire_owned() {
            Ok(p) => (p, false),
            Err(_) => tokio::select! {
                p = sockets.permits.clone().acquire_owned() => match p {
                    Ok(p) => (p, false),
                    Err(_) => break,
                },
                t = sockets.triage.clone().acquire_owned() => match t {
                    Ok(t) => (t, true),
                    Err(_) => break,
                },
                _ = shutdown.changed() => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => (tcp, peer.ip()),
                Err(e) => {
                    // EMFILE and friends: wait for descriptors to come back instead of spinning.
                    if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        warned_at = Some(std::time::Instant::now());
                        tracing::warn!(error = %e, limit = sockets.max, "accept failed; retrying (lower --max-connections or raise the open-files limit)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Small frames (a live change) must not wait for Nagle: p99 at 10 subscribers went
        // from 20-30 ms to 3-6 ms with TCP_NODELAY (benches/node.rs).
        let _ = tcp.set_nodelay(true);
        let slot = SocketPermit(Arc::new(Mutex::new(Some(permit))));
        let svc = hyper_util::service::TowerToHyperService::new(if triage {
            triage_app.clone()
        } else {
            app.clone()
        });
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(slot.clone());
                req.extensions_mut().insert(Peer(peer));
                hyper::service::Service::call(&svc, req)
            });
        let conn = if triage { &triage_http } else { &http }
            .serve_connection(TokioIo::new(tcp), svc)
            .with_upgrades();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    // Finish the request in flight, then close; upgraded sockets are gone from
                    // here already and watch the shutdown themselves.
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(Duration::from_secs(2), conn.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(e) = res {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

fn bad(status: StatusCode, msg: String) -> Response {
    (status, msg).into_response()
}

/// `GET /v1/sync`: check and answer the WebSocket handshake, then hand the socket to
/// [`conn::handle`] behind a [`HelloGate`].
pub(crate) async fn ws_upgrade(
    axum::extract::State(node): axum::extract::State<Arc<NodeState>>,
    mut req: axum::extract::Request,
) -> Response {
    let (accept, enc, offered) = match handshake(req.method(), req.headers()) {
        Ok(h) => h,
        Err((status, why)) => return bad(status, why),
    };
    if node.metrics.connections.load(Relaxed) >= node.sockets.max_websockets() as i64 {
        node.metrics.refused_connections.fetch_add(1, Relaxed);
        return bad(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this node holds its limit of {} WebSocket connections; retry later or use another node\n",
                node.sockets.max_websockets()
            ),
        );
    }
    let waiting = match req.extensions().get::<Peer>() {
        Some(Peer(addr)) => match node.sockets.pre_hello.admit(*addr) {
            Ok(w) => Some(w),
            Err(why) => {
                node.metrics.refused_connections.fetch_add(1, Relaxed);
                return bad(StatusCode::SERVICE_UNAVAILABLE, why);
            }
        },
        None => None,
    };
    let permit = req
        .extensions()
        .get::<SocketPermit>()
        .and_then(|p| p.0.lock().take());
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return bad(
            StatusCode::BAD_REQUEST,
            "the connection cannot be upgraded\n".into(),
        );
    };
    let config = node.auth.config();
    let allowed = config.allowed_origins.iter().chain(&node.allow_origins);
    let foreign = foreign_origin(req.headers(), allowed);
    tokio::spawn(async move {
        serve_upgraded(on_upgrade, node, enc, foreign, waiting).await;
        drop(permit);
    });
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if offered {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(enc.name()),
        );
    }
    res
}

/// Check a WebSocket handshake: (the accept key, the negotiated encoding, whether the client
/// offered subprotocols), or the status and text refusing it with what to do.
fn handshake(
    method: &Method,
    headers: &HeaderMap,
) -> Result<(String, Encoding, bool), (StatusCode, String)> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    if method != Method::GET
        || !has_token(header::CONNECTION, "upgrade")
        || !has_token(header::UPGRADE, "websocket")
    {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "this is the WebSocket feed: connect with a WebSocket client (ws://HOST:PORT/v1/sync)\n"
                .into(),
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "unsupported WebSocket version: send Sec-WebSocket-Version: 13\n".into(),
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key\n".into(),
        ));
    };
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    let Some(enc) = Encoding::negotiate(offered.iter().map(String::as_str)) else {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("unsupported subprotocol {offered:?}: offer hivesync.v1.json, hivesync.v1.json-b64 or hivesync.v1.bin (or none, for JSON)\n"),
        ));
    };
    Ok((derive_accept_key(key.as_bytes()), enc, !offered.is_empty()))
}

/// Run the connection once the upgrade completes.
/// The request's `Origin` (a browser's), when it is neither the node's own (the `Host` the
/// page reached it at) nor one of `allowed`.
pub(crate) fn foreign_origin<'a>(
    headers: &HeaderMap,
    mut allowed: impl Iterator<Item = &'a String>,
) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("null");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let own = origin
        .split_once("://")
        .is_some_and(|(_, h)| host.is_some_and(|host| h.eq_ignore_ascii_case(host)));
    let listed = allowed.any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    (!own && !listed).then(|| origin.chars().take(200).collect())
}

async fn serve_upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
    node: Arc<NodeState>,
    enc: Encoding,
    foreign: Option<String>,
    waiting: Option<Waiting>,
) {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket upgrade failed");
            return;
        }
    };
    let gate = HelloGate::new();
    gate.hold_until_open(waiting);
    let io = Gated::new(TokioIo::new(upgraded), gate.clone());
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        // tungstenite's default 128 KiB read buffer is zero-filled, so fully resident, on
        // every connection: 139 KiB per idle subscriber measured (benches/node.rs), 14 KiB
        // with 4 KiB. Large frames are then read in 4 KiB steps.
        .read_buffer_size(4 * 1024);
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    conn::handle(ws, node, enc, gate, foreign).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_of_another_origin_is_foreign() {
        let h = |origin: Option<&str>, host: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            if let Some(o) = origin {
                m.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
            }
            m
        };
        let allowed = ["https://app.example.com".to_string()];
        assert_eq!(
            foreign_origin(&h(None, "127.0.0.1:7070"), allowed.iter()),
            None
        );
        assert_eq!(
            foreign_origin(
                &h(Some("http://127.0.0.1:7070"), "127.0.0.1:7070"),
                allowed.iter()
            ),
            None
        );
        assert_eq!(
            foreign_origin(
                &h(Some("https://app.example.com"), "n:7070"),
                allowed.iter()
            ),
            None
        );
        assert_eq!(
            foreign_origin(
                &h(Some("https://evil.example"), "127.0.0.1:7070"),
                allowed.iter()
            )
            .as_deref(),
            Some("https://evil.example")
        );
        assert_eq!(
            foreign_origin(&h(Some("null"), "127.0.0.1:7070"), [].iter()).as_deref(),
            Some("null")
        );
        assert!(foreign_origin(
            &h(Some("http://127.0.0.1:7071"), "127.0.0.1:7070"),
            [].iter()
        )
        .is_some());
    }

    #[test]
    fn the_socket_budget_keeps_descriptors_for_the_node() {
        assert_eq!(socket_budget(1024), 1024 - FD_RESERVE);
        assert!(socket_budget(100) >= HTTP_RESERVE + 16);
        assert!(nofile_limit() >= 16);
        let s = Sockets::new(socket_budget(1024));
        assert_eq!(s.max_websockets(), 1024 - FD_RESERVE - HTTP_RESERVE);
    }
}
