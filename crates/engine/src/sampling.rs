//! Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded.
//! The same seed and settings give the same tokens.
//!
//! Candidates are ordered by logit (descending, lower id first on equal logits, by
//! `f32::total_cmp`). With top-k the k survivors are found by selection and only they are
//! sorted, so a step costs O(V + k log k) instead of O(V log V); the order is a strict total
//! order, so the result is the same as sorting the whole vocabulary.

/// A sampling setting that cannot be used (see [`SamplingParams::validate`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// `setting` is NaN, infinite, or outside its range.
    #[error("{setting} must be {rule}, got {value}")]
    OutOfRange { setting: &'static str, rule: &'static str, value: f32 },
}

/// Sampling settings. Temperature 0 is greedy.
#[derive(Clone, Debug)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables; > 1 penalises tokens seen in the last `repeat_last_n`.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks every float setting where it enters: temperature finite and ≥ 0, top-p and
    /// min-p finite in [0, 1], repeat penalty finite and > 0 (NaN and ±∞ are refused).
    pub fn validate(&self) -> Result<(), SamplingError> {
        let check = |setting, rule, value: f32, ok: bool| {
            if value.is_finite() && ok {
                Ok(())
            } else {
                Err(SamplingError::OutOfRange { setting, rule, value })
            }
        };
        check("temperature", "a finite number ≥ 0", self.temperature, self.temperature >= 0.0)?;
        check("top-p", "a finite number in [0, 1]", self.top_p, (0.0..=1.0).contains(&self.top_p))?;
        check("min-p", "a finite number in [0, 1]", self.min_p, (0.0..=1.0).contains(&self.min_p))?;
        check("repeat penalty", "a finite number > 0", self.repeat_penalty, self.repeat_penalty > 0.0)?;
        Ok(())
    }
}

/// A sampler with its own RNG state.
pub struct Sampler {
    pub params: SamplingParams,
    state: u64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let state = params.seed ^ 0x9E37_79B9_7F4A_7C15;
        Sampler { params, state }
    }

    fn uniform(&mut self) -> f64 {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token from `logits` `[V]` given the `history` of tokens so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
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
        // Candidates by logit (a strict total order: ties broken by id), truncated by top-k:
        // the k survivors are selected, and only they are sorted.
        let order = |a: &u32, b: &u32| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b));
        let mut idx: Vec<u32> = (0..l.len() as u32).collect();
        if p.top_k > 0 && p.top_k < idx.len() {
            idx.select_nth_unstable_by(p.top_k - 1, order);
            idx.truncate(p.top_k);
        }
        idx.sort_unstable_by(order);
        let m = l[idx[0] as usize];
        let mut probs: Vec<f64> = idx.iter().map(|&i| (((l[i as usize] - m) / p.temperature) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        for q in &mut probs {
            *q /= total;
        }
        // min-p: drop tokens below min_p × the top probability.
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let thr = probs[0] * p.min_p as f64;
            keep = probs.iter().take_while(|&&q| q >= thr).count().max(1);
        }
        // top-p: smallest prefix whose mass reaches top_p.
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

/// Index of the largest logit (lowest index on ties).
pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in l.iter().enumerate() {
        if *v > l[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let l = logits();
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&l, &[]), argmax(&l));
        assert_eq!(l[argmax(&l) as usize], l.iter().copied().fold(f32::MIN, f32::max));
    }

    #[test]
    fn same_seed_same_tokens_and_filters_hold() {
        let l = logits();
        let p = SamplingParams { temperature: 1.0, top_k: 5, seed: 7, ..Default::default() };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&l, &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&l, &[])).collect()
        };
        assert_eq!(a, b);
        let mut top5: Vec<u32> = (0..100).collect();
        top5.sort_by(|&x, &y| l[y as usize].total_cmp(&l[x as usize]));
        top5.truncate(5);
        assert!(a.iter().all(|t| top5.contains(t)), "top-k respected");
        assert!(
            a.iter().collect::<std::collections::HashSet<_>>().len() > 1,
            "temperature 1 samples more than one token"
        );
        let c: Vec<u32> = {
            let mut s = Sampler::new(SamplingParams { seed: 8, ..p });
            (0..50).map(|_| s.sample(&l, &[])).collect()
        };
        assert_ne!(a, c, "another seed, another stream");
        // top-p tiny → always the argmax; min-p 1 → always the argmax.
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 1e-6, seed: 1, ..Default::default() });
        assert!((0..20).all(|_| s.sample(&l, &[]) == argmax(&l)));
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, min_p: 1.0, seed: 1, ..Default::default() });
        assert!((0..20).all(|_| s.sample(&l, &[]) == argmax(&l)));
    }

    #[test]
    fn non_finite_or_out_of_range_settings_are_refused() {
        assert_eq!(SamplingParams::default().validate(), Ok(()));
        let ok = SamplingParams { temperature: 0.7, top_k: 40, top_p: 0.95, min_p: 0.05, ..Default::default() };
        assert_eq!(ok.validate(), Ok(()));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let cases = [
                SamplingParams { temperature: bad, ..ok.clone() },
                SamplingParams { top_p: bad, ..ok.clone() },
                SamplingParams { min_p: bad, ..ok.clone() },
                SamplingParams { repeat_penalty: bad, ..ok.clone() },
            ];
            for c in cases {
                assert!(c.validate().is_err(), "{c:?}");
            }
        }
        for c in [
            SamplingParams { temperature: -0.1, ..ok.clone() },
            SamplingParams { top_p: 1.5, ..ok.clone() },
            SamplingParams { min_p: -0.5, ..ok.clone() },
            SamplingParams { repeat_penalty: 0.0, ..ok.clone() },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let e = SamplingParams { repeat_penalty: f32::NAN, ..ok }.validate().unwrap_err();
        assert_eq!(e.to_string(), "repeat penalty must be a finite number > 0, got NaN");
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut l = vec![0.0f32; 10];
        l[3] = 2.0;
        l[4] = 1.9;
        let mut s = Sampler::new(SamplingParams { repeat_penalty: 1.5, ..Default::default() });
        assert_eq!(s.sample(&l, &[3]), 4);
        assert_eq!(s.sample(&l, &[]), 3);
    }
}
