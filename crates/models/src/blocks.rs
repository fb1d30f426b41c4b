//! Building blocks shared by the architectures: embedding lookup, RMSNorm, threaded
//! matrix products against file-backed weights, RoPE over heads, attention over the lent
//! cache, SwiGLU.

use crate::weights::Linear;
use crate::{CacheAccess, Exec, ModelError};
use latent_attention::{AttnParams, AttnShape, MaskSpec, RopeAngles, SeqSpec};
use latent_formats::gguf::GgufFile;
use latent_quant::{MatmulPrecision, WeightType};

/// Embedding rows `[T, C]` of `tokens` from `table` `[V, C]`.
pub fn embed(file: &GgufFile, table: &Linear, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
    let c = table.cols;
    let mut x = vec![0f32; tokens.len() * c];
    for (i, &tok) in tokens.iter().enumerate() {
        if tok as usize >= table.rows {
            return Err(ModelError::Token { id: tok, vocab: table.rows });
        }
        let row = table.rows_of(file, tok as usize..tok as usize + 1);
        latent_quant::dequantize_row(table.wtype, row.data, &mut x[i * c..(i + 1) * c])?;
    }
    Ok(x)
}

/// RMSNorm of each row of `x` `[T, C]` into a new buffer.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut y = x.to_vec();
    latent_attention::linear::rms_norm(&mut y, w, eps);
    y
}

/// y `[T, N]` = x `[T, K]` · Wᵀ on the pool. A single row splits the weight rows into one
/// contiguous chunk per thread (weights stream once, no activation copies); several rows use
/// the blocked multi-row kernel split the same way.
pub fn matmul(ex: &Exec, file: &GgufFile, w: &Linear, x: &[f32], t: usize) -> Result<Vec<f32>, ModelError> {
    let mut y = vec![0f32; t * w.rows];
    let threads = ex.pool.current_num_threads();
    let p = effective_precision(ex.precision, w.wtype);
    if threads <= 1 || w.rows * w.cols < 64 * 1024 {
        latent_quant::matmul(p, &w.mat(file), x, &mut y, t)?;
    } else if t == 1 {
        let chunk = w.rows.div_ceil(threads).next_multiple_of(4);
        let results: Vec<Result<(), latent_quant::QuantError>> = ex.pool.install(|| {
            use rayon::prelude::*;
            y.par_chunks_mut(chunk)
                .enumerate()
                .map(|(i, ys)| {
                    let r0 = i * chunk;
                    latent_quant::matmul(p, &w.rows_of(file, r0..r0 + ys.len()), x, ys, 1)
                })
                .collect()
        });
        results.into_iter().collect::<Result<(), _>>()?;
    } else {
        latent_quant::matmul_par(ex.pool, p, &w.mat(file), x, &mut y, t)?;
    }
    Ok(y)
}

fn effective_precision(p: MatmulPrecision, _w: WeightType) -> MatmulPrecision {
    p
}

/// Applies RoPE to the first `rot` dims of each of the `heads` heads (`dim` each) of every
/// token `x` `[T, heads, dim]`, token i at `angles[i]`.
pub fn rope_heads(x: &mut [f32], heads: usize, dim: usize, angles: &[RopeAngles]) {
    for (i, a) in angles.iter().enumerate() {
        for h in 0..heads {
            a.apply(&mut x[(i * heads + h) * dim..][..dim]);
        }
    }
}

/// SwiGLU: silu(gate) ⊙ up, in place into `gate`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// x += y
pub fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Causal GQA attention of `q` `[T, H, D]` (positions pos0..) over the cache after storing
/// this pass's `k`, `v` `[T, Hkv, D]`. Returns `[T, H, D]`.
#[allow(clippy::too_many_arguments)]
pub fn gqa_attention(
    ex: &Exec,
    cache: &mut dyn CacheAccess,
    layer: usize,
    shape: AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos0: usize,
    t: usize,
) -> Result<Vec<f32>, ModelError> {
    let (hk, d) = (shape.kv_heads, shape.dk);
    for i in 0..t {
        cache.write_kv(layer, pos0 + i, &k[i * hk * d..(i + 1) * hk * d], &v[i * hk * d..(i + 1) * hk * d])?;
    }
    let view = cache.view(layer, pos0 + t)?;
    let params = AttnParams { shape, scale: 1.0 / (d as f32).sqrt(), mask: MaskSpec::CAUSAL, sink_logits: None };
    let mut out = vec![0f32; t * shape.heads * shape.dv];
    let mut lse = vec![0f32; t * shape.heads];
    let seqs = [SeqSpec { q_len: t, q_pos: pos0, kv: view }];
    ex.pool.install(|| {
        if t == 1 {
            latent_attention::decode(&params, q, &seqs, &mut out, &mut lse)
        } else {
            latent_attention::prefill(&params, q, &seqs, &mut out, &mut lse)
        }
    })?;
    Ok(out)
}
