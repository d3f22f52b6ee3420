//! Token authentication from the config file, reloaded when the file changes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use super::config::{hash_token, Anonymous, Config};
use crate::protocol::{AuthError, Authorizer, Principal, Scope};

/// The current auth state; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<RwLock<Arc<Config>>>,
    loopback: bool,
}

impl Auth {
    /// Auth for a node listening on `addr` with `config`.
    pub fn new(config: Config, addr: SocketAddr) -> Auth {
        Auth {
            inner: Arc::new(RwLock::new(Arc::new(config))),
            loopback: addr.ip().is_loopback(),
        }
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.inner.read().clone()
    }

    /// Replace the config (on reload).
    pub fn replace(&self, config: Config) {
        *self.inner.write() = Arc::new(config);
    }

    /// True when a client without a token would be let in.
    pub fn anonymous_allowed(&self) -> bool {
        let c = self.config();
        match c.anonymous {
            Anonymous::Always => true,
            Anonymous::Never => false,
            Anonymous::Auto => self.loopback && c.tokens.is_empty(),
        }
    }

    /// Watch `path` and reload it when it changes; a file that no longer parses is reported
    /// and the previous config stays in force.
    pub fn watch(&self, path: PathBuf) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let me = self.clone();
        let file = path.clone();
        let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let Ok(ev) = ev else { return };
            if !ev.paths.iter().any(|p| p.file_name() == file.file_name()) {
                return;
            }
            match Config::load(&file) {
                Ok(c) => {
                    if *me.config() != c {
                        tracing::info!(tokens = c.tokens.len(), "config reloaded");
                        me.replace(c);
                    }
                }
                Err(e) => tracing::error!(error = %e, "config change ignored: the file does not parse; the previous config stays in force"),
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; changes need a restart"))
        .ok()?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, "cannot watch the config file; changes need a restart");
            return None;
        }
        Some(w)
    }
}

/// Compare without an early exit, so response time does not leak how much of a hash matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authorizer for Auth {
    fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let c = self.config();
        match token {
            None | Some("") => {
                if self.anonymous_allowed() {
                    Ok(Principal {
                        name: "anonymous".into(),
                        read: c.anonymous_read.clone().unwrap_or_else(Scope::all),
                        write: c.anonymous_write.clone().unwrap_or_else(Scope::all),
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
                c.tokens
                    .iter()
                    .find(|k| {
                        constant_time_eq(k.sha256.to_ascii_lowercase().as_bytes(), h.as_bytes())
                    })
                    .map(|k| Principal {
                        name: k.name.clone(),
                        read: k.read.clone(),
                        write: k.write.clone(),
                    })
                    .ok_or_else(|| AuthError("unknown token".into()))
            }
        }
    }
}
