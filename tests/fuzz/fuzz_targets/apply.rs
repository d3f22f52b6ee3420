//! Fuzz target `apply`: see [`hivesync_fuzz::apply`] for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hivesync_fuzz::apply(data));
