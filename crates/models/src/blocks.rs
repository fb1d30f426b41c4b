//! Building blocks shared by the architectures: embedding lookup, RMSNorm, threaded
//! matrix products against file-backed weights, RoPE over heads, attention over the lent
//! cache, SwiGLU.

use crate::weights::Linear;
use crate::{Exec, ModelError};
use latent_attention::{AttnError, AttnParams, Matrix, MatrixDims, Plan, RopeAngles, Runner, SeqSpec, Workers};
use latent_formats::gguf::GgufFile;
use latent_quant::{MatmulPrecision, WeightType};
use std::sync::Arc;

/// Embedding rows `[T, C]` of `tokens` from `table` `[V, C]`.
pub fn embed(file: &GgufFile, table: &Linear, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
    let c = table.cols;
    let mut x = vec![0f32; tokens.len() * c];
    for (i, &tok) in tokens.iter().enumerate() {
        if tok as usize >= table.rows {
            return Err(ModelError::Token { id: tok, vocab: table.rows });
        }
        let out = &mut x[i * c..(i + 1) * c];
        match table.packed() {
            // From the repacked copy: the file's pages of the table stay released.
            Some(pm) => pm.dequantize_row(tok as usize, out)?,
            None => {
                let row = table.rows_of(file, tok as usize..tok as usize + 1);
                latent_quant::dequantize_row(table.wtype, row.data, out)?;
            }
        }
    }
    Ok(x)
}

/// RMSNorm of each row of `x` `[T, C]` into a new buffer.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut y = x.to_vec();
    latent_attention::linear::rms_norm(&mut y, w, eps);
    y
}

/// y `[T, N]` = x `[T, K]` · Wᵀ. A single row (decode) splits the weight rows into chunks
/// balanced by bytes over the team (weights stream once, no activation copies); several rows
/// use the blocked multi-row kernel split over the pool.
pub fn matmul(ex: &Exec, file: &GgufFile, w: &Linear, x: &[f32], t: usize) -> Result<Vec<f32>, ModelError> {
    if t == 1 {
        return Ok(matmuls(ex, file, &[w], x, 1)?.pop().unwrap_or_default());
    }
    let mut y = vec![0f32; t * w.rows];
    let p = effective_precision(ex.precision, w.wtype);
    if let Some(pm) = packed_for(w, p) {
        let input = latent_quant::prepare_input(p, w.wtype, x, t, w.cols)?;
        if ex.pool.current_num_threads() <= 1 {
            latent_quant::matmul_packed_rows(pm, &input, &mut y, 0..w.rows)?;
        } else {
            latent_quant::matmul_packed_par(ex.pool, pm, &input, &mut y)?;
        }
        return Ok(y);
    }
    if ex.pool.current_num_threads() <= 1 || w.rows * w.cols < 64 * 1024 {
        latent_quant::matmul(p, &w.mat(file), x, &mut y, t)?;
    } else {
        latent_quant::matmul_par(ex.pool, p, &w.mat(file), x, &mut y, t)?;
    }
    Ok(y)
}

/// Several products of the same input `x` `[T, K]` (e.g. Q, K and V). For a single row the
/// weight rows of all matrices are cut into one set of chunks balanced by bytes and run as
/// one parallel loop, so a decode step pays one synchronisation per group of matrices.
pub fn matmuls(ex: &Exec, file: &GgufFile, ws: &[&Linear], x: &[f32], t: usize) -> Result<Vec<Vec<f32>>, ModelError> {
    let threads = ex.team.map_or(1, |tm| tm.threads());
    if t != 1 {
        return ws.iter().map(|w| matmul(ex, file, w, x, t)).collect();
    }
    let mut out: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.rows]).collect();
    let total: usize = ws.iter().map(|w| w.bytes()).sum();
    if threads <= 1 || total < 128 * 1024 {
        for (w, y) in ws.iter().zip(out.iter_mut()) {
            let p = effective_precision(ex.precision, w.wtype);
            match packed_for(w, p) {
                Some(pm) => {
                    let input = latent_quant::prepare_input(p, w.wtype, x, 1, w.cols)?;
                    latent_quant::matmul_packed_rows(pm, &input, y, 0..w.rows)?;
                }
                None => latent_quant::matmul(p, &w.mat(file), x, y, 1)?,
            }
        }
        return Ok(out);
    }
    // (matrix, first row, output chunk) per task, ~4 tasks per thread.
    let target = total.div_ceil(threads * 4).max(32 * 1024);
    let mut tasks = Vec::new();
    for (mi, (w, y)) in ws.iter().zip(out.iter_mut()).enumerate() {
        let rb = (w.bytes() / w.rows.max(1)).max(1);
        // Whole 16-row groups, so packed matrices split at group boundaries.
        let rows = (target / rb).max(16).next_multiple_of(16);
        for (ci, chunk) in y.chunks_mut(rows).enumerate() {
            tasks.push((mi, ci * rows, std::sync::Mutex::new(chunk)));
        }
    }
    // Activations are prepared (quantized, in Fast mode) once per weight type and precision
    // of the group, not once per matrix or task: Q, K and V of one type share one input.
    let mut inputs = Vec::new();
    let mut kinds = Vec::new();
    let mut input_of = Vec::with_capacity(ws.len());
    for w in ws {
        let kind = (effective_precision(ex.precision, w.wtype), w.wtype, w.cols);
        let i = match kinds.iter().position(|k| *k == kind) {
            Some(i) => i,
            None => {
                inputs.push(latent_quant::prepare_input(kind.0, w.wtype, x, 1, w.cols)?);
                kinds.push(kind);
                inputs.len() - 1
            }
        };
        input_of.push(i);
    }
    let errors = std::sync::Mutex::new(Vec::new());
    let run = |i: usize| {
        let (mi, r0, ref cell) = tasks[i];
        let w = ws[mi];
        let mut chunk = cell.lock().unwrap_or_else(|e| e.into_inner());
        let n = chunk.len();
        let r = match packed_for(w, effective_precision(ex.precision, w.wtype)) {
            Some(pm) => latent_quant::matmul_packed_rows(pm, &inputs[input_of[mi]], &mut chunk, r0..r0 + n),
            None => latent_quant::matmul_prepared_rows(
                &w.rows_of(file, r0..r0 + n),
                &inputs[input_of[mi]],
                &mut chunk,
                0..n,
            ),
        };
        if let Err(e) = r {
            errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
        }
    };
    match ex.team {
        Some(team) => team.run(tasks.len(), &run),
        None => (0..tasks.len()).for_each(run),
    }
    drop(tasks);
    if let Some(e) = errors.into_inner().unwrap_or_else(|e| e.into_inner()).pop() {
        return Err(e.into());
    }
    Ok(out)
}

