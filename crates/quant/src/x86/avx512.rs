//! AVX-512 (F/BW/VL) kernels, with a VNNI flavour of the integer dots. 512-bit paths for the
//! float conversions, the 32-element block formats and the f32 tiles; the K-quants use the
//! AVX2 kernels (their 32-element sub-blocks map naturally onto 256-bit registers).

use std::arch::x86_64::*;

use crate::acts::Q8Acts;
use crate::dispatch::{Kernels, Variant};
use crate::types::{WeightType, QK};
use crate::x86::avx2::{self, ld128, ld256, rd_f16};
use crate::MAX_TILE;

pub(crate) static KERNELS_BW: Kernels = Kernels {
    variant: Variant::Avx512,
    dequant,
    tile,
    tile_nt: MAX_TILE,
    exact_fused: Some(exact_fused),
    fast_dot: bw::fast_dot,
    quant_acts,
    spread_scales: true,
    packed_dot: bw::packed_dot,
    packed_dot_f32,
};

pub(crate) static KERNELS_VNNI: Kernels = Kernels {
    variant: Variant::Avx512Vnni,
    dequant,
    tile,
    tile_nt: MAX_TILE,
    exact_fused: Some(exact_fused),
    fast_dot: vnni::fast_dot,
    quant_acts,
    spread_scales: true,
    packed_dot: vnni::packed_dot,
    packed_dot_f32,
};

#[inline]
#[target_feature(enable = "avx512f")]
fn ld512i8(s: &[i8]) -> __m512i {
    assert!(s.len() >= 64);
    // SAFETY: 64 readable bytes (checked); unaligned load.
    unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn ld_ps(s: &[f32]) -> __m512 {
    assert!(s.len() >= 16);
    // SAFETY: 16 readable floats (checked); unaligned load.
    unsafe { _mm512_loadu_ps(s.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn st_ps(o: &mut [f32], v: __m512) {
    assert!(o.len() >= 16);
    // SAFETY: 16 writable floats (checked); unaligned store.
    unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) }
}

/// 16 unsigned bytes as f32.
#[inline]
#[target_feature(enable = "avx512f")]
fn u8x16_ps(v: __m128i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
}

// ---------------------------------------------------------------------------------------
// Dequantization (bit-identical to the reference).

fn dequant(t: WeightType, src: &[u8], out: &mut [f32]) {
    // SAFETY: this table entry is only reachable after AVX-512 F/BW/VL (and AVX2/FMA/F16C,
    // which the AVX-512 level implies in `Isa::available`) were detected.
    unsafe { dequant_impl(t, src, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dequant_impl(t: WeightType, src: &[u8], out: &mut [f32]) {
    let m4 = _mm_set1_epi8(0x0f);
    match t {
        WeightType::F16 => {
            let mut oc = out.chunks_exact_mut(16);
            let mut sc = src.chunks_exact(32);
            for (o, s) in (&mut oc).zip(&mut sc) {
                st_ps(o, _mm512_cvtph_ps(ld256(s)));
            }
            avx2::dequant_impl(t, sc.remainder(), oc.into_remainder());
        }
        WeightType::BF16 => {
            let mut oc = out.chunks_exact_mut(16);
            let mut sc = src.chunks_exact(32);
            for (o, s) in (&mut oc).zip(&mut sc) {
                let v = _mm512_slli_epi32(_mm512_cvtepu16_epi32(ld256(s)), 16);
                st_ps(o, _mm512_castsi512_ps(v));
            }
            avx2::dequant_impl(t, sc.remainder(), oc.into_remainder());
        }
        WeightType::Q4_0 => {
            let eight = _mm512_set1_ps(8.0);
            for (b, o) in src.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
                let d = _mm512_set1_ps(rd_f16(b, 0));
                let q = ld128(&b[2..18]);
                let lo = _mm_and_si128(q, m4);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
                st_ps(&mut o[0..16], _mm512_mul_ps(_mm512_sub_ps(u8x16_ps(lo), eight), d));
                st_ps(&mut o[16..32], _mm512_mul_ps(_mm512_sub_ps(u8x16_ps(hi), eight), d));
            }
        }
        WeightType::Q4_1 => {
            for (b, o) in src.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
                let d = _mm512_set1_ps(rd_f16(b, 0));
                let m = _mm512_set1_ps(rd_f16(b, 2));
                let q = ld128(&b[4..20]);
                let lo = _mm_and_si128(q, m4);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
                st_ps(&mut o[0..16], _mm512_add_ps(_mm512_mul_ps(u8x16_ps(lo), d), m));
                st_ps(&mut o[16..32], _mm512_add_ps(_mm512_mul_ps(u8x16_ps(hi), d), m));
            }
        }
        WeightType::Q8_0 => {
            for (b, o) in src.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
                let d = _mm512_set1_ps(rd_f16(b, 0));
                let q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld128(&b[2..18])));
                let q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld128(&b[18..34])));
                st_ps(&mut o[0..16], _mm512_mul_ps(q0, d));
                st_ps(&mut o[16..32], _mm512_mul_ps(q1, d));
            }
        }
        _ => avx2::dequant_impl(t, src, out),
    }
}

