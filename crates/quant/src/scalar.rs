//! Portable kernels (the scalar variant of the dispatch table, and the building blocks other
//! variants fall back to). Integer dot products here define the "fast" path's math exactly.

use crate::acts::ActRow;
use crate::fp::{bf16_bytes_to_f32, f16_bytes_to_f32, f32_bytes_to_f32, rd_f16};
use crate::reference::{dequant_ref_unchecked, scale_min_k4};
use crate::types::WeightType;
use crate::MAX_TILE;

/// Dequantizes a row whose lengths were validated.
pub(crate) fn dequant(t: WeightType, src: &[u8], out: &mut [f32]) {
    match t {
        WeightType::F32 => f32_bytes_to_f32(src, out),
        WeightType::F16 => f16_bytes_to_f32(src, out),
        WeightType::BF16 => bf16_bytes_to_f32(src, out),
        _ => dequant_ref_unchecked(t, src, out),
    }
}

/// f32 dot product with 8 independent partial sums.
#[inline(always)]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Exact-path tile: `out[r][t] = dot(w row r, x row t)` for `r < nr`, `t < nt`; rows of
/// both operands have stride `k`.
pub(crate) fn tile(w: &[f32], nr: usize, x: &[f32], nt: usize, k: usize, out: &mut [[f32; MAX_TILE]; MAX_TILE]) {
    for r in 0..nr {
        for t in 0..nt {
            out[r][t] = dot_f32(&w[r * k..(r + 1) * k], &x[t * k..(t + 1) * k]);
        }
    }
}

/// `sum(q * a)` of one 32-block with 4-bit unsigned quants packed ggml-style.
#[inline(always)]
pub(crate) fn nib_dot(qs: &[u8], a: &[i8], offset: i32) -> i32 {
    let mut s = 0i32;
    for j in 0..16 {
        let q = qs[j];
        s += ((q & 0x0f) as i32 - offset) * a[j] as i32;
        s += ((q >> 4) as i32 - offset) * a[j + 16] as i32;
    }
    s
}

/// One Q4_0 block against one activation block.
#[inline(always)]
pub(crate) fn q4_0_block(blk: &[u8], a: &[i8], dx: f32) -> f32 {
    rd_f16(blk, 0) * dx * nib_dot(&blk[2..18], a, 8) as f32
}

/// One Q4_1 block against one activation block (`s` = activation `d * sum(q)`).
#[inline(always)]
pub(crate) fn q4_1_block(blk: &[u8], a: &[i8], dx: f32, s: f32) -> f32 {
    rd_f16(blk, 0) * dx * nib_dot(&blk[4..20], a, 0) as f32 + rd_f16(blk, 2) * s
}

/// One Q8_0 block against one activation block.
#[inline(always)]
pub(crate) fn q8_0_block(blk: &[u8], a: &[i8], dx: f32) -> f32 {
    let mut s = 0i32;
    for j in 0..32 {
        s += (blk[2 + j] as i8) as i32 * a[j] as i32;
    }
    rd_f16(blk, 0) * dx * s as f32
}

fn dot_row(t: WeightType, w: &[u8], r: &ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    match t {
        WeightType::Q4_0 => {
            for (b, blk) in w.chunks_exact(18).enumerate() {
                acc += q4_0_block(blk, &r.qs[32 * b..32 * b + 32], r.d[b]);
            }
        }
        WeightType::Q4_1 => {
            for (b, blk) in w.chunks_exact(20).enumerate() {
                acc += q4_1_block(blk, &r.qs[32 * b..32 * b + 32], r.d[b], r.s[b]);
            }
        }
        WeightType::Q8_0 => {
            for (b, blk) in w.chunks_exact(34).enumerate() {
                acc += q8_0_block(blk, &r.qs[32 * b..32 * b + 32], r.d[b]);
            }
        }
        WeightType::Q4_K | WeightType::Q5_K => {
            let five = t == WeightType::Q5_K;
            let bsize = if five { 176 } else { 144 };
            for (sb, blk) in w.chunks_exact(bsize).enumerate() {
                let d = rd_f16(blk, 0);
                let dmin = rd_f16(blk, 2);
                let scales = &blk[4..16];
                let (qh, qs) = if five { (&blk[16..48], &blk[48..176]) } else { (&blk[0..0], &blk[16..144]) };
                let a = &r.qs[256 * sb..256 * sb + 256];
                let bs = &r.bsums[16 * sb..16 * sb + 16];
                let (mut sumi, mut summ) = (0i32, 0i32);
                for c in 0..4 {
                    for h in 0..2 {
                        let j = 2 * c + h;
                        let (sc, m) = scale_min_k4(j, scales);
                        let mut s = 0i32;
                        for l in 0..32 {
                            let mut q = (qs[32 * c + l] >> (4 * h)) & 0x0f;
                            if five && qh[l] & (1 << j) != 0 {
                                q += 16;
                            }
                            s += q as i32 * a[32 * j + l] as i32;
                        }
                        sumi += sc as i32 * s;
                        summ += m as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
                    }
                }
                let dx = r.d[sb];
                acc += d * dx * sumi as f32 - dmin * dx * summ as f32;
            }
        }
        WeightType::Q6_K => {
            for (sb, blk) in w.chunks_exact(210).enumerate() {
                let d = rd_f16(blk, 208);
                let a = &r.qs[256 * sb..256 * sb + 256];
                let bs = &r.bsums[16 * sb..16 * sb + 16];
                let mut sumi = 0i32;
                for h in 0..2 {
                    let ql = &blk[64 * h..64 * h + 64];
                    let qh = &blk[128 + 32 * h..128 + 32 * h + 32];
                    for g in 0..8 {
                        // 16-element group g of this 128-half: quarter g / 2, lanes 16 * (g % 2)..
                        let quarter = g / 2;
                        let mut s = 0i32;
                        for i in 0..16 {
                            let l = 16 * (g % 2) + i;
                            let lo = match quarter {
                                0 => ql[l] & 0x0f,
                                1 => ql[l + 32] & 0x0f,
                                2 => ql[l] >> 4,
                                _ => ql[l + 32] >> 4,
                            };
                            let q = lo | (((qh[l] >> (2 * quarter)) & 3) << 4);
                            s += q as i32 * a[128 * h + 16 * g + i] as i32;
                        }
                        let gi = 8 * h + g;
                        let sc = blk[192 + gi] as i8 as i32;
                        sumi += sc * (s - 32 * bs[gi] as i32);
                    }
                }
                acc += d * r.d[sb] * sumi as f32;
            }
        }
        WeightType::F32 | WeightType::F16 | WeightType::BF16 => {
            unreachable!("float weights take the exact path")
        }
    }
    acc
}

/// Fast-path dots of weight rows (`rb` bytes each) with up to [`MAX_TILE`] activation rows;
/// `out[row * MAX_TILE + t]`.
pub(crate) fn fast_dot(t: WeightType, w: &[u8], rb: usize, rows: &[ActRow<'_>], out: &mut [f32]) {
    for (wr, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(MAX_TILE)) {
        for (o, r) in o.iter_mut().zip(rows) {
            *o = dot_row(t, wr, r);
        }
    }
}
