//! `serve --publish nats://HOST:PORT`: the change feed into a NATS JetStream stream.
//!
//! The publisher follows the change log (it never holds up a write: the log is its backlog) and
//! publishes every change, in seq order, to the stream `HIVESYNC` (by default), subject
//! `hivesync.changes.<ns>.<kind>`, as the protocol's JSON form of the change, with its seq in
//! the header `Hivesync-Seq`, the seq of the change before it in the log in `Hivesync-Prev` (a
//! consumer checks that chain to know it missed nothing; a change larger than the server's
//! `max_payload` goes out as a stand-in with the header `Hivesync-Omitted` and no payload, to be
//! read from the node's feed), and the node's signature over all three in `Hivesync-Sig`, whose
//! first 16 bytes are the JetStream message id (`Nats-Msg-Id`): see `node::vouch`. It waits
//! for each batch's acks before it moves on, so the stream holds the log in order. Where it
//! resumes after a restart or a lost connection: after the highest of the seq it recorded in
//! the database (`meta` key `nats_published_seq`, written at most once a second while changes
//! flow, and when the feed goes idle) and the seq of the last message in the stream that
//! carries its signature (messages it did not sign are counted and logged, never trusted); a
//! batch published again after a crash is dropped by the stream's duplicate window (10 minutes)
//! where the stream's last message does not already cover it.
//!
//! A namespace that is not a valid subject token (letters, digits, `_`, `-` only) is written
//! as `~` and the hex of its UTF-8 bytes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Kind;
use crate::node::hub::{EncodedChange, Hub, WindowRead};
use crate::node::metrics::Metrics;
use crate::node::vouch::{SigningKey, VerifyingKey, SIG_HEADER};
use crate::protocol::client::Backoff;
use crate::protocol::feed::{self, Chain, FrameLimits};
use crate::protocol::Encoding;
use crate::query::ChangeFilter;
use crate::store::Store;

/// Most changes per batch (published, then their acks awaited) ...
const BATCH: usize = 1024;
/// ... and most bytes of payload, for a batch taken from the hub's window (whole transactions).
const WINDOW_BATCH: FrameLimits = FrameLimits {
    changes: BATCH,
    bytes: 8 * 1024 * 1024,
};
/// Most time between records of the published seq while changes flow.
const RECORD_EVERY: Duration = Duration::from_secs(1);
/// The stream's duplicate window.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// How many messages back from the stream's end the publisher looks for the last one it signed,
/// when the last is not (a third party published after it): past that it resumes from the seq
/// it recorded.
const VERIFY_BACK: u64 = 256;
/// The `meta` key of the last seq the stream acknowledged.
const CURSOR_KEY: &str = "nats_published_seq";
/// The header holding a message's seq.
pub(crate) const SEQ_HEADER: &str = "Hivesync-Seq";
/// The header holding the seq of the change before it in the log (a consumer that saw that one
/// has missed nothing).
pub(crate) const PREV_HEADER: &str = "Hivesync-Prev";
/// The header of a message that stands in for a change too large for the NATS server's
/// `max_payload`: it has no payload; read the change from the node's feed.
pub(crate) const OMITTED_HEADER: &str = "Hivesync-Omitted";

/// `[publish]` in the node's TOML config; `serve --publish URL` sets `url`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// `nats://host:port` (several, comma-separated, for a cluster).
    pub url: Option<String>,
    /// The stream's name (default `HIVESYNC`); created if missing.
    pub stream: Option<String>,
    /// The subjects' first tokens (default `hivesync.changes`).
    pub subject_prefix: Option<String>,
    /// NATS token authentication.
    pub token: Option<String>,
    /// NATS user and password authentication.
    pub user: Option<String>,
    /// See `user`.
    pub password: Option<String>,
}

impl PublishConfig {
    pub(crate) fn stream(&self) -> String {
        self.stream.clone().unwrap_or_else(|| "HIVESYNC".into())
    }

    fn prefix(&self) -> String {
        self.subject_prefix
            .clone()
            .unwrap_or_else(|| "hivesync.changes".into())
    }
}

/// The subject a change is published under.
pub fn subject(prefix: &str, ns: &str, kind: Kind) -> String {
    format!("{prefix}.{}.{}", ns_token(ns), kind.as_str())
}

/// A namespace as one subject token.
pub(crate) fn ns_token(ns: &str) -> String {
    if !ns.is_empty()
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        ns.to_string()
    } else {
        let mut t = String::from("~");
        for b in ns.bytes() {
            t.push_str(&format!("{b:02x}"));
        }
        t
    }
}

