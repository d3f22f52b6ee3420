//! Fuzz target `decode_bin`: see [`hivesync_fuzz::decode_bin`] for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hivesync_fuzz::decode_bin(data));
