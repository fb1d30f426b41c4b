//! Fast dequantization == reference twin, bit for bit, for every type and kernel variant;
//! and the encoders produce blocks that decode close to their input.

mod common;

use common::{random_row, Rng};
use latent_quant::{
    dequantize_row, dequantize_row_q8_k, dequantize_row_ref, dequantize_row_with, quantize_row, quantize_row_q8_k,
    scale_row, Variant, WeightType, Q8_K_BLOCK_BYTES,
};

#[test]
fn fast_equals_reference_bitwise() {
    let mut rng = Rng(1);
    for t in WeightType::ALL {
        // Several lengths, including float rows that are not a multiple of any SIMD width.
        let lens: Vec<usize> = if t.is_quantized() {
            vec![t.block_size(), 3 * t.block_size(), 1536]
        } else {
            vec![1, 7, 8, 15, 16, 17, 33, 576, 1537]
        };
        for k in lens {
            if k % t.block_size() != 0 {
                continue;
            }
            for _ in 0..4 {
                let row = random_row(t, k, &mut rng);
                let mut want = vec![f32::NAN; k];
                dequantize_row_ref(t, &row, &mut want).unwrap();
                assert!(want.iter().all(|v| v.is_finite()), "{t}: reference not finite");
                for v in Variant::available() {
                    let mut got = vec![f32::NAN; k];
                    dequantize_row_with(v, t, &row, &mut got).unwrap();
                    for i in 0..k {
                        assert_eq!(
                            got[i].to_bits(),
                            want[i].to_bits(),
                            "{t} {v:?} k={k} element {i}: {} vs {}",
                            got[i],
                            want[i]
                        );
                    }
                }
                let mut got = vec![f32::NAN; k];
                dequantize_row(t, &row, &mut got).unwrap();
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
        }
    }
}

/// Relative RMS error of encode -> decode on a smooth-ish random row.
fn round_trip_err(t: WeightType, x: &[f32]) -> f32 {
    let mut packed = vec![0u8; t.row_bytes(x.len()).unwrap()];
    quantize_row(t, x, &mut packed).unwrap();
    let mut y = vec![0f32; x.len()];
    dequantize_row_ref(t, &packed, &mut y).unwrap();
    let num: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f32 = x.iter().map(|a| a * a).sum();
    (num / den).sqrt()
}

#[test]
fn encoders_round_trip() {
    let mut rng = Rng(2);
    let x: Vec<f32> = (0..1536).map(|_| rng.sym(1.0)).collect();
    // Bounds: a uniform-quantizer step over the block range, as an RMS relative to
    // uniform(-1, 1) data (rms 0.577): 4-bit ~ 2/15/sqrt(12)/0.577 = 0.067, etc.
    let bounds = [
        (WeightType::F32, 0.0),
        (WeightType::F16, 1e-3),
        (WeightType::BF16, 5e-3),
        (WeightType::Q4_0, 0.10),
        (WeightType::Q4_1, 0.08),
        (WeightType::Q8_0, 0.006),
        (WeightType::Q4_K, 0.10),
        (WeightType::Q5_K, 0.05),
        (WeightType::Q6_K, 0.03),
    ];
    for (t, bound) in bounds {
        let e = round_trip_err(t, &x);
        assert!(e <= bound, "{t}: round-trip rms error {e} > {bound}");
        // An all-zero row must encode and decode to zeros.
        let z = vec![0f32; 512];
        let mut packed = vec![0u8; t.row_bytes(512).unwrap()];
        quantize_row(t, &z, &mut packed).unwrap();
        let mut y = vec![1f32; 512];
        dequantize_row_ref(t, &packed, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "{t}: zeros do not round-trip");
    }
}

#[test]
fn ggml_reference_encoders_exact() {
    // Q8_0: amax = 127 -> d = 1, q = round(x): 2.5 -> 3 (half away from zero), -2.5 -> -3.
    let mut x = [0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 0.4;
    let mut b = [0u8; 34];
    quantize_row(WeightType::Q8_0, &x, &mut b).unwrap();
    assert_eq!(&b[0..2], &[0x00, 0x3c]);
    assert_eq!(&b[2..6], &[127, 3, (-3i8) as u8, 0]);
    // Q4_0: max = -16 (largest magnitude) -> d = -16 / -8 = 2, q = x / 2 + 8.5 truncated:
    // -16 -> 0, 0 -> 8, 13 -> 15, 3 -> 10.
    let mut x = [0f32; 32];
    x[0] = -16.0;
    x[1] = 13.0;
    x[16] = 3.0;
    let mut b = [0u8; 18];
    quantize_row(WeightType::Q4_0, &x, &mut b).unwrap();
    assert_eq!(&b[0..2], &[0x00, 0x40]);
    assert_eq!(b[2], 10 << 4);
    assert_eq!(b[3], 15 | (8 << 4));
    // Q4_1: min = -1, max = 14 -> d = 1, q = x + 1 + 0.5 truncated.
    let mut x = [0f32; 32];
    x[0] = -1.0;
    x[1] = 14.0;
    x[16] = 2.2;
    let mut b = [0u8; 20];
    quantize_row(WeightType::Q4_1, &x, &mut b).unwrap();
    assert_eq!(&b[0..4], &[0x00, 0x3c, 0x00, 0xbc]);
    assert_eq!(b[4], 3 << 4);
    assert_eq!(b[5], 15 | (1 << 4));
}

#[test]
fn q8_k_encoder() {
    let mut rng = Rng(3);
    let x: Vec<f32> = (0..512).map(|_| rng.sym(3.0)).collect();
    let mut b = vec![0u8; 2 * Q8_K_BLOCK_BYTES];
    quantize_row_q8_k(&x, &mut b).unwrap();
    let mut y = vec![0f32; 512];
    dequantize_row_q8_k(&b, &mut y).unwrap();
    for blk in 0..2 {
        let bb = &b[blk * Q8_K_BLOCK_BYTES..(blk + 1) * Q8_K_BLOCK_BYTES];
        let d = f32::from_le_bytes(bb[0..4].try_into().unwrap());
        for j in 0..16 {
            let want: i16 = bb[4 + 16 * j..4 + 16 * j + 16].iter().map(|&q| q as i8 as i16).sum();
            let got = i16::from_le_bytes([bb[260 + 2 * j], bb[261 + 2 * j]]);
            assert_eq!(got, want, "bsums[{j}]");
        }
        for i in 0..256 {
            let e = (x[blk * 256 + i] - y[blk * 256 + i]).abs();
            assert!(e <= 0.5 * d.abs() * 1.0001, "element {i}: error {e}, d {d}");
        }
    }
}

/// `scale_row` multiplies a packed row by s in place: it decodes to s × the old values within
/// one f16 rounding of the block scales (exact for F32), for positive, negative and tiny s; 1 is
/// a byte-exact no-op; an overflowing or non-finite scale is refused and leaves the row as it was.
#[test]
fn scale_row_scales_every_type() {
    let mut rng = Rng(31);
    for t in WeightType::ALL {
        let k = if t.is_quantized() { 2 * t.block_size() } else { 67 };
        let row = random_row(t, k, &mut rng);
        let mut old = vec![f32::NAN; k];
        dequantize_row_ref(t, &row, &mut old).unwrap();
        let amax = old.iter().fold(0f32, |m, v| m.max(v.abs()));
        for s in [-1.7f32, 0.37, -0.003, 1.41] {
            let mut b = row.clone();
            scale_row(t, &mut b, s).unwrap();
            let mut got = vec![f32::NAN; k];
            dequantize_row_ref(t, &b, &mut got).unwrap();
            // f16 scale rounding: 2^-11 relative per scale, on values up to amax.
            let tol = match t {
                WeightType::F32 => 0.0,
                WeightType::BF16 => 2f32.powi(-8) * amax * s.abs(),
                _ => 2f32.powi(-9) * amax * s.abs(),
            };
            for i in 0..k {
                let want = s * old[i];
                assert!((got[i] - want).abs() <= tol + f32::MIN_POSITIVE, "{t} s={s} [{i}]: {} vs {want}", got[i]);
            }
            if t.is_quantized() {
                assert_ne!(b, row, "{t}: scaled row unchanged");
            }
        }
        let mut b = row.clone();
        scale_row(t, &mut b, 1.0).unwrap();
        assert_eq!(b, row, "{t}: scale 1 changed bytes");
        let mut b = row.clone();
        assert!(scale_row(t, &mut b, f32::NAN).is_err(), "{t}: NaN scale accepted");
        if t != WeightType::F32 && t != WeightType::BF16 {
            let mut b = row.clone();
            assert!(scale_row(t, &mut b, 1e9).is_err(), "{t}: f16 overflow accepted");
            assert_eq!(b, row, "{t}: a refused scale changed the row");
        }
        let mut short = row.clone();
        short.pop();
        assert!(scale_row(t, &mut short, 2.0).is_err(), "{t}: ragged row accepted");
    }
}
