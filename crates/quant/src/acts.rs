//! On-the-fly 8-bit quantization of activation rows for the integer ("fast") matmul path.
//!
//! Layout is structure-of-arrays per call: all `t` rows' int8 values back to back, then the
//! per-block scales and sums. Every kernel variant produces bit-identical activations (the
//! same IEEE operations in the same order, round-half-to-even), so integer dot products agree
//! exactly across variants.
//!
//! * 32-element blocks (for Q4_0/Q4_1/Q8_0 weights, like ggml's Q8_0/Q8_1):
//!   `d = amax / 127`, `q = round(x / d)`, plus `s = d * sum(q)` per block.
//! * 256-element blocks (for K-quant weights, like ggml's Q8_K): same scaling with `d` per
//!   256, plus `bsums`: the sum of each 16 consecutive `q`.

use crate::types::{QK, QK_K};

/// Quantized activations of `t` rows of `k` elements each.
#[derive(Clone, Debug, Default)]
pub struct Q8Acts {
    pub(crate) block: usize,
    pub(crate) t: usize,
    pub(crate) k: usize,
    pub(crate) qs: Vec<i8>,
    pub(crate) d: Vec<f32>,
    /// 32-blocks: each block's `d` repeated 8 times (one per i32 lane of its dot), filled by
    /// [`Q8Acts::spread_scales`] for the kernels that scale two blocks per register.
    pub(crate) d8: Vec<f32>,
    /// 32-blocks: `d * sum(q)` per block.
    pub(crate) s: Vec<f32>,
    /// 256-blocks: sum of each 16 `q`.
    pub(crate) bsums: Vec<i16>,
}

/// One activation row as the dot kernels see it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    /// Each block's `d` × 8 (32-blocks, when spread; else empty).
    pub d8: &'a [f32],
    pub s: &'a [f32],
    pub bsums: &'a [i16],
}

impl Q8Acts {
    /// Zero-filled storage for `t` rows of `k` elements in `block`-sized blocks.
    pub(crate) fn alloc(block: usize, t: usize, k: usize) -> Q8Acts {
        debug_assert!(block == QK || block == QK_K);
        debug_assert_eq!(k % block, 0);
        let nb = t * (k / block);
        Q8Acts {
            block,
            t,
            k,
            qs: vec![0; t * k],
            d: vec![0.0; nb],
            d8: Vec::new(),
            s: if block == QK { vec![0.0; nb] } else { Vec::new() },
            bsums: if block == QK_K { vec![0; t * k / 16] } else { Vec::new() },
        }
    }

    pub(crate) fn row(&self, t: usize) -> ActRow<'_> {
        let nb = self.k / self.block;
        ActRow {
            qs: &self.qs[t * self.k..(t + 1) * self.k],
            d: &self.d[t * nb..(t + 1) * nb],
            d8: if self.d8.is_empty() { &[] } else { &self.d8[t * nb * 8..(t + 1) * nb * 8] },
            s: if self.block == QK { &self.s[t * nb..(t + 1) * nb] } else { &[] },
            bsums: if self.block == QK_K { &self.bsums[t * self.k / 16..(t + 1) * self.k / 16] } else { &[] },
        }
    }

    /// Fills `d8` from `d` (32-blocks only).
    pub(crate) fn spread_scales(&mut self) {
        if self.block == QK {
            self.d8 = self.d.iter().flat_map(|&d| [d; 8]).collect();
        }
    }

    /// Rows quantized.
    pub fn rows(&self) -> usize {
        self.t
    }

    /// Elements per row.
    pub fn cols(&self) -> usize {
        self.k
    }
}

/// Quantizes one block; returns its scale. Written so that the compiler vectorizes it when
/// inlined into a function compiled for a wider instruction set.
#[inline(always)]
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    // Eight running maxima (lane-wise, so the compiler keeps them in one register) folded
    // at the end: max is exact and order-free, so this is the plain loop's result.
    let mut m = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (mj, &v) in m.iter_mut().zip(c) {
            *mj = mj.max(v.abs());
        }
    }
    let mut amax = chunks.remainder().iter().fold(0f32, |a, v| a.max(v.abs()));
    for mj in m {
        amax = amax.max(mj);
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = (v * id).round_ties_even() as i8;
    }
    d
}

/// Fills `acts` (already allocated for `x.len() / acts.k` rows) from `x`.
#[inline(always)]
pub(crate) fn quantize_acts_body(x: &[f32], acts: &mut Q8Acts) {
    let block = acts.block;
    for (bi, (xb, qb)) in x.chunks_exact(block).zip(acts.qs.chunks_exact_mut(block)).enumerate() {
        let d = quantize_block(xb, qb);
        acts.d[bi] = d;
        if block == QK {
            let sum: i32 = qb.iter().map(|&q| q as i32).sum();
            acts.s[bi] = d * sum as f32;
        } else {
            for (j, c) in qb.chunks_exact(16).enumerate() {
                acts.bsums[bi * 16 + j] = c.iter().map(|&q| q as i16).sum();
            }
        }
    }
}

/// Portable activation quantizer (the table entry of the scalar variant).
pub(crate) fn quantize_acts_scalar(x: &[f32], acts: &mut Q8Acts) {
    quantize_acts_body(x, acts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::Variant;

    /// Every variant's quantizer against the portable twin, bit for bit: both block sizes,
    /// rows of random data with outliers, an all-zero block (d = 0), tiny and huge values,
    /// and values on rounding ties (k + 0.5 steps).
    #[test]
    fn every_variant_quantizes_bit_identically() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for &block in &[QK, QK_K] {
            for &(t, k) in &[(1usize, 256usize), (3, 576), (3, 768), (2, 1536), (5, 512), (1, 32)] {
                if k % block != 0 {
                    continue; // a row is whole blocks of the weight's block size
                }
                let mut x: Vec<f32> = (0..t * k).map(|_| rnd()).collect();
                x[7] *= 40.0; // outlier
                let nb = t * k / block;
                if nb >= 2 {
                    x[block..2 * block].fill(0.0); // a zero block
                }
                if nb >= 3 {
                    for v in &mut x[2 * block..3 * block] {
                        *v *= 1e-30; // tiny (normal) values
                    }
                }
                if nb >= 4 {
                    // Ties: a block whose amax is 127 steps of 1, values k + 0.5.
                    let b = &mut x[3 * block..4 * block];
                    b[0] = 127.0;
                    for (i, v) in b.iter_mut().enumerate().skip(1) {
                        *v = (i as f32 % 100.0) - 49.5;
                    }
                }
                let mut want = Q8Acts::alloc(block, t, k);
                quantize_acts_scalar(&x, &mut want);
                for v in Variant::available() {
                    let Ok(kern) = v.kernels() else { continue };
                    let mut got = Q8Acts::alloc(block, t, k);
                    (kern.quant_acts)(&x, &mut got);
                    let what = format!("{} block {block} t {t} k {k}", v.name());
                    assert_eq!(got.qs, want.qs, "{what}: qs");
                    assert_eq!(
                        got.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{what}: d"
                    );
                    assert_eq!(
                        got.s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{what}: s"
                    );
                    assert_eq!(got.bsums, want.bsums, "{what}: bsums");
                }
            }
        }
    }
}
