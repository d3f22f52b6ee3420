//! Edge mode (`serve --upstream URL`): this node is a native replica of another node. A
//! dedicated thread subscribes to the upstream feed over the same protocol (binary), applies
//! snapshots and change batches to the local file (idempotent, gap-checked, upstream seqs
//! kept), and wakes the local hub so this node's own subscribers get them. Writes this node
//! receives are forwarded upstream and answered with the upstream's `written` or `error`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::hub::{EncodedChange, Hub};
use crate::apply;
use crate::error::Error;
use crate::model::WriteOp;
use crate::protocol::{
    self, ClientMsg, ErrorCode, ErrorMsg, ServerMsg, Subscribe, SUBPROTOCOL_BIN,
};
use crate::query::ChangeFilter;
use crate::store::Store;

/// Most changes applied in one transaction when frames queue up behind each other.
const COALESCE_MAX: usize = 8192;

/// A write to forward, with where to send the answer.
pub(crate) struct Forward {
    pub(crate) ops: Vec<WriteOp>,
    pub(crate) reply: oneshot::Sender<Result<i64, ErrorMsg>>,
}

/// What the local node sees of the upstream link.
#[derive(Default, Debug)]
pub struct UpstreamState {
    /// Connected and subscribed.
    pub connected: AtomicBool,
    /// Caught up with the upstream (after its `live`).
    pub live: AtomicBool,
    /// Last upstream seq applied locally.
    pub applied: AtomicI64,
    /// Change frames applied.
    pub frames: AtomicU64,
    /// Transactions they were applied in.
    pub applies: AtomicU64,
    /// Why the link is down, while it is (for `/healthz`).
    pub down: parking_lot::Mutex<Option<String>>,
}

/// The handle the local node keeps.
pub(crate) struct Upstream {
    pub(crate) forward: mpsc::Sender<Forward>,
    pub(crate) state: Arc<UpstreamState>,
}

/// Start following `url` on a thread of its own.
pub(crate) fn start(
    url: String,
    token: Option<String>,
    store: Arc<Store>,
    hub: Arc<Hub>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Upstream> {
    let (tx, rx) = mpsc::channel(256);
    let state = Arc::new(UpstreamState::default());
    let st = state.clone();
    std::thread::Builder::new()
        .name("hivesync-upstream".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the upstream client");
                    return;
                }
            };
            rt.block_on(follow(url, token, store, hub, rx, st, shutdown));
        })?;
    Ok(Upstream { forward: tx, state })
}

enum End {
    Retry(String),
    Stop,
}