// ---------------------------------------------------------------------------------------
// Exact path: f32 register tiles of up to 4 weight rows x 4 activation rows.

fn tile(w: &[f32], nr: usize, x: &[f32], nt: usize, k: usize, out: &mut [[f32; MAX_TILE]; MAX_TILE]) {
    // SAFETY: this table entry is only reachable after AVX-512 F was detected.
    unsafe { tile_impl(w, nr, x, nt, k, out) }
}

macro_rules! tile_shapes {
    ($w:expr, $x:expr, $k:expr, $out:expr, $nr:expr, $nt:expr; $(($r:literal, $t:literal)),*) => {
        match ($nr, $nt) {
            $(($r, $t) => tile_rt::<$r, $t>($w, $x, $k, $out),)*
            (r, t) => unreachable!("tile shape {r}x{t}"),
        }
    };
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn tile_impl(w: &[f32], nr: usize, x: &[f32], nt: usize, k: usize, out: &mut [[f32; MAX_TILE]; MAX_TILE]) {
    tile_shapes!(w, x, k, out, nr, nt;
        (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3), (2, 4),
        (3, 1), (3, 2), (3, 3), (3, 4), (4, 1), (4, 2), (4, 3), (4, 4))
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn tile_rt<const R: usize, const T: usize>(w: &[f32], x: &[f32], k: usize, out: &mut [[f32; MAX_TILE]; MAX_TILE]) {
    let wr: [&[f32]; R] = std::array::from_fn(|r| &w[r * k..(r + 1) * k]);
    let xr: [&[f32]; T] = std::array::from_fn(|t| &x[t * k..(t + 1) * k]);
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let k16 = k / 16 * 16;
    let mut i = 0;
    while i < k16 {
        let mut wv = [_mm512_setzero_ps(); R];
        for r in 0..R {
            wv[r] = ld_ps(&wr[r][i..i + 16]);
        }
        for t in 0..T {
            let xv = ld_ps(&xr[t][i..i + 16]);
            for r in 0..R {
                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
            }
        }
        i += 16;
    }
    for r in 0..R {
        for t in 0..T {
            let mut s = _mm512_reduce_add_ps(acc[r][t]);
            for j in k16..k {
                s += wr[r][j] * xr[t][j];
            }
            out[r][t] = s;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Exact path for up to 4 activation rows: each 32-element chunk of a weight row is decoded
// into two registers (bit-identical to the dequantizer) and multiplied straight into the
// accumulators, so no dequantized copy goes through memory.

fn exact_fused(t: WeightType, w: &[u8], rb: usize, x: &[f32], nt: usize, k: usize, out: &mut [f32]) -> bool {
    if !matches!(
        t,
        WeightType::F32 | WeightType::F16 | WeightType::BF16 | WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0
    ) {
        return false;
    }
    // SAFETY: this table entry is only reachable after AVX-512 F/BW/VL and AVX2/FMA/F16C
    // were detected.
    unsafe { exact_fused_impl(t, w, rb, x, nt, k, out) };
    true
}

/// Decodes 32 consecutive weights starting at element `e` of a row into two registers.
macro_rules! decode32 {
    (F32, $w:expr, $e:expr) => {{
        let s = &$w[4 * $e..4 * $e + 128];
        (_mm512_castsi512_ps(ld512(&s[..64])), _mm512_castsi512_ps(ld512(&s[64..])))
    }};
    (F16, $w:expr, $e:expr) => {{
        let s = &$w[2 * $e..2 * $e + 64];
        (_mm512_cvtph_ps(ld256(&s[..32])), _mm512_cvtph_ps(ld256(&s[32..])))
    }};
    (BF16, $w:expr, $e:expr) => {{
        let s = &$w[2 * $e..2 * $e + 64];
        let a = _mm512_slli_epi32(_mm512_cvtepu16_epi32(ld256(&s[..32])), 16);
        let b = _mm512_slli_epi32(_mm512_cvtepu16_epi32(ld256(&s[32..])), 16);
        (_mm512_castsi512_ps(a), _mm512_castsi512_ps(b))
    }};
    (Q4_0, $w:expr, $e:expr) => {{
        let blk: &[u8; 18] = $w[18 * ($e / 32)..18 * ($e / 32) + 18].try_into().unwrap();
        let d = _mm512_set1_ps(rd_f16(blk, 0));
        let q = ld128(&blk[2..18]);
        let m4 = _mm_set1_epi8(0x0f);
        let eight = _mm512_set1_ps(8.0);
        let lo = _mm512_sub_ps(u8x16_ps(_mm_and_si128(q, m4)), eight);
        let hi = _mm512_sub_ps(u8x16_ps(_mm_and_si128(_mm_srli_epi16(q, 4), m4)), eight);
        (_mm512_mul_ps(lo, d), _mm512_mul_ps(hi, d))
    }};
    (Q4_1, $w:expr, $e:expr) => {{
        let blk: &[u8; 20] = $w[20 * ($e / 32)..20 * ($e / 32) + 20].try_into().unwrap();
        let d = _mm512_set1_ps(rd_f16(blk, 0));
        let m = _mm512_set1_ps(rd_f16(blk, 2));
        let q = ld128(&blk[4..20]);
        let m4 = _mm_set1_epi8(0x0f);
        let lo = u8x16_ps(_mm_and_si128(q, m4));
        let hi = u8x16_ps(_mm_and_si128(_mm_srli_epi16(q, 4), m4));
        (_mm512_add_ps(_mm512_mul_ps(lo, d), m), _mm512_add_ps(_mm512_mul_ps(hi, d), m))
    }};
    (Q8_0, $w:expr, $e:expr) => {{
        let blk: &[u8; 34] = $w[34 * ($e / 32)..34 * ($e / 32) + 34].try_into().unwrap();
        let d = _mm512_set1_ps(rd_f16(blk, 0));
        let a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld128(&blk[2..18])));
        let b = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld128(&blk[18..34])));
        (_mm512_mul_ps(a, d), _mm512_mul_ps(b, d))
    }};
}

#[inline]
#[target_feature(enable = "avx512f")]
fn ld512(s: &[u8]) -> __m512i {
    assert!(s.len() >= 64);
    // SAFETY: 64 readable bytes (checked); unaligned load.
    unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
}

/// One weight row (`k` elements of kind `$kind`) against `N` activation rows; chunks of 32
/// alternate between two accumulator sets to hide the FMA latency.
macro_rules! fused_row {
    ($kind:ident, $n:literal, $w:expr, $x:expr, $k:expr, $out:expr) => {{
        let (w, x, k, out): (&[u8], &[&[f32]; $n], usize, &mut [f32]) = ($w, $x, $k, $out);
        let mut acc = [[[_mm512_setzero_ps(); 2]; $n]; 2];
        let k32 = k / 32 * 32;
        let mut e = 0;
        while e < k32 {
            for u in 0..2 {
                let e = e + 32 * u;
                if e >= k32 {
                    break;
                }
                let (w0, w1) = decode32!($kind, w, e);
                for t in 0..$n {
                    let xr = &x[t][e..e + 32];
                    acc[u][t][0] = _mm512_fmadd_ps(w0, ld_ps(&xr[..16]), acc[u][t][0]);
                    acc[u][t][1] = _mm512_fmadd_ps(w1, ld_ps(&xr[16..]), acc[u][t][1]);
                }
            }
            e += 64;
        }
        for t in 0..$n {
            let v = _mm512_add_ps(_mm512_add_ps(acc[0][t][0], acc[0][t][1]), _mm512_add_ps(acc[1][t][0], acc[1][t][1]));
            let mut s = _mm512_reduce_add_ps(v);
            if k32 < k {
                // Float rows only (quantized rows are whole blocks): a short scalar tail.
                let mut tail = [0f32; 32];
                crate::scalar::dequant(WeightType::$kind, &w[w.len() / k * k32..], &mut tail[..k - k32]);
                for j in k32..k {
                    s += tail[j - k32] * x[t][j];
                }
            }
            out[t] = s;
        }
    }};
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn exact_fused_impl(t: WeightType, w: &[u8], rb: usize, x: &[f32], nt: usize, k: usize, out: &mut [f32]) {
    macro_rules! rows {
        ($kind:ident, $n:literal) => {{
            let xs: [&[f32]; $n] = std::array::from_fn(|i| &x[i * k..(i + 1) * k]);
            let ahead = (4096 / rb.max(1)).max(1);
            for (i, (wr, o)) in w.chunks_exact(rb).zip(out.chunks_exact_mut(MAX_TILE)).enumerate() {
                if let Some(next) = w.get((i + ahead) * rb..(i + ahead + 1) * rb) {
                    crate::x86::avx2::prefetch(next);
                }
                fused_row!($kind, $n, wr, &xs, k, o);
            }
        }};
    }
    macro_rules! kinds {
        ($n:literal) => {
            match t {
                WeightType::F32 => rows!(F32, $n),
                WeightType::F16 => rows!(F16, $n),
                WeightType::BF16 => rows!(BF16, $n),
                WeightType::Q4_0 => rows!(Q4_0, $n),
                WeightType::Q4_1 => rows!(Q4_1, $n),
                WeightType::Q8_0 => rows!(Q8_0, $n),
                _ => unreachable!("checked by exact_fused"),
            }
        };
    }
    match nt {
        1 => kinds!(1),
        2 => kinds!(2),
        3 => kinds!(3),
        4 => kinds!(4),
        n => unreachable!("{n} activation rows"),
    }
}

// ---------------------------------------------------------------------------------------
// Fast path: two 32-element blocks per 512-bit register. The dot of unsigned weight bytes
// with signed activation bytes is `vpmaddubsw + vpmaddwd` (BW) or `vpdpbusd` (VNNI).

/// Two Q4 blocks' 16 quant bytes as one register of 64 nibbles in element order:
/// `[lo(q0) | hi(q0) | lo(q1) | hi(q1)]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
fn nibbles2(q0: __m128i, q1: __m128i) -> __m512i {
    let x = _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1));
    let y = _mm512_shuffle_i64x2(x, x, 0b01_01_00_00);
    let y = _mm512_mask_srli_epi16(y, 0xff00_ff00, y, 4);
    _mm512_and_si512(y, _mm512_set1_epi8(0x0f))
}

