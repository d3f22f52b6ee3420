//! The browser replica's files, served at `/`: the package `wasm/build.sh` builds into
//! `wasm/web/` is committed and compiled into the binary, so a fresh `cargo run -- serve`
//! serves the working replica with no other step. `serve --web DIR` serves a directory instead
//! (a replica being worked on). The node's own status page (a live feed) is at `/status`.
//!
//! CI rebuilds the package from source and fails when the committed copy is stale: the package
//! records a hash of the sources it was built from (`pkg/SOURCES.sha256`, see `wasm/build.sh`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};

/// Where the web files come from.
#[derive(Clone, Debug)]
pub(crate) enum WebFiles {
    /// The package compiled into the binary.
    Embedded,
    /// A directory laid out as `wasm/web` (`--web DIR`), its real path (symbolic links
    /// resolved): no file outside it is served, whatever links inside it point to. Its files
    /// go over the built-in package's: a file it lacks is the built-in one.
    Dir(Arc<PathBuf>),
}

macro_rules! embed {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_bytes!(concat!("../../../wasm/web/", $name)) as &[u8])),*]
    };
}

/// The files of `wasm/web` the replica needs, by the path they are served under.
static EMBEDDED: &[(&str, &[u8])] = embed!(
    "index.html",
    "app.js",
    "token.js",
    "hivesync.js",
    "hivesync.d.ts",
    "sync.js",
    "worker.js",
    "package.json",
    "pkg/hivesync_wasm.js",
    "pkg/hivesync_wasm.d.ts",
    "pkg/hivesync_wasm_bg.wasm",
    "pkg/hivesync_wasm_bg.wasm.d.ts",
    "pkg/SOURCES.sha256",
);

impl WebFiles {
    /// `--web DIR` when given (a directory: its files go over the built-in package's, so it
    /// may hold a whole package or only an app's own pages), else the embedded package.
    pub(crate) fn choose(dir: Option<&Path>) -> crate::Result<WebFiles> {
        match dir {
            None => Ok(WebFiles::Embedded),
            Some(d) if d.is_dir() => {
                let real = d
                    .canonicalize()
                    .map_err(|e| crate::Error::invalid(format!("--web {}: {e}", d.display())))?;
                Ok(WebFiles::Dir(Arc::new(real)))
            }
            Some(d) => Err(crate::Error::invalid(format!(
                "--web {}: not a directory (give a directory laid out as wasm/web, whose files go \
                 over the built-in package's, or leave out --web)",
                d.display()
            ))),
        }
    }

    /// A built-in file ready to serve: its bytes, their gzip (made once, on first request) and
    /// a validator.
    fn prepared(path: &str) -> Option<&'static Prepared> {
        static PREPARED: std::sync::OnceLock<Vec<std::sync::OnceLock<Prepared>>> =
            std::sync::OnceLock::new();
        let all = PREPARED.get_or_init(|| EMBEDDED.iter().map(|_| Default::default()).collect());
        let i = EMBEDDED.iter().position(|(name, _)| *name == path)?;
        Some(all[i].get_or_init(|| Prepared::new(Bytes::from_static(EMBEDDED[i].1), true)))
    }

    /// Prepare every built-in file now, on a blocking thread (at start: the first page load
    /// does not wait for the compression).
    pub(crate) fn warm(&self) {
        // A --web directory may lack some: the built-in ones stand in.
        tokio::task::spawn_blocking(|| {
            for (name, _) in EMBEDDED {
                WebFiles::prepared(name);
            }
        });
    }

    /// A file's bytes: the built-in ones are served without a copy.
    async fn read(&self, path: &str) -> Option<Bytes> {
        match self {
            WebFiles::Embedded => EMBEDDED
                .iter()
                .find(|(name, _)| *name == path)
                .map(|(_, bytes)| Bytes::from_static(bytes)),
            WebFiles::Dir(d) => {
                let real = tokio::fs::canonicalize(d.join(path)).await.ok()?;
                if !real.starts_with(d.as_path()) {
                    tracing::warn!(
                        path,
                        "--web: a link leads outside the directory; not served"
                    );
                    return None;
                }
                tokio::fs::read(real).await.ok().map(Bytes::from)
            }
        }
    }
}

/// A file as it is served: its bytes, their gzip when that is smaller, and its entity tag.
struct Prepared {
    raw: Bytes,
    gz: Option<Bytes>,
    /// The first 16 hex digits of the bytes' SHA-256.
    tag: String,
}

impl Prepared {
    fn new(raw: Bytes, compress: bool) -> Prepared {
        use sha2::Digest as _;
        let tag: String = sha2::Sha256::digest(&raw)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let gz = compress.then(|| gzip(&raw)).flatten().map(Bytes::from);
        Prepared { raw, gz, tag }
    }
}

/// `bytes` gzipped at the best level (the package's WebAssembly: 1,564,211 bytes, 703 KB), when
/// that saves anything.
fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).ok()?;
    let out = e.finish().ok()?;
    (out.len() + 64 < bytes.len()).then_some(out)
}

