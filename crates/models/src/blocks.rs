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

/// Several products of the same input `x` `[T, K]` (e.g. Q, K and V) in one parallel region:
/// for a single row the weight rows of all matrices are cut into one pool of chunks balanced
/// by bytes, so a decode step pays one fork/join for the group instead of one per matrix.
pub fn matmuls(ex: &Exec, file: &GgufFile, ws: &[&Linear], x: &[f32], t: usize) -> Result<Vec<Vec<f32>>, ModelError> {
    let threads = ex.pool.current_num_threads();
    if t != 1 || threads <= 1 {
        return ws.iter().map(|w| matmul(ex, file, w, x, t)).collect();
    }
    let total: usize = ws.iter().map(|w| w.bytes()).sum();
    let target = total.div_ceil(threads * 2).max(16 * 1024);
    // (matrix, row range) chunks.
    let mut chunks = Vec::new();
    for (mi, w) in ws.iter().enumerate() {
        let rb = (w.bytes() / w.rows.max(1)).max(1);
        let rows = (target / rb).max(4).next_multiple_of(4);
        let mut r = 0;
        while r < w.rows {
            let e = (r + rows).min(w.rows);
            chunks.push((mi, r..e));
            r = e;
        }
    }
    let results: Vec<Result<Vec<f32>, latent_quant::QuantError>> = ex.pool.install(|| {
        use rayon::prelude::*;
        chunks
            .par_iter()
            .map(|(mi, r)| {
                let w = ws[*mi];
                let mut y = vec![0f32; r.len()];
                latent_quant::matmul(
                    effective_precision(ex.precision, w.wtype),
                    &w.rows_of(file, r.clone()),
                    x,
                    &mut y,
                    1,
                )?;
                Ok(y)
            })
            .collect()
    });
    let mut out: Vec<Vec<f32>> = ws.iter().map(|w| Vec::with_capacity(w.rows)).collect();
    for ((mi, _), y) in chunks.iter().zip(results) {
        out[*mi].extend(y?);
    }
    Ok(out)
}

/// The precision a matrix actually runs at. Weights stored with 8 or more bits (Q8_0, and
/// the float types) keep f32 activations even in `Fast` mode: rounding activations to 8 bits
/// would be their dominant error, and these matrices (typically the output embedding) are
/// memory-bound either way.
fn effective_precision(p: MatmulPrecision, w: WeightType) -> MatmulPrecision {
    match w {
        WeightType::Q8_0 | WeightType::F16 | WeightType::BF16 | WeightType::F32 => MatmulPrecision::Exact,
        _ => p,
    }
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
