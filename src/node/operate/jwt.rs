//! Sign-in from the app's identity provider: JWTs verified against the provider's keys (a JWKS
//! file, a JWKS URL, or an HS256 secret file), their claims mapped to read and write namespaces.
//!
//! ```toml
//! [jwt]
//! issuer = "https://example.auth0.com/"       # one or a list; checked when given
//! audience = "hivesync"                        # one or a list; checked when given
//! algorithms = ["RS256", "ES256", "EdDSA"]     # accepted (HS256 only with hs256_secret_file)
//! leeway_secs = 30                             # clock skew allowed on exp and nbf
//! jwks_file = "/etc/hivesync/jwks.json"        # keys from a file (re-read with the config)
//! jwks_url = "https://example.auth0.com/.well-known/jwks.json"
//! refresh_secs = 300                           # refetch the URL this often
//! refresh_floor_secs = 30                      # at most one fetch this often for an unknown kid
//! read = ["user:{sub}", "team:{org_id}", "public"]
//! write = ["user:{sub}"]
//! claim = "hivesync"                           # also take {read: [...], write: [...]} from it
//! ```
//!
//! A template's `{name}` is the claim `name` (a top-level key first, then a dotted path into
//! objects); a string or integer gives one namespace, an array of strings one per element. A
//! missing claim, one of another type, or a value holding `*`, `/`, `..` or NUL refuses the
//! token with a message naming it. The verification itself is `jsonwebtoken`'s (no crypto
//! here): the algorithm must be one configured, and a key is only used with its own family
//! (an HS256 token cannot be checked against an RSA public key).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::jwks::KeySet;
use crate::error::{Error, Result};
use crate::protocol::{Principal, Scope};

/// Longest token judged (a JWT from a real provider is 1 to 2 KiB).
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Default seconds of clock skew allowed on `exp` and `nbf`.
const DEFAULT_LEEWAY: u64 = 30;
/// Longest value a template may put into a namespace.
const MAX_CLAIM_VALUE: usize = 200;

/// One string or a list of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    fn to_set(&self) -> HashSet<String> {
        match self {
            OneOrMany::One(s) => HashSet::from([s.clone()]),
            OneOrMany::Many(v) => v.iter().cloned().collect(),
        }
    }
}

/// The `[jwt]` section of the config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted `iss` (checked when given).
    pub issuer: Option<OneOrMany>,
    /// Accepted `aud` (checked when given).
    pub audience: Option<OneOrMany>,
    /// Accepted algorithms (default RS256, ES256 and EdDSA; HS256 needs `hs256_secret_file`).
    pub algorithms: Option<Vec<String>>,
    /// Seconds of clock skew allowed on `exp` and `nbf` (default 30).
    pub leeway_secs: Option<u64>,
    /// A JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`https://`, or `http://` on a loopback address).
    pub jwks_url: Option<String>,
    /// Seconds between fetches of the URL (default 300).
    pub refresh_secs: Option<u64>,
    /// Fewest seconds between fetches made for a key id not in the set (default 30).
    pub refresh_floor_secs: Option<u64>,
    /// A file holding the HS256 secret (never inline in the config).
    pub hs256_secret_file: Option<PathBuf>,
    /// Read namespace templates.
    #[serde(default)]
    pub read: Vec<String>,
    /// Write namespace templates.
    #[serde(default)]
    pub write: Vec<String>,
    /// A claim holding `{read: [...], write: [...]}` (default `hivesync`; `""`: none).
    pub claim: Option<String>,
}

impl JwtConfig {
    /// Check the section (the config's parse calls this).
    pub(crate) fn check(&self) -> Result<()> {
        let algs = self.algorithms()?;
        if algs.contains(&Algorithm::HS256) != self.hs256_secret_file.is_some() {
            return Err(Error::invalid(
                "[jwt]: HS256 goes with hs256_secret_file (the secret in a file of its own, never inline); list it in algorithms and name the file, or neither",
            ));
        }
        if self.jwks_file.is_none() && self.jwks_url.is_none() && self.hs256_secret_file.is_none() {
            return Err(Error::invalid(
                "[jwt] needs keys: jwks_url (your provider's, e.g. https://YOUR_DOMAIN/.well-known/jwks.json), jwks_file, or hs256_secret_file",
            ));
        }
        if let Some(u) = &self.jwks_url {
            super::jwks::check_url(u)
                .map_err(|e| Error::invalid(format!("[jwt] jwks_url: {e}")))?;
        }
        for t in self.read.iter().chain(&self.write) {
            parse_template(t).map_err(|e| Error::invalid(format!("[jwt] template {t:?}: {e}")))?;
        }
        Ok(())
    }

