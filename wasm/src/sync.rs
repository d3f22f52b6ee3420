//! The browser's side of the one client session ([`ClientSession`], shared with the relay and
//! `hivesync watch`): JavaScript (`web/sync.js`) only moves bytes and runs timers. Each input
//! returns the page's events as a JSON array; the frames to send wait in an outbox that the
//! shell drains with `syncNextFrame` / `syncNextText` after every input.
//!
//! Events: `welcome {node, head, from}`, `applied {seq, count, snapshot}`, `live {seq}`,
//! `written {id, seq}`, `rejected {id, code, message}`, `error {code, message}` (the node's
//! or an apply's, not fatal by itself), `reconnect {after, why}` (close the socket, connect
//! again after `after` ms), `fatal {code, message}` (stop: no retry can succeed).

use std::collections::VecDeque;

use hivesync::apply;
use hivesync::model::WriteOp;
use hivesync::protocol::client::{
    ClientAction, ClientConfig, ClientError, ClientSession, ConnectFailure,
};
use hivesync::protocol::{self, ServerMsg};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use crate::{js_err, parse, Replica};

/// The session and its outbox.
pub(crate) struct Sync {
    session: ClientSession,
    json: bool,
    outbox: VecDeque<Frame>,
    /// The shell's clock at the last input (ms).
    now: u64,
}

enum Frame {
    Bin(Vec<u8>),
    Text(String),
}

fn fatal_event(e: &ClientError) -> Value {
    match e {
        ClientError::Refused(m) => {
            json!({"type": "fatal", "code": m.code.as_str(), "message": m.message})
        }
        _ => json!({"type": "fatal", "code": "bad_request", "message": e.to_string()}),
    }
}

#[wasm_bindgen]
impl Replica {
    /// Start a sync session: resume after the applied seq (a replica that never synced asks
    /// for a snapshot), for the namespaces set with `setNamespaces`. `json`: speak
    /// `hivesync.v1.json` instead of the binary subprotocol. `seed`: jitter (Math.random()).
    #[wasm_bindgen(js_name = syncStart)]
    pub fn sync_start(
        &mut self,
        token: Option<String>,
        json: bool,
        seed: f64,
    ) -> Result<(), JsError> {
        let applied = apply::applied_seq(&self.conn).map_err(js_err)?;
        self.sync = Some(Sync {
            session: ClientSession::new(ClientConfig {
                client: "hivesync-web".into(),
                token,
                sub: "replica".into(),
                from: (applied > 0).then_some(applied),
                namespaces: self.filter.namespaces.clone(),
                kinds: None,
                seed: (seed * u64::MAX as f64) as u64,
            }),
            json,
            outbox: VecDeque::new(),
            now: 0,
        });
        Ok(())
    }

    /// The socket opened.
    #[wasm_bindgen(js_name = syncConnected)]
    pub fn sync_connected(&mut self) -> String {
        self.sync_run(0.0, |s| (s.connected(), vec![]))
    }

    /// The socket could not be opened (`bad_url`: the URL itself was refused).
    #[wasm_bindgen(js_name = syncConnectFailed)]
    pub fn sync_connect_failed(&mut self, why: String, bad_url: bool, now: f64) -> String {
        let f = if bad_url {
            ConnectFailure::BadUrl(why)
        } else {
            ConnectFailure::Network(why)
        };
        self.sync_run(now, |s| (s.connect_failed(f, now as u64), vec![]))
    }

    /// The socket closed.
    #[wasm_bindgen(js_name = syncDisconnected)]
    pub fn sync_disconnected(&mut self, why: String, now: f64) -> String {
        self.sync_run(now, |s| (s.disconnected(&why, now as u64), vec![]))
    }

    /// A binary frame arrived.
    #[wasm_bindgen(js_name = syncFrame)]
    pub fn sync_frame(&mut self, bytes: &[u8], now: f64) -> String {
        let m = protocol::decode_server_bin(bytes);
        self.sync_message(m, now)
    }

    /// A text frame arrived.
    #[wasm_bindgen(js_name = syncText)]
    pub fn sync_text(&mut self, text: &str, now: f64) -> String {
        let m = protocol::decode_server_json(text);
        self.sync_message(m, now)
    }

    /// Send write ops (a JSON array); answered by a `written` or `rejected` event with `id`.
    #[wasm_bindgen(js_name = syncWrite)]
    pub fn sync_write(&mut self, id: f64, ops_json: &str) -> Result<String, JsError> {
        let ops: Vec<WriteOp> = parse("ops", ops_json)?;
        Ok(self.sync_run(0.0, |s| (s.write(id as u64, ops, None), vec![])))
    }

    /// The next binary frame to send, if any.
    #[wasm_bindgen(js_name = syncNextFrame)]
    pub fn sync_next_frame(&mut self) -> Option<Vec<u8>> {
        match self.sync.as_mut()?.outbox.pop_front()? {
            Frame::Bin(b) => Some(b),
            Frame::Text(t) => Some(t.into_bytes()),
        }
    }

    /// The next text frame to send, if any (the JSON subprotocol).
    #[wasm_bindgen(js_name = syncNextText)]
    pub fn sync_next_text(&mut self) -> Option<String> {
        match self.sync.as_mut()?.outbox.pop_front()? {
            Frame::Text(t) => Some(t),
            Frame::Bin(_) => None,
        }
    }
}

