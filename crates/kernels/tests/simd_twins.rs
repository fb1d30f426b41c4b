//! Every SIMD variant against its scalar twin, on hostile sizes with random data.

use latent_kernels::simd::{scalar, Kernels, MatMut, MatRef};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

const SIZES: &[usize] = &[0, 1, 3, 7, 8, 15, 16, 17, 31, 63, 64, 127, 128, 129, 576, 1000, 4099];

fn close(a: f32, b: f32, abs: f32, rel: f32) -> bool {
    (a - b).abs() <= abs + rel * b.abs().max(a.abs())
}

#[test]
fn at_least_scalar_is_available() {
    let all = Kernels::all();
    assert_eq!(all[0].isa, latent_kernels::Isa::Scalar);
    eprintln!("kernel variants: {:?}", all.iter().map(|k| k.isa).collect::<Vec<_>>());
}

#[test]
fn dot_axpy_scale_max_match_scalar() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for k in Kernels::all() {
        for &n in SIZES {
            let a = rng.vec(n);
            let b = rng.vec(n);
            let want = scalar::dot(&a, &b);
            let got = (k.dot)(&a, &b);
            let mag: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
            assert!((got - want).abs() <= 1e-5 * mag + 1e-6, "{:?} dot n={n}: {got} vs {want}", k.isa);

            let mut y1 = rng.vec(n);
            let mut y2 = y1.clone();
            scalar::axpy(0.37, &a, &mut y1);
            (k.axpy)(0.37, &a, &mut y2);
            for (p, q) in y1.iter().zip(&y2) {
                assert!(close(*q, *p, 1e-6, 1e-6), "{:?} axpy n={n}", k.isa);
            }
            let mut s1 = a.clone();
            let mut s2 = a.clone();
            scalar::scale(&mut s1, -1.7);
            (k.scale)(&mut s2, -1.7);
            assert_eq!(s1, s2, "{:?} scale n={n}", k.isa);
            assert_eq!(scalar::max(&a), (k.max)(&a), "{:?} max n={n}", k.isa);
        }
    }
}

#[test]
fn exp_matches_scalar_and_handles_infinities() {
    let mut rng = Rng(42);
    for k in Kernels::all() {
        for &n in SIZES {
            let mut x: Vec<f32> = (0..n).map(|_| rng.f32() * 60.0).collect();
            if n > 2 {
                x[1] = f32::NEG_INFINITY;
                x[2] = -200.0;
            }
            let m = 3.5;
            let mut want = x.clone();
            let ws = scalar::exp_sub_sum(&mut want, m);
            let mut got = x.clone();
            let gs = (k.exp_sub_sum)(&mut got, m);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(close(*g, *w, 1e-37, 3e-7), "{:?} exp n={n} i={i} x={}: {g} vs {w}", k.isa, x[i]);
            }
            if n > 2 {
                assert_eq!(got[1], 0.0, "exp(-inf) must be exactly 0");
                assert_eq!(got[2], 0.0);
            }
            assert!(close(gs, ws, 1e-30, 1e-5), "{:?} exp sum n={n}: {gs} vs {ws}", k.isa);
        }
    }
}

#[test]
fn silu_mul_matches_scalar() {
    let mut rng = Rng(99);
    for k in Kernels::all() {
        for &n in SIZES {
            let mut g: Vec<f32> = (0..n).map(|_| rng.f32() * 30.0).collect();
            let u: Vec<f32> = (0..n).map(|_| rng.f32() * 4.0).collect();
            if n > 3 {
                g[0] = -200.0; // e^200 is clamped: silu → −0
                g[1] = 95.0; // silu(x) = x
                g[2] = 0.0;
            }
            let mut want = g.clone();
            scalar::silu_mul(&mut want, &u);
            let mut got = g.clone();
            (k.silu_mul)(&mut got, &u);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(close(*a, *b, 1e-30, 4e-7), "{:?} silu_mul n={n} i={i} g={}: {a} vs {b}", k.isa, g[i]);
            }
        }
    }
}