    fn algorithms(&self) -> Result<Vec<Algorithm>> {
        let names = self.algorithms.clone().unwrap_or_else(|| {
            let mut v = vec!["RS256".to_string(), "ES256".into(), "EdDSA".into()];
            if self.hs256_secret_file.is_some() {
                v.push("HS256".into());
            }
            v
        });
        names
            .iter()
            .map(|n| match n.as_str() {
                "RS256" => Ok(Algorithm::RS256),
                "RS384" => Ok(Algorithm::RS384),
                "RS512" => Ok(Algorithm::RS512),
                "PS256" => Ok(Algorithm::PS256),
                "ES256" => Ok(Algorithm::ES256),
                "ES384" => Ok(Algorithm::ES384),
                "EdDSA" => Ok(Algorithm::EdDSA),
                "HS256" => Ok(Algorithm::HS256),
                other => Err(Error::invalid(format!(
                    "[jwt] algorithms: {other:?} is not one hivesync accepts (RS256, RS384, RS512, PS256, ES256, ES384, EdDSA, HS256)"
                ))),
            })
            .collect()
    }

    /// Seconds of clock skew allowed.
    pub(crate) fn leeway(&self) -> u64 {
        self.leeway_secs.unwrap_or(DEFAULT_LEEWAY)
    }
}

/// Why a token was refused, counted per reason in `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    Expired,
    NotYetValid,
    BadSignature,
    UnknownKey,
    Audience,
    Issuer,
    Algorithm,
    Claims,
    Malformed,
}

impl Reason {
    pub(crate) const ALL: [Reason; 9] = [
        Reason::Expired,
        Reason::NotYetValid,
        Reason::BadSignature,
        Reason::UnknownKey,
        Reason::Audience,
        Reason::Issuer,
        Reason::Algorithm,
        Reason::Claims,
        Reason::Malformed,
    ];

    /// Its counter in `/metrics`.
    pub(crate) fn metric(self) -> &'static str {
        match self {
            Reason::Expired => "hivesync_jwt_refused_expired_total",
            Reason::NotYetValid => "hivesync_jwt_refused_not_yet_valid_total",
            Reason::BadSignature => "hivesync_jwt_refused_bad_signature_total",
            Reason::UnknownKey => "hivesync_jwt_refused_unknown_kid_total",
            Reason::Audience => "hivesync_jwt_refused_wrong_audience_total",
            Reason::Issuer => "hivesync_jwt_refused_wrong_issuer_total",
            Reason::Algorithm => "hivesync_jwt_refused_algorithm_total",
            Reason::Claims => "hivesync_jwt_refused_bad_claims_total",
            Reason::Malformed => "hivesync_jwt_refused_malformed_total",
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownKey => "unknown_kid",
            Reason::Audience => "wrong_audience",
            Reason::Issuer => "wrong_issuer",
            Reason::Algorithm => "algorithm",
            Reason::Claims => "bad_claims",
            Reason::Malformed => "malformed",
        }
    }
}

/// A refused token: why (for the counters) and what to tell the client.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) reason: Reason,
    pub(crate) message: String,
}

fn refuse(reason: Reason, message: impl Into<String>) -> Refused {
    Refused {
        reason,
        message: message.into(),
    }
}

/// Counters of refused tokens, by reason, and when one was last logged.
#[derive(Default)]
pub(crate) struct Refusals {
    counts: [AtomicU64; 9],
    logged_at: Mutex<Option<std::time::Instant>>,
}