impl Replica {
    fn sync_message(&mut self, m: hivesync::Result<ServerMsg>, now: f64) -> String {
        let m = match m {
            Ok(m) => m,
            Err(e) => return self.sync_run(now, |s| (s.undecodable(&e.to_string()), vec![])),
        };
        let welcome = match &m {
            ServerMsg::Welcome { node, head, .. } => Some((node.clone(), *head)),
            _ => None,
        };
        let node_error = match &m {
            ServerMsg::Error(e) => {
                Some(json!({"type": "error", "code": e.code.as_str(), "message": e.message}))
            }
            _ => None,
        };
        let mut events = Vec::new();
        self.sync_run(now, |s| {
            let acts = s.frame(m, now as u64);
            if let Some((node, head)) = welcome.filter(|_| !s.stopped()) {
                events.push(
                    json!({"type": "welcome", "node": node, "head": head, "from": s.cursor()}),
                );
            }
            // An error that answered no write and stopped nothing is the page's to see (a
            // fatal one comes as the `fatal` event).
            if !acts
                .iter()
                .any(|a| matches!(a, ClientAction::Reject { .. } | ClientAction::Fatal(_)))
            {
                events.extend(node_error);
            }
            (acts, events)
        })
    }

    /// Feed the session one input and carry out its actions (applying to this replica, queueing
    /// frames), including what applying produced; returns the events as a JSON array.
    fn sync_run(
        &mut self,
        now: f64,
        input: impl FnOnce(&mut ClientSession) -> (Vec<ClientAction>, Vec<Value>),
    ) -> String {
        let Some(sync) = self.sync.as_mut() else {
            return json!([{"type": "fatal", "code": "bad_request", "message": "syncStart was not called"}]).to_string();
        };
        sync.now = sync.now.max(now as u64);
        let (acts, mut events) = input(&mut sync.session);
        let mut queue = VecDeque::from(acts);
        while let Some(a) = queue.pop_front() {
            let more = self.sync_act(a, &mut events);
            queue.extend(more);
        }
        Value::Array(events).to_string()
    }

    fn sync_act(&mut self, a: ClientAction, events: &mut Vec<Value>) -> Vec<ClientAction> {
        let Some(sync) = self.sync.as_mut() else {
            return vec![];
        };
        match a {
            ClientAction::Send(m) => {
                sync.outbox.push_back(if sync.json {
                    Frame::Text(protocol::encode_client_json(&m))
                } else {
                    Frame::Bin(protocol::encode_client_bin(&m))
                });
                vec![]
            }
            ClientAction::SnapshotBegin { .. } => {
                self.abort_snapshot();
                match apply::snapshot_begin(&self.conn, &self.filter) {
                    Ok(()) => {
                        self.snapshot_open = true;
                        vec![]
                    }
                    Err(e) => self.sync_failed(events, &e.to_string()),
                }
            }
            ClientAction::SnapshotRows(rows) => match apply::snapshot_rows(&self.conn, &rows) {
                Ok(()) => vec![],
                Err(e) => {
                    self.abort_snapshot();
                    self.sync_failed(events, &e.to_string())
                }
            },
            ClientAction::SnapshotFinish { at } => {
                self.snapshot_open = false;
                match apply::snapshot_finish(&self.conn, at) {
                    Ok(()) => {
                        events.push(json!({"type": "applied", "seq": at, "snapshot": true}));
                        self.sync_session().map_or(vec![], |s| s.applied(at))
                    }
                    Err(e) => self.sync_failed(events, &e.to_string()),
                }
            }
            ClientAction::SnapshotAbort => {
                self.abort_snapshot();
                vec![]
            }
            ClientAction::Apply { prev, changes } => {
                match apply::apply_changes(&self.conn, prev, &changes) {
                    Ok(o) => {
                        events.push(json!({"type": "applied", "seq": o.seq, "count": o.applied}));
                        self.sync_session().map_or(vec![], |s| s.applied(o.seq))
                    }
                    Err(e) => self.sync_failed(events, &e.to_string()),
                }
            }
            ClientAction::Live { seq } => {
                events.push(json!({"type": "live", "seq": seq}));
                vec![]
            }
            ClientAction::Resolve { id, seq } => {
                events.push(json!({"type": "written", "id": id, "seq": seq}));
                vec![]
            }
            ClientAction::Reject { id, error } => {
                events.push(json!({"type": "rejected", "id": id, "code": error.code.as_str(), "message": error.message}));
                vec![]
            }
            ClientAction::Reconnect { after, why } => {
                events.push(
                    json!({"type": "reconnect", "after": after.as_millis() as u64, "why": why}),
                );
                vec![]
            }
            ClientAction::Fatal(e) => {
                events.push(fatal_event(&e));
                vec![]
            }
        }
    }

    fn sync_session(&mut self) -> Option<&mut ClientSession> {
        self.sync.as_mut().map(|s| &mut s.session)
    }

    fn sync_failed(&mut self, events: &mut Vec<Value>, why: &str) -> Vec<ClientAction> {
        events.push(json!({"type": "error", "message": format!("could not apply a frame: {why}")}));
        let Some(sync) = self.sync.as_mut() else {
            return vec![];
        };
        sync.session.apply_failed(why, sync.now)
    }
}
