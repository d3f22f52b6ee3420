//! A node starting as an edge on an empty database takes its upstream's database image
//! (`GET /v1/image`, cut to its token's rights) and then follows the feed from the image's seq,
//! instead of applying a snapshot row by row. An upstream without the endpoint (an older node,
//! one in memory), or a download that fails, leaves nothing behind: the edge then starts with
//! the feed's snapshot as before.

use std::io::Write;
use std::path::Path;

use http_body_util::BodyExt;

/// Download the image of the node whose feed is `feed` (`ws://` or `wss://`) into `db`, which
/// must not exist yet; the seq it is at, or None (nothing written) when there is none to take.
pub async fn bootstrap_from_image(feed: &str, token: Option<&str>, db: &Path) -> Option<i64> {
    if db.exists() {
        return None;
    }
    match fetch(feed, token, db).await {
        Ok(Some(at)) => {
            tracing::info!(upstream = %feed, at, file = %db.display(), "started from the upstream's database image; following its feed from there");
            Some(at)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(upstream = %feed, error = %e, "cannot take the upstream's database image; starting with its snapshot instead");
            None
        }
    }
}

/// The image's URL beside the feed's: `ws://host/...` -> `http://host/v1/image`.
fn image_url(feed: &str) -> Result<hyper::Uri, String> {
    let (scheme, rest) = feed
        .split_once("://")
        .ok_or_else(|| format!("{feed:?} is not a URL"))?;
    let http = match scheme.to_ascii_lowercase().as_str() {
        "ws" => "http",
        "wss" => "https",
        other => return Err(format!("no image over {other}://")),
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    format!("{http}://{host}/v1/image")
        .parse()
        .map_err(|e| format!("{e}"))
}

async fn fetch(feed: &str, token: Option<&str>, db: &Path) -> Result<Option<i64>, String> {
    let uri = image_url(feed)?;
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("accept-encoding", "gzip")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let resp = crate::node::dial::http_get(uri, &headers).await?;
    match resp.status().as_u16() {
        200 => {}
        404 => return Ok(None),
        s => return Err(format!("the upstream answered HTTP {s}")),
    }
    let at: i64 = resp
        .headers()
        .get("hivesync-at")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or("the image came without its Hivesync-At header")?;
    let gzip = resp
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let part = db.with_extension("image-part");
    let res = async {
        let file = std::fs::File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
        let mut out: Box<dyn Write + Send> = if gzip {
            Box::new(flate2::write::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the download broke off: {e}"))?;
            if let Some(d) = frame.data_ref() {
                out.write_all(d)
                    .map_err(|e| format!("{}: {e}", part.display()))?;
            }
        }
        out.flush().map_err(|e| e.to_string())?;
        drop(out);
        std::fs::rename(&part, db).map_err(|e| format!("{}: {e}", db.display()))
    }
    .await;
    if let Err(e) = res {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_beside_the_feed() {
        assert_eq!(
            image_url("ws://h:7070/v1/sync").map(|u| u.to_string()),
            Ok("http://h:7070/v1/image".into())
        );
        assert_eq!(
            image_url("wss://sync.example.com/v1/sync?x=1").map(|u| u.to_string()),
            Ok("https://sync.example.com/v1/image".into())
        );
        assert!(image_url("nats://h:4222").is_err());
    }
}
