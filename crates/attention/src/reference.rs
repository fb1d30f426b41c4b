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
    let AttnShape {
        heads,
        kv_heads,
        dk,
        dv,
    } = shape;
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
                let mx = logits
                    .iter()
                    .map(|x| x.1)
                    .chain(sink)
                    .fold(f64::NEG_INFINITY, f64::max);
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