impl Refusals {
    pub(crate) fn count(&self, r: Reason) {
        self.counts[r as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn get(&self, r: Reason) -> u64 {
        self.counts[r as usize].load(Relaxed)
    }

    /// True at most once a second: whether to log this refusal.
    pub(crate) fn may_log(&self) -> bool {
        let mut at = self.logged_at.lock();
        let now = std::time::Instant::now();
        if at.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
            return false;
        }
        *at = Some(now);
        true
    }
}

/// The verifier for one `[jwt]` section: its settings, the HS256 secret, and the key set in
/// force (replaced as a whole by the key refresher).
pub(crate) struct Verifier {
    pub(crate) cfg: JwtConfig,
    algorithms: Vec<Algorithm>,
    hs256: Option<DecodingKey>,
    pub(crate) keys: parking_lot::RwLock<Arc<KeySet>>,
    read: Vec<Template>,
    write: Vec<Template>,
}

impl Verifier {
    /// A verifier for `cfg` (checked), with the secret file read and no keys yet.
    pub(crate) fn new(cfg: JwtConfig) -> Result<Verifier> {
        cfg.check()?;
        let hs256 = match &cfg.hs256_secret_file {
            Some(p) => {
                let s = std::fs::read(p).map_err(|e| {
                    Error::invalid(format!("[jwt] hs256_secret_file {}: {e}", p.display()))
                })?;
                let s = s.trim_ascii();
                if s.len() < 32 {
                    return Err(Error::invalid(format!(
                        "[jwt] hs256_secret_file {}: the secret is {} bytes; use at least 32 random bytes",
                        p.display(),
                        s.len()
                    )));
                }
                Some(DecodingKey::from_secret(s))
            }
            None => None,
        };
        let parse = |v: &[String]| -> Result<Vec<Template>> {
            v.iter()
                .map(|t| parse_template(t).map_err(Error::invalid))
                .collect()
        };
        Ok(Verifier {
            algorithms: cfg.algorithms()?,
            read: parse(&cfg.read)?,
            write: parse(&cfg.write)?,
            hs256,
            keys: parking_lot::RwLock::new(Arc::new(KeySet::default())),
            cfg,
        })
    }

    /// Where its keys come from, and the set they go into.
    pub(crate) fn sources(&self) -> super::jwks::Sources<'_> {
        super::jwks::Sources {
            file: self.cfg.jwks_file.as_deref(),
            url: self.cfg.jwks_url.as_deref(),
            every: self.cfg.refresh_secs,
            floor: self.cfg.refresh_floor_secs,
            keys: &self.keys,
        }
    }

