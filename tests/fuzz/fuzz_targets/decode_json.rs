//! Fuzz target `decode_json`: see [`hivesync_fuzz::decode_json`] for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hivesync_fuzz::decode_json(data));