#[test]
fn conversions_match_scalar_bit_exactly() {
    let mut rng = Rng(7);
    for k in Kernels::all() {
        for &n in SIZES {
            let mut x: Vec<f32> = (0..n).map(|_| rng.f32() * 1000.0).collect();
            if n > 5 {
                x[0] = f32::NAN;
                x[1] = f32::INFINITY;
                x[2] = 65520.0; // rounds to inf in f16
                x[3] = 1e-8; // f16 subnormal range
                x[4] = -0.0;
                x[5] = f32::from_bits(0x3f80_8000); // bf16 tie: rounds to even
            }
            for (name, to, back, sto, sback) in [
                (
                    "f16",
                    k.f32_to_f16,
                    k.f16_to_f32,
                    scalar::f32_to_f16 as fn(&[f32], &mut [u8]),
                    scalar::f16_to_f32 as fn(&[u8], &mut [f32]),
                ),
                ("bf16", k.f32_to_bf16, k.bf16_to_f32, scalar::f32_to_bf16, scalar::bf16_to_f32),
            ] {
                let mut b1 = vec![0u8; 2 * n];
                let mut b2 = vec![0u8; 2 * n];
                sto(&x, &mut b1);
                to(&x, &mut b2);
                assert_eq!(b1, b2, "{:?} f32->{name} n={n}", k.isa);
                let mut f1 = vec![f32::NAN; n];
                let mut f2 = vec![f32::NAN; n];
                sback(&b1, &mut f1);
                back(&b1, &mut f2);
                let same = f1.iter().zip(&f2).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
                assert!(same, "{:?} {name}->f32 n={n}", k.isa);
            }
            let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut f = vec![0f32; n];
            (k.f32_from_bytes)(&bytes, &mut f);
            assert!(f.iter().zip(&x).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

#[test]
fn gemm_tiles_match_scalar_on_hostile_shapes() {
    let mut rng = Rng(99);
    let dims = [1usize, 2, 3, 4, 5, 7, 8, 9, 17, 33, 64, 65];
    let ks = [1usize, 3, 8, 16, 24, 40, 128, 129, 576];
    for k in Kernels::all() {
        for &m in &dims {
            for &n in &dims {
                for &kk in &ks {
                    // Strided views with NaN poison in the padding: must never be read.
                    let (sa, sb, sc) = (kk + 3, kk + 5, n + 2);
                    let mut a = vec![f32::NAN; m * sa];
                    let mut b = vec![f32::NAN; n * sb];
                    for r in 0..m {
                        for c in 0..kk {
                            a[r * sa + c] = rng.f32();
                        }
                    }
                    for r in 0..n {
                        for c in 0..kk {
                            b[r * sb + c] = rng.f32();
                        }
                    }
                    let mut c1 = vec![f32::NAN; m * sc];
                    let mut c2 = c1.clone();
                    let ar = MatRef { data: &a, rows: m, cols: kk, stride: sa };
                    let br = MatRef { data: &b, rows: n, cols: kk, stride: sb };
                    scalar::gemm_nt(0.5, ar, br, MatMut { data: &mut c1, rows: m, cols: n, stride: sc });
                    (k.gemm_nt)(0.5, ar, br, MatMut { data: &mut c2, rows: m, cols: n, stride: sc });
                    for r in 0..m {
                        for c in 0..n {
                            let (x, y) = (c1[r * sc + c], c2[r * sc + c]);
                            assert!(close(y, x, 1e-5 * (kk as f32).sqrt(), 1e-5), "{:?} nt m={m} n={n} k={kk}", k.isa);
                        }
                        assert!(c2[r * sc + n].is_nan(), "nt wrote outside C");
                    }
                    // NN: A [m, kk], B [kk, n].
                    let sb2 = n + 7;
                    let mut b2 = vec![f32::NAN; kk * sb2];
                    for r in 0..kk {
                        for c in 0..n {
                            b2[r * sb2 + c] = rng.f32();
                        }
                    }
                    let mut d1 = vec![f32::NAN; m * sc];
                    for r in 0..m {
                        for c in 0..n {
                            d1[r * sc + c] = rng.f32();
                        }
                    }
                    let mut d2 = d1.clone();
                    let b2r = MatRef { data: &b2, rows: kk, cols: n, stride: sb2 };
                    scalar::gemm_nn(ar, b2r, MatMut { data: &mut d1, rows: m, cols: n, stride: sc });
                    (k.gemm_nn)(ar, b2r, MatMut { data: &mut d2, rows: m, cols: n, stride: sc });
                    for r in 0..m {
                        for c in 0..n {
                            let (x, y) = (d1[r * sc + c], d2[r * sc + c]);
                            assert!(close(y, x, 1e-5 * (kk as f32).sqrt(), 1e-5), "{:?} nn m={m} n={n} k={kk}", k.isa);
                        }
                        assert!(d2[r * sc + n].is_nan(), "nn wrote outside C");
                    }
                }
            }
        }
    }
}

#[test]
fn fp8_and_int8_decoders_match_scalar_and_the_format() {
    use latent_kernels::fp8::{e4m3_to_f32, f32_to_e4m3};
    // Format facts: 0x7E = 448 (max), 0x01 = 2^-9 (smallest subnormal), 0x08 = 2^-6.
    assert_eq!(e4m3_to_f32(0x7E), 448.0);
    assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
    assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
    assert_eq!(e4m3_to_f32(0xB8), -1.0);
    assert!(e4m3_to_f32(0x7F).is_nan());
    assert_eq!(f32_to_e4m3(1000.0), 0x7E, "saturates");
    assert_eq!(f32_to_e4m3(-1.0), 0xB8);
    // Every finite code round-trips; midpoints go to the even code.
    for b in 0u8..=255 {
        let v = e4m3_to_f32(b);
        if v.is_finite() && !(v == 0.0 && b == 0x80) {
            assert_eq!(f32_to_e4m3(v), b, "code {b:#x}");
        }
    }
    assert_eq!(f32_to_e4m3((1.0 + 1.125) / 2.0), 0x38, "tie 1.0625 → even code (1.0)");
    let bytes: Vec<u8> =
        (0..4099u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).filter(|b| b & 0x7F != 0x7F).collect();
    for k in Kernels::all() {
        for &n in SIZES {
            let n = n.min(bytes.len());
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            scalar::fp8_to_f32(&bytes[..n], 0.37, &mut a);
            (k.fp8_to_f32)(&bytes[..n], 0.37, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!(close(*y, *x, 0.0, 1e-7), "{:?} fp8 n={n}: {y} vs {x}", k.isa);
            }
            scalar::i8_to_f32(&bytes[..n], 0.37, &mut a);
            (k.i8_to_f32)(&bytes[..n], 0.37, &mut b);
            assert_eq!(a, b, "{:?} i8 n={n}", k.isa);
        }
    }
}

#[test]
fn raw_gemm_tiles_match_scalar_for_every_stored_type() {
    use latent_kernels::simd::{Elem, RawMat};
    let mut rng = Rng(123);
    for k in Kernels::all() {
        for &(m, n, kk) in
            &[(1usize, 1usize, 1usize), (4, 64, 128), (3, 17, 24), (128, 64, 576), (9, 5, 40), (6, 33, 129)]
        {
            for elem in [Elem::F32, Elem::F16, Elem::Bf16, Elem::I8, Elem::Fp8Scaled256] {
                let a = rng.vec(m * kk);
                // B for NT: [n, kk] rows; for NN: [kk, n] rows. Rows padded with poison bytes.
                for (rows, cols) in [(n, kk), (kk, n)] {
                    let stride = cols * elem.bytes() + 6;
                    let mut bytes = vec![0xFFu8; rows * stride];
                    for r in 0..rows {
                        let row = rng.vec(cols);
                        let dst = &mut bytes[r * stride..r * stride + cols * elem.bytes()];
                        match elem {
                            Elem::F32 => {
                                dst.copy_from_slice(&row.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())
                            }
                            Elem::F16 => scalar::f32_to_f16(&row, dst),
                            Elem::Bf16 => scalar::f32_to_bf16(&row, dst),
                            Elem::I8 => dst.iter_mut().zip(&row).for_each(|(d, v)| *d = (v * 100.0) as i8 as u8),
                            Elem::Fp8Scaled256 => dst
                                .iter_mut()
                                .zip(&row)
                                .for_each(|(d, v)| *d = latent_kernels::fp8::f32_to_e4m3(v * 50.0)),
                        }
                    }
                    let b = RawMat { data: &bytes, elem, rows, cols, stride_bytes: stride, ahead: &bytes[stride..] };
                    let ar = MatRef { data: &a, rows: m, cols: kk, stride: kk };
                    let (mut c1, mut c2) = (vec![0.5f32; m * n], vec![0.5f32; m * n]);
                    if rows == n {
                        scalar::gemm_nt_raw(0.7, ar, b, MatMut::dense(&mut c1, m, n));
                        (k.gemm_nt_raw)(0.7, ar, b, MatMut::dense(&mut c2, m, n));
                    } else {
                        scalar::gemm_nn_raw(ar, b, MatMut::dense(&mut c1, m, n));
                        (k.gemm_nn_raw)(ar, b, MatMut::dense(&mut c2, m, n));
                    }
                    // Error scales with the stored magnitudes (8-bit test data spans ±100).
                    let mag = if elem == Elem::I8 { 100.0 } else { 1.0 };
                    for (x, y) in c1.iter().zip(&c2) {
                        assert!(
                            close(*y, *x, mag * 1e-5 * (kk as f32).sqrt(), 1e-5),
                            "{:?} {elem:?} m={m} n={n} k={kk}: {y} vs {x}",
                            k.isa
                        );
                    }
                }
            }
        }
    }
}

/// The AMX tiles (bf16 B) against an f64 reference on hostile shapes: rows 8..128 (one and
/// several 16-row blocks, partial blocks), key counts around the 16/64 tile groups, dims from
/// one 32-wide chunk to 576. B's stride padding and the rows after B are NaN; C's stride gap
/// must stay untouched. The bound 2⁻¹⁵·Σ|a·b| holds for A split into bf16 hi + lo; A rounded
/// to bf16 alone (2⁻⁹ relative) would break it.
#[test]
fn amx_bf16_tiles_match_an_f64_reference() {
    use latent_kernels::simd::{Elem, RawMat};
    let Some(k) = Kernels::for_isa(latent_kernels::Isa::Amx) else {
        eprintln!("skipping amx_bf16_tiles_match_an_f64_reference: this CPU or OS offers no AMX-BF16 tiles");
        return;
    };
    let mut rng = Rng(77);
    let bf16 = |x: f32| half::bf16::from_f32(x);
    // B rows of `cols` bf16 values, stride padded with NaN bytes, followed by NaN rows.
    let make_b = |rng: &mut Rng, rows: usize, cols: usize| {
        let stride = cols * 2 + 10;
        let mut bytes = vec![0xFFu8; (rows + 20) * stride];
        let mut vals = vec![0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                let v = bf16(rng.f32());
                vals[r * cols + c] = v.to_f32();
                bytes[r * stride + 2 * c..][..2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        (bytes, vals, stride)
    };
    let mut checked = 0;
    // Scores: C[m, n] = 0.3 · A[m, kk] · B[n, kk]ᵀ.
    for &m in &[8usize, 9, 16, 17, 33, 128] {
        for &n in &[16usize, 17, 31, 63, 64, 65, 127, 200] {
            for &kk in &[32usize, 64, 192, 576] {
                let a: Vec<f32> = (0..m * kk).map(|_| rng.f32() * 3.0).collect();
                let (bytes, bv, stride) = make_b(&mut rng, n, kk);
                let b = RawMat {
                    data: &bytes[..n * stride],
                    elem: Elem::Bf16,
                    rows: n,
                    cols: kk,
                    stride_bytes: stride,
                    ahead: &bytes[n * stride..],
                };
                let ldc = n + 3;
                let mut c = vec![f32::NAN; m * ldc];
                (k.gemm_nt_raw)(
                    0.3,
                    MatRef::dense(&a, m, kk),
                    b,
                    MatMut { data: &mut c, rows: m, cols: n, stride: ldc },
                );
                // The packed form gives the same bits.
                let mut pack = latent_kernels::simd::NtPack::default();
                (k.pack_nt)(MatRef::dense(&a, m, kk), Elem::Bf16, &mut pack);
                let mut cp = vec![f32::NAN; m * ldc];
                let cm = MatMut { data: &mut cp, rows: m, cols: n, stride: ldc };
                (k.gemm_nt_raw_packed)(0.3, MatRef::dense(&a, m, kk), &pack, b, cm);
                assert!(c.iter().zip(&cp).all(|(x, y)| x.to_bits() == y.to_bits()), "packed scores m={m} n={n} k={kk}");
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        if j >= n {
                            assert!(got.is_nan(), "scores wrote C's stride gap at ({i}, {j})");
                            continue;
                        }
                        let (mut want, mut mag) = (0f64, 0f64);
                        for p in 0..kk {
                            let t = a[i * kk + p] as f64 * bv[j * kk + p] as f64;
                            want += t;
                            mag += t.abs();
                        }
                        let (want, mag) = (0.3 * want, 0.3 * mag);
                        assert!(
                            (got as f64 - want).abs() <= mag * 2f64.powi(-15) + 1e-30,
                            "scores m={m} n={n} k={kk} ({i}, {j}): {got} vs {want} (Σ|ab| {mag})"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    // Values: C[m, n] += A[m, kk] · B[kk, n].
    for &m in &[16usize, 17, 31, 128] {
        for &kk in &[16usize, 17, 31, 33, 63, 64, 127] {
            for &n in &[16usize, 48, 64, 128, 512] {
                let a: Vec<f32> = (0..m * kk).map(|_| rng.f32().abs()).collect();
                let (bytes, bv, stride) = make_b(&mut rng, kk, n);
                let b = RawMat {
                    data: &bytes[..kk * stride],
                    elem: Elem::Bf16,
                    rows: kk,
                    cols: n,
                    stride_bytes: stride,
                    ahead: &bytes[kk * stride..],
                };
                let ldc = n + 5;
                let c0: Vec<f32> = (0..m * ldc).map(|i| if i % ldc < n { rng.f32() } else { f32::NAN }).collect();
                let mut c = c0.clone();
                (k.gemm_nn_raw)(MatRef::dense(&a, m, kk), b, MatMut { data: &mut c, rows: m, cols: n, stride: ldc });
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        if j >= n {
                            assert!(got.is_nan(), "values wrote C's stride gap at ({i}, {j})");
                            continue;
                        }
                        let (mut want, mut mag) = (c0[i * ldc + j] as f64, c0[i * ldc + j].abs() as f64);
                        for p in 0..kk {
                            let t = a[i * kk + p] as f64 * bv[p * n + j] as f64;
                            want += t;
                            mag += t.abs();
                        }
                        assert!(
                            (got as f64 - want).abs() <= mag * 2f64.powi(-15) + 1e-30,
                            "values m={m} k={kk} n={n} ({i}, {j}): {got} vs {want} (Σ|ab| {mag})"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 6 * 8 * 4 + 4 * 7 * 5);
}

/// Every table's packed score tile equals its plain one bit for bit, for every stored type
/// (shapes on both sides of the AMX limits), and a pack of another shape is refused.
#[test]
fn packed_score_tiles_equal_the_plain_ones() {
    use latent_kernels::simd::{Elem, NtPack, RawMat};
    let mut rng = Rng(31);
    for k in Kernels::all() {
        for &(m, n, kk) in
            &[(1usize, 1usize, 32usize), (7, 40, 64), (8, 16, 32), (9, 64, 192), (126, 70, 64), (9, 33, 40)]
        {
            for elem in [Elem::F32, Elem::Bf16, Elem::F16] {
                let a = rng.vec(m * kk);
                let stride = kk * elem.bytes() + 2;
                let mut bytes = vec![0xFFu8; n * stride];
                for r in 0..n {
                    let row = rng.vec(kk);
                    let dst = &mut bytes[r * stride..r * stride + kk * elem.bytes()];
                    match elem {
                        Elem::F32 => dst.copy_from_slice(&row.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()),
                        Elem::F16 => scalar::f32_to_f16(&row, dst),
                        _ => scalar::f32_to_bf16(&row, dst),
                    }
                }
                let b = RawMat { data: &bytes, elem, rows: n, cols: kk, stride_bytes: stride, ahead: &[] };
                let ar = MatRef::dense(&a, m, kk);
                let mut pack = NtPack::default();
                (k.pack_nt)(ar, elem, &mut pack);
                let (mut c1, mut c2) = (vec![0f32; m * n], vec![1f32; m * n]);
                (k.gemm_nt_raw)(0.5, ar, b, MatMut::dense(&mut c1, m, n));
                (k.gemm_nt_raw_packed)(0.5, ar, &pack, b, MatMut::dense(&mut c2, m, n));
                assert!(
                    c1.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{:?} {elem:?} m={m} n={n} k={kk}",
                    k.isa
                );
            }
        }
        let a = rng.vec(8 * 32);
        let mut pack = NtPack::default();
        (k.pack_nt)(MatRef::dense(&a, 8, 32), Elem::Bf16, &mut pack);
        let bytes = vec![0u8; 16 * 64];
        let b = RawMat { data: &bytes, elem: Elem::Bf16, rows: 16, cols: 32, stride_bytes: 64, ahead: &[] };
        let mut c = vec![0f32; 4 * 16];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (k.gemm_nt_raw_packed)(1.0, MatRef::dense(&a[..4 * 32], 4, 32), &pack, b, MatMut::dense(&mut c, 4, 16))
        }));
        assert!(r.is_err(), "{:?}: a pack of another shape must be refused", k.isa);
    }
}
