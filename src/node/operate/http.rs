//! The node's HTTP routes: the feed's upgrade, `/healthz`, `/metrics`, the web files, and the
//! triage routes that still answer at the socket limit.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::node::{accept, web, NodeState};

/// The routes of the triage sockets: at the socket limit, /healthz and /metrics still answer
/// on a few sockets of their own.
pub(crate) fn triage_routes(node: Arc<NodeState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(accept::at_limit)
        .with_state(node)
}

/// The HTTP routes: the feed, health, metrics, and the browser replica's files.
pub(crate) fn routes(node: Arc<NodeState>, web_files: web::WebFiles) -> Router {
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
        .route(
            "/v1/image",
            get(crate::node::serve::image::image).options(crate::node::serve::image::preflight),
        )
        .with_state(node)
        .merge(web_routes)
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
            // The identity provider's keys could not be read or fetched (the last good ones
            // are in force).
            let jwt = node.auth.verifier().map_or(String::new(), |v| {
                let err = node.auth.key_status().error.lock().clone();
                format!(
                    ",\"jwt\":{{\"keys\":{}{}}}",
                    v.keys.read().len(),
                    err.as_ref().map_or(String::new(), |e| format!(
                        ",\"error\":{}",
                        serde_json::Value::String(e.clone())
                    ))
                )
            });
            let keys_down = node.auth.key_status().error.lock().is_some();
            let status = if down.is_some() || forged || publisher_down || keys_down {
                "degraded"
            } else {
                "ok"
            };
            format!(
                "{{\"status\":\"{status}\",\"head\":{head},\"read_only\":{}{upstream}{publish}{jwt}}}\n",
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
    use crate::node::metrics::{COUNTER, GAUGE};
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
    extra.extend(jwt_samples(&node));
    let im = &node.images;
    extra.extend([
        (
            "hivesync_image_builds_total",
            COUNTER,
            "Database images built for new replicas (GET /v1/image).",
            im.builds.load(Relaxed) as i64,
        ),
        (
            "hivesync_image_cache_hits_total",
            COUNTER,
            "Image requests answered from an image already built.",
            im.hits.load(Relaxed) as i64,
        ),
        (
            "hivesync_image_bytes_served_total",
            COUNTER,
            "Bytes of images sent (as on the wire: gzipped where asked).",
            im.bytes_served.load(Relaxed) as i64,
        ),
    ]);
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

/// The `[jwt]` counters and gauges (none without the section).
fn jwt_samples(node: &NodeState) -> Vec<crate::node::metrics::Sample<'static>> {
    use crate::node::metrics::{COUNTER, GAUGE};
    let mut extra = Vec::new();
    if node.auth.verifier().is_none() {
        return extra;
    }
    let k = node.auth.key_status();
    for r in crate::node::jwt::Reason::ALL {
        extra.push((
            r.metric(),
            COUNTER,
            "JWTs refused for this reason.",
            node.auth.refused(r) as i64,
        ));
    }
    extra.extend([
        (
            "hivesync_jwks_fetches_total",
            COUNTER,
            "Fetches of the identity provider's key set (JWKS URL).",
            k.fetches.load(Relaxed) as i64,
        ),
        (
            "hivesync_jwks_fetch_failures_total",
            COUNTER,
            "Fetches that failed (the last good keys stayed in force).",
            k.fetch_failures.load(Relaxed) as i64,
        ),
        (
            "hivesync_jwks_keys",
            GAUGE,
            "Keys in the set in force.",
            node.auth
                .verifier()
                .map_or(0, |v| v.keys.read().len() as i64),
        ),
        (
            "hivesync_jwks_ok",
            GAUGE,
            "1 while the last read or fetch of the keys succeeded.",
            i64::from(k.error.lock().is_none()),
        ),
    ]);
    extra
}
