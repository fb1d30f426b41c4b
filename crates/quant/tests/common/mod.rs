//! Shared helpers of the integration tests: a deterministic RNG, random (but well-formed)
//! packed rows of every type, and an f64 reference matmul built on `dequantize_row_ref`.
#![allow(dead_code)]

use latent_quant::{dequantize_row_ref, WeightType};

/// SplitMix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-a, a).
    pub fn sym(&mut self, a: f32) -> f32 {
        (2.0 * self.unit() - 1.0) * a
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// A sane, finite, non-zero f16 scale with random sign: |d| in [2^-10, 2^-4].
fn rand_scale(rng: &mut Rng) -> [u8; 2] {
    let e = -10.0 + 6.0 * rng.unit();
    let s = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
    f16_bytes(s * e.exp2())
}

/// A random packed row of `k` elements: random quant bytes, sane scales.
pub fn random_row(t: WeightType, k: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = vec![0u8; t.row_bytes(k).unwrap()];
    rng.fill(&mut out);
    match t {
        WeightType::F32 => {
            for c in out.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.sym(1.0).to_le_bytes());
            }
        }
        WeightType::F16 => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&f16_bytes(rng.sym(2.0)));
            }
        }
        WeightType::BF16 => {
            for c in out.chunks_exact_mut(2) {
                let v = half::bf16::from_f32(rng.sym(2.0)).to_bits();
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        WeightType::Q4_0 | WeightType::Q8_0 => {
            for b in out.chunks_exact_mut(t.type_size()) {
                b[0..2].copy_from_slice(&rand_scale(rng));
            }
        }
        WeightType::Q4_1 | WeightType::Q4_K | WeightType::Q5_K => {
            for b in out.chunks_exact_mut(t.type_size()) {
                b[0..2].copy_from_slice(&rand_scale(rng));
                b[2..4].copy_from_slice(&rand_scale(rng));
            }
        }
        WeightType::Q6_K => {
            for b in out.chunks_exact_mut(210) {
                b[208..210].copy_from_slice(&rand_scale(rng));
            }
        }
    }
    out
}

/// A random matrix `[n, k]`.
pub fn random_matrix(t: WeightType, n: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * t.row_bytes(k).unwrap());
    for _ in 0..n {
        v.extend(random_row(t, k, rng));
    }
    v
}

/// Random activations `[t, k]` in [-1, 1], with an outlier in some rows and (for t > 2)
/// one all-zero row.
pub fn random_acts(t: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..t * k).map(|_| rng.sym(1.0)).collect();
    for r in 0..t {
        if r % 3 == 1 {
            let i = rng.below(k);
            x[r * k + i] = 20.0;
        }
    }
    if t > 2 {
        x[2 * k..3 * k].fill(0.0);
    }
    x
}

/// Dequantized weights `[n, k]` through the reference twin.
pub fn dequant_matrix(t: WeightType, data: &[u8], n: usize, k: usize) -> Vec<f32> {
    let rb = t.row_bytes(k).unwrap();
    let mut w = vec![0f32; n * k];
    for r in 0..n {
        dequantize_row_ref(t, &data[r * rb..(r + 1) * rb], &mut w[r * k..(r + 1) * k]).unwrap();
    }
    w
}

/// f64 reference: returns (y, scale) with `y[t, n] = sum_k x w` and
/// `scale[t, n] = sum_k |x| |w|`.
pub fn ref_matmul(w: &[f32], x: &[f32], n: usize, k: usize, t: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; t * n];
    let mut s = vec![0f64; t * n];
    for ti in 0..t {
        let xr = &x[ti * k..(ti + 1) * k];
        for ni in 0..n {
            let wr = &w[ni * k..(ni + 1) * k];
            let (mut acc, mut mag) = (0f64, 0f64);
            for (a, b) in xr.iter().zip(wr) {
                let p = *a as f64 * *b as f64;
                acc += p;
                mag += p.abs();
            }
            y[ti * n + ni] = acc;
            s[ti * n + ni] = mag;
        }
    }
    (y, s)
}

/// Largest `|got - want| / (scale + tiny)`; panics on a non-finite output.
pub fn max_rel_err(got: &[f32], want: &[f64], scale: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut worst = 0f64;
    for i in 0..got.len() {
        assert!(got[i].is_finite(), "{what}: y[{i}] = {} not finite", got[i]);
        let e = (got[i] as f64 - want[i]).abs() / (scale[i] + 1e-30);
        if e > worst {
            worst = e;
        }
    }
    worst
}

/// K values from {32, 576, 256, 1536} that the type's block size allows.
pub fn ks_for(t: WeightType) -> Vec<usize> {
    [32usize, 576, 256, 1536].into_iter().filter(|k| k % t.block_size() == 0).collect()
}
