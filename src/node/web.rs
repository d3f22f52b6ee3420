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
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

/// Where the web files come from.
#[derive(Clone, Debug)]
pub enum WebFiles {
    /// The package compiled into the binary.
    Embedded,
    /// A directory laid out as `wasm/web` (`--web DIR`).
    Dir(Arc<PathBuf>),
}

macro_rules! embed {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_bytes!(concat!("../../wasm/web/", $name)) as &[u8])),*]
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
    /// `--web DIR` when given (it must hold a built package), else the embedded package.
    pub fn choose(dir: Option<&Path>) -> crate::Result<WebFiles> {
        match dir {
            None => Ok(WebFiles::Embedded),
            Some(d) if d.join("pkg/hivesync_wasm_bg.wasm").is_file() => {
                Ok(WebFiles::Dir(Arc::new(d.to_path_buf())))
            }
            Some(d) => Err(crate::Error::invalid(format!(
                "--web {}: no built browser replica there (expected pkg/hivesync_wasm_bg.wasm; \
                 build one with `bash wasm/build.sh`, or leave out --web to serve the one built in)",
                d.display()
            ))),
        }
    }

    /// A file's bytes: the built-in ones are served without a copy.
    async fn read(&self, path: &str) -> Option<Bytes> {
        match self {
            WebFiles::Embedded => EMBEDDED
                .iter()
                .find(|(name, _)| *name == path)
                .map(|(_, bytes)| Bytes::from_static(bytes)),
            WebFiles::Dir(d) => tokio::fs::read(d.join(path)).await.ok().map(Bytes::from),
        }
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("css") => "text/css",
        Some("ts") | Some("sha256") => "text/plain; charset=utf-8",
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

async fn file(files: &WebFiles, dir: &str, name: &str) -> Response {
    if !safe_name(name) {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    match files.read(&format!("{dir}{name}")).await {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(name)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

/// `/`: the replica's demo page.
pub(crate) async fn index(State(files): State<WebFiles>) -> Response {
    file(&files, "", "index.html").await
}

/// `/status`: the node's status page, a live view of its feed.
pub(crate) async fn status() -> Response {
    Html(include_str!("index.html")).into_response()
}

/// `/{name}`: a file of the web directory.
pub(crate) async fn asset(
    State(files): State<WebFiles>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    file(&files, "", &name).await
}

/// `/pkg/{name}`: a file of the wasm package.
pub(crate) async fn pkg(State(files): State<WebFiles>, UrlPath(name): UrlPath<String>) -> Response {
    file(&files, "pkg/", &name).await
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
