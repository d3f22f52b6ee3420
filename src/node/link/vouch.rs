//! What the primary vouches for in its NATS stream: every message it publishes carries an
//! Ed25519 signature (header `Hivesync-Sig`) over its seq, the seq before it, and its payload,
//! made with a key only the primary holds (kept in its database, `meta` key
//! `nats_signing_seed`, made on first publish). Edges learn the verifying key over their
//! authenticated link to the primary (the binary `welcome`'s `publish_key`), so no new
//! configuration is needed, and apply nothing from the stream that does not verify: anyone who
//! can publish to the subject can put messages in the stream, but not one an edge accepts.
//!
//! The message id (`Nats-Msg-Id`, JetStream's duplicate check) is the first 16 bytes of that
//! signature in hex: the same for the same change (a batch published again after a crash is
//! still dropped as a duplicate; Ed25519 signatures are deterministic), and impossible to guess
//! for a change not yet published, so a third party cannot squat the id of a change to come and
//! make the stream drop the real one.
//!
//! Signing and verifying use ring (already the TLS crate's provider): no crypto of our own.

use base64::Engine as _;
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::error::{Error, Result};
use crate::store::Store;

/// The header holding a message's signature (base64).
pub(crate) const SIG_HEADER: &str = "Hivesync-Sig";
/// The `meta` key of the publisher's signing key seed (hex).
const SEED_KEY: &str = "nats_signing_seed";
/// What every signed message starts with (a version, and no other use of the key can collide).
const DOMAIN: &[u8] = b"hivesync.nats.v1\0";

/// The bytes a message's signature covers.
fn signed_bytes(seq: i64, prev: i64, payload: Option<&[u8]>) -> Vec<u8> {
    let body = payload.unwrap_or_default();
    let mut m = Vec::with_capacity(DOMAIN.len() + 17 + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&prev.to_le_bytes());
    // A stand-in (no payload) and an empty payload sign differently.
    m.push(payload.is_some() as u8);
    m.extend_from_slice(body);
    m
}

/// The publisher's key.
pub(crate) struct SigningKey(Ed25519KeyPair);

/// A message's signature and the id it is published under.
pub(crate) struct Signed {
    /// `Hivesync-Sig`.
    pub sig: String,
    /// `Nats-Msg-Id`.
    pub id: String,
}

impl SigningKey {
    /// The key kept in `store`, made (from the OS's generator) and kept there if there is none.
    pub(crate) fn load_or_create(store: &Store) -> Result<SigningKey> {
        let kept: Option<String> = store.read(|c| {
            Ok(rusqlite::OptionalExtension::optional(c.query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [SEED_KEY],
                |r| r.get(0),
            ))?)
        })?;
        let seed = match kept {
            Some(hex) => decode_seed(&hex)?,
            None => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed)
                    .map_err(|e| Error::invalid(format!("no random bytes for a key: {e}")))?;
                let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
                let w = store.pool().writer()?;
                // Another process may have made one meanwhile: the first kept wins.
                w.execute(
                    "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO NOTHING",
                    rusqlite::params![SEED_KEY, hex],
                )?;
                let hex: String =
                    w.query_row("SELECT value FROM meta WHERE key = ?1", [SEED_KEY], |r| {
                        r.get(0)
                    })?;
                decode_seed(&hex)?
            }
        };
        Ed25519KeyPair::from_seed_unchecked(&seed)
            .map(SigningKey)
            .map_err(|e| Error::invalid(format!("the NATS signing key is unusable: {e}")))
    }

    /// A key from a seed (tests).
    #[cfg(test)]
    pub(crate) fn from_seed(seed: [u8; 32]) -> SigningKey {
        // A 32-byte seed is always a valid Ed25519 private key.
        SigningKey(Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32 bytes are a seed"))
    }

    /// The verifying key, base64: what `welcome` carries.
    pub(crate) fn public(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0.public_key().as_ref())
    }

    /// Sign the message of change `seq` (after `prev`) with `payload` (None for a stand-in).
    pub(crate) fn sign(&self, seq: i64, prev: i64, payload: Option<&[u8]>) -> Signed {
        let sig = self.0.sign(&signed_bytes(seq, prev, payload));
        let raw = sig.as_ref();
        Signed {
            sig: base64::engine::general_purpose::STANDARD.encode(raw),
            id: raw[..16].iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

fn decode_seed(hex: &str) -> Result<[u8; 32]> {
    let bad = || {
        Error::invalid(format!(
            "the database's {SEED_KEY} is not 64 hex digits; delete that meta row to make a new key (edges learn it on their next connection)"
        ))
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(seed)
}

/// The key an edge checks the stream's messages with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VerifyingKey(Vec<u8>);

impl VerifyingKey {
    /// From `welcome`'s `publish_key` (base64 of 32 bytes).
    pub(crate) fn parse(b64: &str) -> Result<VerifyingKey> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| Error::invalid(format!("the primary's publish key is not base64: {e}")))?;
        if raw.len() != 32 {
            return Err(Error::invalid(format!(
                "the primary's publish key has {} bytes, not 32",
                raw.len()
            )));
        }
        Ok(VerifyingKey(raw))
    }

    /// True when `sig` (the `Hivesync-Sig` header) signs this message.
    pub(crate) fn verify(&self, seq: i64, prev: i64, payload: Option<&[u8]>, sig: &str) -> bool {
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig) else {
            return false;
        };
        UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(&signed_bytes(seq, prev, payload), &sig)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_for_its_message_only() {
        let k = SigningKey::from_seed([7; 32]);
        let v = VerifyingKey::parse(&k.public()).unwrap();
        let s = k.sign(5, 4, Some(b"{\"seq\":5}"));
        assert!(v.verify(5, 4, Some(b"{\"seq\":5}"), &s.sig));
        assert!(!v.verify(6, 4, Some(b"{\"seq\":5}"), &s.sig), "other seq");
        assert!(!v.verify(5, 3, Some(b"{\"seq\":5}"), &s.sig), "other prev");
        assert!(
            !v.verify(5, 4, Some(b"{\"seq\":6}"), &s.sig),
            "other payload"
        );
        assert!(!v.verify(5, 4, None, &s.sig), "a stand-in");
        assert!(!v.verify(5, 4, Some(b"{\"seq\":5}"), "not base64!"));
        let other = VerifyingKey::parse(&SigningKey::from_seed([8; 32]).public()).unwrap();
        assert!(
            !other.verify(5, 4, Some(b"{\"seq\":5}"), &s.sig),
            "other key"
        );
        // Deterministic (a republished change keeps its id), and ids differ per message.
        assert_eq!(k.sign(5, 4, Some(b"{\"seq\":5}")).id, s.id);
        assert_ne!(k.sign(6, 5, Some(b"{\"seq\":6}")).id, s.id);
        assert_eq!(s.id.len(), 32);
        let stand_in = k.sign(9, 8, None);
        assert!(v.verify(9, 8, None, &stand_in.sig));
        assert!(!v.verify(9, 8, Some(b""), &stand_in.sig));
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        assert!(VerifyingKey::parse("%%").is_err());
        assert!(VerifyingKey::parse("AAAA").is_err());
        assert!(decode_seed("00").is_err());
        assert!(decode_seed(&"zz".repeat(32)).is_err());
        assert_eq!(decode_seed(&"01".repeat(32)).unwrap(), [1; 32]);
    }
}
