//! The plain reference: softmax(Q·Kᵀ·scale + mask)·V in f64, one (query, head) at a time.
//! Only tests and accuracy reports use it; it shares nothing with the fast kernels but the
//! mask definition ([`MaskSpec::visible`]).

use crate::flash::{AttnShape, MaskSpec};

/// One sequence for the reference: dense f32 keys `[S, Hkv, Dk]` and values `[S, Hkv, Dv]`.
pub struct RefSeq<'a> {
    pub q_len: usize,
    pub q_pos: usize,
    pub k: &'a [f32],
    pub v: &'a [f32],
}

/// Returns (`out` `[T, H, Dv]`, `lse` `[T, H]`) in f64. Empty or fully masked rows give 0
/// and −∞; a sink logit acts as one extra key with a zero value.
pub fn attention_ref(
    shape: AttnShape,
    scale: f64,
    mask: MaskSpec,
    sink_logits: Option<&[f32]>,
    q: &[f32],
    seqs: &[RefSeq],
) -> (Vec<f64>, Vec<f64>) {
    let AttnShape { heads, kv_heads, dk, dv } = shape;
    let g = heads / kv_heads;
    let t: usize = seqs.iter().map(|s| s.q_len).sum();
    let mut out = vec![0f64; t * heads * dv];
    let mut lse = vec![f64::NEG_INFINITY; t * heads];
    let mut row = 0;
    for s in seqs {
        let len = s.k.len() / (kv_heads * dk).max(1);
        for ti in 0..s.q_len {
            let pos = s.q_pos + ti;
            for h in 0..heads {
                let kh = h / g;
                let qv = &q[((row + ti) * heads + h) * dk..][..dk];
                let mut logits: Vec<(usize, f64)> = Vec::new();
                for j in 0..len {
                    if !mask.visible(pos, j) {
                        continue;
                    }
                    let kv = &s.k[(j * kv_heads + kh) * dk..][..dk];
                    let d: f64 = qv.iter().zip(kv).map(|(a, b)| *a as f64 * *b as f64).sum();
                    logits.push((j, d * scale));
                }
                let sink = sink_logits.map(|sl| sl[h] as f64);
                let mx = logits.iter().map(|x| x.1).chain(sink).fold(f64::NEG_INFINITY, f64::max);
                if mx == f64::NEG_INFINITY {
                    continue;
                }
                let mut denom = sink.map_or(0.0, |x| (x - mx).exp());
                let o = &mut out[((row + ti) * heads + h) * dv..][..dv];
                for &(j, lg) in &logits {
                    let w = (lg - mx).exp();
                    denom += w;
                    let vv = &s.v[(j * kv_heads + kh) * dv..][..dv];
                    for (oi, vi) in o.iter_mut().zip(vv) {
                        *oi += w * *vi as f64;
                    }
                }
                for oi in o.iter_mut() {
                    *oi /= denom;
                }
                lse[(row + ti) * heads + h] = mx + denom.ln();
            }
        }
        row += s.q_len;
    }
    (out, lse)
}

fn matvec64(w: &[f32], x: &[f64], out_dim: usize) -> Vec<f64> {
    let inp = x.len();
    (0..out_dim).map(|o| w[o * inp..(o + 1) * inp].iter().zip(x).map(|(a, b)| *a as f64 * b).sum()).collect()
}

fn rms64(x: &mut [f64], w: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps as f64).sqrt();
    for (v, g) in x.iter_mut().zip(w) {
        *v *= r * *g as f64;
    }
}

fn rope64(rope: &crate::rope::Rope, x: &mut [f64], pos: usize) {
    let half = rope.dims / 2;
    for i in 0..half {
        let (c, s) = rope.cos_sin(pos, i);
        let (c, s) = (c as f64, s as f64);
        let (a, b) = match rope.style {
            crate::rope::RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            crate::rope::RopeStyle::Neox => (i, i + half),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
    }
}

/// MLA straight from the equations in f64 (decompressed per-head keys and values, no
/// absorption, no cache): tokens `x` `[S, C]` at positions 0..S, causal; returns the
/// per-head outputs `[S − q0, H, V]` and the layer output `[S − q0, C]` of tokens q0..S.
pub fn mla_ref(m: &crate::mla::Mla, x: &[f32], s: usize, q0: usize) -> (Vec<f64>, Vec<f64>) {
    use crate::mla::QProj;
    let cfg = &m.cfg;
    let (c, h, r, n, p, v) = (cfg.hidden, cfg.heads, cfg.kv_lora_rank, cfg.nope, cfg.rope_dim, cfg.v_dim);
    let qk = n + p;
    let xs: Vec<Vec<f64>> = (0..s).map(|i| x[i * c..(i + 1) * c].iter().map(|&a| a as f64).collect()).collect();
    // Per token: latent c_j [R], rope key [P].
    let mut lat = Vec::new();
    for (j, xj) in xs.iter().enumerate() {
        let kv = matvec64(&m.w.w_dkv.data, xj, r + p);
        let mut cj = kv[..r].to_vec();
        rms64(&mut cj, &m.w.kv_norm, cfg.eps);
        let mut kr = kv[r..].to_vec();
        rope64(&cfg.rope, &mut kr, j);
        lat.push((cj, kr));
    }
    let scale = cfg.softmax_scale() as f64;
    let (w_uk, w_uv) = (m.w.w_uk.to_f32(), m.w.w_uv.to_f32());
    let mut o_all = Vec::new();
    let mut y_all = Vec::new();
    for (i, xi) in xs.iter().enumerate().skip(q0) {
        let q = match &m.w.q {
            QProj::Direct { w_q } => matvec64(&w_q.data, xi, h * qk),
            QProj::Lora { w_dq, q_norm, w_uq } => {
                let mut cq = matvec64(&w_dq.data, xi, q_norm.len());
                rms64(&mut cq, q_norm, cfg.eps);
                matvec64(&w_uq.data, &cq, h * qk)
            }
        };
        let mut o = vec![0f64; h * v];
        for hi in 0..h {
            let mut qh = q[hi * qk..(hi + 1) * qk].to_vec();
            rope64(&cfg.rope, &mut qh[n..], i);
            let wk = &w_uk[hi * n * r..(hi + 1) * n * r];
            let wv = &w_uv[hi * v * r..(hi + 1) * v * r];
            let mut logits = Vec::with_capacity(i + 1);
            for (cj, kr) in &lat[..=i] {
                let kn = matvec64(wk, cj, n);
                let d: f64 = qh[..n].iter().zip(&kn).map(|(a, b)| a * b).sum::<f64>()
                    + qh[n..].iter().zip(kr).map(|(a, b)| a * b).sum::<f64>();
                logits.push(d * scale);
            }
            let mx = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let ws: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
            let den: f64 = ws.iter().sum();
            for ((cj, _), w) in lat[..=i].iter().zip(&ws) {
                let vj = matvec64(wv, cj, v);
                for (oi, vi) in o[hi * v..(hi + 1) * v].iter_mut().zip(&vj) {
                    *oi += w / den * vi;
                }
            }
        }
        y_all.extend(matvec64(&m.w.w_o.data, &o, c));
        o_all.extend(o);
    }
    (o_all, y_all)
}
