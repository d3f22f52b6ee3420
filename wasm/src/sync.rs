//! The browser's side of the one client session ([`ClientSession`], shared with the relay and
//! `hivesync watch`): JavaScript (`web/sync.js`) only moves bytes and runs timers. Each input
//! returns the page's events as a JSON array; the frames to send wait in an outbox that the
//! shell drains with `syncNextFrame` / `syncNextText` after every input.
//!
//! Events: `welcome {node, head, from}`, `applied {seq, count, snapshot}`, `live {seq}`,
//! `written {n, seq}` (the node committed outbox entry `n`), `rejected {n, ops, code,
//! message}` (the node refused it: it was taken back here), `upload_error {n, code, message}`
//! (not sent this time: it will be again), `error {code, message}` (the node's or an apply's,
//! not fatal by itself), `reconnect {after, why}` (close the socket, connect again after
//! `after` ms), `fatal {code, message}` (stop: no retry can succeed).
//!
//! Writes are local first (`hivesync::outbox`): `writeLocal` commits them here with an outbox
//! entry; the session uploads the outbox in order, each entry with this replica's client id
//! and its number, so the node applies it once however often it is sent.

use std::collections::VecDeque;

use hivesync::model::WriteOp;
use hivesync::protocol::client::{
    ClientAction, ClientConfig, ClientError, ClientSession, ConnectFailure, WriteId,
};
use hivesync::protocol::upload::{Entry, Refusal, Uploader};
use hivesync::protocol::{self, ErrorMsg, ServerMsg};
use hivesync::{apply, outbox};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use crate::args::{bytes, opt_text, text};
use crate::{js_err, parse, Replica};

