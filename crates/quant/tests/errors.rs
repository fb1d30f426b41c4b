//! Bad inputs give typed errors, never panics.

mod common;

use common::{random_matrix, Rng};
use latent_quant::{
    dequantize_row, dequantize_row_ref, matmul, matmul_rows, prepare_input, quantize_row, quantize_row_q8_k,
    MatmulPrecision, QMatrix, QuantError, WeightType,
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