    /// The key id a token names when the set in force lacks it (a refresh may bring it).
    pub(crate) fn missing_key(&self, token: &str) -> Option<String> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg == Algorithm::HS256 {
            return None;
        }
        let kid = header.kid?;
        (!self.keys.read().has(&kid)).then_some(kid)
    }

    /// Verify `token` and map its claims to a principal.
    pub(crate) fn verify(&self, token: &str) -> std::result::Result<Principal, Refused> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refuse(
                Reason::Malformed,
                format!(
                    "the token is {} bytes; at most {MAX_TOKEN_BYTES}",
                    token.len()
                ),
            ));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            refuse(
                Reason::Malformed,
                format!("not a JWT this node accepts ({e}); `alg: none` is never accepted"),
            )
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err(refuse(
                Reason::Algorithm,
                format!(
                    "algorithm {:?} is not accepted here ([jwt] algorithms)",
                    header.alg
                ),
            ));
        }
        let keys = self.keys.read().clone();
        let candidates: Vec<&DecodingKey> = if header.alg == Algorithm::HS256 {
            self.hs256.iter().collect()
        } else {
            keys.for_token(header.kid.as_deref(), header.alg)
        };
        if candidates.is_empty() {
            return Err(refuse(
                Reason::UnknownKey,
                match &header.kid {
                    Some(k) => {
                        format!("no key {k:?} in the identity provider's key set (after a refresh)")
                    }
                    None => format!(
                        "no key for {:?} in the identity provider's key set",
                        header.alg
                    ),
                },
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.cfg.leeway();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.cfg.audience {
            Some(a) => validation.aud = Some(a.to_set()),
            None => validation.validate_aud = false,
        }
        if let Some(i) = &self.cfg.issuer {
            validation.iss = Some(i.to_set());
        }
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return self.principal(&data.claims),
                Err(e) => last = Some(e),
            }
        }
        let e = last.map(|e| e.into_kind());
        Err(match e {
            Some(ErrorKind::ExpiredSignature) => refuse(Reason::Expired, "token expired"),
            Some(ErrorKind::ImmatureSignature) => {
                refuse(Reason::NotYetValid, "token not valid yet (nbf)")
            }
            Some(ErrorKind::InvalidSignature) => refuse(Reason::BadSignature, "bad signature"),
            Some(ErrorKind::InvalidAudience) => refuse(Reason::Audience, "wrong audience (aud)"),
            Some(ErrorKind::InvalidIssuer) => refuse(Reason::Issuer, "wrong issuer (iss)"),
            Some(ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName) => refuse(
                Reason::Algorithm,
                "the key does not go with the token's algorithm",
            ),
            Some(ErrorKind::MissingRequiredClaim(c)) => {
                refuse(Reason::Claims, format!("the token has no {c:?} claim"))
            }
            Some(other) => refuse(Reason::Malformed, format!("invalid token: {other:?}")),
            None => refuse(Reason::Malformed, "invalid token"),
        })
    }

    /// The rights `claims` grant: the templates, plus the namespaces claim.
    fn principal(&self, claims: &Map<String, Value>) -> std::result::Result<Principal, Refused> {
        let expires = claims.get("exp").and_then(Value::as_i64);
        let mut read = Vec::new();
        let mut write = Vec::new();
        for t in &self.read {
            read.extend(t.expand(claims)?);
        }
        for t in &self.write {
            write.extend(t.expand(claims)?);
        }
        let claim = self.cfg.claim.as_deref().unwrap_or("hivesync");
        if !claim.is_empty() {
            if let Some(v) = claims.get(claim) {
                let (r, w) = namespaces_claim(claim, v)?;
                read.extend(r);
                write.extend(w);
            }
        }
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("?");
        Ok(Principal {
            name: format!("jwt:{sub}"),
            read: Scope(read),
            write: Scope(write),
            expires: expires.map(|e| e.saturating_add(self.cfg.leeway() as i64)),
        })
    }
}

/// `{read: [...], write: [...]}` from the namespaces claim.
fn namespaces_claim(
    name: &str,
    v: &Value,
) -> std::result::Result<(Vec<String>, Vec<String>), Refused> {
    let bad = || {
        refuse(
            Reason::Claims,
            format!(
                "claim {name:?} must be an object {{\"read\": [strings], \"write\": [strings]}}"
            ),
        )
    };
    let o = v.as_object().ok_or_else(bad)?;
    let list = |k: &str| -> std::result::Result<Vec<String>, Refused> {
        match o.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .filter(|s| !s.is_empty() && !s.contains('\0'))
                        .map(String::from)
                        .ok_or_else(bad)
                })
                .collect(),
            Some(_) => Err(bad()),
        }
    };
    if o.keys().any(|k| k != "read" && k != "write") {
        return Err(bad());
    }
    Ok((list("read")?, list("write")?))
}

/// A namespace template: literal text and claim names.
#[derive(Debug)]
struct Template(Vec<Part>);

#[derive(Debug)]
enum Part {
    Text(String),
    Claim(String),
}

fn parse_template(t: &str) -> std::result::Result<Template, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let close = rest[open..].find('}').ok_or("an unclosed `{`")?;
        let name = &rest[open + 1..open + close];
        if name.is_empty() {
            return Err("an empty `{}`".into());
        }
        parts.push(Part::Claim(name.to_string()));
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err("a `}` without `{`".into());
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    if parts.is_empty() {
        return Err("empty".into());
    }
    Ok(Template(parts))
}

/// A claim by name: a top-level key, else a dotted path into objects.
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