/// Run the publisher until `shutdown`: connect, publish, and on any failure log it, wait
/// (the client session's backoff) and start again.
pub(crate) async fn run(
    store: Arc<Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    cfg: PublishConfig,
    key: Arc<SigningKey>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(std::process::id() as u64);
    loop {
        let started = Instant::now();
        let r = tokio::select! {
            r = session(&store, &hub, &metrics, &cfg, &key) => r,
            _ = shutdown.changed() => return,
        };
        metrics.nats_connected.store(0, Relaxed);
        if let Err(e) = r {
            metrics.nats_errors.fetch_add(1, Relaxed);
            *metrics.nats_error_at.lock() = Some(Instant::now());
            let behind = hub.head() - metrics.nats_published.load(Relaxed);
            tracing::warn!(error = %e, behind, "publishing to NATS stopped; the change log holds what is not published yet, and it resumes when NATS is back");
        }
        if started.elapsed() >= crate::protocol::client::HEALTHY_AFTER {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

pub(crate) fn nats_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(format!("{what}: {e}")))
}

/// Connect to the NATS server(s) in `cfg`, as `name`, with its credentials.
pub(crate) async fn connect(cfg: &PublishConfig, name: &str) -> Result<async_nats::Client> {
    let url = cfg
        .url
        .clone()
        .ok_or_else(|| Error::invalid("NATS needs a url (nats://host:port)"))?;
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        // The client's own reports (one per failed reconnect) at debug: the publisher and the
        // edge say what a lost connection means for them.
        .event_callback(|e| async move { tracing::debug!(event = %e, "NATS") })
        .connection_timeout(Duration::from_secs(5));
    if let Some(t) = &cfg.token {
        opts = opts.token(t.clone());
    } else if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    } else if let Some((user, pass)) = url_credentials(&url) {
        // `nats://user:password@host:port` or `nats://token@host:port`, as NATS's own tools
        // take them (the client library does not read them from the URL itself).
        opts = match pass {
            Some(p) => opts.user_and_password(user, p),
            None => opts.token(user),
        };
    }
    opts.connect(url.as_str())
        .await
        .map_err(|e| nats_err(&format!("connecting to {}", redacted(&url)), e))
}

/// `urls` with any credentials in them replaced by `***`, for logs and errors.
pub(crate) fn redacted(urls: &str) -> String {
    urls.split(',')
        .map(|u| match u.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => u.to_string(),
            },
            None => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The credentials in the first of `urls` that has any (user, and password if given).
fn url_credentials(urls: &str) -> Option<(String, Option<String>)> {
    urls.split(',').find_map(|u| {
        let addr: async_nats::ServerAddr = u.trim().parse().ok()?;
        let user = addr.username()?.to_string();
        Some((user, addr.password().map(str::to_string)))
    })
}

/// The seq in the `Hivesync-Seq` header of the stream's last message (0 for an empty
/// stream): where the stream is. Consumers and tests ask it too.
pub async fn stream_last_seq(stream: &mut jetstream::stream::Stream) -> Result<i64> {
    let info = stream
        .info()
        .await
        .map_err(|e| nats_err("reading the stream's state", e))?;
    let last = info.state.last_sequence;
    if last == 0 {
        return Ok(0);
    }
    let m = stream
        .get_raw_message(last)
        .await
        .map_err(|e| nats_err("reading the stream's last message", e))?;
    Ok(header_seq(&m.headers, SEQ_HEADER).unwrap_or(0))
}

/// The integer in a message's header `name` (a seq), if it has one.
pub(crate) fn header_seq(headers: &async_nats::HeaderMap, name: &str) -> Option<i64> {
    headers.get(name).and_then(|v| v.as_str().parse().ok())
}

async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
) -> Result<T> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| nats_err("publisher task", e))?
}