/// Two little-endian f16 (at `b0[off]`, `b1[off]`) as `[f0, f1, 0, 0]`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16_pair(b0: &[u8], b1: &[u8], off: usize) -> __m128 {
    let h0 = u16::from_le_bytes([b0[off], b0[off + 1]]) as i32;
    let h1 = u16::from_le_bytes([b1[off], b1[off + 1]]) as i32;
    _mm_cvtph_ps(_mm_cvtsi32_si128(h0 | (h1 << 16)))
}

/// Two consecutive floats as `[s[0], s[1], 0, 0]`.
#[inline]
#[target_feature(enable = "avx2")]
fn f32_pair(s: &[f32]) -> __m128 {
    assert!(s.len() >= 2);
    // SAFETY: 8 readable bytes (checked); `movq` has no alignment requirement.
    unsafe { _mm_castsi128_ps(_mm_loadl_epi64(s.as_ptr().cast())) }
}

/// `[v0 x 8 | v1 x 8]` from `[v0, v1, ..]`: a per-block value for the i32 lanes of two blocks.
#[inline]
#[target_feature(enable = "avx512f")]
fn spread_pair(v: __m128) -> __m512 {
    let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

macro_rules! int_dots {
    ($feat:literal, $dot:item) => {
        use std::arch::x86_64::*;

        use super::{f16_pair, f32_pair, ld512i8, ld_ps, nibbles2, spread_pair};
        use crate::acts::ActRow;
        use crate::scalar::{q4_0_block, q4_1_block, q8_0_block};
        use crate::types::WeightType;
        use crate::x86::avx2::{self, by_rows, ld128, ld256};
        use crate::MAX_TILE;

        /// Per 32-bit lane: sum of 4 products of unsigned `u` bytes with signed `s` bytes.
        #[inline]
        #[target_feature(enable = $feat)]
        $dot

        pub(super) fn fast_dot(t: WeightType, w: &[u8], rb: usize, rows: &[ActRow<'_>], out: &mut [f32]) {
            // SAFETY: this table entry is only reachable after the features of this
            // flavour (and AVX2/FMA/F16C, implied by the AVX-512 level) were detected.
            unsafe { fast_dot_impl(t, w, rb, rows, out) }
        }

        #[target_feature(enable = $feat)]
        fn fast_dot_impl(t: WeightType, w: &[u8], rb: usize, rows: &[ActRow<'_>], out: &mut [f32]) {
            match t {
                WeightType::Q4_0 => by_rows!(dot_q4_0, w, rb, rows, out),
                WeightType::Q4_1 => by_rows!(dot_q4_1, w, rb, rows, out),
                WeightType::Q8_0 => by_rows!(dot_q8_0, w, rb, rows, out),
                _ => avx2::fast_dot_impl(t, w, rb, rows, out),
            }
        }

        pub(super) fn packed_dot(
            w: &[u8],
            rows: &[ActRow<'_>],
            out: &mut [[f32; crate::packed::PACK_ROWS]; MAX_TILE],
        ) {
            // SAFETY: as `fast_dot`.
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

        /// The 4 activation bytes `a[4j..4j + 4]` in every 32-bit lane.
        #[inline]
        #[target_feature(enable = $feat)]
        fn bcast4(a: &[i8], j: usize) -> __m512i {
            let b = &a[4 * j..4 * j + 4];
            _mm512_set1_epi32(i32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]))
        }

        /// 16 interleaved rows (one lane each) against `N` activation rows; see
        /// [`crate::packed`] for the layout and the order of the float operations.
        #[inline]
        #[target_feature(enable = $feat)]
        fn packed_n<const N: usize>(
            w: &[u8],
            rows: &[ActRow<'_>; N],
            out: &mut [[f32; crate::packed::PACK_ROWS]; MAX_TILE],
        ) {
            use crate::packed::PACKED_BLOCK;
            let m4 = _mm512_set1_epi8(0x0f);
            let mut acc = [_mm512_setzero_ps(); N];
            let mut accm = [_mm512_setzero_ps(); N];
            for (b, blk) in w.chunks_exact(PACKED_BLOCK).enumerate() {
                if let Some(next) = w.get((b + 8) * PACKED_BLOCK..(b + 9) * PACKED_BLOCK) {
                    avx2::prefetch(next);
                }
                let mut q = [_mm512_setzero_si512(); 8];
                for c in 0..4 {
                    let chunk = &blk[64 * c..64 * c + 64];
                    // SAFETY: 64 readable bytes (the slice above is bounds-checked).
                    let v = unsafe { _mm512_loadu_si512(chunk.as_ptr().cast()) };
                    q[2 * c] = _mm512_and_si512(v, m4);
                    q[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                }
                let d = _mm512_cvtph_ps(ld256(&blk[256..288]));
                let m = _mm512_cvtph_ps(ld256(&blk[288..320]));
                for t in 0..N {
                    let r = &rows[t];
                    let a = &r.qs[32 * b..32 * b + 32];
                    let mut s0 = dot(_mm512_setzero_si512(), q[0], bcast4(a, 0));
                    let mut s1 = dot(_mm512_setzero_si512(), q[1], bcast4(a, 1));
                    s0 = dot(s0, q[2], bcast4(a, 2));
                    s1 = dot(s1, q[3], bcast4(a, 3));
                    s0 = dot(s0, q[4], bcast4(a, 4));
                    s1 = dot(s1, q[5], bcast4(a, 5));
                    s0 = dot(s0, q[6], bcast4(a, 6));
                    s1 = dot(s1, q[7], bcast4(a, 7));
                    let isum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                    acc[t] = _mm512_fmadd_ps(isum, _mm512_mul_ps(d, _mm512_set1_ps(r.d[b])), acc[t]);
                    accm[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(r.s[b]), accm[t]);
                }
            }
            for t in 0..N {
                // SAFETY: 16 writable floats.
                unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), _mm512_add_ps(acc[t], accm[t])) };
            }
        }

        /// Q4_0 and Q8_0 share this: signed weights as `|w|` with the sign moved onto the
        /// activations (`0 - a` where `w < 0`).
        #[inline]
        #[target_feature(enable = $feat)]
        fn signed_dot(wsigned: __m512i, a: __m512i) -> __m512i {
            let neg = _mm512_movepi8_mask(wsigned);
            let sa = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
            dot(_mm512_setzero_si512(), _mm512_abs_epi8(wsigned), sa)
        }

        /// Drives a pair kernel (two blocks per 512-bit register) over a row of `$bs`-byte
        /// blocks with two accumulator sets (alternating pairs) to hide the FMA latency;
        /// evaluates to the trailing odd block, if any.
        macro_rules! pair_chains {
            ($pair:ident, $w:expr, $bs:literal, $rows:expr, $acc0:expr, $acc1:expr) => {{
                let mut quads = $w.chunks_exact(4 * $bs);
                let mut p = 0;
                for qd in &mut quads {
                    let (x0, x1) = qd.split_at(2 * $bs);
                    $pair!(x0, p, $rows, $acc0);
                    $pair!(x1, p + 1, $rows, $acc1);
                    p += 2;
                }
                let rem = quads.remainder();
                let (two, one) = rem.split_at(rem.len() / (2 * $bs) * (2 * $bs));
                if !two.is_empty() {
                    $pair!(two, p, $rows, $acc0);
                }
                one
            }};
        }

        macro_rules! q4_0_pair {
            ($pr:expr, $p:expr, $rows:expr, $acc:expr) => {{
                let pr: &[u8; 36] = $pr.try_into().unwrap();
                let p: usize = $p;
                let rows = $rows;
                let acc = &mut $acc;
                let (b0, b1) = pr.split_at(18);
                let ws = _mm512_sub_epi8(nibbles2(ld128(&b0[2..18]), ld128(&b1[2..18])), _mm512_set1_epi8(8));
                let dw = spread_pair(f16_pair(b0, b1, 0));
                for t in 0..N {
                    let r = &rows[t];
                    let v = signed_dot(ws, ld512i8(&r.qs[64 * p..64 * p + 64]));
                    let s = _mm512_mul_ps(dw, ld_ps(&r.d8[16 * p..16 * p + 16]));
                    acc[t] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(v), acc[t]);
                }
            }};
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_q4_0<const N: usize>(w: &[u8], rows: &[ActRow<'_>; N], out: &mut [f32; MAX_TILE]) {
            let mut acc0 = [_mm512_setzero_ps(); N];
            let mut acc1 = [_mm512_setzero_ps(); N];
            let one = pair_chains!(q4_0_pair, w, 18, rows, acc0, acc1);
            let b = (w.len() / 18).saturating_sub(1);
            for t in 0..N {
                out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
                if !one.is_empty() {
                    let r = &rows[t];
                    out[t] += q4_0_block(one, &r.qs[32 * b..32 * b + 32], r.d[b]);
                }
            }
        }

        macro_rules! q4_1_pair {
            ($pr:expr, $p:expr, $rows:expr, $acc:expr) => {{
                let pr: &[u8; 40] = $pr.try_into().unwrap();
                let p: usize = $p;
                let rows = $rows;
                let acc = &mut $acc;
                let (b0, b1) = pr.split_at(20);
                let wq = nibbles2(ld128(&b0[4..20]), ld128(&b1[4..20]));
                let dw = spread_pair(f16_pair(b0, b1, 0));
                let mw = f16_pair(b0, b1, 2);
                for t in 0..N {
                    let r = &rows[t];
                    let v = dot(_mm512_setzero_si512(), wq, ld512i8(&r.qs[64 * p..64 * p + 64]));
                    let s = _mm512_mul_ps(dw, ld_ps(&r.d8[16 * p..16 * p + 16]));
                    acc.0[t] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(v), acc.0[t]);
                    acc.1[t] = _mm_fmadd_ps(mw, f32_pair(&r.s[2 * p..]), acc.1[t]);
                }
            }};
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_q4_1<const N: usize>(w: &[u8], rows: &[ActRow<'_>; N], out: &mut [f32; MAX_TILE]) {
            let mut acc0 = ([_mm512_setzero_ps(); N], [_mm_setzero_ps(); N]);
            let mut acc1 = ([_mm512_setzero_ps(); N], [_mm_setzero_ps(); N]);
            let one = pair_chains!(q4_1_pair, w, 20, rows, acc0, acc1);
            let b = (w.len() / 20).saturating_sub(1);
            for t in 0..N {
                let m = _mm_add_ps(acc0.1[t], acc1.1[t]);
                let m = _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
                out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0.0[t], acc1.0[t])) + m;
                if !one.is_empty() {
                    let r = &rows[t];
                    out[t] += q4_1_block(one, &r.qs[32 * b..32 * b + 32], r.d[b], r.s[b]);
                }
            }
        }

        macro_rules! q8_0_pair {
            ($pr:expr, $p:expr, $rows:expr, $acc:expr) => {{
                let pr: &[u8; 68] = $pr.try_into().unwrap();
                let p: usize = $p;
                let rows = $rows;
                let acc = &mut $acc;
                let (b0, b1) = pr.split_at(34);
                let wv = _mm512_inserti64x4(_mm512_castsi256_si512(ld256(&b0[2..34])), ld256(&b1[2..34]), 1);
                let dw = spread_pair(f16_pair(b0, b1, 0));
                for t in 0..N {
                    let r = &rows[t];
                    let v = signed_dot(wv, ld512i8(&r.qs[64 * p..64 * p + 64]));
                    let s = _mm512_mul_ps(dw, ld_ps(&r.d8[16 * p..16 * p + 16]));
                    acc[t] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(v), acc[t]);
                }
            }};
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_q8_0<const N: usize>(w: &[u8], rows: &[ActRow<'_>; N], out: &mut [f32; MAX_TILE]) {
            let mut acc0 = [_mm512_setzero_ps(); N];
            let mut acc1 = [_mm512_setzero_ps(); N];
            let one = pair_chains!(q8_0_pair, w, 34, rows, acc0, acc1);
            let b = (w.len() / 34).saturating_sub(1);
            for t in 0..N {
                out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
                if !one.is_empty() {
                    let r = &rows[t];
                    out[t] += q8_0_block(one, &r.qs[32 * b..32 * b + 32], r.d[b]);
                }
            }
        }
    };
}

/// `vpmaddubsw` + `vpmaddwd` flavour.
mod bw {
    int_dots!(
        "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
        fn dot(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
            _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)))
        }
    );
}