/// True when the request's `Accept-Encoding` takes gzip.
fn takes_gzip(req: &HeaderMap) -> bool {
    req.get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("css") => "text/css",
        Some("ts" | "sha256") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Only plain file names: no separators, no dot-files, so no request can leave the directory.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The replica's pages and files: scripts, styles, workers and WebAssembly from this node only
/// (`'wasm-unsafe-eval'` lets the page compile the replica's WebAssembly, nothing else runs
/// from strings), the feed over WebSockets, no plugins, and no framing by another site.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:; worker-src 'self'; \
    img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// Headers every web response carries (issue 23): a content security policy, no MIME
/// sniffing, no framing (for browsers without `frame-ancestors`), no referrer.
fn secured(csp: &str, mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, csp),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        if let Ok(v) = header::HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    r
}

async fn file(files: &WebFiles, dir: &str, name: &str, req: &HeaderMap) -> Response {
    if !safe_name(name) {
        return secured(CSP, (StatusCode::NOT_FOUND, "not found\n").into_response());
    }
    let path = format!("{dir}{name}");
    // The built-in files are prepared once; a --web directory's are read (and tagged) anew
    // each time, uncompressed, as they may change.
    let fresh;
    let from_dir = match files {
        WebFiles::Dir(_) => files.read(&path).await,
        WebFiles::Embedded => None,
    };
    let prepared = match from_dir {
        Some(bytes) => {
            fresh = Prepared::new(bytes, false);
            Some(&fresh)
        }
        // The built-in file (also under a --web directory that lacks it). Compressing is CPU
        // work: off the async threads (done once per file).
        None => {
            let p = path.clone();
            tokio::task::spawn_blocking(move || WebFiles::prepared(&p))
                .await
                .ok()
                .flatten()
        }
    };
    let Some(p) = prepared else {
        return secured(CSP, (StatusCode::NOT_FOUND, "not found\n").into_response());
    };
    secured(CSP, respond(p, content_type(name), req))
}

/// A file's response: gzipped where the client takes it, tagged (`ETag`, `Vary`), and `304 Not
/// Modified` when the client holds this version. The package's names carry no hash, so caches
/// revalidate (`no-cache`), which costs a 304 when nothing changed.
fn respond(p: &Prepared, content_type: &'static str, req: &HeaderMap) -> Response {
    let gz = p.gz.as_ref().filter(|_| takes_gzip(req));
    let etag = match gz {
        Some(_) => format!("\"{}-gzip\"", p.tag),
        None => format!("\"{}\"", p.tag),
    };
    let matches = req
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let mut r = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match gz {
            Some(body) => ([(header::CONTENT_ENCODING, "gzip")], body.clone()).into_response(),
            None => p.raw.clone().into_response(),
        }
    };
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::VARY, "Accept-Encoding"),
        (header::ETAG, etag.as_str()),
    ] {
        if let Ok(v) = header::HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    r
}

/// `/`: the replica's demo page.
pub(crate) async fn index(State(files): State<WebFiles>, req: HeaderMap) -> Response {
    file(&files, "", "index.html", &req).await
}

/// `/status`: the node's status page, a live view of its feed.
pub(crate) async fn status() -> Response {
    static CSP_STATUS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let csp = CSP_STATUS.get_or_init(|| status_csp(STATUS_PAGE));
    secured(csp, Html(STATUS_PAGE).into_response())
}

const STATUS_PAGE: &str = include_str!("../index.html");

/// The status page's policy: as the replica's, with its one inline script allowed by hash.
fn status_csp(page: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let script = page
        .split_once("<script type=\"module\">")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(s, _)| s);
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
    CSP.replace(
        "script-src 'self' 'wasm-unsafe-eval'",
        &format!("script-src 'self' 'sha256-{hash}'"),
    )
}

/// `/{name}`: a file of the web directory.
pub(crate) async fn asset(
    State(files): State<WebFiles>,
    UrlPath(name): UrlPath<String>,
    req: HeaderMap,
) -> Response {
    file(&files, "", &name, &req).await
}

/// `/pkg/{name}`: a file of the wasm package.
pub(crate) async fn pkg(
    State(files): State<WebFiles>,
    UrlPath(name): UrlPath<String>,
    req: HeaderMap,
) -> Response {
    file(&files, "pkg/", &name, &req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_directory() {
        for bad in ["", "..", "../x", "a/b", ".env", "a\\b", "%2e%2e", "x\0"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        for good in ["index.html", "hivesync_wasm_bg.wasm", "app.js"] {
            assert!(safe_name(good));
        }
    }

    #[tokio::test]
    async fn the_replica_is_built_in() {
        let files = WebFiles::choose(None).unwrap();
        for name in [
            "index.html",
            "hivesync.js",
            "worker.js",
            "pkg/hivesync_wasm_bg.wasm",
        ] {
            let bytes = files.read(name).await.unwrap();
            assert!(!bytes.is_empty(), "{name}");
        }
        let wasm = files.read("pkg/hivesync_wasm_bg.wasm").await.unwrap();
        assert_eq!(&wasm[..4], b"\0asm");
        assert!(files.read("../Cargo.toml").await.is_none());
    }
}
