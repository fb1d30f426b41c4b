//! Test support shared by this crate's tests and the crates above it: a seeded RNG for
//! realistic random data, the one table of per-dtype error budgets, and a comparator that
//! checks abs/rel error per element, cosine similarity overall, and that ±∞/NaN positions
//! match exactly.

use crate::kv_view::KvDtype;

/// SplitMix64: small, seedable, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }
    /// Activation-like data: normal rows of width `dim` where a few channels (every
    /// `outlier_every`-th) are `outlier_scale` times larger, as in real K/V activations.
    pub fn activations(&mut self, n: usize, dim: usize, outlier_every: usize, outlier_scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let c = i % dim.max(1);
                let s = if outlier_every > 0 && c % outlier_every == 3 % outlier_every { outlier_scale } else { 1.0 };
                self.normal() * s
            })
            .collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Error budget of one comparison.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// |got − want| ≤ abs + rel·|want| per element.
    pub abs: f64,
    pub rel: f64,
    /// Minimum cosine similarity over the whole tensor.
    pub cos: f64,
}

/// The one table of error budgets for attention outputs against the f64 reference, by the
/// cache's element type. The reference sees the same rounded cache values, so these budget
/// the kernel's f32 arithmetic (online softmax, fast exp, summation order) only; storage
/// rounding is measured separately where a test compares dtypes ([`storage_tolerance`]).
pub fn tolerance(dtype: KvDtype) -> Tolerance {
    match dtype {
        KvDtype::F32 => Tolerance { abs: 2e-5, rel: 2e-4, cos: 0.999_999 },
        KvDtype::F16 => Tolerance { abs: 2e-5, rel: 2e-4, cos: 0.999_999 },
        KvDtype::Bf16 => Tolerance { abs: 2e-5, rel: 2e-4, cos: 0.999_999 },
        KvDtype::Fp8 | KvDtype::Int8 => Tolerance { abs: 2e-5, rel: 2e-4, cos: 0.999_999 },
    }
}

/// Compares `got` with `want`; Err describes the first violation.
pub fn compare(what: &str, got: &[f32], want: &[f64], tol: Tolerance) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} vs {}", got.len(), want.len()));
    }
    let (mut dot, mut ng, mut nw) = (0f64, 0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        if w.is_nan() || g.is_nan() || w.is_infinite() || g.is_infinite() {
            let same = (w.is_nan() && g.is_nan()) || (w.is_infinite() && g == w);
            if !same {
                return Err(format!("{what}[{i}]: got {g}, want {w} (inf/NaN positions must match)"));
            }
            continue;
        }
        if (g - w).abs() > tol.abs + tol.rel * w.abs() {
            return Err(format!(
                "{what}[{i}]: got {g}, want {w}, |diff| {:.3e} > {:.1e} + {:.1e}·|want|",
                (g - w).abs(),
                tol.abs,
                tol.rel
            ));
        }
        dot += g * w;
        ng += g * g;
        nw += w * w;
    }
    if ng > 0.0 && nw > 0.0 {
        let cos = dot / (ng.sqrt() * nw.sqrt());
        if cos < tol.cos {
            return Err(format!("{what}: cosine {cos:.9} < {}", tol.cos));
        }
    } else if ng != nw {
        return Err(format!("{what}: one side is all zeros (‖got‖² {ng}, ‖want‖² {nw})"));
    }
    Ok(())
}

/// Largest |got − want| (finite entries).
pub fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .filter(|(g, w)| g.is_finite() && w.is_finite())
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// The error budget of attention outputs against exact f32 data when the cache stores
/// `dtype` (storage rounding included), for unit-variance activation-like data with outlier
/// channels. Measured values are reported by the tests that use it.
pub fn storage_tolerance(dtype: KvDtype) -> Tolerance {
    match dtype {
        KvDtype::F32 => Tolerance { abs: 2e-5, rel: 2e-4, cos: 0.999_999 },
        KvDtype::F16 => Tolerance { abs: 2e-3, rel: 5e-3, cos: 0.999_99 },
        KvDtype::Bf16 => Tolerance { abs: 2e-2, rel: 5e-2, cos: 0.999_5 },
        KvDtype::Fp8 => Tolerance { abs: 2e-1, rel: 2e-1, cos: 0.999 },
        // An outlier channel sets the step of its whole 128-element group; prefill rows that
        // see few keys pass that through (measured max 6–7e-2 on the kv crate's data).
        KvDtype::Int8 => Tolerance { abs: 8e-2, rel: 1e-1, cos: 0.999_5 },
    }
}