/// `vpdpbusd` flavour.
mod vnni {
    int_dots!(
        "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
        fn dot(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
            _mm512_dpbusd_epi32(acc, u, s)
        }
    );
}

fn packed_dot_f32(w: &[u8], xs: &[&[f32]], out: &mut [[f32; crate::packed::PACK_ROWS]; MAX_TILE]) {
    // SAFETY: this table entry is only reachable after AVX-512 F/BW/VL and AVX2/FMA/F16C
    // were detected.
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

/// Packed Q8_0 rows (one per lane) against f32 activations (see [`crate::packed`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn packed_f32_n<const N: usize>(w: &[u8], xs: &[&[f32]; N], out: &mut [[f32; crate::packed::PACK_ROWS]; MAX_TILE]) {
    use crate::packed::PACKED_BLOCK_Q8;
    let mut acc = [_mm512_setzero_ps(); N];
    for (b, blk) in w.chunks_exact(PACKED_BLOCK_Q8).enumerate() {
        if let Some(next) = w.get((b + 8) * PACKED_BLOCK_Q8..(b + 9) * PACKED_BLOCK_Q8) {
            avx2::prefetch(next);
        }
        let d = _mm512_cvtph_ps(ld256(&blk[512..544]));
        let xb: [&[f32; 32]; N] = std::array::from_fn(|t| xs[t][32 * b..32 * b + 32].try_into().unwrap());
        let qb: &[u8; 512] = blk[..512].try_into().unwrap();
        let mut s = [[_mm512_setzero_ps(); 4]; N];
        // Four elements per step, one partial sum each (constant indices keep them in registers).
        for k in (0..32).step_by(4) {
            let q: [__m512; 4] =
                std::array::from_fn(|c| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld128(&qb[16 * (k + c)..]))));
            for t in 0..N {
                for c in 0..4 {
                    s[t][c] = _mm512_fmadd_ps(q[c], _mm512_set1_ps(xb[t][k + c]), s[t][c]);
                }
            }
        }
        for t in 0..N {
            let st = _mm512_add_ps(_mm512_add_ps(s[t][0], s[t][1]), _mm512_add_ps(s[t][2], s[t][3]));
            acc[t] = _mm512_fmadd_ps(st, d, acc[t]);
        }
    }
    for t in 0..N {
        st_ps(&mut out[t], acc[t]);
    }
}

