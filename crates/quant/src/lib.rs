//! Quantized weight formats of GGUF/ggml (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K,
//! Q6_K), bit-exact with ggml's block layouts, with
//!
//! * reference twins: plain scalar dequantizers ([`dequantize_row_ref`]) and encoders
//!   ([`quantize_row`], [`quantize_row_q8_k`]);
//! * fast dequantization ([`dequantize_row`]), bit-identical to the reference;
//! * matrix products `y[t, n] = sum_k x[t, k] * W[n, k]` against a packed weight matrix
//!   ([`QMatrix`]) in two precisions ([`MatmulPrecision`]): `Exact` (f32 activations,
//!   weights dequantized on the fly, f32 accumulation) and `Fast` (activations quantized to
//!   8-bit blocks once per call, integer dot products as in ggml's `vec_dot`).
//!
//! Kernels come in [`Variant`]s (scalar, AVX2, AVX-512, AVX-512 VNNI, NEON) chosen once at
//! runtime from [`latent_kernels::cpu::Isa::best`]; the `*_with` entry points force one.

#![warn(missing_debug_implementations)]

mod acts;
mod dispatch;
mod fp;
mod matmul;
mod reference;
mod scalar;
mod types;

#[cfg(target_arch = "x86_64")]
mod x86;

pub use acts::Q8Acts;
pub use dispatch::Variant;
pub use matmul::{
    matmul, matmul_isa, matmul_par, matmul_prepared_rows, matmul_rows, matmul_rows_with, prepare_input,
    MatmulPrecision, PreparedInput, QMatrix,
};
pub use reference::{dequantize_row_q8_k, dequantize_row_ref, quantize_row, quantize_row_q8_k};
pub use types::{QuantError, WeightType, K_SCALE_SIZE, Q8_K_BLOCK_BYTES, QK, QK_K};

pub use latent_kernels::cpu::Isa;

/// Rows (weights and activations) per register tile of the matmul kernels.
pub(crate) const MAX_TILE: usize = 4;

/// Fast dequantization of one row of `out.len()` elements (SIMD where the CPU has it);
/// bit-identical to [`dequantize_row_ref`].
pub fn dequantize_row(t: WeightType, src: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    reference::check_row(t, src.len(), out.len())?;
    (dispatch::best_kernels().dequant)(t, src, out);
    Ok(())
}

/// [`dequantize_row`] with a forced kernel variant.
pub fn dequantize_row_with(v: Variant, t: WeightType, src: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let k = v.kernels()?;
    reference::check_row(t, src.len(), out.len())?;
    (k.dequant)(t, src, out);
    Ok(())
}
