//! `GET /v1/image`: a database image for a new replica (`store::image`), cut to the namespaces
//! the caller may read (or the subset `?ns=a,b` names), consistent at the seq the `Hivesync-At`
//! header gives. Authenticated like the feed (`Authorization: Bearer TOKEN`). Images are built
//! once per set of namespaces and served to many: one build at a time per set, however many
//! ask; rebuilt when the log has moved on by `[image] rebuild_after_changes` (default 10,000)
//! or the image is older than `rebuild_after_secs` (default 600). Streamed from the file (never
//! whole in memory), gzipped when the client accepts it, with an `ETag` a cache can revalidate.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::node::NodeState;
use crate::protocol::{AuthError, Authorizer, Scope};
use crate::store::image::{build_image, ImageInfo};

const DEFAULT_CHANGES: i64 = 10_000;
const DEFAULT_SECS: u64 = 600;
/// Most images kept at once (the least recently built goes first).
const MAX_IMAGES: usize = 64;
/// Bytes read from the file per chunk of the body.
const CHUNK: usize = 256 * 1024;

/// One image on disk; the file goes when the last response streaming it is done.
struct Built {
    path: PathBuf,
    /// The same, gzipped once when it was built: what most clients download (compressed once
    /// for every download, and off the runtime's threads).
    gz: PathBuf,
    gz_bytes: u64,
    info: ImageInfo,
    made: Instant,
    etag: String,
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.gz);
    }
}

/// The node's images, per set of namespaces.
#[derive(Default)]
pub(crate) struct Images {
    cache: Mutex<HashMap<Vec<String>, Arc<Built>>>,
    /// One build per set at a time.
    building: Mutex<HashMap<Vec<String>, Arc<tokio::sync::Mutex<()>>>>,
    next: AtomicU64,
    /// The directory was cleared of an earlier run's images.
    swept: std::sync::atomic::AtomicBool,
    pub(crate) builds: AtomicU64,
    pub(crate) hits: AtomicU64,
    pub(crate) bytes_served: AtomicU64,
}

#[derive(Deserialize)]
pub(crate) struct ImageQuery {
    ns: Option<String>,
}

fn answer(status: StatusCode, msg: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

/// `GET /v1/image`, readable by pages of any origin (CORS): what it returns is decided by the
/// token alone (no cookie is ever read), and a page of a foreign origin without a token is
/// refused as on the feed.
pub(crate) async fn image(
    State(node): State<Arc<NodeState>>,
    Query(q): Query<ImageQuery>,
    headers: HeaderMap,
) -> Response {
    let mut res = image_for(node, q, &headers).await;
    cors(&headers, res.headers_mut());
    res
}

/// The preflight of a page of another origin that sends `Authorization`.
pub(crate) async fn preflight(headers: HeaderMap) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    cors(&headers, h);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, If-None-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    res
}

fn cors(req: &HeaderMap, h: &mut HeaderMap) {
    let Some(origin) = req.get(header::ORIGIN) else {
        return;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Hivesync-At, Hivesync-Image-Bytes, Hivesync-Image-Rows, ETag"),
    );
}

async fn image_for(node: Arc<NodeState>, q: ImageQuery, headers: &HeaderMap) -> Response {
    let Some(db) = node.store.pool().path().map(PathBuf::from) else {
        return answer(
            StatusCode::NOT_FOUND,
            "this node keeps its database in memory: no image; use the feed's snapshot\n".into(),
        );
    };
    let read = match rights(&node, headers).await {
        Ok(r) => r,
        Err(why) => return answer(StatusCode::UNAUTHORIZED, format!("{why}\n")),
    };
    // A token that reads every namespace, asking for all: the whole file, no rows to cut (its
    // own cache key, which no list of namespaces can equal: a namespace holds no NUL).
    let (key, only) = if read.is_all() && q.ns.is_none() {
        (vec!["\0every namespace".to_string()], None)
    } else {
        match namespaces(&node, &read, q.ns.as_deref()).await {
            Ok(n) => (n.clone(), Some(n)),
            Err(r) => return r,
        }
    };
    let built = match get_or_build(&node, &db, key, only).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build a database image");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot build the image now ({e}); the feed's snapshot still works\n"),
            );
        }
    };
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let etag = format!("\"{}{}\"", built.etag, if gzip { "-gz" } else { "" });
    let mut common = HeaderMap::new();
    common.insert("hivesync-at", HeaderValue::from(built.info.at));
    // The file's size however it is sent: what a client reserves before it streams the image
    // into storage that wants the size up front (OPFS's import).
    common.insert("hivesync-image-bytes", HeaderValue::from(built.info.bytes));
    common.insert("hivesync-image-rows", HeaderValue::from(built.info.rows));
    common.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
    );
    common.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    common.insert(
        header::VARY,
        HeaderValue::from_static("Authorization, Accept-Encoding, Origin"),
    );
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let file = match tokio::fs::File::open(if gzip { &built.gz } else { &built.path }).await {
        Ok(f) => f,
        Err(e) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the image went away ({e}): ask again\n"),
            )
        }
    };
    common.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.sqlite3"),
    );
    if gzip {
        common.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        common.insert(header::CONTENT_LENGTH, HeaderValue::from(built.gz_bytes));
    } else {
        common.insert(header::CONTENT_LENGTH, HeaderValue::from(built.info.bytes));
    }
    let body = Body::from_stream(stream(file, built, node.clone()));
    (StatusCode::OK, common, body).into_response()
}

