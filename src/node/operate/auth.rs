//! Token authentication from the config file, reloaded when the file changes.
//!
//! A reload happens once per change, after the file has been quiet for [`SETTLE`]: editors and
//! `cat > node.toml` write a file in several steps, and a version caught in between (empty, or
//! cut after its first lines) must never be the one in force. Each distinct version of the file
//! is read and judged once; a refused one is logged once and the last good config stays.
//! Every reload bumps a generation that open connections watch: each re-checks its principal,
//! so a removed token's connections close and narrowed scopes apply to their next frame.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;

use super::jwks::{self, KeyStatus};
use super::jwt::{Reason, Refusals, Verifier};
use crate::node::config::{hash_token, Anonymous, Config};
use crate::protocol::{AuthError, Authorizer, Principal, Scope};

/// How long the config file must be quiet (no write, create, rename or remove event) before it
/// is read: longer than the gap between the writes of one save, short enough to feel instant.
pub(crate) const SETTLE: Duration = Duration::from_millis(300);

struct Shared {
    config: RwLock<Arc<Config>>,
    loopback: bool,
    /// Bumped on every accepted reload; connections re-check their principal when it moves.
    generation: watch::Sender<u64>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    /// The `[jwt]` verifier in force (None without the section).
    jwt: RwLock<Option<Arc<Verifier>>>,
    /// The state of its key sources.
    keys: KeyStatus,
    /// Refused JWTs, by reason.
    refusals: Refusals,
}

/// The current auth state; cheap to clone.
#[derive(Clone)]
pub(crate) struct Auth {
    inner: Arc<Shared>,
}

/// Why a new version of the config file was not put in force.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    /// It does not parse or fails a check.
    #[error("{0}")]
    Invalid(String),
    /// It would let anonymous clients in where the config in force refuses them, without
    /// saying so.
    #[error("this version would let clients without a token in (anonymous = \"auto\" with no tokens, on a loopback listener) where the config in force refuses them; a truncated or half-written file looks like this. To mean it, set `anonymous` explicitly in the file (\"auto\", \"always\" or \"never\")")]
    WouldOpen,
}

impl Auth {
    /// Auth for a node listening on `addr` with `config` (an error: the `[jwt]` section's
    /// secret file cannot be read).
    pub(crate) fn new(config: Config, addr: SocketAddr) -> crate::Result<Auth> {
        let jwt = config
            .jwt
            .clone()
            .map(Verifier::new)
            .transpose()?
            .map(Arc::new);
        Ok(Auth {
            inner: Arc::new(Shared {
                config: RwLock::new(Arc::new(config)),
                loopback: addr.ip().is_loopback(),
                generation: watch::channel(0).0,
                reloads: AtomicU64::new(0),
                reload_failures: AtomicU64::new(0),
                jwt: RwLock::new(jwt),
                keys: KeyStatus::default(),
                refusals: Refusals::default(),
            }),
        })
    }

    /// The JWT verifier in force.
    pub(crate) fn verifier(&self) -> Option<Arc<Verifier>> {
        self.inner.jwt.read().clone()
    }

    /// The key sources' state.
    pub(crate) fn key_status(&self) -> &KeyStatus {
        &self.inner.keys
    }

    /// JWTs refused for `r` since start.
    pub(crate) fn refused(&self, r: Reason) -> u64 {
        self.inner.refusals.get(r)
    }

    /// Fetch the identity provider's keys now (at most once per floor), for a token naming key
    /// `kid`; connections re-check their tokens when the set changed.
    pub(crate) async fn refresh_keys(&self, kid: &str) {
        let Some(v) = self.verifier() else { return };
        if jwks::refresh_for(&v.sources(), &self.inner.keys, kid).await {
            self.inner.generation.send_modify(|g| *g += 1);
        }
    }

    /// Keep the keys fresh until `shutdown`: fetched at once, then on the `[jwt]` schedule, and
    /// whenever a reload put a new `[jwt]` section in force. A set that changed (a key removed)
    /// makes every connection re-check its token.
    pub(crate) async fn keep_keys(self, mut shutdown: watch::Receiver<bool>) {
        let mut current: Option<Arc<Verifier>> = None;
        let mut due = tokio::time::Instant::now();
        loop {
            let v = self.verifier();
            let fresh = match (&v, &current) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                (a, b) => a.is_some() != b.is_some(),
            };
            if let Some(ver) = &v {
                if fresh || tokio::time::Instant::now() >= due {
                    if jwks::refresh(&ver.sources(), &self.inner.keys).await && !fresh {
                        self.inner.generation.send_modify(|g| *g += 1);
                    }
                    due = tokio::time::Instant::now() + jwks::refresh_every(&ver.sources());
                }
            }
            current = v;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// The config in force.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.inner.config.read().clone()
    }

