//! What a node is, decided once at start from its options and config ([`RoleSpec::parse`]):
//! a primary (owns the log: takes writes, may publish its feed to NATS), a read-only follower
//! (serves a database file something else replicates), or an edge (follows an upstream's feed,
//! or a NATS stream with the primary's feed beside it, and forwards writes to it). Writes are
//! routed by it in one place, [`route`], beside the writer it queues them for.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::node::budget::WriteBudget;
use crate::node::config::Config;
use crate::node::follow::Follow;
use crate::node::out::code_for;
use crate::node::publish::PublishConfig;
use crate::node::upstream::Upstream;
use crate::node::writer::WriteJob;
use crate::node::{NodeOptions, NodeState};
use crate::protocol::{ErrorCode, ErrorMsg, ServerMsg};

/// A role as the options describe it, before the node starts.
pub(crate) enum RoleSpec {
    /// Owns the log; publishes its feed to NATS when `publish` is set.
    Primary {
        /// `--publish` over the config's `[publish]`.
        publish: Option<PublishConfig>,
    },
    /// Serves a file it never writes.
    Follower,
    /// Follows `link` (a node's feed) and forwards writes to it; with `nats`, its live changes
    /// come from that stream.
    Edge {
        /// The node whose feed it follows: `--upstream`, or `--primary` beside a NATS stream.
        link: String,
        /// The NATS stream, when `--upstream` is one.
        nats: Option<Follow>,
        /// The token it presents upstream, and the file it is read again from.
        token: Option<String>,
        token_file: Option<std::path::PathBuf>,
    },
}

impl RoleSpec {
    /// The role `args` and `config` describe, or why they contradict each other.
    pub(crate) fn parse(args: &NodeOptions, config: &Config) -> crate::Result<RoleSpec> {
        let mut publish = config.publish.clone().unwrap_or_default();
        if let Some(url) = &args.publish {
            publish.url = Some(url.clone());
        }
        let publish = publish.url.is_some().then_some(publish);
        let edge = args.upstream.is_some();
        if publish.is_some() && (args.read_only || edge) {
            return Err(crate::Error::invalid(
                "--publish is for the node that owns the log: not a read-only follower or an edge",
            ));
        }
        if args.primary.is_some() && !edge {
            return Err(crate::Error::invalid(
                "--primary is for an edge fed from NATS: give the stream with --upstream nats://HOST:PORT",
            ));
        }
        match (&args.upstream, args.read_only) {
            (Some(_), true) => Err(crate::Error::invalid(
                "--upstream and --read-only exclude each other: an edge node writes what it receives from upstream into its own file",
            )),
            (Some(up), false) => {
                let (link, nats) = edge_feeds(up, args.primary.as_deref(), config)?;
                Ok(RoleSpec::Edge {
                    link,
                    nats,
                    token: args.upstream_token.clone(),
                    token_file: args.upstream_token_file.clone(),
                })
            }
            (None, true) => Ok(RoleSpec::Follower),
            (None, false) => Ok(RoleSpec::Primary { publish }),
        }
    }
}

impl RoleSpec {
    /// Start what the role runs (a primary's writer thread, an edge's upstream link); returns
    /// the running role and, for a primary that publishes, where to.
    pub(crate) fn start(
        self,
        store: &Arc<crate::store::Store>,
        hub: &Arc<crate::node::hub::Hub>,
        metrics: &Arc<crate::node::metrics::Metrics>,
        shutdown: &tokio::sync::watch::Receiver<bool>,
    ) -> crate::Result<(Role, Option<PublishConfig>)> {
        Ok(match self {
            RoleSpec::Primary { publish } => {
                let (tx, rx) = mpsc::channel(crate::node::writer::WRITE_QUEUE);
                crate::node::writer::spawn_writer(store.clone(), hub.clone(), metrics.clone(), rx)?;
                (Role::Primary { writes: tx }, publish)
            }
            RoleSpec::Follower => (Role::Follower, None),
            RoleSpec::Edge {
                link,
                nats,
                token,
                token_file,
            } => (
                Role::Edge(crate::node::upstream::start(
                    link,
                    nats,
                    crate::node::upstream::Credentials {
                        token,
                        file: token_file,
                    },
                    store.clone(),
                    hub.clone(),
                    shutdown.clone(),
                )?),
                None,
            ),
        })
    }
}

/// An edge's two feeds from `--upstream` and `--primary`: the node whose WebSocket feed it
/// follows (and forwards writes to), and the NATS stream its live changes come from, if any.
fn edge_feeds(
    upstream: &str,
    primary: Option<&str>,
    config: &Config,
) -> crate::Result<(String, Option<Follow>)> {
    let nats = upstream.starts_with("nats://") || upstream.starts_with("tls://");
    match (nats, primary) {
        (false, None) => Ok((upstream.to_string(), None)),
        (false, Some(_)) => Err(crate::Error::invalid(
            "--primary is for an edge fed from NATS (--upstream nats://host:port); with --upstream ws://... the edge follows that node directly",
        )),
        (true, None) => Err(crate::Error::invalid(format!(
            "an edge fed from NATS ({upstream}) needs the primary's feed too: add --primary ws://HOST:PORT/v1/sync (it serves snapshots and catch-ups, and takes the writes this edge forwards)"
        ))),
        (true, Some(p)) => {
            let mut cfg = config.follow.clone().unwrap_or_default();
            cfg.url = Some(upstream.to_string());
            Ok((p.to_string(), Some(Follow::new(cfg))))
        }
    }
}

