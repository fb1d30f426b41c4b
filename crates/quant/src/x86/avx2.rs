//! AVX2 + FMA + F16C kernels: dequantization (bit-identical to the reference), f32 tiles for
//! the exact path and `vpmaddubsw` integer block dots for the fast path.

use std::arch::x86_64::*;

use crate::acts::{quantize_acts_body, ActRow, Q8Acts};
use crate::dispatch::{Kernels, Variant};
use crate::fp::f16_to_f32;
use crate::reference::scale_min_k4;
use crate::types::WeightType;
use crate::MAX_TILE;

pub(crate) static KERNELS: Kernels = Kernels {
    variant: Variant::Avx2,
    dequant,
    tile,
    tile_nt: 2,
    exact_fused: None,
    fast_dot,
    quant_acts,
    spread_scales: false,
    packed_dot,
    packed_dot_f32,
};

// ---------------------------------------------------------------------------------------
// Bounds-checked loads and stores.

#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn ld128(s: &[u8]) -> __m128i {
    assert!(s.len() >= 16);
    // SAFETY: 16 readable bytes (checked); unaligned load.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn ld256(s: &[u8]) -> __m256i {
    assert!(s.len() >= 32);
    // SAFETY: 32 readable bytes (checked); unaligned load.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn ld256i8(s: &[i8]) -> __m256i {
    assert!(s.len() >= 32);
    // SAFETY: 32 readable bytes (checked); unaligned load.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn ld64(s: &[u8]) -> __m128i {
    assert!(s.len() >= 8);
    // SAFETY: 8 readable bytes (checked); `movq` has no alignment requirement.
    unsafe { _mm_loadl_epi64(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn ld_ps(s: &[f32]) -> __m256 {
    assert!(s.len() >= 8);
    // SAFETY: 8 readable floats (checked); unaligned load.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn st_ps(o: &mut [f32], v: __m256) {
    assert!(o.len() >= 8);
    // SAFETY: 8 writable floats (checked); unaligned store.
    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) }
}

/// Little-endian f16 at `off`, widened with F16C (exact; same bits as `fp::f16_to_f32`).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn rd_f16(b: &[u8], off: usize) -> f32 {
    let bits = u16::from_le_bytes([b[off], b[off + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Low 8 unsigned bytes of `v` as f32.
#[inline]
#[target_feature(enable = "avx2")]
fn u8x8_ps(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
}

/// Stores `scale * q - sub` for the 16 unsigned bytes of `q` (two separate roundings).
#[inline]
#[target_feature(enable = "avx2")]
fn store16_affine(o: &mut [f32], q: __m128i, scale: __m256, sub: __m256) {
    let a = u8x8_ps(q);
    let b = u8x8_ps(_mm_srli_si128(q, 8));
    st_ps(&mut o[0..8], _mm256_sub_ps(_mm256_mul_ps(scale, a), sub));
    st_ps(&mut o[8..16], _mm256_sub_ps(_mm256_mul_ps(scale, b), sub));
}

// ---------------------------------------------------------------------------------------
// Dequantization (bit-identical to the reference: same products/differences, same order).

fn dequant(t: WeightType, src: &[u8], out: &mut [f32]) {
    // SAFETY: this table entry is only reachable after AVX2/FMA/F16C were detected.
    unsafe { dequant_impl(t, src, out) }
}

/// Stores `scale * (q - 32)` for the 16 unsigned bytes of `q` (`q - 32` is exact).
#[inline]
#[target_feature(enable = "avx2")]
fn store16_q6(o: &mut [f32], q: __m128i, scale: __m256) {
    let c32 = _mm256_set1_ps(32.0);
    let a = _mm256_sub_ps(u8x8_ps(q), c32);
    let b = _mm256_sub_ps(u8x8_ps(_mm_srli_si128(q, 8)), c32);
    st_ps(&mut o[0..8], _mm256_mul_ps(scale, a));
    st_ps(&mut o[8..16], _mm256_mul_ps(scale, b));
}

/// The 6-bit quants of one 128-element half of a Q6_K block, as four 32-byte vectors
/// (elements 0..32, 32..64, 64..96, 96..128 of the half), values 0..63.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn q6_half(blk: &[u8], h: usize) -> [__m256i; 4] {
    let m4 = _mm256_set1_epi8(0x0f);
    let m3 = _mm256_set1_epi8(3);
    let ql0 = ld256(&blk[64 * h..64 * h + 32]);
    let ql1 = ld256(&blk[64 * h + 32..64 * h + 64]);
    let qh = ld256(&blk[128 + 32 * h..128 + 32 * h + 32]);
    let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
    let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
    let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
    let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
    [
        _mm256_or_si256(_mm256_and_si256(ql0, m4), h0),
        _mm256_or_si256(_mm256_and_si256(ql1, m4), h1),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h2),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h3),
    ]
}

