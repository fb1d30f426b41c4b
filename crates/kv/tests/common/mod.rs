#![allow(dead_code)]
//! Builds pools whose sequences sit on scattered physical blocks: dummy sequences are
//! allocated and partly freed first, and the real sequences grow in random chunks
//! interleaved with more dummy growth, so block tables are permuted and every block nobody
//! owns at the end is freed (and poisoned with NaN).

use latent_attention::testing::Rng;
use latent_kv::{BlockPool, SeqId};

/// Reserves `lens[i]` tokens for a new sequence each, on scattered blocks. Every dummy is
/// freed again before returning.
pub fn scattered_sequences(pool: &mut BlockPool, rng: &mut Rng, lens: &[usize]) -> Vec<SeqId> {
    let bs = pool.block_size();
    let need: usize = lens.iter().map(|l| l.div_ceil(bs)).sum();
    let spare = pool.num_blocks() - need;
    // Dummies take about half the spare blocks; every other one is freed right away.
    let mut dummies = Vec::new();
    let mut taken = 0;
    while taken + 1 < spare / 2 {
        let d = pool.create();
        let n = 1 + rng.below(3 * bs);
        let blocks = n.div_ceil(bs);
        if taken + blocks > spare / 2 {
            break;
        }
        pool.append(d, n).expect("dummy");
        taken += blocks;
        dummies.push(d);
    }
    for i in (0..dummies.len()).rev().step_by(2) {
        pool.free(dummies.swap_remove(i)).expect("free dummy");
        if rng.below(2) == 0 && !dummies.is_empty() {
            let j = rng.below(dummies.len());
            pool.free(dummies.swap_remove(j)).expect("free dummy");
        }
    }
    let seqs: Vec<SeqId> = lens.iter().map(|_| pool.create()).collect();
    let mut left: Vec<usize> = lens.to_vec();
    while left.iter().any(|&l| l > 0) {
        let i = rng.below(seqs.len());
        if left[i] == 0 {
            continue;
        }
        let n = (1 + rng.below(2 * bs + 5)).min(left[i]);
        pool.append(seqs[i], n).expect("append");
        left[i] -= n;
        // Sometimes a dummy grabs a block in between.
        if rng.below(3) == 0 && pool.free_blocks() > left.iter().map(|l| l.div_ceil(bs) + 1).sum::<usize>() {
            let d = pool.create();
            pool.append(d, 1).expect("dummy");
            dummies.push(d);
        }
    }
    for d in dummies {
        pool.free(d).expect("free dummy");
    }
    seqs
}

/// Whether some table is not in ascending physical order (the allocation really scattered).
pub fn tables_scattered(pool: &BlockPool, seqs: &[SeqId]) -> bool {
    seqs.iter().any(|&s| pool.block_table(s).unwrap().windows(2).any(|w| w[1] != w[0] + 1))
}

pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool")
}

/// Cosine similarity of two tensors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        d += x * y;
        na += x * x;
        nb += y * y;
    }
    d / (na.sqrt() * nb.sqrt())
}

/// Asserts two kernel outputs agree to tol + tol·|want| (tiles stop at block boundaries, so
/// the online softmax groups keys differently per block size; ±∞ must match, NaN never
/// appears).
pub fn assert_same(tol: f32, what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(!g.is_nan() && !w.is_nan(), "{what}[{i}]: NaN (got {g}, want {w}) — a poisoned row was read");
        if g == w {
            continue;
        }
        assert!((g - w).abs() <= tol + tol * w.abs(), "{what}[{i}]: got {g}, want {w}");
    }
}
