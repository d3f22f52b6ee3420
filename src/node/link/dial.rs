//! The native clients' side of a connection (a relay's upstream link, `hivesync watch`): one
//! way to open the socket, and one mapping of what went wrong onto the client session's
//! [`ConnectFailure`], which decides what is fatal and what is retried.

use std::time::Instant;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::client::ConnectFailure;

/// An open client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `url` with the feed's path (`/v1/sync`) in place of its own.
fn feed_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("ws", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    format!("{scheme}://{host}/v1/sync")
}

/// Connect to `url` offering `subprotocol`, with the frame limits every hivesync client
/// accepts and no Nagle (acks and forwarded writes are small frames that must not wait for a
/// delayed ACK).
pub async fn dial(url: &str, subprotocol: &str) -> Result<Ws, ConnectFailure> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("ws" | "wss")) {
        return Err(ConnectFailure::BadUrl(format!(
            "{url:?} is not a WebSocket URL; expected ws://host:port/v1/sync (or wss://)"
        )));
    }
    let mut req = url.into_client_request().map_err(|e| {
        ConnectFailure::BadUrl(format!(
            "{url:?} is not a WebSocket URL ({e}); expected ws://host:port/v1/sync (or wss://)"
        ))
    })?;
    if let Ok(v) = subprotocol.parse() {
        req.headers_mut().insert("Sec-WebSocket-Protocol", v);
    }
    match tokio_tungstenite::connect_async_with_config(req, Some(crate::node::client_ws_config()), true)
        .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Url(e)) => Err(ConnectFailure::BadUrl(format!(
            "{url:?}: {e}; expected ws://host:port/v1/sync (or wss://)"
        ))),
        // A page or a redirect where the feed should be (`ws://host:7070/`): no retry will
        // make it a feed.
        Err(WsError::Http(resp)) if resp.status().as_u16() < 400 => Err(ConnectFailure::BadUrl(
            format!(
                "{url} answered HTTP {} instead of a WebSocket upgrade: it is not a hivesync feed; did you mean {}?",
                resp.status().as_u16(),
                feed_url(url)
            ),
        )),
        Err(WsError::Http(resp)) => Err(ConnectFailure::Http(resp.status().as_u16())),
        Err(e) => Err(ConnectFailure::Network(format!(
            "cannot connect to {url}: {e}"
        ))),
    }
}

/// The session's clock: milliseconds since `start`.
pub fn millis_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// A seed for the session's jitter, different for every client process.
pub fn jitter_seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

/// GET `uri` (`http://` or `https://`, the system's CA store) with `headers`: the response,
/// its body still to be read (the connection is driven until the body is done).
pub(crate) async fn http_get(
    uri: hyper::Uri,
    headers: &[(&str, &str)],
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let host = uri
        .host()
        .ok_or_else(|| format!("{uri} has no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map_or_else(|| host.clone(), |a| a.to_string());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "hivesync");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    if !https {
        return send(tcp, req).await;
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    // The process's provider: ring, the one rustls is built with here (as for `wss://`).
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("{host:?}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    send(tls, req).await
}

async fn send<S>(
    io: S,
    req: hyper::Request<http_body_util::Empty<hyper::body::Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}
