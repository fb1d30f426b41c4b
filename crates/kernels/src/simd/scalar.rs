//! Plain scalar twins: the straightforward loops every SIMD variant is tested against.

use super::{check_gemm_nn, check_gemm_nn_raw, check_gemm_nt, check_gemm_nt_raw, MatMut, MatRef, RawMat};
use half::{bf16, f16};

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

pub fn scale(x: &mut [f32], alpha: f32) {
    for v in x {
        *v *= alpha;
    }
}

pub fn max(x: &[f32]) -> f32 {
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: gate and up lengths differ");
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    let mut s = 0.0f32;
    for v in x {
        *v = (*v - m).exp();
        s += *v;
    }
    s
}

pub fn f32_from_bytes(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 4 * dst.len(), "f32_from_bytes: length mismatch");
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

pub fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 2 * dst.len(), "f16_to_f32: length mismatch");
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
    }
}

pub fn bf16_to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 2 * dst.len(), "bf16_to_f32: length mismatch");
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
    }
}

pub fn f32_to_f16(src: &[f32], dst: &mut [u8]) {
    assert_eq!(2 * src.len(), dst.len(), "f32_to_f16: length mismatch");
    for (s, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
        d.copy_from_slice(&f16::from_f32(*s).to_bits().to_le_bytes());
    }
}

pub fn f32_to_bf16(src: &[f32], dst: &mut [u8]) {
    assert_eq!(2 * src.len(), dst.len(), "f32_to_bf16: length mismatch");
    for (s, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
        d.copy_from_slice(&bf16::from_f32(*s).to_bits().to_le_bytes());
    }
}

pub fn gemm_nt(alpha: f32, a: MatRef, b: MatRef, c: MatMut) {
    check_gemm_nt(&a, &b, &c);
    for i in 0..c.rows {
        for j in 0..c.cols {
            let mut s = 0.0f32;
            for k in 0..a.cols {
                s += a.data[i * a.stride + k] * b.data[j * b.stride + k];
            }
            c.data[i * c.stride + j] = alpha * s;
        }
    }
}

pub fn gemm_nn(a: MatRef, b: MatRef, c: MatMut) {
    check_gemm_nn(&a, &b, &c);
    for i in 0..c.rows {
        for k in 0..a.cols {
            let aik = a.data[i * a.stride + k];
            for j in 0..c.cols {
                c.data[i * c.stride + j] += aik * b.data[k * b.stride + j];
            }
        }
    }
}

pub fn fp8_to_f32(src: &[u8], scale: f32, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "fp8_to_f32: length mismatch");
    for (d, s) in dst.iter_mut().zip(src) {
        *d = crate::fp8::e4m3_to_f32(*s) * scale;
    }
}

pub fn i8_to_f32(src: &[u8], scale: f32, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "i8_to_f32: length mismatch");
    for (d, s) in dst.iter_mut().zip(src) {
        *d = (*s as i8) as f32 * scale;
    }
}

pub fn gemm_nt_raw(alpha: f32, a: MatRef, b: RawMat, c: MatMut) {
    check_gemm_nt_raw(&a, &b, &c);
    for j in 0..c.cols {
        let bj = b.row_f32(j);
        for i in 0..c.rows {
            let s: f32 = (0..a.cols).map(|k| a.data[i * a.stride + k] * bj[k]).sum();
            c.data[i * c.stride + j] = alpha * s;
        }
    }
}

/// [`gemm_nt_raw`] with an (unused) pack of A.
pub fn gemm_nt_raw_packed(alpha: f32, a: MatRef, pack: &super::NtPack, b: RawMat, c: MatMut) {
    super::check_pack(&a, pack);
    gemm_nt_raw(alpha, a, b, c)
}

pub fn gemm_nn_raw(a: MatRef, b: RawMat, c: MatMut) {
    check_gemm_nn_raw(&a, &b, &c);
    for k in 0..a.cols {
        let bk = b.row_f32(k);
        for i in 0..c.rows {
            let aik = a.data[i * a.stride + k];
            for (cv, bv) in c.data[i * c.stride..i * c.stride + c.cols].iter_mut().zip(&bk) {
                *cv += aik * bv;
            }
        }
    }
}