async fn session(
    store: &Arc<Store>,
    hub: &Arc<Hub>,
    metrics: &Arc<Metrics>,
    cfg: &PublishConfig,
    key: &SigningKey,
) -> Result<()> {
    let client = connect(cfg, "hivesync-publisher").await?;
    // A change larger than the server takes goes out as a stand-in without payload.
    let max_payload = client.server_info().max_payload;
    let js = jetstream::new(client.clone());
    let prefix = cfg.prefix();
    let mut after = resume_point(store, &js, cfg, &prefix, key, metrics).await?;
    metrics.nats_connected.store(1, Relaxed);
    metrics.nats_published.store(after, Relaxed);
    tracing::info!(stream = %cfg.stream(), after, "publishing the change feed to NATS");
    let mut head = hub.subscribe_head();
    // The seq recorded in the database, and when: recording is a write transaction, so it is
    // done at most once per RECORD_EVERY while changes flow (and when the feed goes idle); the
    // stream's last message is where a restart resumes anyway.
    let mut recorded_at = (after, Instant::now());
    loop {
        // What the client knows of its connection, now: `hivesync_nats_connected` stayed 1
        // for about 8 s after nats-server died while the publisher had nothing to send.
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        metrics.nats_connected.store(connected as u64, Relaxed);
        let batch = next_batch(store, hub, &mut after).await?;
        if batch.is_empty() {
            if recorded_at.0 < after {
                record(store, after).await?;
                recorded_at = (after, Instant::now());
            }
            // Wait for a commit (or check again now and then: another process may write).
            let _ = tokio::time::timeout(Duration::from_secs(1), head.changed()).await;
            continue;
        }
        after = publish_batch(&js, &prefix, max_payload, after, &batch, key, metrics).await?;
        metrics.nats_published.store(after, Relaxed);
        if recorded_at.1.elapsed() >= RECORD_EVERY {
            record(store, after).await?;
            recorded_at = (after, Instant::now());
        }
    }
}

/// Create the stream if missing, and say where publishing resumes: after the higher of the seq
/// recorded in the database and the last message in the stream that this node signed.
async fn resume_point(
    store: &Arc<Store>,
    js: &jetstream::Context,
    cfg: &PublishConfig,
    prefix: &str,
    key: &SigningKey,
    metrics: &Metrics,
) -> Result<i64> {
    let mut stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: cfg.stream(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_err("creating the stream", e))?;
    let recorded = blocking(store, |s| {
        s.read(|c| {
            let v: Option<String> = rusqlite::OptionalExtension::optional(c.query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [CURSOR_KEY],
                |r| r.get(0),
            ))?;
            Ok(v.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0))
        })
    })
    .await?;
    let (signed, foreign) = last_signed_seq(&mut stream, key).await?;
    if foreign > 0 {
        metrics.nats_foreign.fetch_add(foreign, Relaxed);
        tracing::error!(
            stream = %cfg.stream(),
            foreign,
            last_signed = signed,
            recorded,
            "the NATS stream ends with messages this node did not sign: someone else can publish to its subjects; they are ignored (edges refuse them too). Turn on NATS authentication (README: Edges fed from NATS)"
        );
    }
    Ok(recorded.max(signed))
}

/// The seq of the last message in the stream that carries this node's signature (0 if none of
/// the last [`VERIFY_BACK`] does), and how many after it do not.
async fn last_signed_seq(
    stream: &mut jetstream::stream::Stream,
    key: &SigningKey,
) -> Result<(i64, u64)> {
    let verify = VerifyingKey::parse(&key.public())?;
    let info = stream
        .info()
        .await
        .map_err(|e| nats_err("reading the stream's state", e))?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    if info.state.messages == 0 || last == 0 {
        return Ok((0, 0));
    }
    let mut foreign = 0;
    let mut at = last;
    while at >= first.max(1) && last - at < VERIFY_BACK {
        match stream.get_raw_message(at).await {
            Ok(m) => {
                if let Some(seq) = signed_seq(&verify, &m.headers, &m.payload) {
                    return Ok((seq, foreign));
                }
                foreign += 1;
            }
            // Deleted from the middle of the stream: nothing there to trust.
            Err(e) => tracing::debug!(at, error = %e, "reading a message of the stream"),
        }
        at -= 1;
    }
    Ok((0, foreign))
}

/// The seq of a stream message when `key` signed it.
pub(crate) fn signed_seq(
    key: &VerifyingKey,
    headers: &async_nats::HeaderMap,
    payload: &[u8],
) -> Option<i64> {
    let seq = header_seq(headers, SEQ_HEADER)?;
    let prev = header_seq(headers, PREV_HEADER)?;
    let sig = headers.get(SIG_HEADER)?.as_str();
    let body = headers.get(OMITTED_HEADER).is_none().then_some(payload);
    key.verify(seq, prev, body, sig).then_some(seq)
}