/// The repacked copy of `w` when it serves precision `p`: the 4-bit types' packed kernels
/// take 8-bit activations (`Fast`), Q8_0's f32 activations (`Exact`, which Q8_0 always
/// runs at).
fn packed_for(w: &Linear, p: MatmulPrecision) -> Option<&latent_quant::PackedMatrix> {
    let want = if w.wtype == WeightType::Q8_0 { MatmulPrecision::Exact } else { MatmulPrecision::Fast };
    w.packed().filter(|_| p == want)
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

/// The SwiGLU feed-forward `down · (silu(gate · x) ⊙ up · x)` of `x` `[T, C]`, returning
/// `[T, C]`; gate and up `[F, C]` run as one group (one parallel region per decode step),
/// down is `[C, F]`.
pub fn swiglu_ffn(
    ex: &Exec,
    file: &GgufFile,
    (gate, up, down): (&Linear, &Linear, &Linear),
    x: &[f32],
    t: usize,
) -> Result<Vec<f32>, ModelError> {
    let mut gu = matmuls(ex, file, &[gate, up], x, t)?.into_iter();
    let (mut g, u) = (gu.next().unwrap_or_default(), gu.next().unwrap_or_default()); // [T, F] each
    swiglu(&mut g, &u);
    matmul(ex, file, down, &g, t)
}

/// SwiGLU: silu(gate) ⊙ up, in place into `gate` (the kernel table's vector exp).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    (latent_kernels::Kernels::best().silu_mul)(gate, up)
}

/// x += y
pub fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Runs one attention call. A decode step runs on the spinning team when there is one (its
/// KV split into shares of at least 128 keys, so every thread streams part of the cache);
/// without a team, decode steps over a short context stay on the calling thread (a pool
/// hand-off would cost more than the work). Prefill runs on the pool.
pub fn attention(
    ex: &Exec,
    params: &AttnParams,
    q: &[f32],
    seqs: &[SeqSpec],
    out: &mut [f32],
    lse: &mut [f32],
) -> Result<(), AttnError> {
    let t: usize = seqs.iter().map(|s| s.q_len).sum();
    let kv_bytes: usize = seqs.iter().map(|s| s.kv.len * s.kv.kv_heads * s.kv.k.fmt.row_bytes(s.kv.dk()) * 2).sum();
    let flops =
        t * params.shape.heads * (params.shape.dk + params.shape.dv) * seqs.iter().map(|s| s.kv.len).sum::<usize>();
    if let (1, Some(team)) = (t, ex.team) {
        let plan = Plan { min_split: 128, ..Plan::decode(&params.shape) };
        latent_attention::attend_with(params, &plan, Workers::Team(team), q, seqs, out, lse)?;
    } else if t == 1 && kv_bytes < (1 << 20) && flops < (1 << 22) {
        let plan = Plan { parallel: false, ..Plan::decode(&params.shape) };
        latent_attention::attend(params, &plan, q, seqs, out, lse)?;
    } else if t == 1 {
        ex.pool.install(|| latent_attention::decode(params, q, seqs, out, lse))?;
    } else {
        ex.pool.install(|| latent_attention::prefill(params, q, seqs, out, lse))?;
    }
    Ok(())
}

/// Checks a pass of `t` tokens at positions `pos0..` against the model's context. Under a
/// stream window no query sees a distance beyond window + sinks, so only that span must fit.
pub fn check_context(ex: &Exec, t: usize, pos0: usize, ctx: usize) -> Result<(), ModelError> {
    match ex.window {
        Some(w) if w.span() > ctx => Err(ModelError::Window { span: w.span(), ctx }),
        Some(_) => pos0.checked_add(t).map(|_| ()).ok_or(ModelError::Context { pos: pos0, n: t, ctx }),
        None if pos0.saturating_add(t) > ctx => Err(ModelError::Context { pos: pos0, n: t, ctx }),
        None => Ok(()),
    }
}

/// Where a model's layers run: the execution settings and the file its weights live in.
pub struct Cx<'a> {
    pub ex: &'a Exec<'a>,
    pub file: &'a GgufFile,
}

