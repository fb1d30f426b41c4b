//! A small vector abstraction: one implementation per instruction set, so that each kernel
//! body is written once (in `generic.rs`) and instantiated inside `#[target_feature]`
//! functions. Every method is `unsafe`: the caller guarantees the CPU supports the
//! instruction set and that pointers are valid for `N` elements.

#![allow(clippy::missing_safety_doc)]

pub trait Lanes: Copy {
    /// f32 lanes per vector.
    const N: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// N little-endian halfs (2N bytes, unaligned) → f32.
    unsafe fn load_f16(p: *const u8) -> Self::V;
    /// N little-endian bfloat16 (2N bytes, unaligned) → f32.
    unsafe fn load_bf16(p: *const u8) -> Self::V;
    /// N FP8 E4M3 bytes → f32 (value × 2⁻⁸ exactly; NaN codes are not special-cased).
    unsafe fn load_fp8_scaled256(p: *const u8) -> Self::V;
    /// N int8 bytes → f32.
    unsafe fn load_i8(p: *const u8) -> Self::V;
    /// f32 → N halfs, round to nearest even.
    unsafe fn store_f16(p: *mut u8, v: Self::V);
    /// f32 → N bfloat16, round to nearest even (NaN stays NaN).
    unsafe fn store_bf16(p: *mut u8, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// a·b + c
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Sum of the lanes, as a pairwise tree (lane i + lane i + N/2, then N/4, …, then 1).
    unsafe fn hsum(v: Self::V) -> f32;
    /// `[hsum(a), hsum(b), hsum(c), hsum(d)]`, bit for bit (the same tree), with the four
    /// reductions sharing their shuffles.
    #[inline(always)]
    unsafe fn hsum4(a: Self::V, b: Self::V, c: Self::V, d: Self::V) -> [f32; 4] {
        [Self::hsum(a), Self::hsum(b), Self::hsum(c), Self::hsum(d)]
    }
    unsafe fn hmax(v: Self::V) -> f32;
    /// e^x with ≈1 ulp error on [−87, 88]; 0 for x < −87.3 (so e^−∞ = 0 exactly).
    unsafe fn exp(x: Self::V) -> Self::V;
}

// Cephes-style single-precision exp constants.
pub(crate) const EXP_HI: f32 = 88.376_26;
pub(crate) const EXP_LO: f32 = -87.336_54;
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
pub(crate) const P0: f32 = 1.987_569_1e-4;
pub(crate) const P1: f32 = 1.398_2e-3;
pub(crate) const P2: f32 = 8.333_452e-3;
pub(crate) const P3: f32 = 4.166_579_6e-2;
pub(crate) const P4: f32 = 1.666_666_5e-1;
pub(crate) const P5: f32 = 0.5;

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct Avx2;