    /// A receiver that changes on every accepted reload.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Reloads accepted and refused since start.
    pub(crate) fn reload_counts(&self) -> (u64, u64) {
        (
            self.inner.reloads.load(Relaxed),
            self.inner.reload_failures.load(Relaxed),
        )
    }

    fn allows_anonymous(&self, c: &Config) -> bool {
        match c.anonymous() {
            Anonymous::Always => true,
            Anonymous::Never => false,
            Anonymous::Auto => self.inner.loopback && c.tokens.is_empty(),
        }
    }

    /// True when a client without a token would be let in.
    pub(crate) fn anonymous_allowed(&self) -> bool {
        self.allows_anonymous(&self.config())
    }

    /// Judge a new version of the config file and put it in force when it passes: Ok(true)
    /// when it changed anything. Counted in `/metrics` either way.
    pub(crate) fn reload(&self, text: &str) -> Result<bool, ReloadError> {
        let res = self.judge(text);
        match &res {
            Ok(true) => self.inner.reloads.fetch_add(1, Relaxed),
            Err(_) => self.inner.reload_failures.fetch_add(1, Relaxed),
            Ok(false) => 0,
        };
        res
    }

    fn judge(&self, text: &str) -> Result<bool, ReloadError> {
        let new = Config::parse(text).map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let old = self.config();
        if *old == new {
            return Ok(false);
        }
        if !self.allows_anonymous(&old) && self.allows_anonymous(&new) && new.anonymous.is_none() {
            return Err(ReloadError::WouldOpen);
        }
        if new.jwt != old.jwt {
            let v = new
                .jwt
                .clone()
                .map(Verifier::new)
                .transpose()
                .map_err(|e| ReloadError::Invalid(e.to_string()))?;
            // Keys are fetched for it by `keep_keys` (until then, the old set's keys carry on).
            if let (Some(v), Some(old)) = (&v, self.verifier()) {
                *v.keys.write() = old.keys.read().clone();
            }
            *self.inner.jwt.write() = v.map(Arc::new);
        }
        tracing::info!(tokens = new.tokens.len(), "config reloaded");
        *self.inner.config.write() = Arc::new(new);
        self.inner.generation.send_modify(|g| *g += 1);
        Ok(true)
    }

    /// Watch `path` and reload it once per change, after it has settled; a version that is
    /// refused is reported once and the previous config stays in force.
    pub(crate) fn watch(&self, path: PathBuf) -> Option<notify::RecommendedWatcher> {
        use notify::event::ModifyKind;
        use notify::{EventKind, Watcher};
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let file = path.file_name()?.to_os_string();
        let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let Ok(ev) = ev else { return };
            // Only what changes the file: our own reads raise open/access (and, with atime,
            // metadata) events, and reacting to those re-read the file forever.
            let changes = match ev.kind {
                EventKind::Modify(ModifyKind::Metadata(_)) => false,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
                _ => false,
            };
            if changes && ev.paths.iter().any(|p| p.file_name() == Some(&file)) {
                let _ = tx.send(());
            }
        })
        .map_err(
            |e| tracing::warn!(error = %e, "cannot watch the config file; changes need a restart"),
        )
        .ok()?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, "cannot watch the config file; changes need a restart");
            return None;
        }
        let me = self.clone();
        let started = std::thread::Builder::new()
            .name("hivesync-config".into())
            .spawn(move || me.reload_loop(&path, &rx));
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot watch the config file; changes need a restart");
            return None;
        }
        Some(w)
    }

    /// Wait for change events, let them settle, and judge each new version once. Ends when the
    /// watcher (holding the sender) is dropped.
    fn reload_loop(&self, path: &std::path::Path, events: &std::sync::mpsc::Receiver<()>) {
        use sha2::{Digest, Sha256};
        let mut last_seen: Option<[u8; 32]> = None;
        while events.recv().is_ok() {
            // Settle: wait until no event has come for SETTLE.
            loop {
                match events.recv_timeout(SETTLE) {
                    Ok(()) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    let h: [u8; 32] = Sha256::digest(format!("unreadable: {e}")).into();
                    if last_seen != Some(h) {
                        last_seen = Some(h);
                        self.inner.reload_failures.fetch_add(1, Relaxed);
                        tracing::error!(path = %path.display(), error = %e, "cannot read the config file; the previous config stays in force");
                    }
                    continue;
                }
            };
            let h: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            if last_seen == Some(h) {
                continue;
            }
            last_seen = Some(h);
            if let Err(e) = self.reload(&text) {
                tracing::error!(path = %path.display(), error = %e, "config change refused; the previous config stays in force");
            }
        }
    }
}

