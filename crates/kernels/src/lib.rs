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

/// Hints the CPU to start loading the cache lines of `bytes` (a no-op where the target has no
/// prefetch instruction). Attention uses it to start the next paged block's first rows
/// while the current block computes.
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut off = 0;
        while off < bytes.len() {
            // SAFETY: prefetch never faults and the address lies inside `bytes`; SSE is part
            // of the x86-64 baseline.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    bytes.as_ptr().add(off) as *const i8
                )
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