/// A running node's role.
pub(crate) enum Role {
    /// Owns the log: its writer thread takes the writes.
    Primary {
        /// The writer thread's queue.
        writes: tokio::sync::mpsc::Sender<WriteJob>,
    },
    /// Never writes.
    Follower,
    /// Forwards writes to its upstream link.
    Edge(Upstream),
}

impl Role {
    /// The upstream link of an edge.
    pub(crate) fn upstream(&self) -> Option<&Upstream> {
        match self {
            Role::Edge(u) => Some(u),
            _ => None,
        }
    }

    /// A read-only follower.
    pub(crate) fn read_only(&self) -> bool {
        matches!(self, Role::Follower)
    }
}

/// Bind a forwarded write's client id to the token that sent it here (an edge's own check:
/// its upstream knows the edge's clients only by the edge's token).
async fn bind_client(node: &NodeState, origin: Option<&crate::model::Origin>) -> crate::Result<()> {
    let Some(o) = origin.filter(|o| o.principal.is_some()).cloned() else {
        return Ok(());
    };
    let s = node.store.clone();
    tokio::task::spawn_blocking(move || {
        s.bind_client(&o.client, o.principal.as_deref().unwrap_or_default())
    })
    .await
    .unwrap_or_else(|e| Err(crate::Error::invalid(format!("binding a client id: {e}"))))
}

/// Route a connection's write by the node's role, and return where its answer will arrive:
/// refused on a follower, forwarded upstream on an edge, queued for the writer thread on a
/// primary. Writes from one connection are committed (or forwarded) in the order they arrived.
pub(super) async fn route(
    node: &Arc<NodeState>,
    conn: u64,
    req: String,
    ops: Vec<crate::model::WriteOp>,
    origin: Option<crate::model::Origin>,
    budget: Option<WriteBudget>,
) -> oneshot::Receiver<ServerMsg> {
    let (reply, rx) = oneshot::channel();
    fn refuse(code: ErrorCode, message: String, req: String) -> ServerMsg {
        ServerMsg::Error(ErrorMsg {
            code,
            message,
            sub: None,
            req: Some(req),
        })
    }
    let up = match &node.role {
        Role::Primary { writes } => {
            let job = WriteJob {
                conn,
                req,
                ops,
                origin,
                t0: Instant::now(),
                reply,
                budget,
            };
            if let Err(mpsc::error::SendError(job)) = writes.send(job).await {
                let _ = job.reply.send(refuse(
                    ErrorCode::Overloaded,
                    "the node is shutting down; retry the write on another connection".into(),
                    job.req,
                ));
            }
            return rx;
        }
        Role::Edge(up) => up,
        Role::Follower => {
            node.metrics.write_errors.fetch_add(1, Relaxed);
            let message = match &node.auth.config().primary {
                Some(p) => format!("this node is a read-only follower: send writes to the primary at {p}"),
                None => "this node is a read-only follower: send writes to the primary (set `primary` in this node's config to name it here)".into(),
            };
            let _ = reply.send(refuse(ErrorCode::Forbidden, message, req));
            return rx;
        }
    };
    let t0 = Instant::now();
    // Edge mode: the upstream owns the log; its answer is ours. The forward is queued here,
    // in order; only the wait for the upstream's answer runs on its own. The upstream
    // knows every client of this edge by the edge's token: the edge binds its clients'
    // ids to their own tokens (`store::bind_client`) before it forwards.
    if let Err(e) = bind_client(node, origin.as_ref()).await {
        node.metrics.write_errors.fetch_add(1, Relaxed);
        let _ = reply.send(refuse(code_for(&e), e.to_string(), req));
        return rx;
    }
    let (up_reply, up_rx) = oneshot::channel();
    let overloaded = |m: &str, req: String| refuse(ErrorCode::Overloaded, m.into(), req);
    if up
        .forward
        .send(crate::node::upstream::Forward {
            ops,
            origin,
            reply: up_reply,
        })
        .await
        .is_err()
    {
        let _ = reply.send(overloaded("the upstream link is not running", req));
        return rx;
    }
    let node = node.clone();
    tokio::spawn(async move {
        let _budget = budget;
        let m = match tokio::time::timeout(Duration::from_secs(30), up_rx).await {
            Ok(Ok(Ok(seq))) => {
                node.metrics.observe_write(t0.elapsed());
                ServerMsg::Written { req, seq }
            }
            Ok(Ok(Err(mut e))) => {
                node.metrics.write_errors.fetch_add(1, Relaxed);
                e.req = Some(req);
                ServerMsg::Error(e)
            }
            _ => overloaded("the upstream did not answer the write within 30 s; it may or may not have committed", req),
        };
        let _ = reply.send(m);
    });
    rx
}
