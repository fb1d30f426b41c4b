//! Kernel variants and the dispatch table: the one place that decides which kernels run.

use std::sync::OnceLock;

use latent_kernels::cpu::Isa;

use crate::acts::{ActRow, Q8Acts};
use crate::types::{QuantError, WeightType};
use crate::MAX_TILE;

/// A set of kernels written for one instruction-set level. Finer than [`Isa`]: the AVX-512
/// level has a plain (BW) and a VNNI flavour of the integer dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// Portable Rust; always available; the twin every other variant is tested against.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL (integer dots through `vpmaddubsw`).
    Avx512,
    /// AVX-512 F/BW/VL + VNNI (integer dots through `vpdpbusd`).
    Avx512Vnni,
    /// AArch64 NEON (f32 tiles for the exact path; dequantization and integer dots use the
    /// portable code, vectorized by the compiler).
    Neon,
}

impl Variant {
    /// Every variant this CPU can run, scalar first.
    pub fn available() -> Vec<Variant> {
        available_cached().to_vec()
    }

    /// The best variant for an instruction-set level, if the CPU has that level.
    pub fn for_isa(isa: Isa) -> Option<Variant> {
        let avail = available_cached();
        let pick = match isa {
            Isa::Scalar => Variant::Scalar,
            Isa::Avx2 => Variant::Avx2,
            Isa::Avx512 | Isa::Amx if avail.contains(&Variant::Avx512Vnni) => Variant::Avx512Vnni,
            Isa::Avx512 | Isa::Amx => Variant::Avx512,
            Isa::Neon => Variant::Neon,
        };
        avail.contains(&pick).then_some(pick)
    }

    /// The variant for [`Isa::best`] (which honours `LATENT_ISA`). Computed once.
    pub fn best() -> Variant {
        best_kernels().variant
    }

    /// The instruction-set level this variant belongs to.
    pub fn isa(self) -> Isa {
        match self {
            Variant::Scalar => Isa::Scalar,
            Variant::Avx2 => Isa::Avx2,
            Variant::Avx512 | Variant::Avx512Vnni => Isa::Avx512,
            Variant::Neon => Isa::Neon,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Scalar => "scalar",
            Variant::Avx2 => "avx2",
            Variant::Avx512 => "avx512",
            Variant::Avx512Vnni => "avx512-vnni",
            Variant::Neon => "neon",
        }
    }

    /// The kernel table of this variant, or an error if the CPU cannot run it.
    pub(crate) fn kernels(self) -> Result<&'static Kernels, QuantError> {
        if !available_cached().contains(&self) {
            return Err(QuantError::VariantUnavailable(self.name()));
        }
        Ok(table(self))
    }
}

fn available_cached() -> &'static [Variant] {
    static AVAIL: OnceLock<Vec<Variant>> = OnceLock::new();
    AVAIL.get_or_init(|| {
        let mut v = Vec::new();
        for isa in Isa::available() {
            match isa {
                Isa::Scalar => v.push(Variant::Scalar),
                Isa::Avx2 => {
                    #[cfg(target_arch = "x86_64")]
                    v.push(Variant::Avx2);
                }
                // The AMX level adds only tile kernels for bf16 attention; weights use AVX-512.
                Isa::Amx => {}
                Isa::Avx512 => {
                    #[cfg(target_arch = "x86_64")]
                    {
                        v.push(Variant::Avx512);
                        if std::arch::is_x86_feature_detected!("avx512vnni") {
                            v.push(Variant::Avx512Vnni);
                        }
                    }
                }
                Isa::Neon => {
                    #[cfg(target_arch = "aarch64")]
                    v.push(Variant::Neon);
                }
            }
        }
        v
    })
}

/// The table used by the plain entry points: built once from [`Isa::best`].
pub(crate) fn best_kernels() -> &'static Kernels {
    static BEST: OnceLock<&'static Kernels> = OnceLock::new();
    BEST.get_or_init(|| {
        let v = Variant::for_isa(Isa::best()).unwrap_or(Variant::Scalar);
        table(v)
    })
}

/// Dequantize a validated row.
pub(crate) type DequantFn = fn(WeightType, &[u8], &mut [f32]);
/// Exact-path tile: `(w rows, nr, x rows, nt, k, out[r][t])`.
pub(crate) type TileFn = fn(&[f32], usize, &[f32], usize, usize, &mut [[f32; MAX_TILE]; MAX_TILE]);
/// Fast-path dots of packed weight rows `(w: nrows * row_bytes, row_bytes)` with up to
/// `MAX_TILE` quantized activation rows; `out[r * MAX_TILE + t]`.
pub(crate) type FastDotFn = fn(WeightType, &[u8], usize, &[ActRow<'_>], &mut [f32]);
/// Exact path for a few activation rows with the weights decoded in registers (no
/// dequantized copy): `(type, w rows, row_bytes, x: nt * k, nt <= MAX_TILE, k,
/// out[r * MAX_TILE + t])`. Returns `false`, touching nothing, for types it does not cover.
pub(crate) type ExactFusedFn = fn(WeightType, &[u8], usize, &[f32], usize, usize, &mut [f32]) -> bool;
/// Activation quantizer.
pub(crate) type QuantActsFn = fn(&[f32], &mut Q8Acts);

/// One variant's kernels. The SIMD tables' entries may only be called on a CPU with the
/// variant's features; [`Variant::kernels`] and [`best_kernels`] only hand out tables that
/// passed detection.
pub(crate) struct Kernels {
    pub variant: Variant,
    pub dequant: DequantFn,
    pub tile: TileFn,
    /// Activation rows per exact tile (weight rows per tile are always `MAX_TILE`).
    pub tile_nt: usize,
    pub exact_fused: Option<ExactFusedFn>,
    pub fast_dot: FastDotFn,
    pub quant_acts: QuantActsFn,
    /// The fast dots read [`crate::acts::ActRow::d8`] (activation scales spread per lane).
    pub spread_scales: bool,
    /// Dots of 16 interleaved rows ([`crate::packed`]).
    pub packed_dot: crate::packed::PackedDotFn,
    /// Exact (f32) dots of 16 interleaved Q8_0 rows.
    pub packed_dot_f32: crate::packed::PackedDotF32Fn,
}

static SCALAR: Kernels = Kernels {
    variant: Variant::Scalar,
    dequant: crate::scalar::dequant,
    tile: crate::scalar::tile,
    tile_nt: MAX_TILE,
    exact_fused: None,
    fast_dot: crate::scalar::fast_dot,
    quant_acts: crate::acts::quantize_acts_scalar,
    spread_scales: false,
    packed_dot: crate::packed::packed_dot_scalar,
    packed_dot_f32: crate::packed::packed_dot_f32_scalar,
};

fn table(v: Variant) -> &'static Kernels {
    match v {
        Variant::Scalar => &SCALAR,
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => &crate::x86::avx2::KERNELS,
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 => &crate::x86::avx512::KERNELS_BW,
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512Vnni => &crate::x86::avx512::KERNELS_VNNI,
        #[cfg(target_arch = "aarch64")]
        Variant::Neon => &crate::neon::KERNELS,
        #[allow(unreachable_patterns)]
        _ => &SCALAR,
    }
}