/// The session and its frames to send.
pub(crate) struct Sync {
    session: ClientSession,
    json: bool,
    outbox: VecDeque<Frame>,
    /// The upload policy (the shared crate's): which outbox entries go next, batched how, and
    /// what the node's answers mean. Answers it holds are recorded with the feed batch that
    /// carries the writes back; lost with the page, they cost a re-send that the node answers
    /// from its ledger.
    upload: Uploader,
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
    pub fn sync_start(&mut self, token: JsValue, json: bool, seed: f64) -> Result<(), JsValue> {
        let sig = "Replica.syncStart(token: string | undefined, json: boolean, seed: number)";
        let token = opt_text(sig, "token", &token)?;
        let applied = apply::applied_seq(&self.conn).map_err(js_err)?;
        let client_id = outbox::client_id(&self.conn).map_err(js_err)?;
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
            upload: Uploader::new(client_id),
            now: 0,
        });
        Ok(())
    }

    /// A fresh token (renewed before the old one expires): sent on the open connection and
    /// used for every later hello.
    #[wasm_bindgen(js_name = syncSetToken)]
    pub fn sync_set_token(&mut self, token: JsValue) -> Result<String, JsValue> {
        let token = text("Replica.syncSetToken(token: string)", "token", &token)?;
        Ok(self.sync_run(0.0, |s| (s.set_token(token), vec![])))
    }

    /// The socket opened.
    #[wasm_bindgen(js_name = syncConnected)]
    pub fn sync_connected(&mut self) -> String {
        self.sync_run(0.0, |s| (s.connected(), vec![]))
    }

    /// The socket could not be opened (`bad_url`: the URL itself was refused).
    #[wasm_bindgen(js_name = syncConnectFailed)]
    pub fn sync_connect_failed(
        &mut self,
        why: JsValue,
        bad_url: bool,
        now: f64,
    ) -> Result<String, JsValue> {
        let sig = "Replica.syncConnectFailed(why: string, badUrl: boolean, now: number)";
        let why = text(sig, "why", &why)?;
        let f = if bad_url {
            ConnectFailure::BadUrl(why)
        } else {
            ConnectFailure::Network(why)
        };
        Ok(self.sync_run(now, |s| (s.connect_failed(f, now as u64), vec![])))
    }

    /// The socket closed.
    #[wasm_bindgen(js_name = syncDisconnected)]
    pub fn sync_disconnected(&mut self, why: JsValue, now: f64) -> Result<String, JsValue> {
        let why = text(
            "Replica.syncDisconnected(why: string, now: number)",
            "why",
            &why,
        )?;
        Ok(self.sync_run(now, |s| (s.disconnected(&why, now as u64), vec![])))
    }

    /// A binary frame arrived.
    #[wasm_bindgen(js_name = syncFrame)]
    pub fn sync_frame(&mut self, frame: JsValue, now: f64) -> Result<String, JsValue> {
        let frame = bytes(
            "Replica.syncFrame(frame: Uint8Array, now: number)",
            "frame",
            &frame,
        )?;
        let m = protocol::decode_server_bin(&frame);
        Ok(self.sync_message(m, now))
    }

    /// A text frame arrived.
    #[wasm_bindgen(js_name = syncText)]
    pub fn sync_text(&mut self, frame: JsValue, now: f64) -> Result<String, JsValue> {
        let frame = text(
            "Replica.syncText(frame: string, now: number)",
            "frame",
            &frame,
        )?;
        let m = protocol::decode_server_json(&frame);
        Ok(self.sync_message(m, now))
    }

    /// Write ops (a JSON array) here, now, in one transaction with an outbox entry: returns
    /// `{"n", "ids"}` (the entry's number, each op's row id). Every query sees the rows at
    /// once; `syncFlush` uploads the entry when connected.
    #[wasm_bindgen(js_name = writeLocal)]
    pub fn write_local(&mut self, ops_json: JsValue) -> Result<String, JsValue> {
        let ops_json = text("Replica.writeLocal(opsJson: string)", "opsJson", &ops_json)?;
        let ops: Vec<WriteOp> = parse("ops", &ops_json)?;
        let w = outbox::write_local(&self.conn, ops).map_err(js_err)?;
        Ok(json!({"n": w.n, "ids": w.ids}).to_string())
    }

    /// The outbox at a glance: `{"pending", "unsent", "oldest_us", "error"}`.
    #[wasm_bindgen(js_name = outboxStatus)]
    pub fn outbox_status(&self) -> Result<String, JsValue> {
        crate::to_json(&outbox::status(&self.conn).map_err(js_err)?)
    }

    /// The pending writes, oldest first: `[{"n", "ops", "created_us", "seq"}]`.
    #[wasm_bindgen(js_name = outboxPending)]
    pub fn outbox_pending(&self) -> Result<String, JsValue> {
        crate::to_json(&outbox::pending(&self.conn).map_err(js_err)?)
    }

    /// Upload what the outbox holds and this connection has not sent yet (when subscribed).
    #[wasm_bindgen(js_name = syncFlush)]
    pub fn sync_flush(&mut self) -> String {
        self.sync_run(0.0, |_| (vec![], vec![]))
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
        self.sync_run(now, |s| (s.frame(m, now as u64), vec![]))
    }

    /// Hand the session the outbox entries not yet sent on this connection, as the upload
    /// policy ([`Uploader`]) batches them.
    fn flush(&mut self, events: &mut Vec<Value>) -> Vec<ClientAction> {
        let Some(sync) = self.sync.as_mut() else {
            return vec![];
        };
        if !sync.session.subscribed() {
            sync.upload.restart();
            return vec![];
        }
        let room = sync.upload.room();
        if room == 0 {
            return vec![];
        }
        let next = match outbox::pending_after(&self.conn, sync.upload.after(), true, room as i64) {
            Ok(p) => p,
            Err(e) => {
                events.push(
                    json!({"type": "error", "message": format!("could not read the outbox: {e}")}),
                );
                return vec![];
            }
        };
        let entries = next.into_iter().map(Entry::from).collect();
        match sync.upload.batch(entries) {
            Some(w) => sync.session.write(w.id, w.ops, Some(w.origin)),
            None => vec![],
        }
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
        loop {
            while let Some(a) = queue.pop_front() {
                let more = self.sync_act(a, &mut events);
                queue.extend(more);
            }
            // Whatever happened (a welcome, an answer, a local write), the outbox goes next.
            let more = self.flush(&mut events);
            if more.is_empty() {
                break;
            }
            queue.extend(more);
        }
        // Answers wait for the batch that carries their writes back, unless the feed has passed
        // them already (the batch came before the answer), or the connection ended.
        let applied = apply::applied_seq(&self.conn).unwrap_or(0);
        if self
            .sync
            .as_ref()
            .is_some_and(|s| s.upload.record_due(s.session.subscribed(), applied))
        {
            self.record_confirmed(&mut events);
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
            a @ (ClientAction::SnapshotBegin { .. }
            | ClientAction::SnapshotRows(_)
            | ClientAction::SnapshotFinish { .. }
            | ClientAction::SnapshotAbort) => self.sync_snapshot(a, events),
            ClientAction::Apply { prev, changes } => {
                let confirmed = sync.upload.take_confirmed();
                match apply::apply_changes_confirming(&self.conn, prev, &changes, &confirmed) {
                    Ok(o) => {
                        events.push(json!({"type": "applied", "seq": o.seq, "count": o.applied}));
                        self.sync_session().map_or(vec![], |s| s.applied(o.seq))
                    }
                    Err(e) => self.sync_failed(events, &e.to_string()),
                }
            }
            ClientAction::Welcome {
                node,
                head,
                from,
                snapshot,
                ..
            } => {
                events.push(json!({"type": "welcome", "node": node, "head": head, "from": from, "snapshot": snapshot}));
                vec![]
            }
            // An error that answered no write and stopped nothing is the page's to see (a
            // fatal one comes as the `fatal` event).
            ClientAction::NodeError(e) => {
                events
                    .push(json!({"type": "error", "code": e.code.as_str(), "message": e.message}));
                vec![]
            }
            ClientAction::Live { seq } => {
                events.push(json!({"type": "live", "seq": seq}));
                self.record_confirmed(events);
                vec![]
            }
            ClientAction::Resolve { id, seq } => {
                for n in sync.upload.resolved(id, seq) {
                    events.push(json!({"type": "written", "n": n, "seq": seq}));
                }
                vec![]
            }
            ClientAction::Reject { id, error } => self.sync_rejected(id, error, events),
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
            // The browser reads no external feed.
            ClientAction::OpenExternal
            | ClientAction::LeaveExternal { .. }
            | ClientAction::NodeHead { .. } => vec![],
        }
    }

    /// A snapshot action: carried out on the replica's connection.
    fn sync_snapshot(&mut self, a: ClientAction, events: &mut Vec<Value>) -> Vec<ClientAction> {
        match a {
            ClientAction::SnapshotBegin { .. } => {
                self.drop_snapshot();
                // Rows replaced wholesale: not logged one by one; every live query runs after.
                let _ = self.live.snapshot(&self.conn, true);
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
                    self.drop_snapshot();
                    self.sync_failed(events, &e.to_string())
                }
            },
            ClientAction::SnapshotFinish { at } => {
                self.snapshot_open = false;
                let done = apply::snapshot_finish(&self.conn, at);
                let _ = self.live.snapshot(&self.conn, false);
                match done {
                    Ok(()) => {
                        events.push(json!({"type": "applied", "seq": at, "snapshot": true}));
                        self.sync_session().map_or(vec![], |s| s.applied(at))
                    }
                    Err(e) => self.sync_failed(events, &e.to_string()),
                }
            }
            ClientAction::SnapshotAbort => {
                self.drop_snapshot();
                vec![]
            }
            _ => vec![],
        }
    }

    /// The node refused write `id`, or its fate is unknown: the uploader says what it means.
    fn sync_rejected(
        &mut self,
        id: WriteId,
        error: ErrorMsg,
        events: &mut Vec<Value>,
    ) -> Vec<ClientAction> {
        let Some(sync) = self.sync.as_mut() else {
            return vec![];
        };
        match sync.upload.rejected(id, error) {
            // One of them is refused: they go one by one to find it.
            Refusal::Split(_) => {}
            Refusal::Refused { n, error } => {
                let (code, message) = (error.code.as_str(), error.message);
                match outbox::reject(&self.conn, n) {
                    Ok(ops) => events.push(json!({"type": "rejected", "n": n, "ops": ops, "code": code, "message": message})),
                    Err(e) => events.push(json!({"type": "error", "message": format!("could not take back write {n}: {e}")})),
                }
            }
            Refusal::Failed { n, error } => {
                let (code, message) = (error.code.as_str(), error.message);
                let why = format!("{code}: {message}");
                let _ = outbox::set_error(&self.conn, Some(&why));
                events.push(
                    json!({"type": "upload_error", "n": n, "code": code, "message": message}),
                );
                // Sent again on the next connection: while connected, end this one,
                // so it comes after the session's backoff (not never).
                if sync.session.subscribed() {
                    let now = sync.now;
                    return sync
                        .session
                        .disconnected(&format!("write {n} failed ({why})"), now);
                }
            }
        }
        vec![]
    }

    /// Record the node's answers held in memory, in a transaction of their own.
    fn record_confirmed(&mut self, events: &mut Vec<Value>) {
        let Some(sync) = self.sync.as_mut() else {
            return;
        };
        let confirmed = sync.upload.take_confirmed();
        if let Err(e) = outbox::confirm_many(&self.conn, &confirmed) {
            events.push(json!({"type": "error", "message": format!("could not record the node's answers: {e}")}));
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
