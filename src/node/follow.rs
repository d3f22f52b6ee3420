//! `serve --upstream nats://HOST:PORT --primary ws://HOST:PORT/v1/sync`: an edge whose live
//! changes come from the JetStream stream the primary publishes to ([`super::publish`]), not
//! from the primary's socket, so the primary's fan-out is one stream however many edges follow.
//!
//! This file opens that feed: it finds the stream's first message after the edge's cursor (a
//! binary search over the stream by the `Hivesync-Seq` header: seqs ascend through the stream)
//! and reads from there with an ordered consumer (ephemeral, no acks, recreated by the client
//! after a lost message or connection). Each message gives the change and the seq it follows
//! (`Hivesync-Prev`); the client session checks that chain, as it checks the primary's frames.
//!
//! Everything else is the relay's ([`super::upstream`]): the link to the primary stays open for
//! writes, and it is the primary that serves a catch-up, or a snapshot, whenever the stream does
//! not hold what follows the edge's cursor (an empty edge, a stream trimmed or purged past it, a
//! gap, a change too large for a NATS message, NATS down). Then the stream takes over again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures_util::{Stream, StreamExt};

use super::publish::{self, PublishConfig};
use crate::error::{Error, Result};
use crate::model::Change;

/// How long opening the feed (connecting, searching, creating the consumer) may take before the
/// edge goes on with the primary's feed and tries again later.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// One message of the stream, as the edge reads it.
#[derive(Debug)]
pub(crate) enum Item {
    /// A change and the seq it follows.
    Change(i64, Change),
    /// The change `seq` is not in the stream (too large for a NATS message): the primary's
    /// feed must carry it.
    Omitted(i64),
}

/// The stream from a position on.
pub(crate) type Feed = Pin<Box<dyn Stream<Item = Result<Item>> + Send>>;

/// How long the NATS connection may be down before the edge stops waiting for the stream and
/// follows the primary's feed (the client reconnects by itself meanwhile; the stream is tried
/// again after a backoff).
pub(crate) const DOWN_AFTER: Duration = Duration::from_secs(1);

/// A future that opens the feed.
pub(crate) type Opening = Pin<Box<dyn Future<Output = Result<Option<Feed>>> + Send>>;

/// The NATS side of an edge: its settings, and the connection once made (the client
/// reconnects by itself; each new feed reuses it). Cheap to clone.
#[derive(Clone)]
pub(crate) struct Follow {
    cfg: Arc<PublishConfig>,
    client: Arc<tokio::sync::Mutex<Option<async_nats::Client>>>,
}

impl Follow {
    pub(crate) fn new(cfg: PublishConfig) -> Follow {
        Follow {
            cfg: Arc::new(cfg),
            client: Arc::default(),
        }
    }

    /// Where it reads, for logs.
    pub(crate) fn url(&self) -> &str {
        self.cfg.url.as_deref().unwrap_or("")
    }

    /// Open the feed of the changes after `after`: `None` when the stream no longer holds the
    /// change that follows it (its first message after `after` continues from a later seq).
    /// The feed ends with an error when NATS has been unreachable for [`DOWN_AFTER`].
    pub(crate) fn open(&self, after: i64) -> Opening {
        let this = self.clone();
        Box::pin(async move {
            match tokio::time::timeout(OPEN_TIMEOUT, this.try_open(after)).await {
                Ok(r) => r,
                Err(_) => Err(publish::nats_err(
                    "opening the stream",
                    format!("no answer from {} in {OPEN_TIMEOUT:?}", this.url()),
                )),
            }
        })
    }

