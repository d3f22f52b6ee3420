//! Fuzz target `session`: see [`hivesync_fuzz::session`] for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hivesync_fuzz::session(data));
