//! Micro benchmark of the matmul kernels on SmolLM2-135M shapes.
//!
//! `cargo run -p latent-quant --release --example bench_matmul [case filter] [variant filter]`
//! Prints, per variant and precision, the best time per call (over short batches) and the
//! weight bytes streamed per second (GB/s) or GFLOP/s for prefill.

use std::time::Instant;

use latent_quant::{matmul_rows_with, MatmulPrecision, QMatrix, Variant, WeightType};

fn rand_bytes(n: usize, seed: &mut u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 24) as u8
        })
        .collect()
}

fn matrix(t: WeightType, n: usize, k: usize, seed: &mut u64) -> Vec<u8> {
    let mut d = rand_bytes(n * t.row_bytes(k).unwrap(), seed);
    let scale = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    let ts = t.type_size();
    for b in d.chunks_exact_mut(ts) {
        match t {
            WeightType::Q6_K => b[208..210].copy_from_slice(&scale),
            WeightType::Q4_1 | WeightType::Q4_K | WeightType::Q5_K => {
                b[0..2].copy_from_slice(&scale);
                b[2..4].copy_from_slice(&scale);
            }
            WeightType::F32 | WeightType::F16 | WeightType::BF16 => {}
            _ => b[0..2].copy_from_slice(&scale),
        }
    }
    if t == WeightType::F16 {
        for c in d.chunks_exact_mut(2) {
            c.copy_from_slice(&scale);
        }
    }
    d
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let vfilter = std::env::args().nth(2).unwrap_or_default();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let cases: &[(&str, WeightType, usize, usize, usize)] = &[
        ("q4_1 up   1536x576  T=1", WeightType::Q4_1, 1536, 576, 1),
        ("q4_1 down 576x1536  T=1", WeightType::Q4_1, 576, 1536, 1),
        ("q8_0 out  49152x576 T=1", WeightType::Q8_0, 49152, 576, 1),
        ("q4_0 up   1536x576  T=1", WeightType::Q4_0, 1536, 576, 1),
        ("q4_k      1536x1536 T=1", WeightType::Q4_K, 1536, 1536, 1),
        ("q6_k      1536x1536 T=1", WeightType::Q6_K, 1536, 1536, 1),
        ("f16 up    1536x576  T=1", WeightType::F16, 1536, 576, 1),
        ("q4_1 up   1536x576  T=64", WeightType::Q4_1, 1536, 576, 64),
        ("q4_1 down 576x1536  T=256", WeightType::Q4_1, 576, 1536, 256),
        ("q8_0 up   1536x576  T=256", WeightType::Q8_0, 1536, 576, 256),
    ];
    for &(name, t, n, k, tt) in cases {
        if !name.contains(&filter) {
            continue;
        }
        let data = matrix(t, n, k, &mut seed);
        let w = QMatrix::new(t, n, k, &data).unwrap();
        let x: Vec<f32> = rand_bytes(tt * k, &mut seed).iter().map(|&b| b as f32 / 128.0 - 1.0).collect();
        let mut y = vec![0f32; tt * n];
        for v in Variant::available().into_iter().filter(|v| v.name().contains(&vfilter)) {
            for p in [MatmulPrecision::Exact, MatmulPrecision::Fast] {
                if p == MatmulPrecision::Fast && !t.is_quantized() {
                    continue;
                }
                let run = |y: &mut [f32]| matmul_rows_with(v, p, &w, &x, y, tt, 0..n).unwrap();
                run(&mut y);
                // Best of many short batches: robust against other load on the machine.
                let t0 = Instant::now();
                run(&mut y);
                let one = t0.elapsed().as_secs_f64().max(1e-7);
                let batch = ((0.01 / one) as usize).max(1);
                let mut dt = f64::MAX;
                let start = Instant::now();
                while start.elapsed().as_secs_f64() < 0.4 {
                    let b0 = Instant::now();
                    for _ in 0..batch {
                        run(&mut y);
                    }
                    dt = dt.min(b0.elapsed().as_secs_f64() / batch as f64);
                }
                let gbs = data.len() as f64 / dt / 1e9;
                let gflops = 2.0 * (n * k * tt) as f64 / dt / 1e9;
                println!(
                    "{name:26} {:12} {:5} {:9.1} us  {:7.2} GB/s  {:7.1} GFLOP/s",
                    v.name(),
                    format!("{p:?}"),
                    dt * 1e6,
                    gbs,
                    gflops
                );
            }
        }
    }
}
