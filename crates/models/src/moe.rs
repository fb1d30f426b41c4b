//! Mixture-of-experts FFN (DeepSeek-V2/V3 style): router → gating (softmax or sigmoid) →
//! optional selection bias → optional group-limited routing → top-k → optional
//! renormalisation → scale; routed experts run only on the tokens routed to them; shared
//! experts run on every token.

use crate::blocks::{matmul, swiglu_ffn};
use crate::weights::{linear, Linear};
use crate::{Exec, ModelError};
use latent_formats::gguf::GgufFile;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    Softmax,
    Sigmoid,
}

#[derive(Clone, Debug)]
pub struct MoeConfig {
    pub experts: usize,
    pub used: usize,
    pub shared: usize,
    /// Per-expert FFN width.
    pub ffn: usize,
    pub gating: Gating,
    pub norm_weights: bool,
    pub weights_scale: f32,
    /// Group-limited routing: experts split into `groups` groups, only the best
    /// `groups_used` groups (by the sum of their top-2 scores) are eligible. 0 = off.
    pub groups: usize,
    pub groups_used: usize,
}

pub struct MoeLayer {
    router: Linear,                           // [E, C]
    bias: Option<Vec<f32>>,                   // [E] selection bias (exp_probs_b)
    gate: Linear,                             // [E·F, C]
    up: Linear,                               // [E·F, C]
    down: Linear,                             // [E·C, F]
    shared: Option<(Linear, Linear, Linear)>, // [S·F, C], [S·F, C], [C, S·F]
    hidden: usize,
}

fn expert_linear(f: &GgufFile, name: &str, e: usize, rows: usize, cols: usize) -> Result<Linear, ModelError> {
    let t = f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    let want = [cols as u64, rows as u64, e as u64];
    if t.dims != want {
        return Err(ModelError::Shape { name: name.into(), expected: want.to_vec(), found: t.dims.clone() });
    }
    // An [E, rows, cols] stack is an [E·rows, cols] matrix; expert i owns rows i·rows..(i+1)·rows.
    crate::weights::linear_dims(f, name, e * rows, cols, &want)
}

impl MoeLayer {
    pub fn load(f: &GgufFile, l: usize, c: usize, cfg: &MoeConfig) -> Result<MoeLayer, ModelError> {
        let nm = |s: &str| format!("blk.{l}.{s}.weight");
        let (e, ff) = (cfg.experts, cfg.ffn);
        if e == 0 || cfg.used == 0 || cfg.used > e || ff == 0 {
            return Err(ModelError::Metadata {
                key: "deepseek2.expert_count".into(),
                msg: format!("{e} experts, {} used, width {ff}", cfg.used),
            });
        }
        if cfg.groups > 0 && (e % cfg.groups != 0 || cfg.groups_used == 0 || cfg.groups_used > cfg.groups) {
            return Err(ModelError::Metadata {
                key: "deepseek2.expert_group_count".into(),
                msg: format!("{} groups, {} used, {e} experts", cfg.groups, cfg.groups_used),
            });
        }
        let bias_name = format!("blk.{l}.exp_probs_b.bias");
        let bias = if f.tensor(&bias_name).is_some() { Some(crate::weights::vector(f, &bias_name, e)?) } else { None };
        let shared = if cfg.shared > 0 {
            let sf = cfg.shared * ff;
            Some((
                linear(f, &nm("ffn_gate_shexp"), sf, c)?,
                linear(f, &nm("ffn_up_shexp"), sf, c)?,
                linear(f, &nm("ffn_down_shexp"), c, sf)?,
            ))
        } else {
            None
        };
        Ok(MoeLayer {
            router: linear(f, &nm("ffn_gate_inp"), e, c)?,
            bias,
            gate: expert_linear(f, &nm("ffn_gate_exps"), e, ff, c)?,
            up: expert_linear(f, &nm("ffn_up_exps"), e, ff, c)?,
            down: expert_linear(f, &nm("ffn_down_exps"), e, c, ff)?,
            shared,
            hidden: c,
        })
    }
}

