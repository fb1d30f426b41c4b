//! Numeric kernels for latent and the one place that chooses between instruction sets.
//!
//! - [`cpu`]: runtime feature detection ([`cpu::Isa`]).
//! - [`simd`]: the dispatch table ([`simd::Kernels`]) of dot/axpy/exp/conversion/GEMM-tile
//!   kernels, a plain scalar twin for each.
//! - [`machine`]: measurements of the machine's own limits (read and memcpy bandwidth, f32
//!   GEMM peak) that benchmarks report beside their results.

pub mod cpu;
pub mod fp8;
pub mod machine;
pub mod simd;
pub mod team;

pub use cpu::Isa;
pub use simd::{Elem, Kernels, MatMut, MatRef, RawMat};