impl Runner for Cx<'_> {
    fn attend(
        &self,
        p: &AttnParams,
        q: &[f32],
        seq: SeqSpec,
        out: &mut [f32],
        lse: &mut [f32],
    ) -> Result<(), AttnError> {
        attention(self.ex, p, q, &[seq], out, lse)
    }

    /// On the spinning team when there is one (a decode step's heads), else on the pool.
    fn parts(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        match self.ex.team {
            Some(team) => team.run(n, f),
            None => {
                use rayon::prelude::*;
                self.ex.pool.install(|| (0..n).into_par_iter().for_each(f))
            }
        }
    }
}

fn matrix_error(w: &Linear, e: ModelError) -> AttnError {
    AttnError::Matrix { name: w.name.clone(), source: Arc::new(e) }
}

impl MatrixDims for Linear {
    fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// A file-backed (quantized) matrix is a [`Matrix`] of the attention layers.
impl<'a> Matrix<Cx<'a>> for Linear {
    fn apply(&self, cx: &Cx<'a>, x: &[f32], t: usize) -> Result<Vec<f32>, AttnError> {
        matmul(cx.ex, cx.file, self, x, t).map_err(|e| matrix_error(self, e))
    }
    fn apply_group(cx: &Cx<'a>, ws: &[&Linear], x: &[f32], t: usize) -> Result<Vec<Vec<f32>>, AttnError> {
        matmuls(cx.ex, cx.file, ws, x, t).map_err(|e| match ws.first() {
            Some(w) => matrix_error(w, e),
            None => AttnError::Config(e.to_string()),
        })
    }
}

/// The concatenated tokens `[ΣT]` of a batch's passes and each pass's RoPE positions, after
/// checking every pass (non-empty, within the context).
pub fn batch_inputs(
    ex: &Exec,
    passes: &[crate::Pass],
    rope: &latent_attention::Rope,
    ctx: usize,
) -> Result<(Vec<u32>, Vec<latent_attention::Positions>), ModelError> {
    let mut tokens = Vec::with_capacity(passes.iter().map(|p| p.tokens.len()).sum());
    let mut pos = Vec::with_capacity(passes.len());
    for p in passes {
        if p.tokens.is_empty() {
            return Err(ModelError::Config("a pass of a batch has no tokens".into()));
        }
        check_context(ex, p.tokens.len(), p.pos0, ctx)?;
        tokens.extend_from_slice(p.tokens);
        pos.push(latent_attention::Positions::new(rope, p.pos0, p.tokens.len()));
    }
    if tokens.is_empty() {
        return Err(ModelError::Config("an empty batch".into()));
    }
    Ok((tokens, pos))
}

/// The requested logits of each pass of a batch from the hidden states `x` `[ΣT, C]` (pass
/// s's rows consecutive): final RMSNorm and the output projection, run once over the rows
/// any pass wants (its last row, `[V]`, or all of them, `[T, V]`).
#[allow(clippy::too_many_arguments)]
pub fn logits_batch(
    ex: &Exec,
    file: &GgufFile,
    x: &[f32],
    c: usize,
    norm: &[f32],
    eps: f32,
    output: &Linear,
    passes: &[crate::Pass],
) -> Result<Vec<Vec<f32>>, ModelError> {
    let mut rows = Vec::new(); // [n, C] the rows whose logits are wanted
    let mut r0 = 0;
    for p in passes {
        let t = p.tokens.len();
        match p.logits {
            crate::Logits::None => {}
            crate::Logits::Last => rows.extend_from_slice(&x[(r0 + t - 1) * c..(r0 + t) * c]),
            crate::Logits::All => rows.extend_from_slice(&x[r0 * c..(r0 + t) * c]),
        }
        r0 += t;
    }
    let n = rows.len() / c.max(1);
    let logits = if n == 0 { Vec::new() } else { matmul(ex, file, output, &rms_norm(&rows, norm, eps), n)? };
    let v = output.rows;
    let mut out = Vec::with_capacity(passes.len());
    let mut at = 0;
    for p in passes {
        let k = match p.logits {
            crate::Logits::None => 0,
            crate::Logits::Last => 1,
            crate::Logits::All => p.tokens.len(),
        };
        let l = logits[at * v..(at + k) * v].to_vec();
        if let Some(i) = l.iter().position(|x| !x.is_finite()) {
            return Err(ModelError::NonFinite { token: p.pos0 + p.tokens.len() - k + i / v.max(1) });
        }
        out.push(l);
        at += k;
    }
    Ok(out)
}
