//! Layout: hand-built blocks of every type, dequantized, against values worked out by hand
//! from ggml's block definitions (see each test's comments).

use latent_quant::{dequantize_row, dequantize_row_ref, dequantize_row_with, Variant, WeightType};

fn check(t: WeightType, block: &[u8], want: &[f32]) {
    let mut got = vec![f32::NAN; want.len()];
    dequantize_row_ref(t, block, &mut got).unwrap();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{t} ref element {i}: got {g}, want {w}");
    }
    for v in Variant::available() {
        let mut got = vec![f32::NAN; want.len()];
        dequantize_row_with(v, t, block, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{t} {v:?} element {i}: got {g}, want {w}");
        }
    }
    let mut got = vec![f32::NAN; want.len()];
    dequantize_row(t, block, &mut got).unwrap();
    assert_eq!(got, want);
}

#[test]
fn ids_and_sizes() {
    use WeightType::*;
    let table = [
        (F32, 0, 1, 4, "f32"),
        (F16, 1, 1, 2, "f16"),
        (Q4_0, 2, 32, 18, "q4_0"),
        (Q4_1, 3, 32, 20, "q4_1"),
        (Q8_0, 8, 32, 34, "q8_0"),
        (Q4_K, 12, 256, 144, "q4_K"),
        (Q5_K, 13, 256, 176, "q5_K"),
        (Q6_K, 14, 256, 210, "q6_K"),
        (BF16, 30, 1, 2, "bf16"),
    ];
    for (t, id, bs, ts, name) in table {
        assert_eq!(WeightType::from_ggml_id(id), Some(t));
        assert_eq!(t.ggml_id(), id);
        assert_eq!(t.block_size(), bs);
        assert_eq!(t.type_size(), ts);
        assert_eq!(t.name(), name);
        assert_eq!(t.row_bytes(bs * 3).unwrap(), ts * 3);
    }
    for id in [4, 5, 6, 7, 9, 10, 11, 15, 16, 29, 31, 1000] {
        assert_eq!(WeightType::from_ggml_id(id), None, "id {id}");
    }
    // SmolLM2-135M shapes: Q4_1 rows of 576 and 1536, Q8_0 rows of 576.
    assert_eq!(Q4_1.row_bytes(576).unwrap(), 18 * 20);
    assert_eq!(Q4_1.row_bytes(1536).unwrap(), 48 * 20);
    assert_eq!(Q8_0.row_bytes(576).unwrap(), 18 * 34);
    assert!(Q4_K.row_bytes(576).is_err());
}

#[test]
fn float_types() {
    // F32 little-endian.
    let mut b = Vec::new();
    for v in [1.5f32, -0.25, 3.0e-38] {
        b.extend(v.to_le_bytes());
    }
    check(WeightType::F32, &b, &[1.5, -0.25, 3.0e-38]);
    // F16: 0x3c00 = 1, 0xc000 = -2, 0x0001 = 2^-24 (smallest subnormal), 0x7bff = 65504,
    // 0x8000 = -0, 0x3555 = 0.333251953125, 0x7c00 = +inf; nine of them to cross a SIMD
    // width of 8 into the scalar tail.
    let h: [u16; 9] = [0x3c00, 0xc000, 0x0001, 0x7bff, 0x8000, 0x3555, 0x7c00, 0x3c00, 0xc000];
    let b: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
    let want = [1.0, -2.0, 5.960_464_5e-8, 65504.0, -0.0, 0.333_251_95, f32::INFINITY, 1.0, -2.0];
    check(WeightType::F16, &b, &want);
    // BF16: 0x3f80 = 1.0, 0xc2f7 = -123.5 (f32 0xc2f70000), 0x0000 = 0.
    let h: [u16; 3] = [0x3f80, 0xc2f7, 0x0000];
    let b: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
    check(WeightType::BF16, &b, &[1.0, -123.5, 0.0]);
}

#[test]
fn q4_0_block() {
    // d = 0.5 (f16 0x3800). qs[0] = 0x9f: element 0 = (0xf - 8) * 0.5 = 3.5,
    // element 16 = (0x9 - 8) * 0.5 = 0.5. qs[1] = 0x08: element 1 = 0, element 17 = -4.
    // All other qs = 0x00: (0 - 8) * 0.5 = -4.
    let mut b = vec![0x00, 0x38];
    b.extend([0x9f, 0x08]);
    b.extend([0u8; 14]);
    let mut want = [-4.0f32; 32];
    want[0] = 3.5;
    want[16] = 0.5;
    want[1] = 0.0;
    want[17] = -4.0;
    check(WeightType::Q4_0, &b, &want);
}

#[test]
fn q4_1_block() {
    // d = 0.25 (0x3400), m = -1 (0xbc00). qs[0] = 0x31: element 0 = 1 * 0.25 - 1 = -0.75,
    // element 16 = 3 * 0.25 - 1 = -0.25. qs[15] = 0xf0: element 15 = -1, element 31 = 2.75.
    // Others 0 -> -1.
    let mut b = vec![0x00, 0x34, 0x00, 0xbc, 0x31];
    b.extend([0u8; 14]);
    b.push(0xf0);
    let mut want = [-1.0f32; 32];
    want[0] = -0.75;
    want[16] = -0.25;
    want[31] = 2.75;
    check(WeightType::Q4_1, &b, &want);
}