/// What the request's token may read (the `Authorization: Bearer` header; none: anonymous,
/// where the node lets anonymous clients in, and not from another origin's page).
async fn rights(node: &NodeState, headers: &HeaderMap) -> Result<Scope, String> {
    let token = match headers.get(header::AUTHORIZATION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => match v.strip_prefix("Bearer ") {
            Some(t) => Some(t.trim().to_string()),
            None => return Err("send the token as `Authorization: Bearer TOKEN`".into()),
        },
        Some(Err(_)) => return Err("the Authorization header is not text".into()),
    };
    let config = node.auth.config();
    let allowed = config.allowed_origins.iter().chain(&node.allow_origins);
    let foreign = crate::node::accept::foreign_origin(headers, allowed);
    let auth = crate::node::auth::ForOrigin {
        auth: &node.auth,
        foreign: foreign.as_deref(),
    };
    if let Some(kid) = token.as_deref().and_then(|t| auth.missing_key(t)) {
        node.auth.refresh_keys(&kid).await;
    }
    match auth.authenticate(token.as_deref()) {
        Ok(p) => Ok(p.read),
        Err(AuthError(why)) => Err(why),
    }
}

/// The set of namespaces the image holds: those asked for (each readable), or every one the
/// token may read; sorted.
async fn namespaces(
    node: &Arc<NodeState>,
    read: &Scope,
    asked: Option<&str>,
) -> Result<Vec<String>, Response> {
    let mut set: Vec<String> = match asked {
        Some(list) => {
            let mut v = Vec::new();
            for ns in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !read.allows(ns) {
                    return Err(answer(
                        StatusCode::FORBIDDEN,
                        format!("this token may not read namespace {ns:?}\n"),
                    ));
                }
                v.push(ns.to_string());
            }
            v
        }
        None => {
            let s = node.store.clone();
            let all = tokio::task::spawn_blocking(move || s.read(crate::query::namespaces))
                .await
                .map_err(|e| answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?
                .map_err(|e| answer(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")))?;
            all.into_iter().filter(|ns| read.allows(ns)).collect()
        }
    };
    set.sort();
    set.dedup();
    Ok(set)
}

/// The image of `set`: the cached one while fresh, else one build (others asking meanwhile
/// wait for it).
async fn get_or_build(
    node: &Arc<NodeState>,
    db: &std::path::Path,
    set: Vec<String>,
    only: Option<Vec<String>>,
) -> crate::Result<Arc<Built>> {
    let images = &node.images;
    let cfg = node.auth.config().image.clone().unwrap_or_default();
    let max_changes = cfg.rebuild_after_changes.unwrap_or(DEFAULT_CHANGES);
    let max_age = Duration::from_secs(cfg.rebuild_after_secs.unwrap_or(DEFAULT_SECS));
    let head = node.hub.head();
    let fresh = |b: &Built| head - b.info.at <= max_changes && b.made.elapsed() <= max_age;
    if let Some(b) = images.cache.lock().get(&set).filter(|b| fresh(b)) {
        images.hits.fetch_add(1, Relaxed);
        return Ok(b.clone());
    }
    let gate = images
        .building
        .lock()
        .entry(set.clone())
        .or_default()
        .clone();
    let _one = gate.lock().await;
    // Built by the request this one waited for?
    let head = node.hub.head();
    let fresh = |b: &Built| head - b.info.at <= max_changes && b.made.elapsed() <= max_age;
    if let Some(b) = images.cache.lock().get(&set).filter(|b| fresh(b)) {
        images.hits.fetch_add(1, Relaxed);
        return Ok(b.clone());
    }
    let t0 = Instant::now();
    let (path, gz, info, gz_bytes) = build(images, db, only).await?;
    images.builds.fetch_add(1, Relaxed);
    tracing::info!(
        at = info.at,
        bytes = info.bytes,
        namespaces = set.len(),
        ms = t0.elapsed().as_millis() as u64,
        "built a database image"
    );
    let etag = {
        use sha2::Digest;
        let h = sha2::Sha256::digest(
            format!("{}|{}|{}", info.at, path.display(), set.join(",")).as_bytes(),
        );
        h.iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let built = Arc::new(Built {
        path,
        gz,
        gz_bytes,
        info,
        made: Instant::now(),
        etag,
    });
    {
        // Bounded: one image per set of namespaces, and with per-user namespaces (a JWT's
        // `user:{sub}`) the sets are many. The oldest image goes (its file with its last reader).
        let mut cache = images.cache.lock();
        cache.insert(set, built.clone());
        while cache.len() > MAX_IMAGES {
            let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, b)| b.made)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            cache.remove(&oldest);
        }
    }
    drop(_one);
    drop(gate);
    // The build locks of sets nobody is building go too.
    images
        .building
        .lock()
        .retain(|_, g| Arc::strong_count(g) > 1);
    Ok(built)
}

/// Build an image of `ns` (None: the whole file) and its gzipped copy in the directory beside
/// the database, all of it (the file system included) off the runtime's threads.
async fn build(
    images: &Images,
    db: &std::path::Path,
    ns: Option<Vec<String>>,
) -> crate::Result<(PathBuf, PathBuf, ImageInfo, u64)> {
    let dir = PathBuf::from(format!("{}.images", db.display()));
    let sweep = !images.swept.swap(true, Relaxed);
    let n = images.next.fetch_add(1, Relaxed);
    let path = dir.join(format!("image-{}-{n}.db", std::process::id()));
    let gz = path.with_extension("db.gz");
    let (db, p, g) = (db.to_path_buf(), path.clone(), gz.clone());
    let (info, gz_bytes) = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        if sweep {
            // Images an earlier run of the node left (it stopped while serving them) go.
            let ours = format!("image-{}-", std::process::id());
            for e in std::fs::read_dir(&dir)?.flatten() {
                if !e.file_name().to_string_lossy().starts_with(&ours) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let info = build_image(&db, &p, ns.as_deref())?;
        match gzip_file(&p, &g) {
            Ok(n) => Ok((info, n)),
            Err(e) => {
                let _ = std::fs::remove_file(&p);
                let _ = std::fs::remove_file(&g);
                Err(e)
            }
        }
    })
    .await
    .map_err(|e| crate::Error::invalid(format!("the image build stopped: {e}")))??;
    Ok((path, gz, info, gz_bytes))
}

/// Gzip `src` into `dest` (fast level: images are mostly text, and the time goes to the link);
/// returns its size.
fn gzip_file(src: &std::path::Path, dest: &std::path::Path) -> crate::Result<u64> {
    let mut input = std::io::BufReader::with_capacity(CHUNK, std::fs::File::open(src)?);
    let mut enc = flate2::write::GzEncoder::new(
        std::io::BufWriter::with_capacity(CHUNK, std::fs::File::create(dest)?),
        flate2::Compression::fast(),
    );
    std::io::copy(&mut input, &mut enc)?;
    enc.finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(std::fs::metadata(dest)?.len())
}

/// The file (the image, or its gzipped copy) as body chunks, counted as they go.
fn stream(
    file: tokio::fs::File,
    built: Arc<Built>,
    node: Arc<NodeState>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::unfold(Some((file, built, node)), |state| async move {
        let (mut file, built, node) = state?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                node.images.bytes_served.fetch_add(n as u64, Relaxed);
                Some((Ok(Bytes::from(buf)), Some((file, built, node))))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}
