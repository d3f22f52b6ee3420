//! The node's TOML config file: tokens (stored as SHA-256 hashes, never the secret), their
//! namespace scopes, anonymous access, and change-log retention.
//!
//! ```toml
//! name = "edge-1"            # shown in `welcome`
//! anonymous = "never"        # auto | never | always (see below)
//!
//! [[token]]
//! name = "alice"
//! sha256 = "<hex of sha256(secret)>"   # `hivesync token` makes one
//! read = ["*"]                          # exact names, "prefix*", or "*"
//! write = ["default"]
//!
//! [jwt]                     # sign-in with your identity provider: see `node::jwt`
//! jwks_url = "https://YOUR_DOMAIN/.well-known/jwks.json"
//! read = ["user:{sub}"]
//!
//! [retention]
//! max_changes = 1000000      # keep at most this many changes
//! max_age_secs = 604800      # and none older than this
//! interval_secs = 60         # how often to trim
//! ```
//!
//! `anonymous = "auto"` (the default) lets clients without a token in only when no tokens are
//! configured and the node listens on a loopback address (so with tokens it means `never`);
//! `always` lets them in anywhere (with `anonymous_read` / `anonymous_write` scopes, all by
//! default); `never` refuses them.
//!
//! Reloads are guarded (`Auth::reload`): an empty or unparsable file is
//! refused, and a version that would let anonymous clients in where the config in force refuses
//! them is refused unless it sets `anonymous` explicitly, so a truncated or half-written file
//! cannot open the node.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::protocol::Scope;

/// When clients without a token are let in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Only with no tokens configured and a loopback listener.
    #[default]
    Auto,
    /// Never.
    Never,
    /// Always, on any listener.
    Always,
}

/// One token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name, for logs and errors.
    pub name: String,
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    /// Namespaces it may read.
    #[serde(default)]
    pub read: Scope,
    /// Namespaces it may write.
    #[serde(default)]
    pub write: Scope,
}

/// Change-log retention.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep at most this many changes.
    pub max_changes: Option<u64>,
    /// Drop changes older than this.
    pub max_age_secs: Option<u64>,
    /// Seconds between trims (default 60).
    pub interval_secs: Option<u64>,
}

/// `[image]` in the config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Rebuild an image once the log has moved this many changes past it (default 10,000).
    pub rebuild_after_changes: Option<i64>,
    /// Rebuild an image this old (seconds, default 600).
    pub rebuild_after_secs: Option<u64>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node name.
    pub name: Option<String>,
    /// Anonymous access policy, as written in the file (absent: [`Anonymous::Auto`]; see
    /// [`Config::anonymous`]).
    #[serde(default)]
    pub anonymous: Option<Anonymous>,
    /// Scope of anonymous readers (default all).
    pub anonymous_read: Option<Scope>,
    /// Scope of anonymous writers (default all).
    pub anonymous_write: Option<Scope>,
    /// Tokens.
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenConfig>,
    /// Web origins (`https://app.example.com`) whose pages may use this node anonymously,
    /// besides the node's own (a page of any other origin needs a token).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Retention.
    #[serde(default)]
    pub retention: Retention,
    /// Seconds a subscriber may go without draining its queue before it is dropped with
    /// `overloaded` (default 30).
    pub stall_timeout_secs: Option<u64>,
    /// Where writes go when this node is a read-only follower (named in its refusals), e.g.
    /// `ws://primary.internal:7070/v1/sync`.
    pub primary: Option<String>,
    /// `[publish]`: the change feed into NATS JetStream (see `node::publish`).
    pub publish: Option<crate::node::publish::PublishConfig>,
    /// `[follow]`: for an edge fed from NATS (`serve --upstream nats://`), the stream's name and
    /// the NATS credentials; the same keys as `[publish]` (`url` is `--upstream`'s).
    pub follow: Option<crate::node::publish::PublishConfig>,
    /// `[jwt]`: sign-in with the app's identity provider (see `node::jwt`).
    pub jwt: Option<super::jwt::JwtConfig>,
    /// `[image]`: when database images for new replicas are rebuilt.
    pub image: Option<ImageConfig>,
}

impl Config {
    /// The anonymous access policy in force.
    pub fn anonymous(&self) -> Anonymous {
        self.anonymous.unwrap_or_default()
    }

