//! The sampler selects the top-k survivors instead of sorting every logit; this checks that
//! it still picks exactly the tokens of the sort-based implementation it replaced (kept
//! below verbatim, with its RNG), over many seeds and settings.

use latent_engine::sampling::argmax;
use latent_engine::{Sampler, SamplingParams};

/// The sort-based sampler as it was before selection (commit c05a67c).
struct OldSampler {
    params: SamplingParams,
    state: u64,
}

impl OldSampler {
    fn new(params: SamplingParams) -> OldSampler {
        let state = params.seed ^ 0x9E37_79B9_7F4A_7C15;
        OldSampler { params, state }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = self.params.clone();
        let mut l: Vec<f32> = logits.to_vec();
        if p.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &history[start..] {
                if (t as usize) < l.len() && seen.insert(t) {
                    let v = &mut l[t as usize];
                    *v = if *v > 0.0 { *v / p.repeat_penalty } else { *v * p.repeat_penalty };
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(&l);
        }
        let mut idx: Vec<u32> = (0..l.len() as u32).collect();
        idx.sort_unstable_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
        if p.top_k > 0 {
            idx.truncate(p.top_k.max(1));
        }
        let m = l[idx[0] as usize];
        let mut probs: Vec<f64> = idx.iter().map(|&i| (((l[i as usize] - m) / p.temperature) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        for q in &mut probs {
            *q /= total;
        }
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let thr = probs[0] * p.min_p as f64;
            keep = probs.iter().take_while(|&&q| q >= thr).count().max(1);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut n = 0;
            for q in &probs[..keep] {
                acc += q;
                n += 1;
                if acc >= p.top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        let mass: f64 = probs[..keep].iter().sum();
        let mut r = self.uniform() * mass;
        for (i, q) in probs[..keep].iter().enumerate() {
            r -= q;
            if r <= 0.0 {
                return idx[i];
            }
        }
        idx[keep - 1]
    }
}

/// xorshift64* for the test's own inputs.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Logits of several shapes: smooth, coarsely quantized (many exact ties, so the id
/// tie-break matters), peaked, with −∞ entries, and all equal.
fn logits(g: &mut Gen, v: usize, kind: usize) -> Vec<f32> {
    (0..v)
        .map(|i| match kind {
            0 => (g.unit() - 0.5) * 20.0,
            1 => (g.below(7) as f32) - 3.0,
            2 => {
                if i % 97 == 3 {
                    12.0 + g.unit()
                } else {
                    g.unit() * 2.0 - 8.0
                }
            }
            3 => {
                if g.below(5) == 0 {
                    f32::NEG_INFINITY
                } else {
                    (g.unit() - 0.5) * 6.0
                }
            }
            4 => 0.25,
            _ => -((i % 13) as f32) * 0.5 + if i % 2 == 0 { 0.0 } else { -0.0 },
        })
        .collect()
}

#[test]
fn selection_sampler_matches_the_sort_based_one() {
    let mut g = Gen(0x5EED_1234_ABCD_0001);
    let temperatures = [0.0f32, 0.05, 0.3, 0.7, 1.0, 2.5];
    let top_ps = [0.0f32, 0.3, 0.9, 0.95, 1.0];
    let min_ps = [0.0f32, 0.01, 0.05, 0.5, 1.0];
    let penalties = [1.0f32, 0.8, 1.1, 1.5];
    let mut cases = 0;
    let mut distinct = std::collections::HashSet::new();
    for v in [1usize, 2, 3, 17, 100, 1000, 4099] {
        for kind in 0..6 {
            let l = logits(&mut g, v, kind);
            let top_ks = [0usize, 1, 2, 5, 40, v.saturating_sub(1), v, v + 7];
            for combo in 0..24 {
                let params = SamplingParams {
                    temperature: temperatures[g.below(temperatures.len())],
                    top_k: top_ks[g.below(top_ks.len())],
                    top_p: top_ps[g.below(top_ps.len())],
                    min_p: min_ps[g.below(min_ps.len())],
                    repeat_penalty: penalties[g.below(penalties.len())],
                    repeat_last_n: [0, 8, 64][g.below(3)],
                    seed: g.next(),
                };
                params.validate().expect("the test's settings are valid");
                // History with repeats, and ids past the vocabulary (ignored by both).
                let history: Vec<u32> = (0..g.below(100)).map(|_| g.below(v + 3) as u32).collect();
                let (mut new, mut old) = (Sampler::new(params.clone()), OldSampler::new(params.clone()));
                for step in 0..8 {
                    let (a, b) = (new.sample(&l, &history), old.sample(&l, &history));
                    assert_eq!(a, b, "V {v} kind {kind} combo {combo} step {step}: {params:?}");
                    distinct.insert((v, kind, a));
                    cases += 1;
                }
            }
        }
    }
    assert!(cases > 5000);
    assert!(distinct.len() > 200, "the draws cover many tokens, not just the argmax");
}
