//! Arguments from JavaScript, checked. Every exported method takes its strings and bytes as
//! `JsValue`s and converts them here, so that a caller passing the wrong type gets a
//! `TypeError` naming the method's signature. wasm-bindgen's own glue for `&str`, `String` and
//! `&[u8]` parameters trusts its input: an object where a string belongs reached `memory access
//! out of bounds` (a trap, which leaves the module unusable).

use wasm_bindgen::{JsCast, JsValue};

/// A `TypeError`: `sig` is the method's signature as JavaScript sees it.
pub(crate) fn type_error(sig: &str, msg: &str) -> JsValue {
    js_sys::TypeError::new(&format!("{sig}: {msg}")).into()
}

/// What a value is, for a message: `a number`, `an object`, `null`, ...
fn what(v: &JsValue) -> String {
    if v.is_null() {
        return "null".into();
    }
    if js_sys::Array::is_array(v) {
        return "an array".into();
    }
    match v.js_typeof().as_string().as_deref() {
        Some(t @ ("object" | "undefined")) => format!("an {t}"),
        Some(t) => format!("a {t}"),
        None => "a value of unknown type".into(),
    }
}

/// A string argument.
pub(crate) fn text(sig: &str, name: &str, v: &JsValue) -> Result<String, JsValue> {
    v.as_string()
        .ok_or_else(|| type_error(sig, &format!("`{name}` must be a string, got {}", what(v))))
}

/// A string argument that may be left out (`undefined` or `null`).
pub(crate) fn opt_text(sig: &str, name: &str, v: &JsValue) -> Result<Option<String>, JsValue> {
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    text(sig, name, v).map(Some)
}

/// A bytes argument: a `Uint8Array` or an `ArrayBuffer`.
pub(crate) fn bytes(sig: &str, name: &str, v: &JsValue) -> Result<Vec<u8>, JsValue> {
    if let Some(a) = v.dyn_ref::<js_sys::Uint8Array>() {
        return Ok(a.to_vec());
    }
    if v.is_instance_of::<js_sys::ArrayBuffer>() {
        return Ok(js_sys::Uint8Array::new(v).to_vec());
    }
    Err(type_error(
        sig,
        &format!("`{name}` must be a Uint8Array, got {}", what(v)),
    ))
}
