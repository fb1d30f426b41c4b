//! Scalar half-precision helpers: exact f16/bf16 -> f32 and round-to-nearest-even back.

use half::slice::HalfFloatSliceExt;

/// Exact IEEE binary16 -> binary32 (normals, subnormals, infinities; NaNs come out quiet).
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    if exp != 0 && exp != 0x1f {
        f32::from_bits(sign | ((exp + 112) << 23) | (man << 13))
    } else if exp == 0 {
        // Zero or subnormal: man * 2^-24 is exact in f32.
        let v = man as f32 * (1.0 / 16_777_216.0);
        f32::from_bits(sign | v.to_bits())
    } else if man == 0 {
        f32::from_bits(sign | 0x7f80_0000)
    } else {
        // NaN: payload kept, quiet bit set (what F16C/FP16 hardware conversion does).
        f32::from_bits(sign | 0x7fc0_0000 | (man << 13))
    }
}

/// Reads a little-endian f16 at `off` and widens it.
#[inline(always)]
pub(crate) fn rd_f16(b: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}

/// bfloat16 bits -> f32 (exact).
#[inline(always)]
pub(crate) fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 -> f16 bits, round to nearest even (as ggml's FP32_TO_FP16).
pub(crate) fn f32_to_f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// f32 -> bf16 bits, round to nearest even, NaN kept quiet (as ggml's FP32_TO_BF16).
pub(crate) fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// Little-endian f16 bytes -> f32 through `half`'s slice conversion (hardware F16C/FP16
/// where the CPU has it), in stack-sized chunks. `out.len() * 2 == src.len()`.
pub(crate) fn f16_bytes_to_f32(src: &[u8], out: &mut [f32]) {
    const CH: usize = 256;
    let mut buf = [half::f16::ZERO; CH];
    for (o, s) in out.chunks_mut(CH).zip(src.chunks(2 * CH)) {
        let n = o.len();
        for (b, c) in buf[..n].iter_mut().zip(s.chunks_exact(2)) {
            *b = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
        }
        buf[..n].convert_to_f32_slice(o);
    }
}

/// Little-endian f32 bytes -> f32.
pub(crate) fn f32_bytes_to_f32(src: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// Little-endian bf16 bytes -> f32.
pub(crate) fn bf16_bytes_to_f32(src: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_matches_half_for_all_bit_patterns() {
        for h in 0..=u16::MAX {
            let a = f16_to_f32(h);
            let b = half::f16::from_bits(h).to_f32();
            if b.is_nan() {
                assert!(a.is_nan(), "{h:#x}");
                assert_eq!(a.to_bits(), b.to_bits(), "{h:#x}");
            } else {
                assert_eq!(a.to_bits(), b.to_bits(), "{h:#x}");
            }
        }
    }

    #[test]
    fn bf16_round_trip() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is a tie between 1.0 and 1 + 2^-7: rounds to even (1.0).
        assert_eq!(f32_to_bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(bf16_to_f32(f32_to_bf16_bits(f32::NAN)).is_nan());
    }
}
