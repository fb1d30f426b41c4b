//! Runtime CPU feature detection: the one place that decides which instruction set the
//! kernels use. Every SIMD kernel in this crate is selected through [`Isa::best`] (or an
//! explicit [`Isa`] in tests), never through scattered `cfg(target_feature)` checks.

use std::sync::OnceLock;

/// An instruction-set level a kernel variant is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust, no intrinsics. Always available; the reference twin of every variant.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (+ AVX2/FMA/F16C).
    Avx512,
    /// [`Isa::Avx512`] plus Intel AMX tiles (AMX-TILE, AMX-BF16) the OS lets this process
    /// use: the bf16 raw GEMM tiles (bf16 KV caches) run on the tiles.
    Amx,
    /// AArch64 Advanced SIMD (NEON), always present on aarch64.
    Neon,
}

impl Isa {
    /// Every level this CPU can run, scalar first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    v.push(Isa::Avx512);
                    if crate::simd::amx::available() {
                        v.push(Isa::Amx);
                    }
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                v.push(Isa::Neon);
            }
        }
        v
    }

    /// The best level available, unless `LATENT_ISA` (scalar|avx2|avx512|amx|neon) asks for a
    /// lower one that is available. Computed once per process.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let avail = Isa::available();
            let best = *avail.last().unwrap_or(&Isa::Scalar);
            match std::env::var("LATENT_ISA").ok().and_then(|s| Isa::parse(&s)) {
                Some(want) if avail.contains(&want) => want,
                _ => best,
            }
        })
    }

    pub fn parse(s: &str) -> Option<Isa> {
        match s.to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            "amx" => Some(Isa::Amx),
            "neon" => Some(Isa::Neon),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma+f16c",
            Isa::Avx512 => "avx512",
            Isa::Amx => "avx512+amx",
            Isa::Neon => "neon",
        }
    }
}