/// The 5th bit of sub-block `j`'s quants (bit `j` of each `qh` byte) moved to bit 4.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn q5_high(qh: __m256i, j: usize) -> __m256i {
    let v = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32));
    _mm256_and_si256(_mm256_slli_epi16(v, 4), _mm256_set1_epi8(0x10))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dequant_impl(t: WeightType, src: &[u8], out: &mut [f32]) {
    let m4 = _mm_set1_epi8(0x0f);
    let m4w = _mm256_set1_epi8(0x0f);
    match t {
        WeightType::F32 => crate::fp::f32_bytes_to_f32(src, out),
        WeightType::F16 => {
            let mut oc = out.chunks_exact_mut(8);
            let mut sc = src.chunks_exact(16);
            for (o, s) in (&mut oc).zip(&mut sc) {
                st_ps(o, _mm256_cvtph_ps(ld128(s)));
            }
            for (o, c) in oc.into_remainder().iter_mut().zip(sc.remainder().chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        WeightType::BF16 => {
            let mut oc = out.chunks_exact_mut(8);
            let mut sc = src.chunks_exact(16);
            for (o, s) in (&mut oc).zip(&mut sc) {
                let v = _mm256_slli_epi32(_mm256_cvtepu16_epi32(ld128(s)), 16);
                st_ps(o, _mm256_castsi256_ps(v));
            }
            crate::fp::bf16_bytes_to_f32(sc.remainder(), oc.into_remainder());
        }
        WeightType::Q4_0 => {
            let eight = _mm256_set1_ps(8.0);
            for (b, o) in src.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
                let d = _mm256_set1_ps(rd_f16(b, 0));
                let q = ld128(&b[2..18]);
                let lo = _mm_and_si128(q, m4);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
                for (half, v) in [(0usize, lo), (16, hi)] {
                    // q - 8 is exact in f32; one rounding for the product, as the reference.
                    let a = _mm256_sub_ps(u8x8_ps(v), eight);
                    let c = _mm256_sub_ps(u8x8_ps(_mm_srli_si128(v, 8)), eight);
                    st_ps(&mut o[half..half + 8], _mm256_mul_ps(a, d));
                    st_ps(&mut o[half + 8..half + 16], _mm256_mul_ps(c, d));
                }
            }
        }
        WeightType::Q4_1 => {
            for (b, o) in src.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
                let d = _mm256_set1_ps(rd_f16(b, 0));
                let m = _mm256_set1_ps(rd_f16(b, 2));
                let q = ld128(&b[4..20]);
                let lo = _mm_and_si128(q, m4);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
                for (half, v) in [(0usize, lo), (16, hi)] {
                    let a = u8x8_ps(v);
                    let c = u8x8_ps(_mm_srli_si128(v, 8));
                    st_ps(&mut o[half..half + 8], _mm256_add_ps(_mm256_mul_ps(a, d), m));
                    st_ps(&mut o[half + 8..half + 16], _mm256_add_ps(_mm256_mul_ps(c, d), m));
                }
            }
        }
        WeightType::Q8_0 => {
            for (b, o) in src.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
                let d = _mm256_set1_ps(rd_f16(b, 0));
                for (i, oo) in o.chunks_exact_mut(8).enumerate() {
                    let q = _mm256_cvtepi8_epi32(ld64(&b[2 + 8 * i..10 + 8 * i]));
                    st_ps(oo, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
                }
            }
        }
        WeightType::Q4_K | WeightType::Q5_K => {
            let five = t == WeightType::Q5_K;
            let bsize = t.type_size();
            for (b, o) in src.chunks_exact(bsize).zip(out.chunks_exact_mut(256)) {
                let d = rd_f16(b, 0);
                let dmin = rd_f16(b, 2);
                let scales = &b[4..16];
                let (qh, qs) =
                    if five { (ld256(&b[16..48]), &b[48..176]) } else { (_mm256_setzero_si256(), &b[16..144]) };
                for c in 0..4 {
                    let q = ld256(&qs[32 * c..32 * c + 32]);
                    let mut lo = _mm256_and_si256(q, m4w);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4w);
                    if five {
                        lo = _mm256_or_si256(lo, q5_high(qh, 2 * c));
                        hi = _mm256_or_si256(hi, q5_high(qh, 2 * c + 1));
                    }
                    for (h, v) in [(0usize, lo), (1, hi)] {
                        let (sc, m) = scale_min_k4(2 * c + h, scales);
                        let scale = _mm256_set1_ps(d * sc as f32);
                        let sub = _mm256_set1_ps(dmin * m as f32);
                        let base = 64 * c + 32 * h;
                        let o = &mut o[base..base + 32];
                        store16_affine(&mut o[0..16], _mm256_castsi256_si128(v), scale, sub);
                        store16_affine(&mut o[16..32], _mm256_extracti128_si256(v, 1), scale, sub);
                    }
                }
            }
        }
        WeightType::Q6_K => {
            for (b, o) in src.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
                let d = rd_f16(b, 208);
                for h in 0..2 {
                    let q = q6_half(b, h);
                    for (i, v) in q.iter().enumerate() {
                        let g = 8 * h + 2 * i;
                        let s0 = _mm256_set1_ps(d * (b[192 + g] as i8) as f32);
                        let s1 = _mm256_set1_ps(d * (b[193 + g] as i8) as f32);
                        let base = 128 * h + 32 * i;
                        store16_q6(&mut o[base..base + 16], _mm256_castsi256_si128(*v), s0);
                        store16_q6(&mut o[base + 16..base + 32], _mm256_extracti128_si256(*v, 1), s1);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Exact path: f32 register tiles (up to 4 weight rows x 2 activation rows).

fn tile(w: &[f32], nr: usize, x: &[f32], nt: usize, k: usize, out: &mut [[f32; MAX_TILE]; MAX_TILE]) {
    // SAFETY: this table entry is only reachable after AVX2/FMA were detected.
    unsafe { tile_impl(w, nr, x, nt, k, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
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

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_rt<const R: usize, const T: usize>(
    w: &[f32],
    x: &[f32],
    k: usize,
    out: &mut [[f32; MAX_TILE]; MAX_TILE],
    t_off: usize,
) {
    let wr: [&[f32]; R] = std::array::from_fn(|r| &w[r * k..(r + 1) * k]);
    let xr: [&[f32]; T] = std::array::from_fn(|t| &x[t * k..(t + 1) * k]);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let k8 = k / 8 * 8;
    let mut i = 0;
    while i < k8 {
        let mut wv = [_mm256_setzero_ps(); R];
        for r in 0..R {
            wv[r] = ld_ps(&wr[r][i..i + 8]);
        }
        for t in 0..T {
            let xv = ld_ps(&xr[t][i..i + 8]);
            for r in 0..R {
                acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
            }
        }
        i += 8;
    }
    for r in 0..R {
        for t in 0..T {
            let mut s = hsum_ps(acc[r][t]);
            for j in k8..k {
                s += wr[r][j] * xr[t][j];
            }
            out[r][t_off + t] = s;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fast path: integer block dots, one weight row against up to 4 activation rows.

pub(crate) fn quant_acts(x: &[f32], acts: &mut Q8Acts) {
    // SAFETY: this table entry is only reachable after AVX2/FMA were detected.
    unsafe { quant_acts_impl(x, acts) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quant_acts_impl(x: &[f32], acts: &mut Q8Acts) {
    // The portable body, compiled (and vectorized) for AVX2: same IEEE operations.
    quantize_acts_body(x, acts)
}

fn fast_dot(t: WeightType, w: &[u8], rb: usize, rows: &[ActRow<'_>], out: &mut [f32]) {
    // SAFETY: this table entry is only reachable after AVX2/FMA/F16C were detected.
    unsafe { fast_dot_impl(t, w, rb, rows, out) }
}

/// Runs `$f::<N>` (one weight row against `N` activation rows) over every row of `$w`
/// (rows of `$rb` bytes), writing `MAX_TILE` results per weight row into `$out`.
/// Prefetch hint for every cache line of `bytes`.
#[inline(always)]
pub(crate) fn prefetch(bytes: &[u8]) {
    let mut off = 0;
    while off < bytes.len() {
        // SAFETY: prefetch never faults; the address lies inside `bytes`; SSE is baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(off) as *const i8) };
        off += 64;
    }
}

macro_rules! by_rows {
    ($f:ident, $w:expr, $rb:expr, $rows:expr, $out:expr) => {{
        macro_rules! each {
            ($n:literal) => {{
                let r: &[ActRow<'_>; $n] = $rows.try_into().unwrap();
                // Weight rows stream from memory once: request the row ~4 KiB ahead while this
                // one is computed, so the loads overlap the arithmetic.
                let ahead = (4096 / $rb.max(1)).max(1);
                for (i, (wr, o)) in $w.chunks_exact($rb).zip($out.chunks_exact_mut(MAX_TILE)).enumerate() {
                    if let Some(next) = $w.get((i + ahead) * $rb..(i + ahead + 1) * $rb) {
                        $crate::x86::avx2::prefetch(next);
                    }
                    $f::<$n>(wr, r, o.try_into().unwrap());
                }
            }};
        }
        match $rows.len() {
            1 => each!(1),
            2 => each!(2),
            3 => each!(3),
            4 => each!(4),
            n => unreachable!("{n} activation rows"),
        }
    }};
}
pub(crate) use by_rows;

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn fast_dot_impl(t: WeightType, w: &[u8], rb: usize, rows: &[ActRow<'_>], out: &mut [f32]) {
    match t {
        WeightType::Q4_0 => by_rows!(dot_q4_0, w, rb, rows, out),
        WeightType::Q4_1 => by_rows!(dot_q4_1, w, rb, rows, out),
        WeightType::Q8_0 => by_rows!(dot_q8_0, w, rb, rows, out),
        WeightType::Q4_K => by_rows!(dot_q4_k, w, rb, rows, out),
        WeightType::Q5_K => by_rows!(dot_q5_k, w, rb, rows, out),
        WeightType::Q6_K => by_rows!(dot_q6_k, w, rb, rows, out),
        _ => unreachable!("float weights take the exact path"),
    }
}

/// Drives a per-block kernel over a row of `$bs`-byte blocks, alternating two accumulator
/// sets (even/odd blocks) to hide the FMA latency.
macro_rules! two_chains {
    ($blk:ident, $w:expr, $bs:literal, $rows:expr, $acc0:expr, $acc1:expr) => {{
        let mut pairs = $w.chunks_exact(2 * $bs);
        let mut b = 0;
        for pr in &mut pairs {
            let (x0, x1) = pr.split_at($bs);
            $blk!(x0, b, $rows, $acc0);
            $blk!(x1, b + 1, $rows, $acc1);
            b += 2;
        }
        let rem = pairs.remainder();
        if !rem.is_empty() {
            $blk!(rem, b, $rows, $acc0);
        }
    }};
}

/// Q4_0: `(q - 8)` is signed, so `vpmaddubsw(|w|, sign(a, w))`.
macro_rules! q4_0_blk {
    ($blk:expr, $b:expr, $rows:expr, $acc:expr) => {{
        let blk: &[u8; 18] = $blk.try_into().unwrap();
        let b: usize = $b;
        let rows = $rows;
        let acc = &mut $acc;
        let m4 = _mm256_set1_epi8(0x0f);
        let dw = rd_f16(blk, 0);
        let q = ld128(&blk[2..18]);
        let wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
        let ws = _mm256_sub_epi8(wq, _mm256_set1_epi8(8));
        let wa = _mm256_sign_epi8(ws, ws);
        for t in 0..N {
            let r = &rows[t];
            let a = ld256i8(&r.qs[32 * b..32 * b + 32]);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wa, _mm256_sign_epi8(a, ws)), _mm256_set1_epi16(1));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * r.d[b]), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }};
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0<const N: usize>(w: &[u8], rows: &[ActRow<'_>; N], out: &mut [f32; MAX_TILE]) {
    let mut acc0 = [_mm256_setzero_ps(); N];
    let mut acc1 = [_mm256_setzero_ps(); N];
    two_chains!(q4_0_blk, w, 18, rows, acc0, acc1);
    for t in 0..N {
        out[t] = hsum_ps(_mm256_add_ps(acc0[t], acc1[t]));
    }
}

/// Q4_1: unsigned nibbles times int8 activations; the `m * d_x * sum(a)` term goes to a
/// second vector accumulator (lane 0).
macro_rules! q4_1_blk {
    ($blk:expr, $b:expr, $rows:expr, $acc:expr) => {{
        let blk: &[u8; 20] = $blk.try_into().unwrap();
        let b: usize = $b;
        let rows = $rows;
        let acc = &mut $acc;
        let m4 = _mm256_set1_epi8(0x0f);
        let dw = rd_f16(blk, 0);
        let mw = _mm_set_ss(rd_f16(blk, 2));
        let q = ld128(&blk[4..20]);
        let wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
        for t in 0..N {
            let r = &rows[t];
            let a = ld256i8(&r.qs[32 * b..32 * b + 32]);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, a), _mm256_set1_epi16(1));
            acc.0[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * r.d[b]), _mm256_cvtepi32_ps(p), acc.0[t]);
            acc.1[t] = _mm_fmadd_ss(mw, _mm_set_ss(r.s[b]), acc.1[t]);
        }
    }};
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1<const N: usize>(w: &[u8], rows: &[ActRow<'_>; N], out: &mut [f32; MAX_TILE]) {
    let mut acc0 = ([_mm256_setzero_ps(); N], [_mm_setzero_ps(); N]);
    let mut acc1 = ([_mm256_setzero_ps(); N], [_mm_setzero_ps(); N]);
    two_chains!(q4_1_blk, w, 20, rows, acc0, acc1);
    for t in 0..N {
        let m = _mm_cvtss_f32(_mm_add_ss(acc0.1[t], acc1.1[t]));
        out[t] = hsum_ps(_mm256_add_ps(acc0.0[t], acc1.0[t])) + m;
    }
}

/// Q8_0: signed times signed, `vpmaddubsw(|w|, sign(a, w))`.
macro_rules! q8_0_blk {
    ($blk:expr, $b:expr, $rows:expr, $acc:expr) => {{
        let blk: &[u8; 34] = $blk.try_into().unwrap();
        let b: usize = $b;
        let rows = $rows;
        let acc = &mut $acc;
        let dw = rd_f16(blk, 0);
        let wv = ld256(&blk[2..34]);
        let wa = _mm256_sign_epi8(wv, wv);
        for t in 0..N {
            let r = &rows[t];
            let a = ld256i8(&r.qs[32 * b..32 * b + 32]);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wa, _mm256_sign_epi8(a, wv)), _mm256_set1_epi16(1));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * r.d[b]), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }};
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0<const N: usize>(w: &[u8], rows: &[ActRow<'_>; N], out: &mut [f32; MAX_TILE]) {
    let mut acc0 = [_mm256_setzero_ps(); N];
    let mut acc1 = [_mm256_setzero_ps(); N];
    two_chains!(q8_0_blk, w, 34, rows, acc0, acc1);
    for t in 0..N {
        out[t] = hsum_ps(_mm256_add_ps(acc0[t], acc1[t]));
    }
}

/// Unpacked (scale, min) pairs of a Q4_K/Q5_K super-block.
#[inline(always)]
fn k4_scales(scales: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        (sc[j], mn[j]) = scale_min_k4(j, scales);
    }
    (sc, mn)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_k<const N: usize>(w: &[u8], rows: &[ActRow<'_>; N], out: &mut [f32; MAX_TILE]) {
    dot_q45_k::<N, false, 144>(w, rows, out)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_k<const N: usize>(w: &[u8], rows: &[ActRow<'_>; N], out: &mut [f32; MAX_TILE]) {
    dot_q45_k::<N, true, 176>(w, rows, out)
}

/// Q4_K / Q5_K: per 32-element sub-block, `vpmaddubsw` then `vpmaddwd` by the 6-bit scale;
/// the mins pair with the activation block sums (`bsums`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q45_k<const N: usize, const FIVE: bool, const BS: usize>(
    w: &[u8],
    rows: &[ActRow<'_>; N],
    out: &mut [f32; MAX_TILE],
) {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut accm = [0f32; N];
    for (sb, blk) in w.chunks_exact(BS).enumerate() {
        let d = rd_f16(blk, 0);
        let dmin = rd_f16(blk, 2);
        let (sc, mn) = k4_scales(&blk[4..16]);
        let (qh, qs) =
            if FIVE { (ld256(&blk[16..48]), &blk[48..176]) } else { (_mm256_setzero_si256(), &blk[16..144]) };
        let mut sumi = [_mm256_setzero_si256(); N];
        for c in 0..4 {
            let q = ld256(&qs[32 * c..32 * c + 32]);
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if FIVE {
                lo = _mm256_or_si256(lo, q5_high(qh, 2 * c));
                hi = _mm256_or_si256(hi, q5_high(qh, 2 * c + 1));
            }
            let s_lo = _mm256_set1_epi16(sc[2 * c] as i16);
            let s_hi = _mm256_set1_epi16(sc[2 * c + 1] as i16);
            for t in 0..N {
                let a = &rows[t].qs[256 * sb + 64 * c..256 * sb + 64 * c + 64];
                let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, ld256i8(&a[..32])), s_lo);
                let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ld256i8(&a[32..])), s_hi);
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p_lo, p_hi));
            }
        }
        for t in 0..N {
            let r = &rows[t];
            let dx = r.d[sb];
            let bs = &r.bsums[16 * sb..16 * sb + 16];
            let mut summ = 0i32;
            for j in 0..8 {
                summ += mn[j] as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
            }
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            accm[t] += dmin * dx * summ as f32;
        }
    }
    for t in 0..N {
        out[t] = hsum_ps(acc[t]) - accm[t];
    }
}

/// Q6_K: unsigned 6-bit quants (offset 32 removed through `bsums`), int8 scales per 16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6_k<const N: usize>(w: &[u8], rows: &[ActRow<'_>; N], out: &mut [f32; MAX_TILE]) {
    let mut acc = [_mm256_setzero_ps(); N];
    for (sb, blk) in w.chunks_exact(210).enumerate() {
        let d = rd_f16(blk, 208);
        let sc = &blk[192..208];
        let mut sumi = [_mm256_setzero_si256(); N];
        for h in 0..2 {
            let q = q6_half(blk, h);
            for (i, qv) in q.iter().enumerate() {
                let g = 8 * h + 2 * i;
                let s = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1] as i8 as i16), _mm_set1_epi16(sc[g] as i8 as i16));
                for t in 0..N {
                    let off = 256 * sb + 128 * h + 32 * i;
                    let a = ld256i8(&rows[t].qs[off..off + 32]);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*qv, a), s);
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
        }
        for t in 0..N {
            let r = &rows[t];
            let bs = &r.bsums[16 * sb..16 * sb + 16];
            let mut corr = 0i32;
            for g in 0..16 {
                corr += (sc[g] as i8) as i32 * bs[g] as i32;
            }
            let v = _mm256_sub_epi32(sumi[t], _mm256_setr_epi32(32 * corr, 0, 0, 0, 0, 0, 0, 0));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * r.d[sb]), _mm256_cvtepi32_ps(v), acc[t]);
        }
    }
    for t in 0..N {
        out[t] = hsum_ps(acc[t]);
    }
}

// ---------------------------------------------------------------------------------------
// Packed (16 interleaved rows) dots: two 256-bit halves of 8 lanes each.

fn packed_dot(w: &[u8], rows: &[ActRow<'_>], out: &mut [[f32; crate::packed::PACK_ROWS]; MAX_TILE]) {
    // SAFETY: this table entry is only reachable after AVX2/FMA/F16C were detected.
    unsafe {
        match rows.len() {
            1 => packed_n::<1>(w, rows.try_into().unwrap(), out),
            2 => packed_n::<2>(w, rows.try_into().unwrap(), out),
            3 => packed_n::<3>(w, rows.try_into().unwrap(), out),
            4 => packed_n::<4>(w, rows.try_into().unwrap(), out),
            n => unreachable!("{n} activation rows"),
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn packed_n<const N: usize>(w: &[u8], rows: &[ActRow<'_>; N], out: &mut [[f32; crate::packed::PACK_ROWS]; MAX_TILE]) {
    use crate::packed::PACKED_BLOCK;
    let m4 = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut accm = [[_mm256_setzero_ps(); 2]; N];
    for (b, blk) in w.chunks_exact(PACKED_BLOCK).enumerate() {
        if let Some(next) = w.get((b + 8) * PACKED_BLOCK..(b + 9) * PACKED_BLOCK) {
            prefetch(next);
        }
        for h in 0..2 {
            let mut q = [_mm256_setzero_si256(); 8];
            for c in 0..4 {
                let v = ld256(&blk[64 * c + 32 * h..64 * c + 32 * h + 32]);
                q[2 * c] = _mm256_and_si256(v, m4);
                q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            }
            let d = _mm256_cvtph_ps(ld128(&blk[256 + 16 * h..272 + 16 * h]));
            let m = _mm256_cvtph_ps(ld128(&blk[288 + 16 * h..304 + 16 * h]));
            for t in 0..N {
                let r = &rows[t];
                let a = &r.qs[32 * b..32 * b + 32];
                let mut s = _mm256_setzero_si256();
                for (j, qj) in q.iter().enumerate() {
                    let bb = &a[4 * j..4 * j + 4];
                    let aw =
                        _mm256_set1_epi32(i32::from_le_bytes([bb[0] as u8, bb[1] as u8, bb[2] as u8, bb[3] as u8]));
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(*qj, aw), ones));
                }
                let isum = _mm256_cvtepi32_ps(s);
                acc[t][h] = _mm256_fmadd_ps(isum, _mm256_mul_ps(d, _mm256_set1_ps(r.d[b])), acc[t][h]);
                accm[t][h] = _mm256_fmadd_ps(m, _mm256_set1_ps(r.s[b]), accm[t][h]);
            }
        }
    }
    for t in 0..N {
        for h in 0..2 {
            // SAFETY: 8 writable floats at `out[t][8h..]`.
            unsafe { _mm256_storeu_ps(out[t][8 * h..].as_mut_ptr(), _mm256_add_ps(acc[t][h], accm[t][h])) };
        }
    }
}

fn packed_dot_f32(w: &[u8], xs: &[&[f32]], out: &mut [[f32; crate::packed::PACK_ROWS]; MAX_TILE]) {
    // SAFETY: this table entry is only reachable after AVX2/FMA/F16C were detected.
    unsafe {
        match xs.len() {
            1 => packed_f32_n::<1>(w, xs.try_into().unwrap(), out),
            2 => packed_f32_n::<2>(w, xs.try_into().unwrap(), out),
            3 => packed_f32_n::<3>(w, xs.try_into().unwrap(), out),
            4 => packed_f32_n::<4>(w, xs.try_into().unwrap(), out),
            n => unreachable!("{n} activation rows"),
        }
    }
}

/// Packed Q8_0 rows against f32 activations, 8 lanes per half (see [`crate::packed`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn packed_f32_n<const N: usize>(w: &[u8], xs: &[&[f32]; N], out: &mut [[f32; crate::packed::PACK_ROWS]; MAX_TILE]) {
    use crate::packed::PACKED_BLOCK_Q8;
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for (b, blk) in w.chunks_exact(PACKED_BLOCK_Q8).enumerate() {
        if let Some(next) = w.get((b + 8) * PACKED_BLOCK_Q8..(b + 9) * PACKED_BLOCK_Q8) {
            prefetch(next);
        }
        for h in 0..2 {
            let d = _mm256_cvtph_ps(ld128(&blk[512 + 16 * h..528 + 16 * h]));
            let xb: [&[f32; 32]; N] = std::array::from_fn(|t| xs[t][32 * b..32 * b + 32].try_into().unwrap());
            let qb: &[u8; 512] = blk[..512].try_into().unwrap();
            let mut s = [[_mm256_setzero_ps(); 4]; N];
            for k in (0..32).step_by(4) {
                let q: [__m256; 4] = std::array::from_fn(|c| {
                    let q8 = &qb[16 * (k + c) + 8 * h..16 * (k + c) + 8 * h + 8];
                    // SAFETY: 8 readable bytes (the slice above is bounds-checked).
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(unsafe { _mm_loadl_epi64(q8.as_ptr().cast()) }))
                });
                for t in 0..N {
                    for c in 0..4 {
                        s[t][c] = _mm256_fmadd_ps(q[c], _mm256_set1_ps(xb[t][k + c]), s[t][c]);
                    }
                }
            }
            for t in 0..N {
                let st = _mm256_add_ps(_mm256_add_ps(s[t][0], s[t][1]), _mm256_add_ps(s[t][2], s[t][3]));
                acc[t][h] = _mm256_fmadd_ps(st, d, acc[t][h]);
            }
        }
    }
    for t in 0..N {
        for h in 0..2 {
            // SAFETY: 8 writable floats at `out[t][8h..]`.
            unsafe { _mm256_storeu_ps(out[t][8 * h..].as_mut_ptr(), acc[t][h]) };
        }
    }
}