    #[inline(always)]
    unsafe fn bf16_round_bits_256(v: __m256) -> __m256i {
        // Round to nearest even on the upper 16 bits; keep NaNs quiet.
        let bits = _mm256_castps_si256(v);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
        let rounded = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x0040_0000));
        let r = _mm256_blendv_epi8(rounded, quiet, nan);
        _mm256_srli_epi32::<16>(r)
    }

    impl Lanes for Avx2 {
        const N: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u8) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u8) -> __m256 {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
        #[inline(always)]
        unsafe fn load_fp8_scaled256(p: *const u8) -> __m256 {
            let b = _mm_cvtepu8_epi16(_mm_loadl_epi64(p as *const __m128i));
            let h = _mm_or_si128(
                _mm_slli_epi16::<8>(_mm_and_si128(b, _mm_set1_epi16(0x80))),
                _mm_slli_epi16::<7>(_mm_and_si128(b, _mm_set1_epi16(0x7F))),
            );
            _mm256_cvtph_ps(h)
        }
        #[inline(always)]
        unsafe fn load_i8(p: *const u8) -> __m256 {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
        }
        #[inline(always)]
        unsafe fn store_f16(p: *mut u8, v: __m256) {
            _mm_storeu_si128(p as *mut __m128i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
        }
        #[inline(always)]
        unsafe fn store_bf16(p: *mut u8, v: __m256) {
            let r = bf16_round_bits_256(v);
            let lo = _mm256_castsi256_si128(r);
            let hi = _mm256_extracti128_si256::<1>(r);
            _mm_storeu_si128(p as *mut __m128i, _mm_packus_epi32(lo, hi))
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            _mm256_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> [f32; 4] {
            // i + i+4: [a.lo + a.hi | b.lo + b.hi], [c… | d…]
            let ab = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b));
            let cd = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(c, d), _mm256_permute2f128_ps::<0x31>(c, d));
            // i + i+2: per 128-bit half [x0+x2, x1+x3, y0+y2, y1+y3] (a/c low, b/d high)
            let s =
                _mm256_add_ps(_mm256_shuffle_ps::<0b01_00_01_00>(ab, cd), _mm256_shuffle_ps::<0b11_10_11_10>(ab, cd));
            // i + i+1: [A, C, A, C | B, D, B, D]
            let t = _mm256_add_ps(_mm256_shuffle_ps::<0b10_00_10_00>(s, s), _mm256_shuffle_ps::<0b11_01_11_01>(s, s));
            let r = _mm_unpacklo_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t));
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), r);
            out
        }
        #[inline(always)]
        unsafe fn hmax(v: __m256) -> f32 {
            let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        unsafe fn exp(x0: __m256) -> __m256 {
            let x = _mm256_min_ps(_mm256_max_ps(x0, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
            let fx = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                x,
                _mm256_set1_ps(LOG2E),
            ));
            let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(LN2_HI), x);
            let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(LN2_LO), r);
            let mut y = _mm256_set1_ps(P0);
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(P1));
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(P2));
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(P3));
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(P4));
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(P5));
            y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
            let n = _mm256_cvtps_epi32(fx);
            let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n, _mm256_set1_epi32(127))));
            let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x0, _mm256_set1_ps(EXP_LO));
            _mm256_and_ps(_mm256_mul_ps(y, pow2), keep)
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx512;

    impl Lanes for Avx512 {
        const N: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u8) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u8) -> __m512 {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
        #[inline(always)]
        unsafe fn load_fp8_scaled256(p: *const u8) -> __m512 {
            let b = _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i));
            let h = _mm256_or_si256(
                _mm256_slli_epi16::<8>(_mm256_and_si256(b, _mm256_set1_epi16(0x80))),
                _mm256_slli_epi16::<7>(_mm256_and_si256(b, _mm256_set1_epi16(0x7F))),
            );
            _mm512_cvtph_ps(h)
        }
        #[inline(always)]
        unsafe fn load_i8(p: *const u8) -> __m512 {
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
        }
        #[inline(always)]
        unsafe fn store_f16(p: *mut u8, v: __m512) {
            _mm256_storeu_si256(p as *mut __m256i, _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
        }
        #[inline(always)]
        unsafe fn store_bf16(p: *mut u8, v: __m512) {
            let bits = _mm512_castps_si512(v);
            let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
            let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            let quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000));
            let r = _mm512_mask_mov_epi32(rounded, nan, quiet);
            let h = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(r));
            _mm256_storeu_si256(p as *mut __m256i, h)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            _mm512_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m512) -> f32 {
            // Spelled out so that `hsum4` can follow the same tree exactly.
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            let s = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        unsafe fn hsum4(a: __m512, b: __m512, c: __m512, d: __m512) -> [f32; 4] {
            // i + i+8: 128-bit quarters [a0+a2, a1+a3, b0+b2, b1+b3]
            let ab = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b));
            let cd = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(c, d), _mm512_shuffle_f32x4::<0xEE>(c, d));
            // i + i+4: quarters [A, B, C, D], four partial sums each
            let s = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(ab, cd), _mm512_shuffle_f32x4::<0xDD>(ab, cd));
            // i + i+2, then i + i+1: each quarter's sum in its lane 0
            let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
            let s = _mm512_add_ps(s, _mm512_movehdup_ps(s));
            let r = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s);
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps128(r));
            out
        }
        #[inline(always)]
        unsafe fn hmax(v: __m512) -> f32 {
            _mm512_reduce_max_ps(v)
        }
        #[inline(always)]
        unsafe fn exp(x0: __m512) -> __m512 {
            let x = _mm512_min_ps(_mm512_max_ps(x0, _mm512_set1_ps(EXP_LO)), _mm512_set1_ps(EXP_HI));
            let fx = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
                x,
                _mm512_set1_ps(LOG2E),
            ));
            let r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(LN2_HI), x);
            let r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(LN2_LO), r);
            let mut y = _mm512_set1_ps(P0);
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(P1));
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(P2));
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(P3));
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(P4));
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(P5));
            y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
            let n = _mm512_cvtps_epi32(fx);
            let pow2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n, _mm512_set1_epi32(127))));
            let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x0, _mm512_set1_ps(EXP_LO));
            _mm512_maskz_mov_ps(keep, _mm512_mul_ps(y, pow2))
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub use arm::Neon;

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;
    use std::arch::aarch64::*;

    #[derive(Clone, Copy)]
    pub struct Neon;

    impl Lanes for Neon {
        const N: usize = 4;
        type V = float32x4_t;
        #[inline(always)]
        unsafe fn zero() -> float32x4_t {
            vdupq_n_f32(0.0)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> float32x4_t {
            vdupq_n_f32(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            vld1q_f32(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: float32x4_t) {
            vst1q_f32(p, v)
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u8) -> float32x4_t {
            let mut t = [0f32; 4];
            for (i, x) in t.iter_mut().enumerate() {
                let b = [*p.add(2 * i), *p.add(2 * i + 1)];
                *x = half::f16::from_bits(u16::from_le_bytes(b)).to_f32();
            }
            vld1q_f32(t.as_ptr())
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u8) -> float32x4_t {
            let h = vld1_u16(p as *const u16);
            vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(h)))
        }
        #[inline(always)]
        unsafe fn load_fp8_scaled256(p: *const u8) -> float32x4_t {
            let mut t = [0f32; 4];
            for (i, x) in t.iter_mut().enumerate() {
                *x = crate::fp8::e4m3_to_f32(*p.add(i)) / 256.0;
            }
            vld1q_f32(t.as_ptr())
        }
        #[inline(always)]
        unsafe fn load_i8(p: *const u8) -> float32x4_t {
            let mut t = [0f32; 4];
            for (i, x) in t.iter_mut().enumerate() {
                *x = (*p.add(i) as i8) as f32;
            }
            vld1q_f32(t.as_ptr())
        }
        #[inline(always)]
        unsafe fn store_f16(p: *mut u8, v: float32x4_t) {
            let mut t = [0f32; 4];
            vst1q_f32(t.as_mut_ptr(), v);
            for (i, x) in t.iter().enumerate() {
                let b = half::f16::from_f32(*x).to_bits().to_le_bytes();
                *p.add(2 * i) = b[0];
                *p.add(2 * i + 1) = b[1];
            }
        }
        #[inline(always)]
        unsafe fn store_bf16(p: *mut u8, v: float32x4_t) {
            let mut t = [0f32; 4];
            vst1q_f32(t.as_mut_ptr(), v);
            for (i, x) in t.iter().enumerate() {
                let b = half::bf16::from_f32(*x).to_bits().to_le_bytes();
                *p.add(2 * i) = b[0];
                *p.add(2 * i + 1) = b[1];
            }
        }
        #[inline(always)]
        unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vaddq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmulq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vdivq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            vfmaq_f32(c, a, b)
        }
        #[inline(always)]
        unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmaxq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn hsum(v: float32x4_t) -> f32 {
            vaddvq_f32(v)
        }
        #[inline(always)]
        unsafe fn hmax(v: float32x4_t) -> f32 {
            vmaxvq_f32(v)
        }
        #[inline(always)]
        unsafe fn exp(x0: float32x4_t) -> float32x4_t {
            let x = vminq_f32(vmaxq_f32(x0, vdupq_n_f32(EXP_LO)), vdupq_n_f32(EXP_HI));
            let fx = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));
            let r = vfmsq_f32(x, fx, vdupq_n_f32(LN2_HI));
            let r = vfmsq_f32(r, fx, vdupq_n_f32(LN2_LO));
            let mut y = vdupq_n_f32(P0);
            y = vfmaq_f32(vdupq_n_f32(P1), y, r);
            y = vfmaq_f32(vdupq_n_f32(P2), y, r);
            y = vfmaq_f32(vdupq_n_f32(P3), y, r);
            y = vfmaq_f32(vdupq_n_f32(P4), y, r);
            y = vfmaq_f32(vdupq_n_f32(P5), y, r);
            y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), y, vmulq_f32(r, r));
            let n = vcvtq_s32_f32(fx);
            let pow2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n, vdupq_n_s32(127))));
            let keep = vcgeq_f32(x0, vdupq_n_f32(EXP_LO));
            vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(vmulq_f32(y, pow2)), keep))
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The documented tree, in plain f32: lane i + lane i + n/2, then n/4, …, then 1.
    fn tree_sum(v: &[f32]) -> f32 {
        let mut v = v.to_vec();
        while v.len() > 1 {
            let h = v.len() / 2;
            v = (0..h).map(|i| v[i] + v[i + h]).collect();
        }
        v[0]
    }

    /// Lanes spanning many magnitudes, so that any other summation order shows in the bits.
    fn hostile(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let m = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                m * 2f32.powi(((s >> 8) % 40) as i32 - 20)
            })
            .collect()
    }

    unsafe fn check<L: Lanes>(load: impl Fn(&[f32]) -> L::V) {
        for seed in 0..200u64 {
            let xs: Vec<Vec<f32>> = (0..4).map(|j| hostile(seed * 4 + j, L::N)).collect();
            let v: Vec<L::V> = xs.iter().map(|x| load(x)).collect();
            let four = L::hsum4(v[0], v[1], v[2], v[3]);
            for j in 0..4 {
                let one = L::hsum(v[j]);
                assert_eq!(one.to_bits(), tree_sum(&xs[j]).to_bits(), "hsum is not the documented tree");
                assert_eq!(four[j].to_bits(), one.to_bits(), "hsum4 lane {j} differs from hsum");
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn check_avx2() {
        check::<Avx2>(|x| Avx2::load(x.as_ptr()))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn check_avx512() {
        check::<Avx512>(|x| Avx512::load(x.as_ptr()))
    }

    #[test]
    fn hsum4_is_four_hsums_bit_for_bit() {
        let mut ran = 0;
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            // SAFETY: the features were detected just above.
            unsafe { check_avx2() };
            ran += 1;
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
            // SAFETY: as above.
            unsafe { check_avx512() };
            ran += 1;
        }
        if ran == 0 {
            eprintln!("skipped: this CPU has neither AVX2 nor AVX-512");
        }
    }
}
