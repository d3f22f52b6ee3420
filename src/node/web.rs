//! The browser replica's files (built by `wasm/build.sh` into `wasm/web/`), served at `/`.
//! When they are not built, `/` serves a small status page with a live feed instead.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

/// Where the web files are: `--web`, else `wasm/web` under the working directory or beside
/// the repository the binary was built in, when it holds a built package.
pub fn find_web_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let mut candidates = vec![PathBuf::from("wasm/web")];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/hivesync -> the repository root
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join("wasm/web"));
        }
    }
    candidates
        .into_iter()
        .find(|d| d.join("pkg/hivesync_wasm_bg.wasm").is_file())
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("css") => "text/css",
        Some("ts") => "text/plain; charset=utf-8",
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

async fn file(dir: &Path, name: &str) -> Response {
    if !safe_name(name) {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    match tokio::fs::read(dir.join(name)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(name)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

/// `/`: the replica page when built, the status page otherwise.
pub(crate) async fn index(State(dir): State<Option<PathBuf>>) -> Response {
    match dir {
        Some(d) => file(&d, "index.html").await,
        None => Html(include_str!("index.html")).into_response(),
    }
}

/// `/{name}`: a file of the web directory.
pub(crate) async fn asset(
    State(dir): State<Option<PathBuf>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match dir {
        Some(d) => file(&d, &name).await,
        None => (
            StatusCode::NOT_FOUND,
            "the browser replica is not built: run `bash wasm/build.sh`\n",
        )
            .into_response(),
    }
}

/// `/pkg/{name}`: a file of the wasm package.
pub(crate) async fn pkg(
    State(dir): State<Option<PathBuf>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match dir {
        Some(d) => file(&d.join("pkg"), &name).await,
        None => (
            StatusCode::NOT_FOUND,
            "the browser replica is not built: run `bash wasm/build.sh`\n",
        )
            .into_response(),
    }
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
}
