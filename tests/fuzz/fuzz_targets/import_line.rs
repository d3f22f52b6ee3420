//! Fuzz target `import_line`: see [`hivesync_fuzz::import_line`] for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hivesync_fuzz::import_line(data));
