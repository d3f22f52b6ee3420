//! The identity provider's keys: a JWKS document parsed into decoding keys, read from a file
//! and fetched from a URL (HTTPS, or HTTP on a loopback address), refreshed on a schedule and
//! when a token names a key id the set lacks (at most once per floor). A fetch that fails keeps
//! the last good set, and says so in `/healthz` and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;

/// Largest JWKS document read (a provider's is a few KiB).
pub(crate) const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one fetch may take, connect to last byte.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REFRESH: u64 = 300;
const DEFAULT_FLOOR: u64 = 30;

/// One usable key.
struct Key {
    kid: Option<String>,
    /// The algorithm the JWK names, if it names one.
    alg: Option<Algorithm>,
    family: Family,
    key: DecodingKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Okp,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Okp),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
    }
}

/// A set of public keys.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Parse a JWKS document; keys this node cannot use (encryption keys, unknown types) are
    /// skipped, a document that is not a JWKS is an error.
    pub(crate) fn parse(bytes: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
        let mut keys = Vec::new();
        for v in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::OctetKeyPair(_) => Family::Okp,
                // A shared secret has no place in a public key set.
                AlgorithmParameters::OctetKey(_) => continue,
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                family,
                key,
            });
        }
        Ok(KeySet { keys })
    }

    /// The set's keys followed by `other`'s.
    fn merged(mut self, other: KeySet) -> KeySet {
        self.keys.extend(other.keys);
        self
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when a key has this id.
    pub(crate) fn has(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys that may have signed a token of `alg` naming `kid` (all of the algorithm's
    /// family when it names none).
    pub(crate) fn for_token(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&DecodingKey> {
        let Some(family) = family_of(alg) else {
            return Vec::new();
        };
        self.keys
            .iter()
            .filter(|k| k.family == family && k.alg.is_none_or(|a| a == alg))
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .map(|k| &k.key)
            .collect()
    }
}

/// Check a JWKS URL: `https://`, or `http://` on a loopback address (a local test server).
pub(crate) fn check_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        _ => Err(format!(
            "{url:?}: keys are fetched over https:// (http:// only from a loopback address)"
        )),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// GET `url`, at most [`MAX_JWKS_BYTES`], within [`FETCH_TIMEOUT`].
pub(crate) async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let uri = check_url(url)?;
    tokio::time::timeout(FETCH_TIMEOUT, fetch_uri(uri))
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
}

async fn fetch_uri(uri: hyper::Uri) -> Result<Vec<u8>, String> {
    let resp = crate::node::dial::http_get(uri, &[("accept", "application/json")]).await?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            if out.len() + d.len() > MAX_JWKS_BYTES {
                return Err(format!("the key set is larger than {MAX_JWKS_BYTES} bytes"));
            }
            out.extend_from_slice(d);
        }
    }
    Ok(out)
}

/// The state of the key sources, for `/healthz` and `/metrics`.
#[derive(Default)]
pub(crate) struct KeyStatus {
    pub(crate) fetches: AtomicU64,
    pub(crate) fetch_failures: AtomicU64,
    /// Why the last fetch or read failed, while the last one did.
    pub(crate) error: Mutex<Option<String>>,
    /// When the URL was last fetched (for the floor).
    last_fetch: Mutex<Option<Instant>>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

/// Where a verifier's keys come from, and the set in force they are put into.
pub(crate) struct Sources<'a> {
    pub(crate) file: Option<&'a std::path::Path>,
    pub(crate) url: Option<&'a str>,
    /// Seconds between scheduled fetches.
    pub(crate) every: Option<u64>,
    /// Fewest seconds between fetches for an unknown key id.
    pub(crate) floor: Option<u64>,
    pub(crate) keys: &'a parking_lot::RwLock<Arc<KeySet>>,
}

