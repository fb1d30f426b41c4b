//! The machine's own limits, measured in the same run as a benchmark so results can be
//! reported as fractions of what this machine can do right now.
//!
//! - read bandwidth: every thread streams its share of a large buffer (sum of f32s);
//! - memcpy bandwidth: bytes read plus bytes written per second, all threads;
//! - f32 GEMM peak: a 1024³ product, all threads, through the `gemm` crate and through this
//!   crate's own GEMM tile; the larger is the compute limit.

use std::time::Instant;

/// Measured limits. Bandwidths in GB/s (10⁹ bytes), compute in GFLOP/s.
#[derive(Clone, Copy, Debug)]
pub struct MachineLimits {
    pub read_gbps: f64,
    pub memcpy_gbps: f64,
    /// The best f32 GEMM rate measured: max of the two below.
    pub gemm_gflops: f64,
    /// The `gemm` crate (its AVX2/FMA kernels; its AVX-512 path needs a nightly feature).
    pub gemm_crate_gflops: f64,
    /// This crate's register-blocked GEMM tile (`Kernels::gemm_nt`) over 64×64 output tiles.
    pub tile_gemm_gflops: f64,
    pub threads: usize,
}

/// Best-of-`reps` wall time of `f`, in seconds.
pub fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// Streaming read bandwidth with `pool`'s threads over a `bytes`-sized buffer.
pub fn read_bandwidth(pool: &rayon::ThreadPool, bytes: usize) -> f64 {
    let n = bytes / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let threads = pool.current_num_threads().max(1);
    let chunk = n.div_ceil(threads);
    let k = crate::Kernels::best();
    let mut sink = 0.0f32;
    let secs = best_of(5, || {
        sink += pool.install(|| {
            use rayon::prelude::*;
            buf.par_chunks(chunk).map(|c| sum_stream(k, c)).sum::<f32>()
        });
    });
    std::hint::black_box(sink);
    (n * 4) as f64 / secs / 1e9
}

fn sum_stream(k: &crate::Kernels, c: &[f32]) -> f32 {
    // A max-reduction is a pure streaming read the compiler cannot elide.
    (k.max)(c)
}

/// memcpy bandwidth (bytes read + bytes written) with `pool`'s threads.
pub fn memcpy_bandwidth(pool: &rayon::ThreadPool, bytes: usize) -> f64 {
    let n = bytes;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let threads = pool.current_num_threads().max(1);
    let chunk = n.div_ceil(threads);
    let secs = best_of(5, || {
        pool.install(|| {
            use rayon::prelude::*;
            dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
        });
        std::hint::black_box(&dst);
    });
    (2 * n) as f64 / secs / 1e9
}

/// f32 GEMM GFLOP/s of an `n`³ product through the `gemm` crate with `threads` threads.
pub fn gemm_peak(threads: usize, n: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| ((i % 13) as f32) * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i % 11) as f32) * 0.01).collect();
    let mut c = vec![0f32; n * n];
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let secs = best_of(5, || {
        // SAFETY: a, b, c are n×n row-major buffers of exactly n·n elements; strides match.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    });
    std::hint::black_box(&c);
    2.0 * (n as f64).powi(3) / secs / 1e9
}

/// f32 GEMM GFLOP/s of an `n`³ product (C = A·Bᵀ) through this crate's GEMM tile, 64×64
/// output tiles spread over `pool`.
pub fn tile_gemm_peak(pool: &rayon::ThreadPool, n: usize) -> f64 {
    use crate::{MatMut, MatRef};
    let a: Vec<f32> = (0..n * n).map(|i| ((i % 13) as f32) * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i % 11) as f32) * 0.01).collect();
    let mut c = vec![0f32; n * n];
    let k = crate::Kernels::best();
    let tile = 64;
    let secs = best_of(5, || {
        pool.install(|| {
            use rayon::prelude::*;
            c.par_chunks_mut(tile * n).enumerate().for_each(|(pi, cp)| {
                let rows = cp.len() / n;
                let ap = MatRef { data: &a[pi * tile * n..], rows, cols: n, stride: n };
                let mut j = 0;
                while j < n {
                    let cols = tile.min(n - j);
                    let bp = MatRef { data: &b[j * n..], rows: cols, cols: n, stride: n };
                    (k.gemm_nt)(1.0, ap, bp, MatMut { data: &mut cp[j..], rows, cols, stride: n });
                    j += cols;
                }
            });
        });
        std::hint::black_box(&c);
    });
    2.0 * (n as f64).powi(3) / secs / 1e9
}

/// All three limits with the given pool (buffers of 512 MiB for bandwidth, GEMM 1024³).
pub fn measure(pool: &rayon::ThreadPool) -> MachineLimits {
    let threads = pool.current_num_threads();
    let gemm_crate_gflops = gemm_peak(threads, 1024);
    let tile_gemm_gflops = tile_gemm_peak(pool, 1024);
    MachineLimits {
        read_gbps: read_bandwidth(pool, 512 << 20),
        memcpy_gbps: memcpy_bandwidth(pool, 256 << 20),
        gemm_gflops: gemm_crate_gflops.max(tile_gemm_gflops),
        gemm_crate_gflops,
        tile_gemm_gflops,
        threads,
    }
}
