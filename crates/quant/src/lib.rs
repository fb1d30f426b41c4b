//! Quantized weight formats of GGUF/ggml (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K,
//! Q6_K), bit-exact with ggml's block layouts (see [`WeightType`]), with
//!
//! * reference twins: plain scalar dequantizers ([`dequantize_row_ref`]) and encoders
//!   ([`quantize_row`], [`quantize_row_q8_k`]);
//! * fast dequantization ([`dequantize_row`]), bit-identical to the reference;
//! * matrix products `y[t, n] = sum_k x[t, k] * W[n, k]` against a packed weight matrix
//!   ([`QMatrix`], GGUF row order) in two precisions ([`MatmulPrecision`]):
//!   - `Exact`: f32 activations, weights dequantized on the fly (bit-identical to the
//!     reference), f32 accumulation;
//!   - `Fast`: activations quantized once per call to 8-bit blocks (32-element blocks for
//!     Q4_0/Q4_1/Q8_0, 256-element Q8_K-style blocks for the K-quants), integer dot
//!     products per block as in ggml's `vec_dot`, f32 accumulation of the scaled sums.
//!
//! # Example
//! ```
//! use latent_quant::{matmul, quantize_row, MatmulPrecision, QMatrix, WeightType};
//!
//! let (n, k) = (4, 64); // W: [N, K]
//! let w: Vec<f32> = (0..n * k).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
//! let rb = WeightType::Q8_0.row_bytes(k)?;
//! let mut packed = vec![0u8; n * rb];
//! for (row, dst) in w.chunks(k).zip(packed.chunks_mut(rb)) {
//!     quantize_row(WeightType::Q8_0, row, dst)?;
//! }
//! let wq = QMatrix::new(WeightType::Q8_0, n, k, &packed)?;
//! let x = vec![0.5f32; k]; // one activation row (t = 1)
//! let mut y = vec![0f32; n];
//! matmul(MatmulPrecision::Fast, &wq, &x, &mut y, 1)?;
//! let want: f32 = w[..k].iter().map(|v| v * 0.5).sum();
//! assert!((y[0] - want).abs() < 1e-2);
//! # Ok::<(), latent_quant::QuantError>(())
//! ```
//!
//! # Kernels and dispatch
//! Kernels come in [`Variant`]s: scalar (always), AVX2+FMA+F16C, AVX-512 F/BW/VL, AVX-512
//! with VNNI, and NEON. The plain entry points use one table chosen once from
//! [`latent_kernels::cpu::Isa::best`] (which honours `LATENT_ISA`); the `*_with` /
//! [`matmul_isa`] entry points force one (tests run every available variant against the
//! scalar twins). The AVX-512 variants use 512-bit code for the float types, the 32-element
//! block formats and the f32 tiles, and the AVX2 code for the K-quants. The NEON variant
//! has f32 tiles; its dequantization and integer dots are the portable code.
//!
//! # Shapes and blocking
//! `x` is `[t, K]` and `y` is `[t, N]`, row-major. Every call reads each weight row once
//! per group of (up to) 4 activation rows, with the weights of a panel of rows kept hot in
//! L2 while the activation groups pass over it; for `t <= 4` each weight row is read once.
//! The `Fast` path quantizes the activations once per call (or once per
//! [`prepare_input`]), never per output row. For threading, [`matmul_rows`] computes a range
//! of output rows and [`matmul_par`] splits the rows over a rayon pool (activations
//! prepared once).
//!
//! # Performance notes (one core of a shared Sapphire Rapids VM, best of repeated runs)
//! Decode (`t = 1`), Q4_1 `[1536 x 576]` (553 KB, L2-resident): `Fast` ~45 us (~12 GB/s of
//! weights), `Exact` ~110 us. Q8_0 `[49152 x 576]` (28 MB, streamed from memory): `Fast`
//! ~1.4 ms (~21 GB/s), `Exact` ~2.5 ms. Prefill (`t = 64..256`) on AVX-512: `Exact` reaches
//! ~80-110 GFLOP/s and is faster than `Fast` (~60-80); on AVX2 they are closer. The
//! `bench_matmul` example reproduces these.

#![warn(missing_debug_implementations)]

mod acts;
mod dispatch;
mod fp;
mod matmul;
mod packed;
mod reference;
mod scalar;
mod types;

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use acts::Q8Acts;
pub use dispatch::Variant;
pub use matmul::{
    matmul, matmul_isa, matmul_par, matmul_prepared_rows, matmul_rows, matmul_rows_with, prepare_input,
    MatmulPrecision, PreparedInput, QMatrix,
};
pub use packed::{matmul_packed_par, matmul_packed_rows, matmul_packed_rows_with, PackedMatrix, PACK_ROWS};
pub use reference::{dequantize_row_q8_k, dequantize_row_ref, quantize_row, quantize_row_q8_k, scale_row};
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
