//! Single-thread decode matvec throughput of the fast path, cached vs streaming.
use latent_quant::*;
use std::time::Instant;

fn main() {
    let cols = 576;
    for wt in [WeightType::Q4_1, WeightType::Q8_0] {
        for mb in [0.25f64, 1.0, 64.0] {
            let rb = wt.row_bytes(cols).unwrap();
            let rows = ((mb * 1e6) as usize / rb).max(4) / 4 * 4;
            let mut data = vec![0u8; rows * rb];
            let mut s = 12345u64;
            let mut f = vec![0f32; cols];
            for r in 0..rows {
                for v in f.iter_mut() {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    *v = ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5;
                }
                quantize_row(wt, &f, &mut data[r * rb..(r + 1) * rb]).unwrap();
            }
            let w = QMatrix::new(wt, rows, cols, &data).unwrap();
            let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut y = vec![0f32; rows];
            let p = if wt == WeightType::Q8_0 { MatmulPrecision::Exact } else { MatmulPrecision::Fast };
            let reps = ((200e6 / (rows * rb) as f64) as usize).max(3);
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t0 = Instant::now();
                for _ in 0..reps {
                    matmul(p, &w, &x, &mut y, 1).unwrap();
                }
                best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
            }
            println!("{wt:?} {mb:>6} MB: {:.2} GB/s", (rows * rb) as f64 / best / 1e9);
            if let Some(pm) = PackedMatrix::pack(&w).unwrap() {
                let input = prepare_input(p, wt, &x, 1, cols).unwrap();
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t0 = Instant::now();
                    for _ in 0..reps {
                        matmul_packed_rows(&pm, &input, &mut y, 0..rows).unwrap();
                    }
                    best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
                }
                println!("{wt:?} {mb:>6} MB packed: {:.2} GB/s", (rows * rb) as f64 / best / 1e9);
            }
        }
    }
}
