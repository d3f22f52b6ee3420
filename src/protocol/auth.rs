//! The auth model the session checks: namespace scopes, principals, the authorizer.

use serde::{Deserialize, Serialize};

/// Namespace patterns a token may use: exact names, `prefix*`, or `*` for all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scope(pub Vec<String>);

impl Scope {
    /// Every namespace.
    pub fn all() -> Self {
        Scope(vec!["*".into()])
    }

    /// True when `ns` matches a pattern.
    pub fn allows(&self, ns: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => ns.starts_with(prefix),
            None => p == ns,
        })
    }

    /// True when every namespace matches.
    pub fn is_all(&self) -> bool {
        self.0.iter().any(|p| p == "*")
    }
}

/// Who a connection is, after `hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Token name (or `anonymous`).
    pub name: String,
    /// Namespaces it may read.
    pub read: Scope,
    /// Namespaces it may write.
    pub write: Scope,
    /// When these rights end, in seconds since the Unix epoch (a JWT's `exp`); None: never.
    pub expires: Option<i64>,
}

/// Why a `hello` was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthError(pub String);

/// Token lookup, supplied by the node (pure data: no I/O in the session).
pub trait Authorizer {
    /// The principal for `token` (None: anonymous).
    fn authenticate(&self, token: Option<&str>) -> std::result::Result<Principal, AuthError>;

    /// The key id `token` names when the authorizer does not hold that key yet (a JWT signed
    /// with a key the identity provider published since the keys were last fetched): the
    /// session asks its shell to fetch keys ([`super::Action::RefreshKeys`]) before it judges
    /// the token. None (the default): judge it now.
    fn missing_key(&self, token: &str) -> Option<String> {
        let _ = token;
        None
    }
}