async fn follow(
    url: String,
    token: Option<String>,
    store: Arc<Store>,
    hub: Arc<Hub>,
    mut forwards: mpsc::Receiver<Forward>,
    state: Arc<UpstreamState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let end = session(
            &url,
            &token,
            &store,
            &hub,
            &mut forwards,
            &state,
            &mut shutdown,
        )
        .await;
        state.connected.store(false, Relaxed);
        state.live.store(false, Relaxed);
        match end {
            End::Stop => return,
            End::Retry(why) => {
                *state.down.lock() = Some(why.clone());
                tracing::warn!(upstream = %url, "upstream link down ({why}); retrying in {backoff:?}");
                let until = tokio::time::sleep(backoff);
                tokio::pin!(until);
                // Refuse forwarded writes while disconnected rather than queueing them blindly.
                loop {
                    tokio::select! {
                        _ = &mut until => break,
                        _ = shutdown.changed() => return,
                        Some(f) = forwards.recv() => {
                            let _ = f.reply.send(Err(ErrorMsg::new(ErrorCode::Overloaded,
                                "this edge node has lost its upstream; retry the write shortly")));
                        }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    url: &str,
    token: &Option<String>,
    store: &Arc<Store>,
    hub: &Arc<Hub>,
    forwards: &mut mpsc::Receiver<Forward>,
    state: &UpstreamState,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let mut req = match url.into_client_request() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(
                "--upstream {url:?} is not a WebSocket URL ({e}); expected ws://host:port/v1/sync"
            );
            return End::Stop;
        }
    };
    if let Ok(v) = SUBPROTOCOL_BIN.parse() {
        req.headers_mut().insert("Sec-WebSocket-Protocol", v);
    }
    let ws = tokio::select! {
        // No Nagle: forwarded writes and acks are small frames that must not wait for the
        // upstream's delayed ACK (40 ms on Linux).
        r = tokio_tungstenite::connect_async_with_config(req, Some(super::client_ws_config()), true) => match r {
            Ok((ws, _)) => ws,
            Err(e) => return End::Retry(format!("cannot connect: {e}")),
        },
        _ = shutdown.changed() => return End::Stop,
    };
    let (mut tx, mut rx) = ws.split();
    let hello = ClientMsg::Hello {
        token: token.clone(),
        client: Some("hivesync-edge".into()),
    };
    if let Err(e) = tx
        .send(Message::Binary(protocol::encode_client_bin(&hello).into()))
        .await
    {
        return End::Retry(e.to_string());
    }
    let mut pending: HashMap<String, oneshot::Sender<Result<i64, ErrorMsg>>> = HashMap::new();
    let mut next_req = 0u64;
    // An open snapshot holds the writer (and its transaction) until its last chunk.
    let mut snapshot: Option<parking_lot::MutexGuard<'_, rusqlite::Connection>> = None;
    // A frame read ahead while gathering change frames, to be handled next.
    let mut held = None;
    let end = loop {
        let msg = if let Some(m) = held.take() {
            m
        } else {
            tokio::select! {
            m = rx.next() => m,
            Some(f) = forwards.recv() => {
                next_req += 1;
                let req = format!("f{next_req}");
                let m = ClientMsg::Write { req: req.clone(), ops: f.ops };
                if let Err(e) = tx.send(Message::Binary(protocol::encode_client_bin(&m).into())).await {
                    let _ = f.reply.send(Err(ErrorMsg::new(ErrorCode::Overloaded, "upstream link lost; retry")));
                    break End::Retry(e.to_string());
                }
                pending.insert(req, f.reply);
                continue;
            }
            _ = shutdown.changed() => break End::Stop,
            }
        };
        let bytes = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(_))) | None => {
                break End::Retry("upstream closed the connection".into())
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => break End::Retry(e.to_string()),
        };
        let m = match protocol::decode_server_bin(&bytes) {
            Ok(m) => m,
            Err(e) => break End::Retry(format!("undecodable frame from upstream: {e}")),
        };
        match m {
            ServerMsg::Welcome { head, .. } => {
                let applied = match store.read(apply::applied_seq) {
                    Ok(a) => a,
                    Err(e) => break End::Retry(e.to_string()),
                };
                if applied > head {
                    tracing::error!("this edge's copy is at seq {applied}, ahead of the upstream's head {head}: it was copied from another node; move the file away to re-sync");
                    break End::Stop;
                }
                let local_head = store.head().unwrap_or(0);
                let from = (applied > 0 || local_head > 0).then_some(applied);
                let sub = ClientMsg::Subscribe(Subscribe {
                    sub: "edge".into(),
                    from,
                    namespaces: None,
                    kinds: None,
                });
                if let Err(e) = tx
                    .send(Message::Binary(protocol::encode_client_bin(&sub).into()))
                    .await
                {
                    break End::Retry(e.to_string());
                }
                state.connected.store(true, Relaxed);
                *state.down.lock() = None;
                tracing::info!(upstream = %url, from = ?from, "following upstream");
            }
            ServerMsg::Snapshot { at, rows, done, .. } => {
                if snapshot.is_none() {
                    let conn = match store.pool().writer() {
                        Ok(c) => c,
                        Err(e) => break End::Retry(e.to_string()),
                    };
                    if let Err(e) = apply::snapshot_begin(&conn, &ChangeFilter::default()) {
                        break End::Retry(e.to_string());
                    }
                    snapshot = Some(conn);
                }
                let Some(conn) = snapshot.as_deref() else {
                    continue;
                };
                if let Err(e) = apply::snapshot_rows(conn, &rows) {
                    apply::snapshot_abort(conn);
                    snapshot = None;
                    break End::Retry(format!("snapshot rejected: {e}"));
                }
                if done {
                    let res = apply::snapshot_finish(conn, at);
                    snapshot = None;
                    if let Err(e) = res {
                        break End::Retry(e.to_string());
                    }
                    state.applied.store(at, Relaxed);
                    hub.reset(at);
                    hub.wake();
                }
            }
            ServerMsg::Changes {
                prev, mut changes, ..
            } => {
                if let Some(conn) = snapshot.take() {
                    apply::snapshot_abort(&conn);
                }
                // Change frames that have already arrived behind this one go into the same
                // transaction: one commit for all of them, so a backlog (after a stall of this
                // thread or of the machine) clears in one step instead of one commit per frame.
                let mut last = changes.last().map_or(prev, |c| c.seq);
                let mut frames = 1;
                while changes.len() < COALESCE_MAX {
                    match rx.next().now_or_never() {
                        None => break,
                        Some(Some(Ok(Message::Binary(b)))) => match protocol::decode_server_bin(&b)
                        {
                            Ok(ServerMsg::Changes {
                                prev: p,
                                changes: more,
                                ..
                            }) if p == last => {
                                last = more.last().map_or(last, |c| c.seq);
                                changes.extend(more);
                                frames += 1;
                            }
                            _ => {
                                held = Some(Some(Ok(Message::Binary(b))));
                                break;
                            }
                        },
                        Some(other) => {
                            held = Some(other);
                            break;
                        }
                    }
                }
                match store.apply_changes(prev, &changes) {
                    Ok(o) => {
                        state.applied.store(o.seq, Relaxed);
                        state.frames.fetch_add(frames, Relaxed);
                        state.applies.fetch_add(1, Relaxed);
                        // Publish what was just committed, as received: the rows in the log
                        // are these very changes, so the tailer's re-read of them (a wake-up,
                        // a blocking read, an encode) is skipped on the hop's critical path.
                        hub.publish(
                            changes
                                .iter()
                                .map(|c| Arc::new(EncodedChange::new(c)))
                                .collect(),
                        );
                        let ack = ClientMsg::Ack {
                            sub: "edge".into(),
                            seq: o.seq,
                        };
                        let _ = tx
                            .send(Message::Binary(protocol::encode_client_bin(&ack).into()))
                            .await;
                    }
                    Err(Error::Cursor(why)) => break End::Retry(why),
                    Err(e) => break End::Retry(format!("applying upstream changes failed: {e}")),
                }
            }
            ServerMsg::Live { seq, .. } => {
                state.live.store(true, Relaxed);
                tracing::info!(seq, "caught up with upstream");
            }
            ServerMsg::Written { req, seq } => {
                if let Some(r) = pending.remove(&req) {
                    let _ = r.send(Ok(seq));
                }
            }
            ServerMsg::Error(e) => {
                if let Some(r) = e.req.as_ref().and_then(|q| pending.remove(q)) {
                    let _ = r.send(Err(e));
                    continue;
                }
                if e.code == ErrorCode::Unauthorized || e.code == ErrorCode::Forbidden {
                    tracing::error!(
                        "upstream refused this edge: {:?}: {}; check --upstream-token",
                        e.code,
                        e.message
                    );
                }
                break End::Retry(format!("{:?}: {}", e.code, e.message));
            }
        }
    };
    if let Some(conn) = snapshot.take() {
        apply::snapshot_abort(&conn);
    }
    for (_, r) in pending.drain() {
        let _ = r.send(Err(ErrorMsg::new(ErrorCode::Overloaded, "upstream link lost before the write was acknowledged; it may or may not have committed: retry (upserts with ids are idempotent)")));
    }
    end
}
