//! The session-less exports (feature `raw`): frames applied, and client messages encoded,
//! without the client session's gap and fatal checks. For the apply benchmarks
//! (`bash wasm/build.sh --raw`) and the Rust tests; the package leaves them out, so a page
//! cannot bypass the session by mistake.

use hivesync::apply;
use hivesync::model::WriteOp;
use hivesync::protocol::{self, ClientMsg, ServerMsg, Subscribe};
use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::args::{bytes, opt_text, text};
use crate::{js_err, parse, Replica};

#[wasm_bindgen]
impl Replica {
    /// Handle one binary frame from the node (`hivesync.v1.bin`); returns an event as JSON.
    #[wasm_bindgen(js_name = handleFrame)]
    pub fn handle_frame(&mut self, frame: JsValue) -> Result<String, JsValue> {
        let frame = bytes("Replica.handleFrame(frame: Uint8Array)", "frame", &frame)?;
        let m = protocol::decode_server_bin(&frame).map_err(js_err)?;
        self.handle(m)
    }

    /// Handle one text frame from the node (`hivesync.v1.json`); returns an event as JSON.
    #[wasm_bindgen(js_name = handleText)]
    pub fn handle_text(&mut self, frame: JsValue) -> Result<String, JsValue> {
        let frame = text("Replica.handleText(frame: string)", "frame", &frame)?;
        let m = protocol::decode_server_json(&frame).map_err(js_err)?;
        self.handle(m)
    }

    /// Abandon a snapshot that was cut off (the connection dropped): the previous state stays.
    #[wasm_bindgen(js_name = abortSnapshot)]
    pub fn abort_snapshot(&mut self) {
        self.drop_snapshot();
    }

    fn handle(&mut self, m: ServerMsg) -> Result<String, JsValue> {
        let ev = match m {
            ServerMsg::Welcome {
                protocol,
                node,
                head,
                horizon,
                ..
            } => {
                json!({"type": "welcome", "protocol": protocol, "node": node, "head": head, "horizon": horizon})
            }
            ServerMsg::Snapshot { at, rows, done, .. } => {
                if !self.snapshot_open {
                    apply::snapshot_begin(&self.conn, &self.filter).map_err(js_err)?;
                    self.snapshot_open = true;
                }
                if let Err(e) = apply::snapshot_rows(&self.conn, &rows) {
                    self.drop_snapshot();
                    return Err(js_err(e));
                }
                if done {
                    self.snapshot_open = false;
                    apply::snapshot_finish(&self.conn, at).map_err(js_err)?;
                }
                json!({"type": "snapshot", "at": at, "rows": rows.len(), "done": done})
            }
            ServerMsg::Changes { prev, changes, .. } => {
                self.drop_snapshot();
                match apply::apply_changes(&self.conn, prev, &changes) {
                    Ok(o) => {
                        json!({"type": "applied", "prev": prev, "seq": o.seq, "applied": o.applied, "skipped": o.skipped})
                    }
                    Err(e @ hivesync::Error::Gap { prev, applied }) => {
                        json!({"type": "gap", "message": e.to_string(), "prev": prev, "applied": applied})
                    }
                    Err(e) => return Err(js_err(e)),
                }
            }
            ServerMsg::Live { seq, .. } => json!({"type": "live", "seq": seq}),
            ServerMsg::Written { req, seq } => json!({"type": "written", "req": req, "seq": seq}),
            ServerMsg::Error(e) => {
                json!({"type": "error", "code": e.code, "message": e.message, "sub": e.sub, "req": e.req})
            }
        };
        Ok(ev.to_string())
    }

    /// Apply a batch of changes given as the JSON array of a `changes` message, continuing
    /// from `prev`; refuses a batch that shows a gap. Returns the applied seq.
    #[wasm_bindgen(js_name = applyChanges)]
    pub fn apply_changes(&mut self, prev: f64, changes_json: JsValue) -> Result<f64, JsValue> {
        let sig = "Replica.applyChanges(prev: number, changesJson: string)";
        let changes_json = text(sig, "changesJson", &changes_json)?;
        let text = format!(
            "{{\"type\":\"changes\",\"sub\":\"\",\"prev\":{},\"changes\":{changes_json}}}",
            prev as i64
        );
        let ServerMsg::Changes { prev, changes, .. } =
            protocol::decode_server_json(&text).map_err(js_err)?
        else {
            return Err(JsError::new("not a changes batch").into());
        };
        Ok(apply::apply_changes(&self.conn, prev, &changes)
            .map_err(js_err)?
            .seq as f64)
    }

    /// The binary `hello`.
    #[wasm_bindgen(js_name = encodeHello)]
    pub fn encode_hello(token: JsValue, client: JsValue) -> Result<Vec<u8>, JsValue> {
        let sig = "Replica.encodeHello(token?: string, client?: string)";
        let token = opt_text(sig, "token", &token)?;
        let client = opt_text(sig, "client", &client)?;
        Ok(protocol::encode_client_bin(&ClientMsg::Hello {
            token,
            client,
        }))
    }

    /// The binary `subscribe`; `from` absent asks for a snapshot.
    #[wasm_bindgen(js_name = encodeSubscribe)]
    pub fn encode_subscribe(
        sub: JsValue,
        from: Option<f64>,
        namespaces_json: JsValue,
    ) -> Result<Vec<u8>, JsValue> {
        let sig = "Replica.encodeSubscribe(sub: string, from?: number, namespacesJson?: string)";
        let sub = text(sig, "sub", &sub)?;
        let namespaces = opt_text(sig, "namespacesJson", &namespaces_json)?
            .map(|t| parse("namespaces", &t))
            .transpose()?;
        Ok(protocol::encode_client_bin(&ClientMsg::Subscribe(
            Subscribe {
                sub,
                from: from.map(|f| f as i64),
                namespaces,
                kinds: None,
            },
        )))
    }

    /// The binary `write` of a JSON array of write ops.
    #[wasm_bindgen(js_name = encodeWrite)]
    pub fn encode_write(req: JsValue, ops_json: JsValue) -> Result<Vec<u8>, JsValue> {
        let sig = "Replica.encodeWrite(req: string, opsJson: string)";
        let req = text(sig, "req", &req)?;
        let ops: Vec<WriteOp> = parse("ops", &text(sig, "opsJson", &ops_json)?)?;
        Ok(protocol::encode_client_bin(&ClientMsg::Write {
            req,
            ops,
            client: None,
            n: None,
            entries: None,
        }))
    }

    /// The binary `ack`.
    #[wasm_bindgen(js_name = encodeAck)]
    pub fn encode_ack(sub: JsValue, seq: f64) -> Result<Vec<u8>, JsValue> {
        let sub = text("Replica.encodeAck(sub: string, seq: number)", "sub", &sub)?;
        Ok(protocol::encode_client_bin(&ClientMsg::Ack {
            sub,
            seq: seq as i64,
        }))
    }
}
