//! Float64 twins of the architectures, written from the papers' equations and llama.cpp's
//! definitions (RoPE, YaRN, MoE routing) — not from the runtime's code. They read the same
//! GGUF file (weights dequantized by the plain twin, `latent_quant::dequantize_row_ref`),
//! run every token from scratch with no cache, and return the logits `[T, V]` of a whole
//! sequence. Slow by design; tests use them on tiny models.
//!
//! Attention under a StreamingLLM window (W, S) follows the rule of
//! [`latent_attention::StreamWindow`]: query p sees keys j ≤ p with j > p − W (rotated at p)
//! and sinks j < S outside that window (query rotated at min(p, S + W − 1)), in one softmax.
//!
//! Dimension legend: T tokens, C hidden, H heads, Hkv KV heads, D head dim, V vocabulary.

use crate::deepseek2::Deepseek2Config;
use crate::llama::LlamaConfig;
use crate::moe::Gating;
use crate::ModelError;
use latent_attention::{Rope, StreamWindow};
use latent_formats::gguf::GgufFile;
use latent_quant::WeightType;

/// A tensor dequantized to f64, row-major `[rows, cols]` (GGUF dims `[cols, rows, …]`).
struct T64 {
    cols: usize,
    data: Vec<f64>,
}

impl T64 {
    fn load(f: &GgufFile, name: &str) -> Result<T64, ModelError> {
        let t = f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        let wtype = WeightType::from_ggml_id(t.ggml_type.id())
            .ok_or_else(|| ModelError::TensorType { name: name.into(), ty: t.ggml_type.name().to_string() })?;
        let cols = t.dims[0] as usize;
        let rows = t.n_elements() as usize / cols.max(1);
        let rb = wtype.row_bytes(cols)?;
        let bytes = f.tensor_data(t);
        let mut row = vec![0f32; cols];
        let mut data = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            latent_quant::dequantize_row_ref(wtype, &bytes[r * rb..(r + 1) * rb], &mut row)?;
            data.extend(row.iter().map(|&v| v as f64));
        }
        Ok(T64 { cols, data })
    }
    fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
    /// W·x for the rows `rows` of W.
    fn mv_rows(&self, x: &[f64], rows: std::ops::Range<usize>) -> Vec<f64> {
        rows.map(|r| self.row(r).iter().zip(x).map(|(a, b)| a * b).sum()).collect()
    }
    fn mv(&self, x: &[f64]) -> Vec<f64> {
        self.mv_rows(x, 0..self.data.len() / self.cols)
    }
}

fn vec64(f: &GgufFile, name: &str) -> Result<Vec<f64>, ModelError> {
    Ok(T64::load(f, name)?.data)
}

