//! Reference twins: plain scalar dequantizers (the definition every fast path is checked
//! against) and scalar encoders.
//!
//! Arithmetic order follows ggml's reference code, so results are bit-exact with it:
//! `Q4_0: (q - 8) * d`, `Q4_1: q * d + m`, `Q8_0: q * d`,
//! `Q4_K/Q5_K: (d * sc) * q - (dmin * m)`, `Q6_K: (d * sc) * (q - 32)` — each product and
//! difference rounded separately (no fused multiply-add).

use crate::fp::{bf16_to_f32, f16_to_f32, f32_to_bf16_bits, f32_to_f16_bits, rd_f16};
use crate::types::{check_len, QuantError, WeightType, Q8_K_BLOCK_BYTES, QK, QK_K};

/// Validates a (type, packed bytes, element count) triple.
pub(crate) fn check_row(t: WeightType, bytes: usize, n: usize) -> Result<(), QuantError> {
    let rb = t.row_bytes(n)?;
    check_len("packed row bytes", bytes, rb)
}

/// Unpacks the 6-bit (scale, min) pair `j` (0..8) of a Q4_K/Q5_K super-block.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Reference twin: plain scalar dequantization of one row of `out.len()` elements.
/// `src` must hold exactly `t.row_bytes(out.len())` bytes.
pub fn dequantize_row_ref(t: WeightType, src: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_row(t, src.len(), out.len())?;
    dequant_ref_unchecked(t, src, out);
    Ok(())
}

