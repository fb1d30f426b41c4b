//! Matmul against an f64 reference built from the reference dequantizer, for every type,
//! every kernel variant this CPU has, both precisions and hostile sizes.
//!
//! Tolerances are relative to `S = sum_k |x[t,k]| |w[n,k]|` of each output:
//! * Exact: `|y - y_f64| <= 1e-5 * S` (f32 accumulation of K <= 1536 products; a single
//!   wrong or missing element is ~S / K >= 6.5e-4 * S, far above it).
//! * Fast, against both the f64 reference and the same variant's exact path:
//!   `|y - y_ref| <= 1e-2 * S` for activation rows of uniform data, and for every row
//!   (including rows with a 20x outlier, which coarsens its block's step) the rounding bound
//!   `|y - y_f64| <= 1.01 * B + 1e-5 * S` with `B = sum_blocks amax_b / 254 * sum_b |w|`:
//!   8-bit activations are off by at most half a step (amax / 254) of their block.
//! * Fast, SIMD variant vs scalar variant: `<= 1e-5 * S` (identical integer block sums;
//!   only the order of the f32 accumulation differs).

mod common;

use common::{dequant_matrix, ks_for, max_rel_err, random_acts, random_matrix, ref_matmul, Rng};
use latent_quant::{
    matmul, matmul_isa, matmul_par, matmul_prepared_rows, matmul_rows, matmul_rows_with, prepare_input, Isa,
    MatmulPrecision, QMatrix, Variant, WeightType,
};

const TS: [usize; 6] = [1, 2, 3, 7, 64, 65];
const NS: [usize; 5] = [1, 3, 63, 127, 256];
const EXACT_TOL: f64 = 1e-5;
const FAST_TOL: f64 = 1e-2;
const FAST_TWIN_TOL: f64 = 1e-5;

/// The fast-path checks described in the module comment.
#[allow(clippy::too_many_arguments)]
fn check_fast(
    y: &[f32],
    want: &[f64],
    scale: &[f64],
    x: &[f32],
    wf: &[f32],
    (n, k, tt): (usize, usize, usize),
    t: WeightType,
    slack: f64,
    what: &str,
) {
    let ab = if t.is_k_quant() { 256 } else { 32 };
    for ti in 0..tt {
        let xr = &x[ti * k..(ti + 1) * k];
        let outlier = xr.iter().any(|v| v.abs() > 1.0);
        for ni in 0..n {
            let wr = &wf[ni * k..(ni + 1) * k];
            let i = ti * n + ni;
            let err = (y[i] as f64 - want[i]).abs();
            let mut bound = 0f64;
            for (xb, wb) in xr.chunks(ab).zip(wr.chunks(ab)) {
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                let wsum: f64 = wb.iter().map(|v| v.abs() as f64).sum();
                bound += amax / 254.0 * wsum;
            }
            assert!(
                err <= 1.01 * bound + slack * scale[i],
                "{what}: y[{ti},{ni}] error {err:e} > rounding bound {bound:e}"
            );
            if !outlier {
                let rel = err / (scale[i] + 1e-30);
                assert!(rel <= FAST_TOL, "{what}: y[{ti},{ni}] relative error {rel:e}");
            }
        }
    }
}

