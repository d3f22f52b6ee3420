//! `hivesync jwt keygen` and `hivesync jwt sign`: real signed tokens for development, tests and
//! demos, without an identity provider. Keys are Ed25519 (ring generates them); tokens are
//! signed by `jsonwebtoken`, the library the node verifies them with.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Map, Value};

/// `hivesync jwt`.
#[derive(clap::Args)]
pub(crate) struct JwtArgs {
    #[command(subcommand)]
    pub(crate) cmd: JwtCmd,
}

#[derive(clap::Subcommand)]
pub(crate) enum JwtCmd {
    /// Write an Ed25519 key pair (DIR/private.pem, DIR/jwks.json) and print the `[jwt]` config
    /// lines that accept its tokens.
    Keygen {
        /// Where to write the key files (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print a token signed with a private key (from `jwt keygen`, or any Ed25519, RSA or
    /// P-256 PKCS#8 PEM key).
    Sign {
        /// The private key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// The `sub` claim (the user).
        #[arg(long)]
        sub: String,
        /// How long it is valid: `30s`, `5m`, `1h`, `2d` (or seconds).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Namespaces it may read (the `hivesync` claim), comma-separated.
        #[arg(long, value_delimiter = ',')]
        read: Vec<String>,
        /// Namespaces it may write (the `hivesync` claim), comma-separated.
        #[arg(long, value_delimiter = ',')]
        write: Vec<String>,
        /// Another claim, `NAME=JSON` (a value that is not JSON is taken as a string).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// The `iss` claim.
        #[arg(long)]
        iss: Option<String>,
        /// The `aud` claim.
        #[arg(long)]
        aud: Option<String>,
        /// The key id for the header (default: the one key of `jwks.json` beside the key).
        #[arg(long)]
        kid: Option<String>,
    },
}

pub(crate) fn run(args: &JwtArgs) -> Result<()> {
    match &args.cmd {
        JwtCmd::Keygen { dir } => keygen(dir),
        JwtCmd::Sign {
            key,
            sub,
            ttl,
            read,
            write,
            claims,
            iss,
            aud,
            kid,
        } => {
            let mut extra = Map::new();
            if !read.is_empty() || !write.is_empty() {
                extra.insert("hivesync".into(), json!({"read": read, "write": write}));
            }
            for c in claims {
                let (name, value) = c
                    .split_once('=')
                    .with_context(|| format!("--claim {c:?}: write NAME=JSON"))?;
                let v = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
                extra.insert(name.to_string(), v);
            }
            let secs = parse_ttl(ttl)?;
            let t = sign(
                key,
                sub,
                secs,
                extra,
                iss.as_deref(),
                aud.as_deref(),
                kid.as_deref(),
            )?;
            println!("{t}");
            Ok(())
        }
    }
}

/// `30s`, `5m`, `1h`, `2d`, or plain seconds.
pub(crate) fn parse_ttl(s: &str) -> Result<u64> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .with_context(|| format!("--ttl {s:?}: a number and s, m, h or d (e.g. 1h)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("--ttl {s:?}: the unit is s, m, h or d (e.g. 30s, 5m, 1h)"),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .with_context(|| format!("--ttl {s:?}: more than zero, and not absurdly long"))
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn keygen(dir: &Path) -> Result<()> {
    use ring::signature::KeyPair;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("the OS random generator failed"))?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| anyhow::anyhow!("the generated key does not load: {e}"))?;
    let x = b64url(pair.public_key().as_ref());
    // RFC 7638 thumbprint as the key id: the JWK's required members, in order, hashed.
    let kid = {
        use sha2::Digest;
        b64url(&sha2::Sha256::digest(
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#).as_bytes(),
        ))
    };
    let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let key_path = dir.join("private.pem");
    write_private(&key_path, pem.as_bytes())?;
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}]});
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, format!("{jwks:#}\n"))
        .with_context(|| format!("cannot write {}", jwks_path.display()))?;
    let abs = std::fs::canonicalize(&jwks_path).unwrap_or(jwks_path);
    eprintln!(
        "wrote {} (keep it secret) and {} (key id {kid})",
        key_path.display(),
        abs.display()
    );
    eprintln!(
        "add to the node's config file; tokens take their rights from their `hivesync` claim:"
    );
    println!(
        "[jwt]\njwks_file = {}\nalgorithms = [\"EdDSA\"]",
        Value::String(abs.display().to_string())
    );
    eprintln!(
        "then: hivesync jwt sign --key {} --sub alice --ttl 1h --read 'user:alice,public' --write user:alice",
        key_path.display()
    );
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A token for `sub`, valid `ttl` seconds from now, with `extra` claims.
pub(crate) fn sign(
    key: &Path,
    sub: &str,
    ttl: u64,
    extra: Map<String, Value>,
    iss: Option<&str>,
    aud: Option<&str>,
    kid: Option<&str>,
) -> Result<String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    // The first kind of key the PEM loads as and signs with.
    type Load = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;
    let kinds: [(Algorithm, Load); 3] = [
        (Algorithm::EdDSA, EncodingKey::from_ed_pem),
        (Algorithm::RS256, EncodingKey::from_rsa_pem),
        (Algorithm::ES256, EncodingKey::from_ec_pem),
    ];
    let kid = match kid {
        Some(k) => Some(k.to_string()),
        None => kid_beside(key),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), sub.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl).into());
    if let Some(i) = iss {
        claims.insert("iss".into(), i.into());
    }
    if let Some(a) = aud {
        claims.insert("aud".into(), a.into());
    }
    claims.extend(extra);
    for (alg, load) in kinds {
        let Ok(enc) = load(&pem) else { continue };
        let mut header = Header::new(alg);
        header.kid.clone_from(&kid);
        if let Ok(t) = jsonwebtoken::encode(&header, &claims, &enc) {
            return Ok(t);
        }
    }
    bail!(
        "{} is not a PEM private key this can sign with (Ed25519, RSA or P-256, PKCS#8)",
        key.display()
    )
}

/// The key id of the one key in `jwks.json` beside `key`, if there is exactly one.
fn kid_beside(key: &Path) -> Option<String> {
    let text = std::fs::read_to_string(key.parent()?.join("jwks.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    match v.get("keys")?.as_array()?.as_slice() {
        [k] => Some(k.get("kid")?.as_str()?.to_string()),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_as_people_write_them() {
        assert_eq!(parse_ttl("30s").unwrap(), 30);
        assert_eq!(parse_ttl("5m").unwrap(), 300);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("2d").unwrap(), 172800);
        assert_eq!(parse_ttl("90").unwrap(), 90);
        for bad in ["", "h", "1y", "0s", "-5m", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
