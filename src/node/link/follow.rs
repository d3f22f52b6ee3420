//! `serve --upstream nats://HOST:PORT --primary ws://HOST:PORT/v1/sync`: an edge whose live
//! changes come from the JetStream stream the primary publishes to ([`crate::node::publish`]), not
//! from the primary's socket, so the primary's fan-out is one stream however many edges follow.
//!
//! This file opens that feed: it finds the stream's first message after the edge's cursor (a
//! binary search over the stream by the `Hivesync-Seq` header: seqs ascend through the stream)
//! and reads from there with an ordered consumer (ephemeral, no acks, recreated by the client
//! after a lost message or connection). Each message gives the change and the seq it follows
//! (`Hivesync-Prev`); the client session checks that chain, as it checks the primary's frames.
//!
//! The edge applies only what the primary vouched for ([`crate::node::vouch`]): every message must
//! carry the primary's signature, checked with the key its `welcome` gave over the edge's
//! authenticated link, and kept in the edge's database (`meta` key `nats_primary_key`) so that
//! a restarted edge reads the stream before its link is back. The stream is not opened before
//! the edge has that key; the search skips
//! messages that do not verify, and one read from the consumer is dropped, counted
//! (`hivesync_upstream_nats_rejected_total`, `/healthz`) and ends the feed, so the edge follows
//! the primary's feed again until the stream can take over.
//!
//! Everything else is the relay's ([`crate::node::upstream`]): the link to the primary stays open for
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

use crate::error::{Error, Result};
use crate::model::Change;
use crate::node::publish::{self, PublishConfig};
use crate::node::vouch::VerifyingKey;
use crate::store::Store;

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
    /// A message the primary did not sign (its stream seq): dropped.
    Unsigned(u64),
}

/// Most messages the search for the edge's place in the stream reads past because they do not
/// verify: beyond that the stream is not used (the edge follows the primary's feed).
const MAX_SKIPPED: u32 = 1024;
/// The `meta` key of the primary's publish key, as the edge last learned it.
const KEY_META: &str = "nats_primary_key";

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
    /// The primary's publish key, from its latest `welcome`.
    key: Arc<parking_lot::Mutex<Option<VerifyingKey>>>,
}

impl Follow {
    pub(crate) fn new(cfg: PublishConfig) -> Follow {
        Follow {
            cfg: Arc::new(cfg),
            client: Arc::default(),
            key: Arc::default(),
        }
    }