impl Template {
    /// The namespaces this template gives for `claims` (arrays give one per element).
    fn expand(&self, claims: &Map<String, Value>) -> std::result::Result<Vec<String>, Refused> {
        let mut out = vec![String::new()];
        for part in &self.0 {
            match part {
                Part::Text(t) => out.iter_mut().for_each(|o| o.push_str(t)),
                Part::Claim(name) => {
                    let values = claim_values(claims, name)?;
                    if out.len() * values.len() > 1024 {
                        return Err(refuse(
                            Reason::Claims,
                            format!("claim {name:?} expands to too many namespaces"),
                        ));
                    }
                    out = out
                        .iter()
                        .flat_map(|o| values.iter().map(move |v| format!("{o}{v}")))
                        .collect();
                }
            }
        }
        Ok(out)
    }
}

/// A template claim's values, each checked for what may go into a namespace.
fn claim_values(
    claims: &Map<String, Value>,
    name: &str,
) -> std::result::Result<Vec<String>, Refused> {
    let wrong = |what: &str| {
        refuse(
            Reason::Claims,
            format!("claim {name:?} {what}; a template needs a string, an integer, or an array of strings"),
        )
    };
    let v = claim(claims, name).ok_or_else(|| {
        refuse(
            Reason::Claims,
            format!("the token has no {name:?} claim, which [jwt] templates use"),
        )
    })?;
    let values = match v {
        Value::String(s) => vec![s.clone()],
        Value::Number(n) if n.is_i64() || n.is_u64() => vec![n.to_string()],
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| wrong("holds a non-string"))
            })
            .collect::<std::result::Result<_, _>>()?,
        Value::Null => return Err(wrong("is null")),
        Value::Bool(_) => return Err(wrong("is a boolean")),
        Value::Number(_) => return Err(wrong("is not an integer")),
        Value::Object(_) => return Err(wrong("is an object")),
    };
    for s in &values {
        if s.is_empty()
            || s.len() > MAX_CLAIM_VALUE
            || s.contains(['*', '/', '\0'])
            || s.contains("..")
        {
            return Err(refuse(
                Reason::Claims,
                format!("claim {name:?} holds a value that cannot go into a namespace (empty, over {MAX_CLAIM_VALUE} bytes, or with `*`, `/`, `..` or NUL)"),
            ));
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn templates_expand_claims_and_refuse_what_cannot_be_a_namespace() {
        let t = parse_template("team:{org}").unwrap();
        let c = claims(json!({"org": ["a", "b"], "sub": "u1", "n": 7, "app": {"tier": "gold"}}));
        assert_eq!(t.expand(&c).unwrap(), ["team:a", "team:b"]);
        assert_eq!(
            parse_template("u:{n}").unwrap().expand(&c).unwrap(),
            ["u:7"]
        );
        assert_eq!(
            parse_template("{app.tier}").unwrap().expand(&c).unwrap(),
            ["gold"]
        );
        assert_eq!(
            parse_template("public").unwrap().expand(&c).unwrap(),
            ["public"]
        );
        for bad in [
            json!("*"),
            json!("a/b"),
            json!(".."),
            json!("x\u{0}"),
            json!(""),
            json!(true),
            json!({"a": 1}),
            json!(1.5),
            json!(null),
        ] {
            let c = claims(json!({ "sub": bad }));
            let e = parse_template("user:{sub}")
                .unwrap()
                .expand(&c)
                .unwrap_err();
            assert_eq!(e.reason, Reason::Claims, "{bad}");
            assert!(e.message.contains("\"sub\""), "{}", e.message);
        }
        let e = parse_template("user:{missing}")
            .unwrap()
            .expand(&c)
            .unwrap_err();
        assert!(e.message.contains("no \"missing\" claim"), "{}", e.message);
        for bad in ["{", "a}", "{}", ""] {
            assert!(parse_template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_namespaces_claim_must_be_lists_of_strings() {
        assert_eq!(
            namespaces_claim("hivesync", &json!({"read": ["a", "b*"], "write": ["a"]})).unwrap(),
            (vec!["a".to_string(), "b*".into()], vec!["a".to_string()])
        );
        for bad in [
            json!(["a"]),
            json!({"read": "a"}),
            json!({"read": [1]}),
            json!({"admin": true}),
        ] {
            assert!(namespaces_claim("hivesync", &bad).is_err(), "{bad}");
        }
    }
}
