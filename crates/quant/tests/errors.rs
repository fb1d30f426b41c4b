//! Bad inputs give typed errors, never panics.

mod common;

use common::{random_matrix, Rng};
use latent_quant::{
    dequantize_row, dequantize_row_ref, matmul, matmul_prepared_rows, matmul_rows, prepare_input, quantize_row,
    quantize_row_q8_k, MatmulPrecision, QMatrix, QuantError, WeightType,
};

#[test]
fn dequantize_bad_lengths() {
    let src = vec![0u8; 18];
    let mut out = vec![0f32; 32];
    assert!(dequantize_row_ref(WeightType::Q4_0, &src, &mut out).is_ok());
    // Output not a multiple of the block.
    let mut out48 = vec![0f32; 48];
    assert!(matches!(
        dequantize_row(WeightType::Q4_0, &src, &mut out48),
        Err(QuantError::NotBlockMultiple { block: 32, n: 48, .. })
    ));
    // Source too short / too long.
    assert!(matches!(
        dequantize_row(WeightType::Q4_0, &src[..17], &mut out),
        Err(QuantError::BufferLength { expected: 18, got: 17, .. })
    ));
    let long = vec![0u8; 19];
    assert!(matches!(dequantize_row_ref(WeightType::Q4_0, &long, &mut out), Err(QuantError::BufferLength { .. })));
    let mut out100 = vec![0f32; 100];
    assert!(matches!(
        dequantize_row(WeightType::Q6_K, &[0u8; 210], &mut out100),
        Err(QuantError::NotBlockMultiple { block: 256, .. })
    ));
    assert!(matches!(dequantize_row(WeightType::F16, &[0u8; 3], &mut [0f32; 2]), Err(QuantError::BufferLength { .. })));
}

#[test]
fn quantize_bad_lengths() {
    let x = vec![0f32; 40];
    let mut out = vec![0u8; 64];
    assert!(matches!(quantize_row(WeightType::Q8_0, &x, &mut out), Err(QuantError::NotBlockMultiple { .. })));
    let x = vec![0f32; 64];
    assert!(matches!(
        quantize_row(WeightType::Q8_0, &x, &mut out),
        Err(QuantError::BufferLength { expected: 68, got: 64, .. })
    ));
    assert!(quantize_row_q8_k(&x, &mut out).is_err());
    let x = vec![0f32; 256];
    assert!(quantize_row_q8_k(&x, &mut out).is_err());
}

#[test]
fn matmul_bad_shapes() {
    let mut rng = Rng(9);
    let (n, k, t) = (5usize, 64usize, 3usize);
    let data = random_matrix(WeightType::Q4_1, n, k, &mut rng);
    let w = QMatrix::new(WeightType::Q4_1, n, k, &data).unwrap();
    let x = vec![0.5f32; t * k];
    let mut y = vec![0f32; t * n];
    for p in [MatmulPrecision::Exact, MatmulPrecision::Fast] {
        assert!(matmul(p, &w, &x, &mut y, t).is_ok());
        // Wrong x length.
        assert!(matches!(matmul(p, &w, &x[1..], &mut y, t), Err(QuantError::BufferLength { .. })));
        // Wrong y length.
        assert!(matches!(matmul(p, &w, &x, &mut y[1..], t), Err(QuantError::BufferLength { .. })));
        // t inconsistent with x.
        assert!(matmul(p, &w, &x, &mut y, t + 1).is_err());
        // Row range out of bounds or reversed.
        assert!(matches!(matmul_rows(p, &w, &x, &mut y, t, 2..6), Err(QuantError::RowRange { .. })));
        #[allow(clippy::reversed_empty_ranges)]
        let rev = 3..2;
        assert!(matches!(matmul_rows(p, &w, &x, &mut y, t, rev), Err(QuantError::RowRange { .. })));
        // Weight data of the wrong size (unvalidated struct literal).
        let bad = QMatrix { wtype: WeightType::Q4_1, rows: n, cols: k, data: &data[..data.len() - 1] };
        assert!(matches!(matmul(p, &bad, &x, &mut y, t), Err(QuantError::BufferLength { .. })));
        // K not a multiple of the block size.
        let bad = QMatrix { wtype: WeightType::Q4_1, rows: n, cols: 48, data: &data };
        assert!(matches!(matmul(p, &bad, &x, &mut y, t), Err(QuantError::NotBlockMultiple { .. })));
        // K-quant with K = 576 (not a multiple of 256).
        let bad = QMatrix { wtype: WeightType::Q4_K, rows: 1, cols: 576, data: &data[..1] };
        let x576 = vec![0f32; 576];
        let mut y1 = [0f32; 1];
        assert!(matches!(matmul(p, &bad, &x576, &mut y1, 1), Err(QuantError::NotBlockMultiple { block: 256, .. })));
        assert!(prepare_input(p, WeightType::Q4_K, &x576, 1, 576).is_err());
    }
    // Constructor validation.
    assert!(QMatrix::new(WeightType::Q4_1, n, k, &data[1..]).is_err());
    assert!(QMatrix::new(WeightType::Q4_1, usize::MAX, k, &data).is_err());
    // K = 0: every output is an empty sum.
    for p in [MatmulPrecision::Exact, MatmulPrecision::Fast] {
        let w0 = QMatrix::new(WeightType::Q4_0, 3, 0, &[]).unwrap();
        let mut y0 = [f32::NAN; 6];
        matmul(p, &w0, &[], &mut y0, 2).unwrap();
        assert_eq!(y0, [0.0; 6]);
    }
    // Empty shapes are fine.
    let mut empty: [f32; 0] = [];
    assert!(matmul(MatmulPrecision::Fast, &w, &[], &mut empty, 0).is_ok());
}

