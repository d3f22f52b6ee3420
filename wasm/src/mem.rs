//! `memcpy`, `memmove`, `memset` and `memcmp` for the C code in the module.
//!
//! SQLite and sqlite-vec are C, built by the system clang (14 on Debian 12), which targets
//! wasm32 without bulk memory (and cannot simply be told to: its thread-local `errno` then fails
//! to link), so their copies and comparisons call these symbols. They came from Rust's
//! `compiler_builtins`: portable loops, weak symbols. In a Node CPU profile of the replica's
//! apply, `memcpy` alone was 11% of the time (SQLite's busiest function after its VM), `memmove`
//! and `memset` 4% more, `memcmp` 3%. These strong definitions replace them: each copy or fill
//! is one `memory.copy` / `memory.fill` (LLVM lowers the copy intrinsics that way for a
//! bulk-memory target, which Rust's wasm32 target is by default; `memory.copy` is defined for
//! overlapping ranges), and `memcmp` compares eight bytes at a time.
//!
//! The only unsafe code in hivesync besides the extension registration: these are the C ABI
//! functions themselves.
#![allow(unsafe_code)]

/// # Safety
/// The C contract of `memcpy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    unsafe { core::ptr::copy(src, dest, n) };
    dest
}

/// # Safety
/// The C contract of `memmove`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    unsafe { core::ptr::copy(src, dest, n) };
    dest
}

/// # Safety
/// The C contract of `memset`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    unsafe { core::ptr::write_bytes(dest, c as u8, n) };
    dest
}

/// # Safety
/// The C contract of `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i + 8 <= n {
        let x = unsafe { a.add(i).cast::<u64>().read_unaligned() };
        let y = unsafe { b.add(i).cast::<u64>().read_unaligned() };
        if x != y {
            break;
        }
        i += 8;
    }
    while i < n {
        let (x, y) = unsafe { (a.add(i).read(), b.add(i).read()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}
