//! Live queries in the browser (`hivesync::live`, the shared crate's): the Worker opens them,
//! and after each batch of work (at most once per frame) asks which answers changed.

use hivesync::live::Read;
use serde_json::Value;
use wasm_bindgen::prelude::*;

use crate::args::text;
use crate::{js_err, parse, to_json, Replica};

#[wasm_bindgen]
impl Replica {
    /// Open a live query: `read` one of `get`, `list`, `search`, `knn`, `hybrid`, `neighbors`,
    /// `traverse`, `sql`, `argsJson` the JSON array of the arguments that read takes. Returns
    /// its first answer, `{"id", "result", "diff", "runs"}`.
    #[wasm_bindgen(js_name = liveOpen)]
    pub fn live_open(&mut self, read: JsValue, args_json: JsValue) -> Result<String, JsValue> {
        let sig = "Replica.liveOpen(read: string, argsJson: string)";
        let name = text(sig, "read", &read)?;
        let args: Vec<Value> = parse("live query arguments", &text(sig, "argsJson", &args_json)?)?;
        let read = Read::from_args(&name, &args).map_err(js_err)?;
        to_json(&self.live.open(&self.conn, read).map_err(js_err)?)
    }

    /// Close live query `id` (false: it was not open).
    #[wasm_bindgen(js_name = liveClose)]
    pub fn live_close(&mut self, id: f64) -> Result<bool, JsValue> {
        if !(id.is_finite() && id >= 0.0) {
            return Ok(false);
        }
        self.live.close(&self.conn, id as u64).map_err(js_err)
    }

    /// Whether any live query is open.
    #[wasm_bindgen(js_name = liveAny)]
    pub fn live_any(&self) -> bool {
        !self.live.is_empty()
    }

    /// The answers that changed since the last call: the rows written since are matched against
    /// each live query's dependencies, and only those they can affect run again. A JSON array
    /// of `{"id", "result", "diff", "runs", "error"?}`.
    #[wasm_bindgen(js_name = liveTick)]
    pub fn live_tick(&mut self) -> Result<String, JsValue> {
        self.live.note(&self.conn).map_err(js_err)?;
        to_json(&self.live.rerun(&self.conn))
    }
}