#[test]
fn prepared_input_compatibility() {
    let mut rng = Rng(10);
    let (n, k, t) = (7usize, 256usize, 2usize);
    let x: Vec<f32> = (0..t * k).map(|_| rng.sym(1.0)).collect();
    let fast = MatmulPrecision::Fast;
    let q40 = random_matrix(WeightType::Q4_0, n, k, &mut rng);
    let q41 = random_matrix(WeightType::Q4_1, n, k, &mut rng);
    let f16 = random_matrix(WeightType::F16, n, k, &mut rng);
    let w40 = QMatrix::new(WeightType::Q4_0, n, k, &q40).unwrap();
    let w41 = QMatrix::new(WeightType::Q4_1, n, k, &q41).unwrap();
    let wf16 = QMatrix::new(WeightType::F16, n, k, &f16).unwrap();
    // Prepared for Q4_0: serves Q4_1 (same 32-element blocks) with the same bits as a
    // direct call, and float weights (exact path).
    let input = prepare_input(fast, WeightType::Q4_0, &x, t, k).unwrap();
    assert!(input.is_quantized());
    for w in [&w40, &w41, &wf16] {
        let mut a = vec![f32::NAN; t * n];
        let mut b = vec![f32::NAN; t * n];
        matmul_prepared_rows(w, &input, &mut a, 0..n).unwrap();
        matmul(fast, w, &x, &mut b, t).unwrap();
        assert_eq!(a, b, "{}", w.wtype);
    }
    // Prepared for a K-quant (256-element blocks): not usable with Q4_0 weights.
    let kin = prepare_input(fast, WeightType::Q6_K, &x, t, k).unwrap();
    let mut y = vec![0f32; t * n];
    assert!(matches!(
        matmul_prepared_rows(&w40, &kin, &mut y, 0..n),
        Err(QuantError::PreparedMismatch { prepared: WeightType::Q6_K, weights: WeightType::Q4_0 })
    ));
    // Wrong column count.
    let short = prepare_input(fast, WeightType::Q4_0, &x[..t * 128], t, 128).unwrap();
    assert!(matches!(matmul_prepared_rows(&w40, &short, &mut y, 0..n), Err(QuantError::BufferLength { .. })));
}

/// Random (mostly inconsistent) shapes and buffer lengths through every entry point: each
/// call returns `Ok` or a typed error; none may panic. Consistent calls must succeed.
#[test]
fn random_shapes_never_panic() {
    let mut rng = Rng(11);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for _ in 0..3000 {
        let wt = WeightType::ALL[rng.below(WeightType::ALL.len())];
        let bs = wt.block_size();
        let rows = rng.below(5);
        let cols = if rng.below(2) == 0 { bs * rng.below(3) } else { rng.below(600) };
        let t = rng.below(6);
        let rb = wt.row_bytes(cols).unwrap_or(wt.type_size());
        let consistent = rng.below(3) == 0;
        let jitter = |rng: &mut Rng, v: usize| if consistent { v } else { (v + rng.below(3)).saturating_sub(1) };
        let dlen = jitter(&mut rng, rows * rb);
        let data = common::random_matrix(wt, 1, bs, &mut rng).into_iter().cycle().take(dlen).collect::<Vec<u8>>();
        let x = vec![0.25f32; jitter(&mut rng, t * cols)];
        let mut y = vec![0f32; jitter(&mut rng, t * rows)];
        let w = QMatrix { wtype: wt, rows, cols, data: &data };
        let ok_shape =
            wt.row_bytes(cols).is_ok() && data.len() == rows * rb && x.len() == t * cols && y.len() == t * rows;
        for p in [MatmulPrecision::Exact, MatmulPrecision::Fast] {
            let r = matmul(p, &w, &x, &mut y, t);
            assert_eq!(r.is_ok(), ok_shape, "{wt} rows={rows} cols={cols} t={t}: {r:?}");
            let start = rng.below(rows + 2);
            let end = rng.below(rows + 2);
            let r = matmul_rows(p, &w, &x, &mut y, t, start..end);
            if ok_shape && start <= end && end <= rows {
                r.unwrap();
            } else {
                assert!(r.is_err());
            }
            let r = latent_quant::matmul_par(&pool, p, &w, &x, &mut y, t);
            assert_eq!(r.is_ok(), ok_shape);
        }
        let n = jitter(&mut rng, cols);
        let mut out = vec![0f32; n];
        let src = &data[..data.len().min(wt.row_bytes(n).unwrap_or(0) + rng.below(2))];
        let _ = dequantize_row(wt, src, &mut out);
        let _ = dequantize_row_ref(wt, src, &mut out);
        let mut packed = vec![0u8; jitter(&mut rng, wt.row_bytes(n).unwrap_or(0))];
        let _ = quantize_row(wt, &out, &mut packed);
    }
}