    /// The publish key the edge learned before (from its database), until a `welcome` says.
    pub(crate) fn load_key(&self, store: &Store) {
        let kept = store.read(|c| {
            Ok(rusqlite::OptionalExtension::optional(c.query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [KEY_META],
                |r| r.get::<_, String>(0),
            ))?)
        });
        match kept {
            Ok(Some(k)) => *self.key.lock() = VerifyingKey::parse(&k).ok(),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the primary's publish key"),
        }
    }

    /// Take the publish key from the primary's `welcome` (None: it does not vouch for a stream,
    /// and the edge follows its feed), and keep it in `store` when it changed.
    pub(crate) fn set_key(&self, key: Option<&str>, store: &Store) {
        let parsed = match key.map(VerifyingKey::parse).transpose() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "the primary's publish key is unusable: following its feed");
                None
            }
        };
        let mut slot = self.key.lock();
        if *slot == parsed {
            return;
        }
        if parsed.is_none() {
            tracing::warn!("the primary does not vouch for a NATS stream (its welcome has no publish key): following its feed");
        }
        *slot = parsed;
        drop(slot);
        let kept = store.pool().writer().and_then(|w| {
            match key.filter(|_| self.key.lock().is_some()) {
                Some(k) => w.execute(
                    "INSERT INTO meta(key, value) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    rusqlite::params![KEY_META, k],
                ),
                None => w.execute("DELETE FROM meta WHERE key = ?1", [KEY_META]),
            }?;
            Ok(())
        });
        if let Err(e) = kept {
            tracing::warn!(error = %e, "cannot keep the primary's publish key (a restart waits for the link to learn it again)");
        }
    }

    /// Where it reads, for logs.
    pub(crate) fn url(&self) -> String {
        publish::redacted(self.cfg.url.as_deref().unwrap_or(""))
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
        let key = self.key.lock().clone().ok_or_else(|| {
            Error::invalid(
                "the primary has not vouched for the stream: its welcome carries no publish key (it does not publish to NATS, or runs a release before signed streams); following its feed",
            )
        })?;
        let client = self.client().await?;
        let js = jetstream::new(client.clone());
        let name = self.cfg.stream();
        let mut stream = js.get_stream(&name).await.map_err(|e| {
            publish::nats_err(
                &format!("opening the stream {name} (does the primary publish to it?)"),
                e,
            )
        })?;
        let Some(start) = first_after(&mut stream, after, &key).await? else {
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
        let messages = messages.map(move |m| {
            let m = m.map_err(|e| publish::nats_err("reading the stream", e))?;
            let at = m.info().map_or(0, |i| i.stream_sequence);
            item(&m.message, &key, at)
        });
        // The ordered consumer waits through an outage without a word: the watchdog ends the
        // feed instead.
        Ok(Some(Box::pin(futures_util::stream::select(
            messages,
            watchdog(client, self.url()),
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

/// The stream sequence of the first message the primary signed whose change comes after
/// `after` (one past the last message when none does yet), found by bisection: the signed
/// messages' seqs ascend through the stream, and the others are read past. None when that
/// message does not continue from `after` (the stream no longer holds what follows).
async fn first_after(
    stream: &mut jetstream::stream::Stream,
    after: i64,
    key: &VerifyingKey,
) -> Result<Option<u64>> {
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
    // The answer so far: the position and seqs of the first signed message found after `after`.
    let mut found = None;
    let mut skipped = 0;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        // The first signed message at or after `mid` (before `hi`).
        let mut at = mid;
        let probe = loop {
            if at >= hi {
                break None;
            }
            let m = stream.get_raw_message(at).await.map_err(|e| {
                publish::nats_err(&format!("reading message {at} of the stream"), e)
            })?;
            if let Some(seq) = publish::signed_seq(key, &m.headers, &m.payload) {
                let prev = header(Some(&m.headers), publish::PREV_HEADER)?;
                break Some((seq, prev));
            }
            skipped += 1;
            if skipped > MAX_SKIPPED {
                return Err(Error::invalid(format!(
                    "the stream holds over {MAX_SKIPPED} messages the primary did not sign near this edge's place: someone else publishes to its subjects; following the primary's feed (turn on NATS authentication)"
                )));
            }
            at += 1;
        };
        match probe {
            Some((seq, prev)) if seq > after => {
                found = Some((at, seq, prev));
                hi = mid;
            }
            Some(_) => lo = at + 1,
            None => hi = mid,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "the stream holds messages the primary did not sign: read past them"
        );
    }
    let start = found.map_or(state.last_sequence + 1, |(at, _, _)| at);
    if let Some((_, seq, prev)) = found.filter(|&(_, _, prev)| prev > after) {
        tracing::info!(
            after,
            seq,
            prev,
            "the stream no longer holds what follows this edge's cursor: catching up from the primary"
        );
        return Ok(None);
    }
    Ok(Some(start))
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

/// A message of the stream (at stream sequence `at`) as an [`Item`].
fn item(m: &async_nats::Message, key: &VerifyingKey, at: u64) -> Result<Item> {
    let Some(headers) = m.headers.as_ref() else {
        return Ok(Item::Unsigned(at));
    };
    let Some(seq) = publish::signed_seq(key, headers, &m.payload) else {
        return Ok(Item::Unsigned(at));
    };
    let prev = header(Some(headers), publish::PREV_HEADER)?;
    if headers.get(publish::OMITTED_HEADER).is_some() {
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
