//! Interleaved (16-row) packed Q4_0/Q4_1 (fast path) and Q8_0 (exact path) weights: every variant bit-identical to the
//! portable twin, and all of them within the fast path's tolerance of the file-layout
//! kernels (same integer block sums; only the f32 accumulation order differs) on hostile
//! sizes, row ranges, activation-row counts and NaN-poisoned outputs.

mod common;

use common::{random_acts, random_matrix, Rng};
use latent_quant::{
    matmul_packed_par, matmul_packed_rows, matmul_packed_rows_with, matmul_rows_with, prepare_input, MatmulPrecision,
    PackedMatrix, QMatrix, Variant, WeightType, PACK_ROWS,
};

#[test]
fn packed_matches_twin_bitwise_and_file_layout_closely() {
    let mut rng = Rng(41);
    for wt in [WeightType::Q4_1, WeightType::Q4_0, WeightType::Q8_0] {
        // Q8_0 runs on the exact path (f32 activations), the 4-bit types on the fast one.
        let prec = if wt == WeightType::Q8_0 { MatmulPrecision::Exact } else { MatmulPrecision::Fast };
        for &n in &[1usize, 3, 16, 17, 63, 127] {
            for &k in &[32usize, 96, 576] {
                let data = random_matrix(wt, n, k, &mut rng);
                let m = QMatrix::new(wt, n, k, &data).unwrap();
                let p = PackedMatrix::pack(&m).unwrap().expect("packable");
                let block = if wt == WeightType::Q8_0 { 544 } else { 320 };
                assert_eq!(p.bytes(), n.div_ceil(PACK_ROWS) * k / 32 * block);
                // Row lookups from the packed copy equal the file rows' dequantization.
                for r in 0..n {
                    let (mut a, mut b) = (vec![f32::NAN; k], vec![f32::NAN; k]);
                    p.dequantize_row(r, &mut a).unwrap();
                    latent_quant::dequantize_row_ref(wt, m.row(r), &mut b).unwrap();
                    assert_eq!(
                        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{wt:?} row {r}"
                    );
                }
                assert!(p.dequantize_row(n, &mut vec![0f32; k]).is_err());
                for &t in &[1usize, 2, 3, 4, 5, 9] {
                    let x = random_acts(t, k, &mut rng);
                    let input = prepare_input(prec, wt, &x, t, k).unwrap();
                    // File layout, scalar twin.
                    let mut want = vec![f32::NAN; t * n];
                    matmul_rows_with(Variant::Scalar, prec, &m, &x, &mut want, t, 0..n).unwrap();
                    let mut twin = vec![f32::NAN; t * n];
                    matmul_packed_rows_with(Variant::Scalar, &p, &input, &mut twin, 0..n).unwrap();
                    // Scale of each output: sum |x| |w| bounds the accumulation error.
                    let mut wf = vec![0f32; n * k];
                    for r in 0..n {
                        latent_quant::dequantize_row_ref(wt, m.row(r), &mut wf[r * k..(r + 1) * k]).unwrap();
                    }
                    for ti in 0..t {
                        for r in 0..n {
                            let s: f32 = (0..k).map(|j| (x[ti * k + j] * wf[r * k + j]).abs()).sum();
                            let (a, b) = (twin[ti * n + r], want[ti * n + r]);
                            assert!((a - b).abs() <= 1e-5 * s + 1e-30, "{wt:?} n={n} k={k} t={t}: {a} vs {b}");
                        }
                    }
                    for v in Variant::available() {
                        // A row range starting at a group boundary, output NaN-poisoned.
                        for r0 in (0..n).step_by(PACK_ROWS) {
                            let rows = r0..n;
                            let mut y = vec![f32::NAN; t * rows.len()];
                            matmul_packed_rows_with(v, &p, &input, &mut y, rows.clone()).unwrap();
                            for ti in 0..t {
                                for (i, r) in rows.clone().enumerate() {
                                    assert_eq!(
                                        y[ti * rows.len() + i].to_bits(),
                                        twin[ti * n + r].to_bits(),
                                        "{v:?} {wt:?} n={n} k={k} t={t} row {r}"
                                    );
                                }
                            }
                        }
                    }
                    let mut y = vec![f32::NAN; t * n];
                    matmul_packed_rows(&p, &input, &mut y, 0..n).unwrap();
                    assert_eq!(
                        y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        twin.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    );
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
                    let mut y = vec![f32::NAN; t * n];
                    matmul_packed_par(&pool, &p, &input, &mut y).unwrap();
                    assert_eq!(
                        y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        twin.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    );
                }
            }
        }
    }
}

#[test]
fn packed_rejects_bad_calls() {
    let mut rng = Rng(3);
    let data = random_matrix(WeightType::Q4_1, 40, 64, &mut rng);
    let m = QMatrix::new(WeightType::Q4_1, 40, 64, &data).unwrap();
    let p = PackedMatrix::pack(&m).unwrap().unwrap();
    let x = random_acts(1, 64, &mut rng);
    let input = prepare_input(MatmulPrecision::Fast, WeightType::Q4_1, &x, 1, 64).unwrap();
    let mut y = vec![0f32; 40];
    // Not at a group boundary, past the end, wrong output length, f32 input, wrong width.
    assert!(matmul_packed_rows(&p, &input, &mut y[..8], 8..16).is_err());
    assert!(matmul_packed_rows(&p, &input, &mut y, 0..41).is_err());
    assert!(matmul_packed_rows(&p, &input, &mut y[..3], 0..16).is_err());
    let exact = prepare_input(MatmulPrecision::Exact, WeightType::Q4_1, &x, 1, 64).unwrap();
    assert!(matmul_packed_rows(&p, &exact, &mut y, 0..40).is_err());
    let x2 = random_acts(1, 96, &mut rng);
    let wide = prepare_input(MatmulPrecision::Fast, WeightType::Q4_1, &x2, 1, 96).unwrap();
    assert!(matmul_packed_rows(&p, &wide, &mut y, 0..40).is_err());
    // Q8_0 takes f32 activations only.
    let q8 = random_matrix(WeightType::Q8_0, 4, 64, &mut rng);
    let p8 = PackedMatrix::pack(&QMatrix::new(WeightType::Q8_0, 4, 64, &q8).unwrap()).unwrap().unwrap();
    let fast8 = prepare_input(MatmulPrecision::Fast, WeightType::Q8_0, &x, 1, 64).unwrap();
    assert!(matmul_packed_rows(&p8, &fast8, &mut y[..4], 0..4).is_err());
    assert!(matmul_packed_rows(&p8, &exact, &mut y[..4], 0..4).is_ok());
    // Types without a packed form.
    let f16 = random_matrix(WeightType::F16, 4, 64, &mut rng);
    assert!(PackedMatrix::pack(&QMatrix::new(WeightType::F16, 4, 64, &f16).unwrap()).unwrap().is_none());
}