fn run_type(t: WeightType) {
    let mut rng = Rng(0x5eed ^ t.ggml_id() as u64);
    let variants = Variant::available();
    for k in ks_for(t) {
        for n in NS {
            let data = random_matrix(t, n, k, &mut rng);
            let w = QMatrix::new(t, n, k, &data).unwrap();
            let wf = dequant_matrix(t, &data, n, k);
            for tt in TS {
                let x = random_acts(tt, k, &mut rng);
                let (want, scale) = ref_matmul(&wf, &x, n, k, tt);
                let mut scalar_fast: Option<Vec<f32>> = None;
                for &v in &variants {
                    let mut exact_y: Vec<f64> = Vec::new();
                    for p in [MatmulPrecision::Exact, MatmulPrecision::Fast] {
                        let mut y = vec![f32::NAN; tt * n];
                        matmul_rows_with(v, p, &w, &x, &mut y, tt, 0..n).unwrap();
                        let what = format!("{t} {v:?} {p:?} t={tt} n={n} k={k}");
                        let e = max_rel_err(&y, &want, &scale, &what);
                        if p == MatmulPrecision::Exact || !t.is_quantized() {
                            assert!(e <= EXACT_TOL, "{what}: relative error {e:e}");
                            exact_y = y.iter().map(|&v| v as f64).collect();
                        } else {
                            // Against the f64 reference, and against this variant's exact path.
                            check_fast(&y, &want, &scale, &x, &wf, (n, k, tt), t, 1e-5, &what);
                            let what_e = format!("{what} (vs exact)");
                            check_fast(&y, &exact_y, &scale, &x, &wf, (n, k, tt), t, 1e-5 + EXACT_TOL, &what_e);
                        }
                        if p == MatmulPrecision::Fast {
                            match &scalar_fast {
                                None => scalar_fast = Some(y),
                                Some(s) => {
                                    let s64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
                                    let e = max_rel_err(&y, &s64, &scale, &what);
                                    assert!(e <= FAST_TWIN_TOL, "{what}: differs from scalar fast path by {e:e}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn f32_weights() {
    run_type(WeightType::F32);
}
#[test]
fn f16_weights() {
    run_type(WeightType::F16);
}
#[test]
fn bf16_weights() {
    run_type(WeightType::BF16);
}
#[test]
fn q4_0_weights() {
    run_type(WeightType::Q4_0);
}
#[test]
fn q4_1_weights() {
    run_type(WeightType::Q4_1);
}
#[test]
fn q8_0_weights() {
    run_type(WeightType::Q8_0);
}
#[test]
fn q4_k_weights() {
    run_type(WeightType::Q4_K);
}
#[test]
fn q5_k_weights() {
    run_type(WeightType::Q5_K);
}
#[test]
fn q6_k_weights() {
    run_type(WeightType::Q6_K);
}

/// Float weights with K not a multiple of any SIMD width.
#[test]
fn float_weights_odd_k() {
    let mut rng = Rng(77);
    for t in [WeightType::F32, WeightType::F16, WeightType::BF16] {
        for k in [1usize, 5, 17, 31, 33, 100] {
            let n = 9;
            let data = random_matrix(t, n, k, &mut rng);
            let w = QMatrix::new(t, n, k, &data).unwrap();
            let wf = dequant_matrix(t, &data, n, k);
            // t <= 4 and t > 4 take different kernels (register-decoded vs dequantized panel).
            for tt in [1usize, 4, 5] {
                let x = random_acts(tt, k, &mut rng);
                let (want, scale) = ref_matmul(&wf, &x, n, k, tt);
                for v in Variant::available() {
                    for p in [MatmulPrecision::Exact, MatmulPrecision::Fast] {
                        let mut y = vec![f32::NAN; tt * n];
                        matmul_rows_with(v, p, &w, &x, &mut y, tt, 0..n).unwrap();
                        let what = format!("{t} {v:?} {p:?} k={k} t={tt}");
                        let e = max_rel_err(&y, &want, &scale, &what);
                        assert!(e <= EXACT_TOL, "{what}: {e:e}");
                    }
                }
            }
        }
    }
}

/// Row ranges write exactly their columns of `y`; the threaded and prepared entry points
/// give the same bits as the single call.
#[test]
fn row_ranges_threads_and_prepared() {
    let mut rng = Rng(4242);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    for t in [WeightType::Q4_1, WeightType::Q8_0, WeightType::Q6_K, WeightType::F16] {
        let (n, k) = (203usize, 512usize);
        let data = random_matrix(t, n, k, &mut rng);
        let w = QMatrix::new(t, n, k, &data).unwrap();
        for tt in [1usize, 6] {
            let x = random_acts(tt, k, &mut rng);
            for p in [MatmulPrecision::Exact, MatmulPrecision::Fast] {
                let mut full = vec![f32::NAN; tt * n];
                matmul(p, &w, &x, &mut full, tt).unwrap();
                assert!(full.iter().all(|v| v.is_finite()));

                let mut part = vec![f32::NAN; tt * n];
                matmul_rows(p, &w, &x, &mut part, tt, 17..101).unwrap();
                for ti in 0..tt {
                    for ni in 0..n {
                        let v = part[ti * n + ni];
                        if (17..101).contains(&ni) {
                            assert_eq!(v.to_bits(), full[ti * n + ni].to_bits());
                        } else {
                            assert!(v.is_nan(), "{t} {p:?}: y[{ti},{ni}] written outside range");
                        }
                    }
                }

                let mut par = vec![f32::NAN; tt * n];
                matmul_par(&pool, p, &w, &x, &mut par, tt).unwrap();
                assert_eq!(
                    par.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    full.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{t} {p:?}: matmul_par differs"
                );

                let input = prepare_input(p, t, &x, tt, k).unwrap();
                let mut prep = vec![f32::NAN; tt * n];
                matmul_prepared_rows(&w, &input, &mut prep, 0..100).unwrap();
                matmul_prepared_rows(&w, &input, &mut prep, 100..n).unwrap();
                assert_eq!(
                    prep.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    full.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{t} {p:?}: prepared rows differ"
                );
            }
        }
    }
}

#[test]
fn isa_entry_point() {
    let mut rng = Rng(5);
    let (n, k, tt) = (10usize, 576usize, 2usize);
    let data = random_matrix(WeightType::Q8_0, n, k, &mut rng);
    let w = QMatrix::new(WeightType::Q8_0, n, k, &data).unwrap();
    let x = random_acts(tt, k, &mut rng);
    let mut base = vec![0f32; tt * n];
    matmul_isa(Isa::Scalar, MatmulPrecision::Exact, &w, &x, &mut base, tt).unwrap();
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Amx, Isa::Neon] {
        let mut y = vec![f32::NAN; tt * n];
        let r = matmul_isa(isa, MatmulPrecision::Exact, &w, &x, &mut y, tt);
        if Isa::available().contains(&isa) {
            r.unwrap();
            for (a, b) in y.iter().zip(&base) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0));
            }
        } else {
            assert!(r.is_err(), "{isa:?} should be unavailable");
        }
    }
    // Every available Isa maps to a variant of that level (the AMX level adds attention
    // tiles only; its weights run on the AVX-512 variants).
    for isa in Isa::available() {
        let level = if isa == Isa::Amx { Isa::Avx512 } else { isa };
        assert_eq!(Variant::for_isa(isa).unwrap().isa(), level);
    }
    assert!(Variant::available().contains(&Variant::best()));
}

/// The fast path really is quantized: it differs from the exact one (by a little).
#[test]
fn fast_path_is_quantized() {
    let mut rng = Rng(6);
    let (n, k) = (16usize, 256usize);
    for t in [WeightType::Q4_0, WeightType::Q4_K] {
        let data = random_matrix(t, n, k, &mut rng);
        let w = QMatrix::new(t, n, k, &data).unwrap();
        let x = random_acts(1, k, &mut rng);
        let mut ye = vec![0f32; n];
        let mut yf = vec![0f32; n];
        matmul(MatmulPrecision::Exact, &w, &x, &mut ye, 1).unwrap();
        matmul(MatmulPrecision::Fast, &w, &x, &mut yf, 1).unwrap();
        assert_ne!(ye, yf, "{t}");
    }
}

/// Batch invariance: an activation row's outputs are bit-identical whatever other rows share
/// the call (1 row, many, at any offset of the batch), for every type, variant and precision,
/// and through every entry point a model uses (plain, row-split, threaded, prepared).
#[test]
fn rows_are_batch_invariant() {
    let types = [
        WeightType::F32,
        WeightType::F16,
        WeightType::BF16,
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q8_0,
        WeightType::Q4_K,
        WeightType::Q5_K,
        WeightType::Q6_K,
    ];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let mut rng = Rng(0xba7c4);
    let mut fails = Vec::new();
    for t in types {
        let k = *ks_for(t).last().unwrap();
        let n = 67;
        let data = random_matrix(t, n, k, &mut rng);
        let w = QMatrix::new(t, n, k, &data).unwrap();
        let tt = 37;
        let x = random_acts(tt, k, &mut rng);
        for v in Variant::available() {
            for p in [MatmulPrecision::Exact, MatmulPrecision::Fast] {
                let what = format!("{t} {v:?} {p:?}");
                let mut all = vec![f32::NAN; tt * n];
                matmul_rows_with(v, p, &w, &x, &mut all, tt, 0..n).unwrap();
                // Each row alone, and sub-batches of several sizes at every offset.
                for (size, step) in [(1, 1), (2, 3), (5, 4), (9, 7), (16, 5)] {
                    for r0 in (0..tt - size + 1).step_by(step) {
                        let mut y = vec![f32::NAN; size * n];
                        matmul_rows_with(v, p, &w, &x[r0 * k..(r0 + size) * k], &mut y, size, 0..n).unwrap();
                        for (i, (a, b)) in y.iter().zip(&all[r0 * n..(r0 + size) * n]).enumerate() {
                            if a.to_bits() != b.to_bits() {
                                fails.push(format!(
                                    "{what}: row {} col {} alone in {size} rows: {a} vs {b} in {tt}",
                                    r0 + i / n,
                                    i % n
                                ));
                                break;
                            }
                        }
                    }
                }
                if v != Variant::best() {
                    continue;
                }
                // The threaded and prepared entry points the models call.
                let mut par = vec![f32::NAN; tt * n];
                matmul_par(&pool, p, &w, &x, &mut par, tt).unwrap();
                if !par.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits()) {
                    fails.push(format!("{what}: matmul_par"));
                }
                for r in 0..tt {
                    let xr = &x[r * k..(r + 1) * k];
                    let input = prepare_input(p, t, xr, 1, k).unwrap();
                    let mut y = vec![f32::NAN; n];
                    matmul_prepared_rows(&w, &input, &mut y, 0..21).unwrap();
                    let mut rest = vec![f32::NAN; n - 21];
                    let rb = t.row_bytes(k).unwrap();
                    let sub = QMatrix::new(t, n - 21, k, &data[21 * rb..]).unwrap();
                    matmul_prepared_rows(&sub, &input, &mut rest, 0..n - 21).unwrap();
                    y[21..].copy_from_slice(&rest);
                    let want = &all[r * n..(r + 1) * n];
                    if !y.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()) {
                        fails.push(format!("{what}: prepared row {r}"));
                        break;
                    }
                }
            }
        }
    }
    assert!(fails.is_empty(), "{} rows differ:\n{}", fails.len(), fails.join("\n"));
}
