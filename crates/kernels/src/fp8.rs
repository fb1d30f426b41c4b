//! FP8 E4M3 ("e4m3fn": 1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no infinities,
//! 0x7F/0xFF are NaN, largest finite 448) and the exact relation the fast decoders use: the
//! byte's low 7 bits shifted left by 7 are an IEEE half whose value is the E4M3 value × 2⁻⁸
//! (for normals and subnormals alike), so decoding is a shift, an F16C convert and a scale.

/// Largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;

/// Decodes one E4M3 byte (NaN for 0x7F / 0xFF).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let e = ((b >> 3) & 0x0F) as i32;
    let m = (b & 0x07) as f32;
    if e == 15 && b & 0x07 == 7 {
        return f32::NAN;
    }
    if e == 0 {
        sign * m / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}

/// Encodes to the nearest E4M3 value (ties to even), saturating at ±448; NaN → 0x7F.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs().min(E4M3_MAX);
    // Binary search over the 127 non-negative finite codes (monotonic in value).
    let (mut lo, mut hi) = (0u8, 126u8);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if e4m3_to_f32(mid) <= a {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let below = lo;
    let code = if below == 126 {
        126
    } else {
        let (vb, va) = (e4m3_to_f32(below), e4m3_to_f32(below + 1));
        let (db, da) = (a - vb, va - a);
        if db < da || (db == da && below % 2 == 0) {
            below
        } else {
            below + 1
        }
    };
    sign | code
}