/// [`dequantize_row_ref`] without the length checks (lengths must already match).
pub(crate) fn dequant_ref_unchecked(t: WeightType, src: &[u8], out: &mut [f32]) {
    match t {
        WeightType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WeightType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        WeightType::BF16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        WeightType::Q4_0 => {
            for (b, o) in src.chunks_exact(18).zip(out.chunks_exact_mut(QK)) {
                let d = rd_f16(b, 0);
                for j in 0..16 {
                    let q = b[2 + j];
                    o[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
                    o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        WeightType::Q4_1 => {
            for (b, o) in src.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
                let d = rd_f16(b, 0);
                let m = rd_f16(b, 2);
                for j in 0..16 {
                    let q = b[4 + j];
                    o[j] = (q & 0x0f) as f32 * d + m;
                    o[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
        WeightType::Q8_0 => {
            for (b, o) in src.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
                let d = rd_f16(b, 0);
                for j in 0..QK {
                    o[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        WeightType::Q4_K => {
            for (b, o) in src.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
                let d = rd_f16(b, 0);
                let dmin = rd_f16(b, 2);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for c in 0..4 {
                    let (s1, m1) = scale_min_k4(2 * c, scales);
                    let (s2, m2) = scale_min_k4(2 * c + 1, scales);
                    let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        let q = qs[32 * c + l];
                        o[64 * c + l] = d1 * (q & 0x0f) as f32 - m1;
                        o[64 * c + 32 + l] = d2 * (q >> 4) as f32 - m2;
                    }
                }
            }
        }
        WeightType::Q5_K => {
            for (b, o) in src.chunks_exact(176).zip(out.chunks_exact_mut(QK_K)) {
                let d = rd_f16(b, 0);
                let dmin = rd_f16(b, 2);
                let scales = &b[4..16];
                let qh = &b[16..48];
                let qs = &b[48..176];
                for c in 0..4 {
                    let (s1, m1) = scale_min_k4(2 * c, scales);
                    let (s2, m2) = scale_min_k4(2 * c + 1, scales);
                    let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
                    let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
                    for l in 0..32 {
                        let q = qs[32 * c + l];
                        let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                        let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                        o[64 * c + l] = d1 * ((q & 0x0f) + h1) as f32 - m1;
                        o[64 * c + 32 + l] = d2 * ((q >> 4) + h2) as f32 - m2;
                    }
                }
            }
        }
        WeightType::Q6_K => {
            for (b, o) in src.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
                let d = rd_f16(b, 208);
                for h in 0..2 {
                    let ql = &b[64 * h..64 * h + 64];
                    let qh = &b[128 + 32 * h..128 + 32 * h + 32];
                    let sc = &b[192 + 8 * h..192 + 8 * h + 8];
                    let o = &mut o[128 * h..128 * h + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// Round to nearest, ties to even (ggml's `nearest_int`).
#[inline(always)]
fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Scalar encoder f32 -> `t`. `out` must hold exactly `t.row_bytes(src.len())` bytes.
///
/// Q4_0, Q4_1, Q8_0, F16, BF16 and F32 follow ggml's reference encoders exactly. The K-quant
/// encoders are plain round-to-nearest (no error search): valid blocks, not ggml's bytes.
pub fn quantize_row(t: WeightType, src: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    check_row(t, out.len(), src.len())?;
    match t {
        WeightType::F32 => {
            for (o, &x) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        WeightType::F16 => {
            for (o, &x) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_f16_bits(x).to_le_bytes());
            }
        }
        WeightType::BF16 => {
            for (o, &x) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_bf16_bits(x).to_le_bytes());
            }
        }
        WeightType::Q4_0 => {
            for (x, b) in src.chunks_exact(QK).zip(out.chunks_exact_mut(18)) {
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in x {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                b[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
                for j in 0..16 {
                    let x0 = x[j] * id;
                    let x1 = x[j + 16] * id;
                    let q0 = ((x0 + 8.5) as i8).min(15) as u8;
                    let q1 = ((x1 + 8.5) as i8).min(15) as u8;
                    b[2 + j] = q0 | (q1 << 4);
                }
            }
        }
        WeightType::Q4_1 => {
            for (x, b) in src.chunks_exact(QK).zip(out.chunks_exact_mut(20)) {
                let (mut min, mut max) = (f32::MAX, -f32::MAX);
                for &v in x {
                    if v < min {
                        min = v;
                    }
                    if v > max {
                        max = v;
                    }
                }
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                b[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
                b[2..4].copy_from_slice(&f32_to_f16_bits(min).to_le_bytes());
                for j in 0..16 {
                    let x0 = (x[j] - min) * id;
                    let x1 = (x[j + 16] - min) * id;
                    let q0 = ((x0 + 0.5) as i8).min(15) as u8;
                    let q1 = ((x1 + 0.5) as i8).min(15) as u8;
                    b[4 + j] = q0 | (q1 << 4);
                }
            }
        }
        WeightType::Q8_0 => {
            for (x, b) in src.chunks_exact(QK).zip(out.chunks_exact_mut(34)) {
                let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                b[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
                for j in 0..QK {
                    b[2 + j] = ((x[j] * id).round() as i8) as u8;
                }
            }
        }
        WeightType::Q4_K => {
            for (x, b) in src.chunks_exact(QK_K).zip(out.chunks_exact_mut(144)) {
                let (head, qs) = b.split_at_mut(16);
                let l = encode_kx_scales(x, 15, head);
                for c in 0..4 {
                    for j in 0..32 {
                        qs[32 * c + j] = l[64 * c + j] | (l[64 * c + 32 + j] << 4);
                    }
                }
            }
        }
        WeightType::Q5_K => {
            for (x, b) in src.chunks_exact(QK_K).zip(out.chunks_exact_mut(176)) {
                let (head, rest) = b.split_at_mut(16);
                let l = encode_kx_scales(x, 31, head);
                let (qh, qs) = rest.split_at_mut(32);
                qh.fill(0);
                for c in 0..4 {
                    for j in 0..32 {
                        let (l1, l2) = (l[64 * c + j], l[64 * c + 32 + j]);
                        if l1 > 15 {
                            qh[j] |= 1 << (2 * c);
                        }
                        if l2 > 15 {
                            qh[j] |= 2 << (2 * c);
                        }
                        qs[32 * c + j] = (l1 & 15) | ((l2 & 15) << 4);
                    }
                }
            }
        }
        WeightType::Q6_K => {
            for (x, b) in src.chunks_exact(QK_K).zip(out.chunks_exact_mut(210)) {
                encode_q6_k(x, b);
            }
        }
    }
    Ok(())
}

/// Round-to-nearest scales/mins for Q4_K/Q5_K (`nmax` = 15 or 31): writes d, dmin and the
/// 12 packed scale bytes into `head` (16 bytes), returns the per-element levels.
fn encode_kx_scales(x: &[f32], nmax: u8, head: &mut [u8]) -> [u8; QK_K] {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        let sub = &x[32 * j..32 * j + 32];
        let mn = sub.iter().fold(0f32, |a, &v| a.min(v));
        let mx = sub.iter().fold(f32::MIN, |a, &v| a.max(v));
        scales[j] = (mx - mn).max(0.0) / nmax as f32;
        mins[j] = -mn;
    }
    let max_scale = scales.iter().fold(0f32, |a, &v| a.max(v));
    let max_min = mins.iter().fold(0f32, |a, &v| a.max(v));
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut head[4..16];
    packed.fill(0);
    for j in 0..8 {
        let ls = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
        let lm = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d_bits = f32_to_f16_bits(max_scale / 63.0);
    let m_bits = f32_to_f16_bits(max_min / 63.0);
    head[0..2].copy_from_slice(&d_bits.to_le_bytes());
    head[2..4].copy_from_slice(&m_bits.to_le_bytes());
    let (d, dmin) = (f16_to_f32(d_bits), f16_to_f32(m_bits));
    let mut l = [0u8; QK_K];
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &head[4..16]);
        let dd = d * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dd).clamp(0, nmax as i32) as u8;
        }
    }
    l
}

/// Round-to-nearest Q6_K block (ggml's simple path: per-16 scale mapping the signed
/// extreme to -32, super-block scale mapping the signed extreme scale to -128).
fn encode_q6_k(x: &[f32], b: &mut [u8]) {
    let mut scales = [0f32; 16];
    for (ib, s) in scales.iter_mut().enumerate() {
        let sub = &x[16 * ib..16 * ib + 16];
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in sub {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        *s = if amax > 0.0 { max / -32.0 } else { 0.0 };
    }
    let (mut max_abs, mut max_scale) = (0f32, 0f32);
    for &s in &scales {
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    b.fill(0);
    if max_abs == 0.0 {
        return;
    }
    let iscale = -128.0 / max_scale;
    let d_bits = f32_to_f16_bits(1.0 / iscale);
    b[208..210].copy_from_slice(&d_bits.to_le_bytes());
    let d = f16_to_f32(d_bits);
    let mut sc = [0i8; 16];
    for (ib, s) in sc.iter_mut().enumerate() {
        *s = nearest_int(iscale * scales[ib]).clamp(-128, 127) as i8;
        b[192 + ib] = *s as u8;
    }
    let mut l = [32u8; QK_K];
    for j in 0..16 {
        let dd = d * sc[j] as f32;
        if dd == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / dd).clamp(-32, 31) + 32) as u8;
        }
    }
    for h in 0..2 {
        let lh = &l[128 * h..128 * h + 128];
        for i in 0..32 {
            let (q1, q2, q3, q4) = (lh[i], lh[i + 32], lh[i + 64], lh[i + 96]);
            b[64 * h + i] = (q1 & 15) | ((q3 & 15) << 4);
            b[64 * h + 32 + i] = (q2 & 15) | ((q4 & 15) << 4);
            b[128 + 32 * h + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}

/// Multiplies one packed row by `s` in place without re-encoding it: the f16 block scales
/// (d, and the min / dmin where the type has one) are scaled, the quants are untouched, so the
/// row decodes to `s ×` its old values up to one f16 rounding of each scaled scale (F16/BF16
/// elements are rounded once each; F32 is exact). Refuses a non-finite scale or one that
/// would overflow a block scale, leaving the row as it was.
pub fn scale_row(t: WeightType, row: &mut [u8], s: f32) -> Result<(), QuantError> {
    let mut out = row.to_vec();
    scale_row_into(t, &mut out, s)?;
    row.copy_from_slice(&out);
    Ok(())
}

fn scale_row_into(t: WeightType, row: &mut [u8], s: f32) -> Result<(), QuantError> {
    if !s.is_finite() {
        return Err(QuantError::Overflow("row scale (not finite)"));
    }
    if !row.len().is_multiple_of(t.type_size()) {
        return Err(QuantError::BufferLength {
            what: "packed row bytes",
            expected: row.len().next_multiple_of(t.type_size()),
            got: row.len(),
        });
    }
    if s == 1.0 {
        return Ok(());
    }
    let f16_at = |b: &mut [u8], off: usize| -> Result<(), QuantError> {
        let old = rd_f16(b, off);
        let new = old * s;
        if old.is_finite() && !new.is_finite() || new.abs() > 65504.0 {
            return Err(QuantError::Overflow("scaled f16 block scale"));
        }
        b[off..off + 2].copy_from_slice(&f32_to_f16_bits(new).to_le_bytes());
        Ok(())
    };
    match t {
        WeightType::F32 => {
            for c in row.chunks_exact_mut(4) {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * s;
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        WeightType::F16 => {
            for c in row.chunks_exact_mut(2) {
                f16_at(c, 0)?;
            }
        }
        WeightType::BF16 => {
            for c in row.chunks_exact_mut(2) {
                let v = bf16_to_f32(u16::from_le_bytes([c[0], c[1]])) * s;
                c.copy_from_slice(&f32_to_bf16_bits(v).to_le_bytes());
            }
        }
        WeightType::Q4_0 | WeightType::Q8_0 => {
            for b in row.chunks_exact_mut(t.type_size()) {
                f16_at(b, 0)?;
            }
        }
        WeightType::Q4_1 | WeightType::Q4_K | WeightType::Q5_K => {
            for b in row.chunks_exact_mut(t.type_size()) {
                f16_at(b, 0)?;
                f16_at(b, 2)?;
            }
        }
        WeightType::Q6_K => {
            for b in row.chunks_exact_mut(t.type_size()) {
                f16_at(b, 208)?;
            }
        }
    }
    Ok(())
}

/// ggml's Q8_K activation encoder (`f32 d; i8 qs[256]; i16 bsums[16]` per 256 elements,
/// [`Q8_K_BLOCK_BYTES`] bytes): `qs = min(127, nearest(-127 / max * x))` where `max` is the
/// signed element of largest magnitude, `d = 1 / (-127 / max)`.
pub fn quantize_row_q8_k(src: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    if !src.len().is_multiple_of(QK_K) {
        return Err(QuantError::NotBlockMultiple { what: "q8_K", n: src.len(), block: QK_K });
    }
    check_len("q8_K bytes", out.len(), src.len() / QK_K * Q8_K_BLOCK_BYTES)?;
    for (x, b) in src.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q8_K_BLOCK_BYTES)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        b.fill(0);
        if amax == 0.0 {
            continue;
        }
        let iscale = -127.0 / max;
        let mut qs = [0i8; QK_K];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        for (o, &q) in b[4..4 + QK_K].iter_mut().zip(&qs) {
            *o = q as u8;
        }
        for j in 0..16 {
            let s: i16 = qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
            b[4 + QK_K + 2 * j..4 + QK_K + 2 * j + 2].copy_from_slice(&s.to_le_bytes());
        }
    }
    Ok(())
}

/// Dequantizes ggml Q8_K bytes (`x = q * d`).
pub fn dequantize_row_q8_k(src: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    if !out.len().is_multiple_of(QK_K) {
        return Err(QuantError::NotBlockMultiple { what: "q8_K", n: out.len(), block: QK_K });
    }
    check_len("q8_K bytes", src.len(), out.len() / QK_K * Q8_K_BLOCK_BYTES)?;
    for (b, o) in src.chunks_exact(Q8_K_BLOCK_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for (o, &q) in o.iter_mut().zip(&b[4..4 + QK_K]) {
            *o = (q as i8) as f32 * d;
        }
    }
    Ok(())
}