    /// Parse and check a config file.
    pub fn load(path: &Path) -> Result<Config> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o002 != 0) {
                tracing::warn!(
                    config = %path.display(),
                    "the config file is writable by every user of this machine, who could add a token of their own: chmod o-w it"
                );
            }
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("cannot read config {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| Error::invalid(format!("config {}: {e}", path.display())))
    }

    /// Parse and check config text.
    pub fn parse(text: &str) -> Result<Config> {
        // An empty file is what a truncating editor or `: > node.toml` leaves for a moment; it
        // is never a config anyone meant (a node without one runs without `--config`).
        if text.trim().is_empty() {
            return Err(Error::invalid(
                "the file is empty; a node without tokens runs without --config",
            ));
        }
        let c: Config = toml::from_str(text).map_err(|e| Error::invalid(e.to_string()))?;
        if let Some(j) = &c.jwt {
            j.check()?;
        }
        // Two entries for one secret: the first would win, whichever rights the second meant.
        let mut hashes = std::collections::HashMap::new();
        let mut names = std::collections::HashSet::new();
        for t in &c.tokens {
            if let Some(other) = hashes.insert(t.sha256.to_ascii_lowercase(), &t.name) {
                return Err(Error::invalid(format!(
                    "tokens {other:?} and {:?} have the same sha256 (one secret, two sets of rights): remove one, or give one a new secret with `hivesync token`",
                    t.name
                )));
            }
            if !names.insert(&t.name) {
                return Err(Error::invalid(format!(
                    "two tokens are named {:?}: names tell tokens apart in logs and in the exactly-once record; rename one",
                    t.name
                )));
            }
        }
        for t in &c.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::invalid(format!(
                    "token {:?}: sha256 must be 64 hex digits (the hash of the secret, from `hivesync token`), not the secret itself",
                    t.name
                )));
            }
            for p in t.read.0.iter().chain(&t.write.0) {
                if let Some(prefix) = p.strip_suffix('*') {
                    if !prefix.is_empty() && !prefix.ends_with(['/', '-', '_', '.', ':']) {
                        tracing::warn!(
                            token = %t.name,
                            "scope {p:?} is a plain prefix: it also matches {prefix}anything (e.g. {prefix}secret); end the prefix with a separator ({prefix}/*, {prefix}-*) to scope a group of namespaces"
                        );
                    }
                }
            }
        }
        Ok(c)
    }
}

/// A new token (`hivesync token`): a random secret of 256 bits, and the config lines that let
/// it in with the given scopes (its hash, never the secret).
pub struct NewToken {
    /// The secret, `hs_` and 64 hex digits: shown once, given to the client.
    pub secret: String,
    /// The token as it goes in the config file.
    pub config: TokenConfig,
}

impl NewToken {
    /// Make one; the name and scopes are checked as a config file's would be.
    pub fn generate(name: &str, read: Scope, write: Scope) -> Result<NewToken> {
        if name.trim().is_empty() {
            return Err(Error::invalid("a token needs a name (for logs and errors)"));
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::invalid(format!("the OS random generator failed: {e}")))?;
        let secret = format!("hs_{}", hex(&bytes));
        let t = NewToken {
            config: TokenConfig {
                name: name.to_string(),
                sha256: hash_token(&secret),
                read,
                write,
            },
            secret,
        };
        Config::parse(&t.toml())?;
        Ok(t)
    }

    /// The `[[token]]` table for the config file.
    pub fn toml(&self) -> String {
        #[derive(Serialize)]
        struct File<'a> {
            token: [&'a TokenConfig; 1],
        }
        toml::to_string(&File {
            token: [&self.config],
        })
        // Infallible: a table of strings and string arrays.
        .expect("a token table always serializes")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256 of a token secret.
pub fn hash_token(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_parses_back_and_its_secret_matches_its_hash() {
        let t = NewToken::generate("alice", Scope(vec!["a".into()]), Scope(vec![])).unwrap();
        assert!(t.secret.starts_with("hs_") && t.secret.len() == 67);
        let c = Config::parse(&t.toml()).unwrap();
        assert_eq!(c.tokens, vec![t.config.clone()]);
        assert_eq!(c.tokens[0].sha256, hash_token(&t.secret));
        assert!(!t.toml().contains(&t.secret));
        let u = NewToken::generate("alice", Scope::all(), Scope::all()).unwrap();
        assert_ne!(t.secret, u.secret);
        assert!(NewToken::generate(" ", Scope::all(), Scope::all()).is_err());
    }

    #[test]
    fn config_parses_and_refuses_plain_secrets() {
        let h = hash_token("s3cret");
        let c = Config::parse(&format!(
            "name = \"n\"\n[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nread = [\"*\"]\nwrite = [\"x\"]\n[retention]\nmax_changes = 10\n"
        ))
        .unwrap();
        assert_eq!(c.tokens[0].read, Scope::all());
        assert_eq!(c.retention.max_changes, Some(10));
        let e = Config::parse("[[token]]\nname = \"a\"\nsha256 = \"s3cret\"\n").unwrap_err();
        assert!(e.to_string().contains("64 hex"), "{e}");
        assert!(Config::parse("").unwrap_err().to_string().contains("empty"));
        assert!(Config::parse(" \n\t\n").is_err());
        assert_eq!(Config::parse("name = \"x\"").unwrap().anonymous, None);
        assert!(Config::parse("colour = 1")
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
    }
}
