//! AArch64 NEON kernels: f32 register tiles for the exact path. Dequantization, activation
//! quantization and the integer dots use the portable code, which the compiler vectorizes
//! with NEON (always present on AArch64).

// Register-tile loops index several parallel arrays (accumulators, rows) by the same index.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;

use crate::dispatch::{Kernels, Variant};
use crate::MAX_TILE;

pub(crate) static KERNELS: Kernels = Kernels {
    variant: Variant::Neon,
    dequant: crate::scalar::dequant,
    tile,
    tile_nt: 2,
    exact_fused: None,
    fast_dot: crate::scalar::fast_dot,
    quant_acts: crate::acts::quantize_acts_scalar,
    spread_scales: false,
    packed_dot: crate::packed::packed_dot_scalar,
    packed_dot_f32: crate::packed::packed_dot_f32_scalar,
};

fn tile(w: &[f32], nr: usize, x: &[f32], nt: usize, k: usize, out: &mut [[f32; MAX_TILE]; MAX_TILE]) {
    // SAFETY: this table entry is only reachable after NEON was detected.
    unsafe { tile_impl(w, nr, x, nt, k, out) }
}

#[target_feature(enable = "neon")]
fn tile_impl(w: &[f32], nr: usize, x: &[f32], nt: usize, k: usize, out: &mut [[f32; MAX_TILE]; MAX_TILE]) {
    let mut t0 = 0;
    while t0 < nt {
        let n = (nt - t0).min(2);
        let xs = &x[t0 * k..(t0 + n) * k];
        match (nr, n) {
            (1, 1) => tile_rt::<1, 1>(w, xs, k, out, t0),
            (2, 1) => tile_rt::<2, 1>(w, xs, k, out, t0),
            (3, 1) => tile_rt::<3, 1>(w, xs, k, out, t0),
            (4, 1) => tile_rt::<4, 1>(w, xs, k, out, t0),
            (1, 2) => tile_rt::<1, 2>(w, xs, k, out, t0),
            (2, 2) => tile_rt::<2, 2>(w, xs, k, out, t0),
            (3, 2) => tile_rt::<3, 2>(w, xs, k, out, t0),
            (4, 2) => tile_rt::<4, 2>(w, xs, k, out, t0),
            _ => unreachable!("tile shape {nr}x{n}"),
        }
        t0 += n;
    }
}

// Whether the register intrinsics are `unsafe fn` depends on the toolchain; the blocks
// below are needed where they are.
#[allow(unused_unsafe)]
#[inline]
#[target_feature(enable = "neon")]
fn tile_rt<const R: usize, const T: usize>(
    w: &[f32],
    x: &[f32],
    k: usize,
    out: &mut [[f32; MAX_TILE]; MAX_TILE],
    t_off: usize,
) {
    let wr: [&[f32]; R] = std::array::from_fn(|r| &w[r * k..(r + 1) * k]);
    let xr: [&[f32]; T] = std::array::from_fn(|t| &x[t * k..(t + 1) * k]);
    // SAFETY: register-only NEON operation; NEON is enabled for this function.
    let zero = unsafe { vdupq_n_f32(0.0) };
    let mut acc = [[zero; T]; R];
    let k4 = k / 4 * 4;
    let mut i = 0;
    while i < k4 {
        let mut wv = [zero; R];
        for r in 0..R {
            let s = &wr[r][i..i + 4];
            // SAFETY: `s` holds 4 readable floats; `ld1` has no alignment requirement.
            wv[r] = unsafe { vld1q_f32(s.as_ptr()) };
        }
        for t in 0..T {
            let s = &xr[t][i..i + 4];
            // SAFETY: `s` holds 4 readable floats; `ld1` has no alignment requirement.
            let xv = unsafe { vld1q_f32(s.as_ptr()) };
            for r in 0..R {
                // SAFETY: register-only NEON operation (acc + w * x).
                acc[r][t] = unsafe { vfmaq_f32(acc[r][t], wv[r], xv) };
            }
        }
        i += 4;
    }
    for r in 0..R {
        for t in 0..T {
            // SAFETY: register-only NEON operation (horizontal add).
            let mut s = unsafe { vaddvq_f32(acc[r][t]) };
            for j in k4..k {
                s += wr[r][j] * xr[t][j];
            }
            out[r][t_off + t] = s;
        }
    }
}
