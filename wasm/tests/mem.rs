//! The module's own `memcpy`, `memmove`, `memset` and `memcmp` (wasm/src/mem.rs), which the C
//! code (SQLite, sqlite-vec) calls, against Rust's slice operations.
#![cfg(target_arch = "wasm32")]
#![allow(unsafe_code, clippy::unwrap_used)]

use wasm_bindgen_test::wasm_bindgen_test as test;

use hivesync_wasm::mem::{memcmp, memcpy, memmove, memset};

fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Slice comparisons call `memcmp` themselves, so the references are plain loops.
fn order(a: &[u8], b: &[u8]) -> i32 {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return if x < y { -1 } else { 1 };
        }
    }
    0
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && order(a, b) == 0
}

const LENS: [usize; 12] = [0, 1, 2, 7, 8, 9, 15, 16, 17, 63, 100, 4096];

#[test]
fn memcmp_orders_like_slices() {
    for &n in &LENS {
        let a = bytes(n, 1);
        for i in 0..n.min(40) {
            // Equal up to byte i, then differing both ways (including bytes >= 0x80).
            for delta in [1u8, 0x80] {
                let mut b = a.clone();
                b[i] = b[i].wrapping_add(delta);
                let got = unsafe { memcmp(a.as_ptr(), b.as_ptr(), n) };
                let want = order(&a, &b);
                assert_ne!(want, 0);
                assert_eq!(got.signum(), want, "n={n} i={i} delta={delta}");
                let back = unsafe { memcmp(b.as_ptr(), a.as_ptr(), n) };
                assert_eq!(back.signum(), -got.signum());
            }
        }
        assert_eq!(unsafe { memcmp(a.as_ptr(), a.clone().as_ptr(), n) }, 0);
    }
}

#[test]
// The references are built byte by byte on purpose: `copy_from_slice` would call the very
// memcpy under test.
#[allow(clippy::manual_memcpy)]
fn memcpy_memmove_and_memset_match_slices() {
    for &n in &LENS {
        let src = bytes(n, 7);
        let mut dst = vec![0u8; n];
        let r = unsafe { memcpy(dst.as_mut_ptr(), src.as_ptr(), n) };
        assert_eq!(r, dst.as_mut_ptr());
        assert!(same(&dst, &src));
        unsafe { memset(dst.as_mut_ptr(), 0x1ab, n) };
        assert!(dst.iter().all(|&b| b == 0xab));
        // Overlapping moves, forwards and backwards, at several offsets.
        for off in [1usize, 3, 8, 17] {
            if off >= n {
                continue;
            }
            let len = n - off;
            // References built byte by byte (`copy_within` would call memmove).
            let mut want = src.clone();
            for k in 0..len {
                want[off + k] = src[k];
            }
            let mut got = src.clone();
            unsafe { memmove(got.as_mut_ptr().add(off), got.as_ptr(), len) };
            assert!(same(&got, &want), "forward n={n} off={off}");
            let mut want = src.clone();
            for k in 0..len {
                want[k] = src[off + k];
            }
            let mut got = src.clone();
            unsafe { memmove(got.as_mut_ptr(), got.as_ptr().add(off), len) };
            assert!(same(&got, &want), "backward n={n} off={off}");
        }
    }
}