/// Read the file and fetch the URL, and put the set in force when it could be had; a source
/// that fails keeps the keys in force. Returns whether the set changed.
pub(crate) async fn refresh(v: &Sources<'_>, status: &KeyStatus) -> bool {
    let _one = status.refreshing.lock().await;
    let mut errors = Vec::new();
    let from_file = match &v.file {
        Some(p) => match std::fs::read(p) {
            Ok(b) => KeySet::parse(&b).map_err(|e| format!("{}: {e}", p.display())),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
        .map(Some),
        None => Ok(None),
    };
    let from_url = match &v.url {
        Some(u) => {
            status.fetches.fetch_add(1, Relaxed);
            *status.last_fetch.lock() = Some(Instant::now());
            fetch(u)
                .await
                .and_then(|b| KeySet::parse(&b))
                .map_err(|e| format!("{u}: {e}"))
                .map(Some)
        }
        None => Ok(None),
    };
    let before = v.keys.read().clone();
    // What each source gives: the new keys, or (failed) what it gave before.
    let mut set = KeySet::default();
    for (res, is_url) in [(from_file, false), (from_url, true)] {
        match res {
            Ok(Some(k)) => set = set.merged(k),
            Ok(None) => {}
            Err(e) => {
                if is_url {
                    status.fetch_failures.fetch_add(1, Relaxed);
                }
                tracing::warn!(error = %e, "cannot refresh the identity provider's keys; the last good keys stay in force");
                errors.push(e);
                // The set in force stays as it is.
                *status.error.lock() = Some(errors.join("; "));
                return false;
            }
        }
    }
    *status.error.lock() = None;
    let changed = set.len() != before.len() || !same_ids(&set, &before);
    *v.keys.write() = Arc::new(set);
    changed
}

fn same_ids(a: &KeySet, b: &KeySet) -> bool {
    let ids = |s: &KeySet| {
        let mut v: Vec<Option<String>> = s.keys.iter().map(|k| k.kid.clone()).collect();
        v.sort();
        v
    };
    ids(a) == ids(b)
}

/// A token named `kid`, which the set lacks: refresh, unless the last fetch is more recent
/// than the floor (then the token is judged against the set in force).
pub(crate) async fn refresh_for(v: &Sources<'_>, status: &KeyStatus, kid: &str) -> bool {
    let floor = Duration::from_secs(v.floor.unwrap_or(DEFAULT_FLOOR));
    if v.url.is_none() && v.file.is_none() {
        return false;
    }
    {
        let _one = status.refreshing.lock().await;
        // Another connection's refresh may have brought it meanwhile.
        if v.keys.read().has(kid) {
            return true;
        }
        if status
            .last_fetch
            .lock()
            .is_some_and(|t| t.elapsed() < floor)
        {
            return false;
        }
    }
    refresh(v, status).await
}

/// How often the URL is fetched on schedule.
pub(crate) fn refresh_every(v: &Sources<'_>) -> Duration {
    Duration::from_secs(v.every.unwrap_or(DEFAULT_REFRESH).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwks_keeps_public_signing_keys_and_skips_the_rest() {
        let doc = br#"{"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "shared"},
            {"kty": "XYZ", "kid": "future"}
        ]}"#;
        let set = KeySet::parse(doc).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.has("ed") && !set.has("enc") && !set.has("shared"));
        assert_eq!(set.for_token(Some("ed"), Algorithm::EdDSA).len(), 1);
        assert!(
            set.for_token(Some("ed"), Algorithm::RS256).is_empty(),
            "another family"
        );
        assert!(
            set.for_token(Some("ed"), Algorithm::HS256).is_empty(),
            "never a secret"
        );
        assert!(KeySet::parse(b"<html>").is_err());
        assert!(KeySet::parse(b"{\"keys\": 1}").is_err());
    }

    #[test]
    fn keys_come_over_https_or_from_loopback() {
        assert!(check_url("https://idp.example.com/.well-known/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:9/jwks").is_ok());
        assert!(check_url("http://[::1]:9/jwks").is_ok());
        assert!(check_url("http://idp.example.com/jwks").is_err());
        assert!(check_url("ftp://x/y").is_err());
        assert!(check_url("not a url").is_err());
    }
}