// ---------------------------------------------------------------------------------------
// Activation quantizer: the portable body's IEEE operations, 16 lanes at a time.

fn quant_acts(x: &[f32], acts: &mut Q8Acts) {
    // SAFETY: this table entry is only reachable after AVX-512 F/BW were detected.
    unsafe { quant_acts_impl(x, acts) }
}

/// Bit-identical to [`crate::acts::quantize_acts_body`] for finite input: the block maximum
/// of |x| is exact in any order, `d = amax / 127` and `1 / d` are the same scalar
/// operations, `x · (1/d)` the same product, `VCVTPS2DQ` rounds it to nearest even as
/// `round_ties_even` (|x · (1/d)| ≤ 127.5 fits, so the saturating narrowing never clips),
/// and the block sums are exact integer sums.
#[target_feature(enable = "avx512f,avx512bw")]
fn quant_acts_impl(x: &[f32], acts: &mut Q8Acts) {
    let block = acts.block;
    let nb = x.len() / block;
    assert!(acts.qs.len() >= nb * block && acts.d.len() >= nb, "quant_acts: buffers too small");
    for bi in 0..nb {
        let xb = &x[bi * block..(bi + 1) * block];
        let mut m = _mm512_setzero_ps();
        for c in xb.chunks_exact(16) {
            m = _mm512_max_ps(m, _mm512_abs_ps(ld_ps(c)));
        }
        let amax = _mm512_reduce_max_ps(m);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        acts.d[bi] = d;
        let vid = _mm512_set1_ps(id);
        let qb = &mut acts.qs[bi * block..(bi + 1) * block];
        let mut sum = _mm512_setzero_si512();
        for (j, c) in xb.chunks_exact(16).enumerate() {
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(ld_ps(c), vid));
            sum = _mm512_add_epi32(sum, q);
            let o = &mut qb[j * 16..(j + 1) * 16];
            // SAFETY: 16 writable bytes (the chunk of `qb` just sliced).
            unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), _mm512_cvtsepi32_epi8(q)) };
            if block != QK {
                acts.bsums[bi * (block / 16) + j] = _mm512_reduce_add_epi32(q) as i16;
            }
        }
        if block == QK {
            acts.s[bi] = d * _mm512_reduce_add_epi32(sum) as f32;
        }
    }
}