/// Routes one token: returns (expert, weight) pairs. `logits` `[E]`.
pub fn route(cfg: &MoeConfig, logits: &[f32], bias: Option<&[f32]>) -> Vec<(usize, f32)> {
    let e = logits.len();
    let probs: Vec<f32> = match cfg.gating {
        Gating::Softmax => {
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let ex: Vec<f32> = logits.iter().map(|v| (v - m).exp()).collect();
            let s: f32 = ex.iter().sum();
            ex.iter().map(|v| v / s).collect()
        }
        Gating::Sigmoid => logits.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
    };
    let mut sel: Vec<f32> = match bias {
        Some(b) => probs.iter().zip(b).map(|(p, b)| p + b).collect(),
        None => probs.clone(),
    };
    if cfg.groups > 1 {
        let per = e / cfg.groups;
        let mut scores: Vec<(usize, f32)> = (0..cfg.groups)
            .map(|g| {
                let mut v: Vec<f32> = sel[g * per..(g + 1) * per].to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                (g, v.iter().take(2).sum())
            })
            .collect();
        scores.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for &(g, _) in &scores[cfg.groups_used..] {
            for s in &mut sel[g * per..(g + 1) * per] {
                *s = f32::NEG_INFINITY;
            }
        }
    }
    let mut idx: Vec<usize> = (0..e).collect();
    idx.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]).then(a.cmp(&b)));
    idx.truncate(cfg.used);
    let mut w: Vec<f32> = idx.iter().map(|&i| probs[i]).collect();
    if cfg.norm_weights {
        let s: f32 = w.iter().sum::<f32>().max(6.103_515_6e-5);
        for x in &mut w {
            *x /= s;
        }
    }
    for x in &mut w {
        *x *= cfg.weights_scale;
    }
    idx.into_iter().zip(w).collect()
}

/// The MoE FFN of `x` `[T, C]` → `[T, C]`.
pub fn moe_ffn(
    ex: &Exec,
    f: &GgufFile,
    m: &MoeLayer,
    cfg: &MoeConfig,
    x: &[f32],
    t: usize,
) -> Result<Vec<f32>, ModelError> {
    let c = m.hidden;
    let ff = cfg.ffn;
    let logits = matmul(ex, f, &m.router, x, t)?; // [T, E]
                                                  // Tokens per expert, with their weights.
    let mut per_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); cfg.experts];
    for ti in 0..t {
        for (e, w) in route(cfg, &logits[ti * cfg.experts..(ti + 1) * cfg.experts], m.bias.as_deref()) {
            per_expert[e].push((ti, w));
        }
    }
    let mut y = vec![0f32; t * c];
    for (e, toks) in per_expert.iter().enumerate() {
        if toks.is_empty() {
            continue;
        }
        let n = toks.len();
        let mut xs = vec![0f32; n * c]; // [n, C] the routed tokens only
        for (i, &(ti, _)) in toks.iter().enumerate() {
            xs[i * c..(i + 1) * c].copy_from_slice(&x[ti * c..(ti + 1) * c]);
        }
        let rows = e * ff..(e + 1) * ff;
        let gate = m.gate.sub_rows(rows.clone());
        let up = m.up.sub_rows(rows);
        let down = m.down.sub_rows(e * c..(e + 1) * c);
        let o = swiglu_ffn(ex, f, (&gate, &up, &down), &xs, n)?; // [n, C]
        for (i, &(ti, w)) in toks.iter().enumerate() {
            for (yv, ov) in y[ti * c..(ti + 1) * c].iter_mut().zip(&o[i * c..(i + 1) * c]) {
                *yv += w * ov;
            }
        }
    }
    if let Some((g, u, d)) = &m.shared {
        let s = swiglu_ffn(ex, f, (g, u, d), x, t)?;
        for (a, b) in y.iter_mut().zip(&s) {
            *a += b;
        }
    }
    Ok(y)
}