    async fn try_open(&self, after: i64) -> Result<Option<Feed>> {
        let client = self.client().await?;
        let js = jetstream::new(client.clone());
        let name = self.cfg.stream();
        let mut stream = js.get_stream(&name).await.map_err(|e| {
            publish::nats_err(
                &format!("opening the stream {name} (does the primary publish to it?)"),
                e,
            )
        })?;
        let Some(start) = first_after(&mut stream, after).await? else {
            return Ok(None);
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| publish::nats_err("creating the stream's consumer", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| publish::nats_err("reading the stream", e))?;
        tracing::debug!(after, from = start, "reading the stream");
        let messages = messages.map(|m| {
            let m = m.map_err(|e| publish::nats_err("reading the stream", e))?;
            item(&m.message)
        });
        // The ordered consumer waits through an outage without a word: the watchdog ends the
        // feed instead.
        Ok(Some(Box::pin(futures_util::stream::select(
            messages,
            watchdog(client, self.url().to_string()),
        ))))
    }

    /// The NATS connection, made on first use; an error while it is down.
    async fn client(&self) -> Result<async_nats::Client> {
        let client = {
            let mut slot = self.client.lock().await;
            match &*slot {
                Some(c) => c.clone(),
                None => {
                    let c = publish::connect(&self.cfg, "hivesync-edge").await?;
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        if client.connection_state() != State::Connected {
            return Err(publish::nats_err(
                "opening the stream",
                format!("not connected to {}", self.url()),
            ));
        }
        Ok(client)
    }
}

/// The stream sequence of the first message whose change comes after `after` (one past the
/// last message when none does yet), found by bisection: seqs ascend through the stream. None
/// when that message does not continue from `after` (the stream no longer holds what follows).
async fn first_after(stream: &mut jetstream::stream::Stream, after: i64) -> Result<Option<u64>> {
    let state = stream
        .info()
        .await
        .map_err(|e| publish::nats_err("reading the stream's state", e))?
        .state
        .clone();
    let (mut lo, mut hi) = (state.first_sequence, state.last_sequence + 1);
    if state.messages == 0 {
        lo = hi;
    }
    // The seqs of the message at `hi`, once read.
    let mut at_hi = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let m = stream
            .get_raw_message(mid)
            .await
            .map_err(|e| publish::nats_err(&format!("reading message {mid} of the stream"), e))?;
        let (seq, prev) = (
            header(Some(&m.headers), publish::SEQ_HEADER)?,
            header(Some(&m.headers), publish::PREV_HEADER)?,
        );
        if seq > after {
            hi = mid;
            at_hi = Some((seq, prev));
        } else {
            lo = mid + 1;
        }
    }
    if let Some((seq, prev)) = at_hi.filter(|&(_, prev)| prev > after) {
        tracing::info!(
            after,
            seq,
            prev,
            "the stream no longer holds what follows this edge's cursor: catching up from the primary"
        );
        return Ok(None);
    }
    Ok(Some(lo))
}

/// A stream that yields an error once the connection has been down for [`DOWN_AFTER`].
fn watchdog(client: async_nats::Client, url: String) -> impl Stream<Item = Result<Item>> + Send {
    futures_util::stream::unfold(
        (client, None::<tokio::time::Instant>),
        move |(client, mut down_since)| {
            let url = url.clone();
            async move {
                loop {
                    tokio::time::sleep(DOWN_AFTER / 4).await;
                    if client.connection_state() == State::Connected {
                        down_since = None;
                        continue;
                    }
                    let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= DOWN_AFTER {
                        let e = publish::nats_err(
                            "reading the stream",
                            format!("lost the connection to {url}"),
                        );
                        return Some((Err(e), (client, None)));
                    }
                }
            }
        },
    )
}

/// A header's integer (a seq), required.
fn header(h: Option<&async_nats::HeaderMap>, name: &str) -> Result<i64> {
    h.and_then(|h| publish::header_seq(h, name)).ok_or_else(|| {
        Error::invalid(format!(
            "a message of the stream has no {name} header: it was not published by a hivesync node (or by one older than that header); point --upstream at the stream the primary publishes to"
        ))
    })
}

/// A message of the stream as an [`Item`].
fn item(m: &async_nats::Message) -> Result<Item> {
    let seq = header(m.headers.as_ref(), publish::SEQ_HEADER)?;
    let prev = header(m.headers.as_ref(), publish::PREV_HEADER)?;
    if m.headers
        .as_ref()
        .and_then(|h| h.get(publish::OMITTED_HEADER))
        .is_some()
    {
        return Ok(Item::Omitted(seq));
    }
    let c = crate::protocol::decode_change_json(&m.payload)?;
    if c.seq != seq {
        return Err(Error::invalid(format!(
            "a message of the stream says seq {seq} in its header and {} in its payload",
            c.seq
        )));
    }
    Ok(Item::Change(prev, c))
}
