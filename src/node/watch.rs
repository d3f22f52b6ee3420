//! `hivesync watch`: follow a node's feed and print each change as a JSON line, resuming after
//! a disconnect from the last seq printed, so nothing repeats and nothing is skipped.

use std::io::Write;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::{self, ClientMsg, ErrorCode, ServerMsg, Subscribe, SUBPROTOCOL_JSON};

/// `hivesync watch` options.
#[derive(clap::Args, Clone, Debug)]
pub struct WatchArgs {
    /// The node's feed, e.g. ws://127.0.0.1:7070/v1/sync.
    pub url: String,
    /// Last seq already seen (0: everything in the log); absent: a snapshot of current state first.
    #[arg(long)]
    pub from: Option<i64>,
    /// Only this namespace (repeatable).
    #[arg(long)]
    pub ns: Vec<String>,
    /// Token.
    #[arg(long, env = "HIVESYNC_TOKEN")]
    pub token: Option<String>,
    /// Print JSON lines (the default prints a short line per change).
    #[arg(long)]
    pub json: bool,
    /// Exit once caught up (after `live`) instead of following.
    #[arg(long)]
    pub until_live: bool,
}

/// Run the watcher until interrupted (or until live, with `--until-live`).
pub fn watch_blocking(args: WatchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(watch(args))
}

enum End {
    Reconnect(String),
    Fatal(anyhow::Error),
    Done,
}

async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let mut cursor = args.from;
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&args, &mut cursor).await {
            End::Done => return Ok(()),
            End::Fatal(e) => return Err(e),
            End::Reconnect(why) => {
                eprintln!(
                    "disconnected ({why}); reconnecting in {backoff:?} from seq {}",
                    cursor.map_or("snapshot".into(), |c| c.to_string())
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn print(args: &WatchArgs, out: &mut impl Write, c: &crate::model::Change) -> std::io::Result<()> {
    if args.json {
        let mut b = Vec::new();
        protocol::encode_change_json(&mut b, c);
        out.write_all(&b)?;
        out.write_all(b"\n")
    } else {
        let data = c.data.as_deref().unwrap_or("");
        writeln!(
            out,
            "#{} {} {} {}/{} {}",
            c.seq,
            c.op.as_str(),
            c.kind,
            c.ns,
            c.id,
            data
        )
    }
}

async fn session(args: &WatchArgs, cursor: &mut Option<i64>) -> End {
    let mut req = match args.url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => {
            return End::Fatal(anyhow::anyhow!(
                "bad URL {:?}: {e}; expected ws://host:port/v1/sync",
                args.url
            ))
        }
    };
    if let Ok(v) = SUBPROTOCOL_JSON.parse() {
        req.headers_mut().insert("Sec-WebSocket-Protocol", v);
    }
    let (ws, _) = match tokio_tungstenite::connect_async_with_config(
        req,
        Some(super::client_ws_config()),
        true,
    )
    .await
    {
        Ok(x) => x,
        Err(e) => return End::Reconnect(format!("cannot connect to {}: {e}", args.url)),
    };
    let (mut tx, mut rx) = ws.split();
    let hello = ClientMsg::Hello {
        token: args.token.clone(),
        client: Some("hivesync-watch".into()),
    };
    if let Err(e) = tx
        .send(Message::Text(protocol::encode_client_json(&hello).into()))
        .await
    {
        return End::Reconnect(e.to_string());
    }
    let mut stdout = std::io::stdout().lock();
    let mut snapshot_at: Option<i64> = None;
    while let Some(msg) = tokio::select! {
        m = rx.next() => m,
        _ = tokio::signal::ctrl_c() => return End::Done,
    } {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(f)) => {
                return End::Reconnect(format!(
                    "node closed the connection: {}",
                    f.map(|f| f.reason.to_string()).unwrap_or_default()
                ))
            }
            Ok(_) => continue,
            Err(e) => return End::Reconnect(e.to_string()),
        };
        let m = match protocol::decode_server_json(&text) {
            Ok(m) => m,
            Err(e) => return End::Fatal(e.into()),
        };
        match m {
            ServerMsg::Welcome { head, .. } => {
                if let Some(c) = *cursor {
                    if c > head {
                        return End::Fatal(anyhow::anyhow!("the node's log ends at seq {head}, before our cursor {c}: it is not the node we were following (or it was restored); run again without --from"));
                    }
                }
                let sub = ClientMsg::Subscribe(Subscribe {
                    sub: "watch".into(),
                    from: *cursor,
                    namespaces: (!args.ns.is_empty()).then(|| args.ns.clone()),
                    kinds: None,
                });
                if let Err(e) = tx
                    .send(Message::Text(protocol::encode_client_json(&sub).into()))
                    .await
                {
                    return End::Reconnect(e.to_string());
                }
            }
            ServerMsg::Snapshot { at, rows, done, .. } => {
                snapshot_at = Some(at);
                for r in &rows {
                    if print(args, &mut stdout, r).is_err() {
                        return End::Done;
                    }
                }
                if done {
                    *cursor = Some(at);
                }
            }
            ServerMsg::Changes { prev, changes, .. } => {
                let expected = cursor.or(snapshot_at).unwrap_or(0);
                if prev != expected {
                    return End::Reconnect(format!(
                        "gap: batch continues from {prev}, last seen {expected}"
                    ));
                }
                for c in &changes {
                    if print(args, &mut stdout, c).is_err() {
                        return End::Done;
                    }
                    *cursor = Some(c.seq);
                }
                let _ = stdout.flush();
                if let Some(c) = *cursor {
                    let ack = ClientMsg::Ack {
                        sub: "watch".into(),
                        seq: c,
                    };
                    let _ = tx
                        .send(Message::Text(protocol::encode_client_json(&ack).into()))
                        .await;
                }
            }
            ServerMsg::Live { seq, .. } => {
                eprintln!("live at seq {seq}");
                if args.until_live {
                    let _ = stdout.flush();
                    return End::Done;
                }
            }
            ServerMsg::Written { .. } => {}
            ServerMsg::Error(e) => match e.code {
                ErrorCode::Unauthorized | ErrorCode::Forbidden | ErrorCode::BadRequest => {
                    return End::Fatal(anyhow::anyhow!("node refused: {:?}: {}", e.code, e.message))
                }
                _ => return End::Reconnect(format!("{:?}: {}", e.code, e.message)),
            },
        }
    }
    End::Reconnect("connection ended".into())
}