fn rms(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * g).collect()
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// RoPE as llama.cpp defines it (`rope_yarn`), on pairs (2i, 2i+1) of the first `rope.dims`
/// elements of `x`, at position `p`.
fn rope64(rope: &Rope, x: &mut [f64], p: usize) {
    let d = rope.dims;
    let base = rope.base as f64;
    for i in 0..d / 2 {
        let extrap = p as f64 * base.powf(-2.0 * i as f64 / d as f64);
        let (theta, mscale) = match rope.yarn {
            None => (extrap, 1.0),
            Some(y) => {
                let fs = y.freq_scale as f64;
                let interp = fs * extrap;
                let mut mscale = y.attn_factor as f64;
                let mut theta = interp;
                if y.ext_factor != 0.0 {
                    // Correction dims: the pair index where a wavelength makes `rot` turns over
                    // the original context.
                    let corr = |rot: f64| {
                        d as f64 * (y.orig_ctx as f64 / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
                    };
                    let lo = corr(y.beta_fast as f64).floor().max(0.0);
                    let hi = corr(y.beta_slow as f64).ceil().min(d as f64 - 1.0);
                    let ramp = 1.0 - ((i as f64 - lo) / (hi - lo).max(0.001)).clamp(0.0, 1.0);
                    let mix = ramp * y.ext_factor as f64;
                    theta = interp * (1.0 - mix) + extrap * mix;
                    mscale *= 1.0 + 0.1 * (1.0 / fs).ln();
                }
                (theta, mscale)
            }
        };
        let (c, s) = (theta.cos() * mscale, theta.sin() * mscale);
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

/// Keys visible to the query at `p`, each with the position the query is rotated at.
fn visible(p: usize, window: Option<StreamWindow>) -> Vec<(usize, usize)> {
    match window {
        None => (0..=p).map(|j| (j, p)).collect(),
        Some(w) => (0..=p)
            .filter_map(|j| {
                if j + w.window > p {
                    Some((j, p))
                } else if j < w.sinks {
                    Some((j, p.min(w.sinks + w.window - 1)))
                } else {
                    None
                }
            })
            .collect(),
    }
}

/// Softmax-weighted sum of `values(j)` with logits `logit(j, qpos)` over `keys`.
fn attend64(
    keys: &[(usize, usize)],
    logit: impl Fn(usize, usize) -> f64,
    values: impl Fn(usize) -> Vec<f64>,
    dv: usize,
) -> Vec<f64> {
    let l: Vec<f64> = keys.iter().map(|&(j, qp)| logit(j, qp)).collect();
    let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = l.iter().map(|v| (v - m).exp()).collect();
    let den: f64 = w.iter().sum();
    let mut o = vec![0f64; dv];
    for (&(j, _), wj) in keys.iter().zip(&w) {
        for (a, b) in o.iter_mut().zip(values(j)) {
            *a += wj / den * b;
        }
    }
    o
}

fn embed_and_head(f: &GgufFile) -> Result<(T64, T64), ModelError> {
    let embd = T64::load(f, "token_embd.weight")?;
    let out = if f.tensor("output.weight").is_some() {
        T64::load(f, "output.weight")?
    } else {
        T64::load(f, "token_embd.weight")?
    };
    Ok((embd, out))
}

/// Llama logits `[T, V]` of `tokens` at positions 0.., in f64.
pub fn llama_forward(f: &GgufFile, tokens: &[u32], window: Option<StreamWindow>) -> Result<Vec<f64>, ModelError> {
    let cfg = LlamaConfig::from_gguf(f)?;
    let (h, hk, d) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
    let eps = cfg.eps as f64;
    let (embd, out) = embed_and_head(f)?;
    let mut xs: Vec<Vec<f64>> = tokens.iter().map(|&t| embd.row(t as usize).to_vec()).collect();
    for l in 0..cfg.layers {
        let w = |s: &str| T64::load(f, &format!("blk.{l}.{s}.weight"));
        let (wq, wk, wv, wo) = (w("attn_q")?, w("attn_k")?, w("attn_v")?, w("attn_output")?);
        let an = vec64(f, &format!("blk.{l}.attn_norm.weight"))?;
        let xn: Vec<Vec<f64>> = xs.iter().map(|x| rms(x, &an, eps)).collect();
        let q: Vec<Vec<f64>> = xn.iter().map(|x| wq.mv(x)).collect(); // [H·D] each, before RoPE
        let k: Vec<Vec<f64>> = xn
            .iter()
            .enumerate()
            .map(|(j, x)| {
                let mut k = wk.mv(x);
                for g in 0..hk {
                    rope64(&cfg.rope, &mut k[g * d..(g + 1) * d], j);
                }
                k
            })
            .collect();
        let v: Vec<Vec<f64>> = xn.iter().map(|x| wv.mv(x)).collect();
        let scale = 1.0 / (d as f64).sqrt();
        for (p, x) in xs.iter_mut().enumerate() {
            let keys = visible(p, window);
            let mut o = Vec::with_capacity(h * d);
            for hi in 0..h {
                let g = hi / (h / hk);
                let qh = |qp: usize| {
                    let mut qh = q[p][hi * d..(hi + 1) * d].to_vec();
                    rope64(&cfg.rope, &mut qh, qp);
                    qh
                };
                o.extend(attend64(
                    &keys,
                    |j, qp| dot(&qh(qp), &k[j][g * d..(g + 1) * d]) * scale,
                    |j| v[j][g * d..(g + 1) * d].to_vec(),
                    d,
                ));
            }
            for (a, b) in x.iter_mut().zip(wo.mv(&o)) {
                *a += b;
            }
        }
        let fnorm = vec64(f, &format!("blk.{l}.ffn_norm.weight"))?;
        let (wg, wu, wd) = (w("ffn_gate")?, w("ffn_up")?, w("ffn_down")?);
        for x in xs.iter_mut() {
            let xn = rms(x, &fnorm, eps);
            let a: Vec<f64> = wg.mv(&xn).iter().zip(wu.mv(&xn)).map(|(g, u)| silu(*g) * u).collect();
            for (a, b) in x.iter_mut().zip(wd.mv(&a)) {
                *a += b;
            }
        }
    }
    head(f, &xs, &out, eps)
}

fn head(f: &GgufFile, xs: &[Vec<f64>], out: &T64, eps: f64) -> Result<Vec<f64>, ModelError> {
    let on = vec64(f, "output_norm.weight")?;
    Ok(xs.iter().flat_map(|x| out.mv(&rms(x, &on, eps))).collect())
}

/// DeepSeek-V2/V3 logits `[T, V]` of `tokens` at positions 0.., in f64: MLA with per-head
/// keys and values decompressed from the latent (no absorption), MoE per the routing rules.
pub fn deepseek2_forward(f: &GgufFile, tokens: &[u32], window: Option<StreamWindow>) -> Result<Vec<f64>, ModelError> {
    let cfg = Deepseek2Config::from_gguf(f)?;
    let (h, r, n, p, v) = (cfg.heads, cfg.kv_lora, cfg.nope, cfg.rope_dim, cfg.v_dim);
    let eps = cfg.eps as f64;
    let (embd, out) = embed_and_head(f)?;
    let mut xs: Vec<Vec<f64>> = tokens.iter().map(|&t| embd.row(t as usize).to_vec()).collect();
    let scale = cfg.scale_mult as f64 / ((n + p) as f64).sqrt();
    for l in 0..cfg.layers {
        let w = |s: &str| T64::load(f, &format!("blk.{l}.{s}.weight"));
        let has = |s: &str| f.tensor(&format!("blk.{l}.{s}.weight")).is_some();
        let an = vec64(f, &format!("blk.{l}.attn_norm.weight"))?;
        let xn: Vec<Vec<f64>> = xs.iter().map(|x| rms(x, &an, eps)).collect();
        // Queries [H, N+P] per token, before RoPE.
        let q: Vec<Vec<f64>> = if let Some(_rq) = cfg.q_lora {
            let (qa, qb) = (w("attn_q_a")?, w("attn_q_b")?);
            let qn = vec64(f, &format!("blk.{l}.attn_q_a_norm.weight"))?;
            xn.iter().map(|x| qb.mv(&rms(&qa.mv(x), &qn, eps))).collect()
        } else {
            let wq = w("attn_q")?;
            xn.iter().map(|x| wq.mv(x)).collect()
        };
        // Latent c_j [R] (normed) and the shared rope key [P] (rotated at j).
        let kva = w("attn_kv_a_mqa")?;
        let kvn = vec64(f, &format!("blk.{l}.attn_kv_a_norm.weight"))?;
        let lat: Vec<(Vec<f64>, Vec<f64>)> = xn
            .iter()
            .enumerate()
            .map(|(j, x)| {
                let kv = kva.mv(x);
                let mut kr = kv[r..].to_vec();
                rope64(&cfg.rope, &mut kr, j);
                (rms(&kv[..r], &kvn, eps), kr)
            })
            .collect();
        // Up-projections per head: k_nope_h = UK_h · c `[N]`, v_h = UV_h · c `[V]`.
        let (uk, uv): (Vec<Vec<f64>>, Vec<Vec<f64>>) = if has("attn_k_b") {
            // attn_k_b {N, R, H}: head h is [R rows, N cols]; attn_v_b {R, V, H}: [V rows, R cols].
            let kb = w("attn_k_b")?;
            let vb = w("attn_v_b")?;
            let uk = (0..h)
                .map(|hi| {
                    let mut m = vec![0f64; n * r]; // [N, R]
                    for ri in 0..r {
                        for ni in 0..n {
                            m[ni * r + ri] = kb.row(hi * r + ri)[ni];
                        }
                    }
                    m
                })
                .collect();
            let uv = (0..h).map(|hi| (0..v).flat_map(|vi| vb.row(hi * v + vi).to_vec()).collect()).collect();
            (uk, uv)
        } else {
            // attn_kv_b {R, H·(N+V)}: head h rows [k_nope (N); v (V)], each [R].
            let kvb = w("attn_kv_b")?;
            let uk = (0..h).map(|hi| (0..n).flat_map(|ni| kvb.row(hi * (n + v) + ni).to_vec()).collect()).collect();
            let uv = (0..h).map(|hi| (0..v).flat_map(|vi| kvb.row(hi * (n + v) + n + vi).to_vec()).collect()).collect();
            (uk, uv)
        };
        let mv = |m: &[f64], rows: usize, x: &[f64]| -> Vec<f64> {
            (0..rows).map(|i| dot(&m[i * x.len()..(i + 1) * x.len()], x)).collect()
        };
        let keys_nope: Vec<Vec<Vec<f64>>> =
            lat.iter().map(|(c, _)| (0..h).map(|hi| mv(&uk[hi], n, c)).collect()).collect();
        let vals: Vec<Vec<Vec<f64>>> = lat.iter().map(|(c, _)| (0..h).map(|hi| mv(&uv[hi], v, c)).collect()).collect();
        let wo = w("attn_output")?;
        for (pi, x) in xs.iter_mut().enumerate() {
            let keys = visible(pi, window);
            let mut o = Vec::with_capacity(h * v);
            for hi in 0..h {
                let qh = &q[pi][hi * (n + p)..(hi + 1) * (n + p)];
                let qr = |qp: usize| {
                    let mut qr = qh[n..].to_vec();
                    rope64(&cfg.rope, &mut qr, qp);
                    qr
                };
                o.extend(attend64(
                    &keys,
                    |j, qp| (dot(&qh[..n], &keys_nope[j][hi]) + dot(&qr(qp), &lat[j].1)) * scale,
                    |j| vals[j][hi].clone(),
                    v,
                ));
            }
            for (a, b) in x.iter_mut().zip(wo.mv(&o)) {
                *a += b;
            }
        }
        // FFN: dense, or MoE.
        let fnorm = vec64(f, &format!("blk.{l}.ffn_norm.weight"))?;
        let swiglu =
            |g: &T64, u: &T64, d: &T64, x: &[f64], rows: std::ops::Range<usize>, drows: std::ops::Range<usize>| {
                let a: Vec<f64> =
                    g.mv_rows(x, rows.clone()).iter().zip(u.mv_rows(x, rows)).map(|(g, u)| silu(*g) * u).collect();
                // down rows of this expert: [C, F] slice
                drows.map(|ri| dot(d.row(ri), &a)).collect::<Vec<f64>>()
            };
        if l < cfg.dense_layers {
            let (wg, wu, wd) = (w("ffn_gate")?, w("ffn_up")?, w("ffn_down")?);
            for x in xs.iter_mut() {
                let xn = rms(x, &fnorm, eps);
                let y = swiglu(&wg, &wu, &wd, &xn, 0..cfg.ffn, 0..cfg.hidden);
                for (a, b) in x.iter_mut().zip(y) {
                    *a += b;
                }
            }
            continue;
        }
        let m = &cfg.moe;
        let (c, ff, e) = (cfg.hidden, m.ffn, m.experts);
        let router = w("ffn_gate_inp")?;
        let bias = if f.tensor(&format!("blk.{l}.exp_probs_b.bias")).is_some() {
            Some(vec64(f, &format!("blk.{l}.exp_probs_b.bias"))?)
        } else {
            None
        };
        let (eg, eu, ed) = (w("ffn_gate_exps")?, w("ffn_up_exps")?, w("ffn_down_exps")?);
        let shared =
            if m.shared > 0 { Some((w("ffn_gate_shexp")?, w("ffn_up_shexp")?, w("ffn_down_shexp")?)) } else { None };
        for x in xs.iter_mut() {
            let xn = rms(x, &fnorm, eps);
            let logits = router.mv(&xn);
            let probs: Vec<f64> = match m.gating {
                Gating::Softmax => {
                    let mx = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = logits.iter().map(|v| (v - mx).exp()).sum();
                    logits.iter().map(|v| (v - mx).exp() / s).collect()
                }
                Gating::Sigmoid => logits.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
            };
            // Selection scores: probabilities plus the bias; group-limited routing keeps the
            // experts of the `groups_used` groups whose two best scores sum highest.
            let sel: Vec<f64> =
                probs.iter().enumerate().map(|(i, p)| p + bias.as_ref().map_or(0.0, |b| b[i])).collect();
            let mut eligible = vec![true; e];
            if m.groups > 1 {
                let per = e / m.groups;
                let mut gs: Vec<(f64, usize)> = (0..m.groups)
                    .map(|g| {
                        let mut s: Vec<f64> = sel[g * per..(g + 1) * per].to_vec();
                        s.sort_by(|a, b| b.total_cmp(a));
                        (s.iter().take(2).sum(), g)
                    })
                    .collect();
                gs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                for &(_, g) in &gs[m.groups_used..] {
                    eligible[g * per..(g + 1) * per].iter_mut().for_each(|v| *v = false);
                }
            }
            let mut order: Vec<usize> = (0..e).filter(|&i| eligible[i]).collect();
            order.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]).then(a.cmp(&b)));
            order.truncate(m.used);
            let mut wts: Vec<f64> = order.iter().map(|&i| probs[i]).collect();
            if m.norm_weights {
                let s: f64 = wts.iter().sum();
                wts.iter_mut().for_each(|v| *v /= s.max(6.103_515_6e-5));
            }
            let mut y = vec![0f64; c];
            for (&ei, wi) in order.iter().zip(&wts) {
                let o = swiglu(&eg, &eu, &ed, &xn, ei * ff..(ei + 1) * ff, ei * c..(ei + 1) * c);
                for (a, b) in y.iter_mut().zip(o) {
                    *a += wi * m.weights_scale as f64 * b;
                }
            }
            if let Some((g, u, d)) = &shared {
                let o = swiglu(g, u, d, &xn, 0..m.shared * ff, 0..c);
                for (a, b) in y.iter_mut().zip(o) {
                    *a += b;
                }
            }
            for (a, b) in x.iter_mut().zip(y) {
                *a += b;
            }
        }
    }
    head(f, &xs, &out, eps)
}