#[test]
fn q8_0_block() {
    // d = 2 (0x4000). qs[0] = 0x80 = -128 -> -256, qs[1] = 0x7f -> 254, qs[31] = 0xff = -1
    // -> -2, others 0.
    let mut b = vec![0x00, 0x40, 0x80, 0x7f];
    b.extend([0u8; 29]);
    b.push(0xff);
    let mut want = [0.0f32; 32];
    want[0] = -256.0;
    want[1] = 254.0;
    want[31] = -2.0;
    check(WeightType::Q8_0, &b, &want);
}

/// The 12 packed scale bytes for sub-block scales sc = [1, 2, 3, 4, 17, 33, 63, 5] and
/// mins m = [0, 1, 2, 3, 20, 40, 63, 6]:
/// bytes 0..4 = sc[j] | (sc[j+4] >> 4) << 6, bytes 4..8 = m[j] | (m[j+4] >> 4) << 6,
/// bytes 8..12 = (sc[j+4] & 15) | (m[j+4] & 15) << 4.
const K_SCALES: [u8; 12] = [65, 130, 195, 4, 64, 129, 194, 3, 65, 129, 255, 101];

#[test]
fn q4_k_block() {
    // d = 1 (0x3c00), dmin = 0.5 (0x3800). qs all 0x53 except qs[0] = 0xf0.
    // Byte l of 32-byte chunk c: low nibble -> element 64c + l (sub-block 2c), high nibble
    // -> element 64c + 32 + l (sub-block 2c + 1). Value = 1 * sc[j] * q - 0.5 * m[j]:
    // j0: 1*3 - 0 = 3, j1: 2*5 - 0.5 = 9.5, j2: 3*3 - 1 = 8, j3: 4*5 - 1.5 = 18.5,
    // j4: 17*3 - 10 = 41, j5: 33*5 - 20 = 145, j6: 63*3 - 31.5 = 157.5, j7: 5*5 - 3 = 22.
    // qs[0] = 0xf0: element 0 = 1*0 - 0 = 0, element 32 = 2*15 - 0.5 = 29.5.
    let mut b = vec![0x00, 0x3c, 0x00, 0x38];
    b.extend(K_SCALES);
    let mut qs = [0x53u8; 128];
    qs[0] = 0xf0;
    b.extend(qs);
    let per_sub = [3.0f32, 9.5, 8.0, 18.5, 41.0, 145.0, 157.5, 22.0];
    let mut want: Vec<f32> = (0..256).map(|e| per_sub[e / 32]).collect();
    want[0] = 0.0;
    want[32] = 29.5;
    check(WeightType::Q4_K, &b, &want);
}

#[test]
fn q5_k_block() {
    // As Q4_K (same d, dmin, scales, qs = 0x53), plus qh: bit j of qh[l] adds 16 to the
    // element l of sub-block j. qh[0] = 0b11: element 0 -> 1*(3+16) - 0 = 19, element 32
    // -> 2*(5+16) - 0.5 = 41.5. qh[1] = 0x80: element 7*32 + 1 = 225 -> 5*21 - 3 = 102.
    let mut b = vec![0x00, 0x3c, 0x00, 0x38];
    b.extend(K_SCALES);
    let mut qh = [0u8; 32];
    qh[0] = 0b11;
    qh[1] = 0x80;
    b.extend(qh);
    b.extend([0x53u8; 128]);
    let per_sub = [3.0f32, 9.5, 8.0, 18.5, 41.0, 145.0, 157.5, 22.0];
    let mut want: Vec<f32> = (0..256).map(|e| per_sub[e / 32]).collect();
    want[0] = 19.0;
    want[32] = 41.5;
    want[225] = 102.0;
    check(WeightType::Q5_K, &b, &want);
}

#[test]
fn q6_k_block() {
    // Layout: ql[128], qh[64], scales[16] (i8), d (f16). d = 0.5 (0x3800).
    // scales = [1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -128]; element e uses
    // scales[e / 16]. ql all 0x21, qh all 0: in each 128-element half, elements 0..64 take
    // the low nibble (1) and elements 64..128 the high nibble (2), so q - 32 = -31 / -30.
    // qh[0] = 0xe4 (bits 1:0 = 0, 3:2 = 1, 5:4 = 2, 7:6 = 3) gives the two high bits of
    // elements 0, 32, 64, 96: element 0 = 0.5*1*(1-32) = -15.5, element 32 = 0.5*2*(17-32)
    // = -15, element 64 = 0.5*3*(34-32) = 3, element 96 = 0.5*4*(50-32) = 36.
    // Element 255: 0.5 * -128 * (2 - 32) = 1920.
    let sc: [i8; 16] = [1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -128];
    let mut b = vec![0x21u8; 128];
    let mut qh = [0u8; 64];
    qh[0] = 0xe4;
    b.extend(qh);
    b.extend(sc.iter().map(|&s| s as u8));
    b.extend([0x00, 0x38]);
    let mut want: Vec<f32> = (0..256)
        .map(|e| {
            let q = if e % 128 < 64 { -31.0 } else { -30.0 };
            0.5 * sc[e / 16] as f32 * q
        })
        .collect();
    want[0] = -15.5;
    want[32] = -15.0;
    want[64] = 3.0;
    want[96] = 36.0;
    assert_eq!(want[255], 1920.0);
    check(WeightType::Q6_K, &b, &want);
}