/// Compare without an early exit, so response time does not leak how much of a hash matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The node's tokens as a connection from a web page sees them: a page of another origin
/// than the node's own or the config's `allowed_origins` gets no anonymous access (any
/// website could otherwise read and write a default local node through its visitors'
/// browsers); a token works from anywhere.
pub(crate) struct ForOrigin<'a> {
    pub(crate) auth: &'a Auth,
    /// That origin, for such a connection.
    pub(crate) foreign: Option<&'a str>,
}

impl Authorizer for ForOrigin<'_> {
    fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        match (token, self.foreign) {
            (None | Some(""), Some(origin)) => Err(AuthError(format!(
                "a web page at {origin} may not use this node without a token: send one in hello, or add {origin} to allowed_origins in the node's config"
            ))),
            _ => self.auth.authenticate(token),
        }
    }

    fn missing_key(&self, token: &str) -> Option<String> {
        self.auth.missing_key(token)
    }
}

impl Authorizer for Auth {
    fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let c = self.config();
        match token {
            None | Some("") => {
                if self.allows_anonymous(&c) {
                    Ok(Principal {
                        name: "anonymous".into(),
                        read: c.anonymous_read.clone().unwrap_or_else(Scope::all),
                        write: c.anonymous_write.clone().unwrap_or_else(Scope::all),
                        expires: None,
                    })
                } else {
                    Err(AuthError(
                        "this node requires a token: send {\"type\":\"hello\",\"token\":\"...\"}"
                            .into(),
                    ))
                }
            }
            Some(t) => {
                let h = hash_token(t);
                let found = c.tokens.iter().find(|k| {
                    constant_time_eq(k.sha256.to_ascii_lowercase().as_bytes(), h.as_bytes())
                });
                match (found, self.verifier()) {
                    (Some(k), _) => Ok(Principal {
                        name: k.name.clone(),
                        read: k.read.clone(),
                        write: k.write.clone(),
                        expires: None,
                    }),
                    (None, Some(v)) => self.verify_jwt(&v, t),
                    (None, None) => Err(AuthError("unknown token".into())),
                }
            }
        }
    }

    fn missing_key(&self, token: &str) -> Option<String> {
        self.verifier()?.missing_key(token)
    }
}

impl Auth {
    /// A JWT, verified; a refusal is counted by reason and logged at most once a second
    /// (never with the token).
    fn verify_jwt(&self, v: &Verifier, token: &str) -> Result<Principal, AuthError> {
        v.verify(token).map_err(|r| {
            self.inner.refusals.count(r.reason);
            if self.inner.refusals.may_log() {
                tracing::info!(reason = r.reason.as_str(), "refused a JWT: {}", r.message);
            }
            AuthError(r.message)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_config(anonymous: &str) -> String {
        format!(
            "name = \"n\"\n{anonymous}[[token]]\nname = \"a\"\nsha256 = \"{}\"\nread = [\"*\"]\nwrite = [\"*\"]\n",
            hash_token("s")
        )
    }

    #[test]
    fn truncated_versions_never_open_a_closed_node() {
        let loopback: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let auth = Auth::new(
            Config::parse(&token_config("anonymous = \"never\"\n")).unwrap_or_default(),
            loopback,
        )
        .unwrap();
        assert!(!auth.anonymous_allowed());
        // Empty, cut after the first line, whitespace: refused, config kept.
        for bad in ["", "name = \"n\"\n", "  \n", "name = \"n\"\n[[tok"] {
            assert!(auth.reload(bad).is_err(), "{bad:?} was accepted");
            assert!(!auth.anonymous_allowed(), "{bad:?} opened the node");
        }
        // Tokens configured and no `anonymous`: auto means never.
        assert!(matches!(auth.reload(&token_config("")), Ok(true)));
        assert!(!auth.anonymous_allowed());
        // Opening it on purpose is explicit.
        assert!(matches!(auth.reload("anonymous = \"auto\"\n"), Ok(true)));
        assert!(auth.anonymous_allowed());
        assert_eq!(auth.reload_counts(), (2, 4));
        // Narrowing again needs nothing special.
        assert!(matches!(auth.reload(&token_config("")), Ok(true)));
        assert!(!auth.anonymous_allowed());
    }

    #[test]
    fn a_node_started_open_may_reload_without_anonymous() {
        let loopback: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let auth = Auth::new(Config::default(), loopback).unwrap();
        assert!(auth.anonymous_allowed());
        assert!(matches!(auth.reload("name = \"renamed\"\n"), Ok(true)));
        assert!(auth.anonymous_allowed());
        let gen = auth.subscribe();
        assert!(matches!(auth.reload("name = \"again\"\n"), Ok(true)));
        assert!(gen.has_changed().unwrap_or(false));
        assert!(matches!(auth.reload("name = \"again\"\n"), Ok(false)));
    }
}