/// The next changes after `after`: from the hub's window, which holds the latest ones already
/// encoded (the fragment subscribers get is the message's payload), or from the log when the
/// publisher is behind the window. Where the log was trimmed past `after`, `after` moves to
/// the gap's end (said in the log; the stream's `Hivesync-Prev` shows it to consumers).
async fn next_batch(
    store: &Arc<Store>,
    hub: &Hub,
    after: &mut i64,
) -> Result<Vec<Arc<EncodedChange>>> {
    if let WindowRead::Changes(batch, _) =
        hub.read(*after, WINDOW_BATCH, Encoding::Json, |_, _| true)
    {
        return Ok(batch);
    }
    let horizon = blocking(store, |s| s.horizon()).await?;
    if !feed::covered(*after, horizon) {
        tracing::error!(
            from = *after + 1,
            to = horizon - 1,
            "changes were trimmed from the log before they were published: the stream has a gap there; its consumers need a snapshot from this node"
        );
        *after = horizon - 1;
    }
    let from = *after;
    Ok(blocking(store, move |s| {
        s.changes_since(from, &ChangeFilter::default(), BATCH)
    })
    .await?
    .iter()
    .map(|c| Arc::new(EncodedChange::new(c)))
    .collect())
}

/// Publish `batch` (continuing from `after`) and wait for the stream's acks; returns its last
/// seq.
async fn publish_batch(
    js: &jetstream::Context,
    prefix: &str,
    max_payload: usize,
    after: i64,
    batch: &[Arc<EncodedChange>],
    key: &SigningKey,
    metrics: &Metrics,
) -> Result<i64> {
    let mut acks = Vec::with_capacity(batch.len());
    // One change per message, each naming the one before it.
    let mut chain = Chain::after(after);
    for c in batch {
        let prev = chain.next(c.seq);
        let seq = c.seq.to_string();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SEQ_HEADER, seq.as_str());
        headers.insert(PREV_HEADER, prev.to_string().as_str());
        // Headers and subject take well under 1 KiB.
        let too_large = c.json.len() + 1024 > max_payload;
        let signed = key.sign(c.seq, prev, (!too_large).then_some(&c.json[..]));
        headers.insert("Nats-Msg-Id", signed.id.as_str());
        headers.insert(SIG_HEADER, signed.sig.as_str());
        let payload = if too_large {
            tracing::warn!(
                seq = c.seq,
                bytes = c.json.len(),
                max_payload,
                "a change is larger than the NATS server's max_payload: the stream gets a stand-in without it (consumers read it from the node's feed); raise max_payload in nats-server's config to carry it"
            );
            headers.insert(OMITTED_HEADER, "too-large");
            Vec::new()
        } else {
            c.json.to_vec()
        };
        let ack = js
            .publish_with_headers(subject(prefix, &c.ns, c.kind), headers, payload.into())
            .await
            .map_err(|e| nats_err("publishing", e))?;
        acks.push((c.seq, ack));
    }
    for (seq, ack) in acks {
        let ack = ack
            .await
            .map_err(|e| nats_err("waiting for the stream's ack", e))?;
        if ack.duplicate {
            // Its id is its signature: only a message of ours published before can match it,
            // and the publisher resumes after the last one the stream holds. The stream did not
            // store this change: its consumers see the gap and read it from this node's feed.
            metrics.nats_duplicates.fetch_add(1, Relaxed);
            tracing::warn!(seq, "the NATS stream called a change a duplicate and did not store it: it holds a message with that id this publisher did not expect");
        }
    }
    Ok(chain.last())
}

/// Record `seq` as published.
async fn record(store: &Arc<Store>, seq: i64) -> Result<()> {
    blocking(store, move |s| {
        let w = s.pool().writer()?;
        w.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            rusqlite::params![CURSOR_KEY, seq.to_string()],
        )?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_url_and_never_reach_a_log() {
        assert_eq!(
            url_credentials("nats://hs:s3cret@n:4222"),
            Some(("hs".into(), Some("s3cret".into())))
        );
        assert_eq!(
            url_credentials("nats://a:4222, nats://tok@b:4222"),
            Some(("tok".into(), None))
        );
        assert_eq!(url_credentials("nats://a:4222"), None);
        assert_eq!(
            redacted("nats://hs:s3cret@n:4222,nats://m:4222"),
            "nats://***@n:4222,nats://m:4222"
        );
    }

    #[test]
    fn namespaces_become_one_subject_token() {
        assert_eq!(ns_token("default"), "default");
        assert_eq!(ns_token("team-a_1"), "team-a_1");
        assert_eq!(ns_token("a.b"), "~612e62");
        assert_eq!(ns_token("*"), "~2a");
        assert_eq!(ns_token(""), "~");
        assert_eq!(ns_token("é"), "~c3a9");
    }
}
