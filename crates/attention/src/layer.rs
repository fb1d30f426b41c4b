//! Attention layers as a model runs them: the weights behind one trait ([`Matrix`]), the
//! attention calls through a [`Runner`], the KV cache lent through [`CacheAccess`], and the
//! StreamingLLM window ([`StreamWindow`]). The same layer serves the f32 reference weights
//! of tests and benchmarks ([`Dense`], [`Local`]) and a model's memory-mapped quantized
//! weights (the models crate implements [`Matrix`] for them): there is one MLA and one GQA
//! layer, whichever weights they run on.
//!
//! Dimension legend: T tokens of the pass, C hidden, H query heads, Hkv KV heads, Dk key
//! dim, Dv value dim, S keys.

use crate::flash::{attend, AttnParams, AttnShape, MaskSpec, Plan, SeqSpec};
use crate::kv_view::KvSeq;
use crate::linear::linear;
use crate::rope::{Rope, RopeAngles};
use crate::AttnError;

/// The shape `(N, K)` of a weight matrix `[rows N, cols K]`, whatever context it runs in.
pub trait MatrixDims {
    fn dims(&self) -> (usize, usize);
}

/// A weight matrix `W` `[rows N, cols K]` applied as y `[T, N]` = x `[T, K]` · Wᵀ in a
/// context `C` (where the product runs: threads, precision, the file the bytes live in).
pub trait Matrix<C: ?Sized>: MatrixDims {
    /// y `[T, N]` = x `[T, K]` · Wᵀ.
    fn apply(&self, cx: &C, x: &[f32], t: usize) -> Result<Vec<f32>, AttnError>;
    /// Several products of the same input (e.g. Q, K and V). A context that can run them as
    /// one parallel region overrides this; the results are the same as one `apply` each.
    fn apply_group(cx: &C, ws: &[&Self], x: &[f32], t: usize) -> Result<Vec<Vec<f32>>, AttnError>
    where
        Self: Sized,
    {
        ws.iter().map(|w| w.apply(cx, x, t)).collect()
    }
}

/// A row-major f32 matrix `[rows, cols]` (reference weights, tests, benchmarks).
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols]`
    pub data: Vec<f32>,
}

impl Dense {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Dense, AttnError> {
        let expected = rows.checked_mul(cols).ok_or_else(|| AttnError::Config("matrix size overflows".into()))?;
        if data.len() != expected {
            return Err(AttnError::Len { what: "dense matrix [rows, cols]", expected, got: data.len() });
        }
        Ok(Dense { rows, cols, data })
    }
}

impl MatrixDims for Dense {
    fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

impl<C: ?Sized> Matrix<C> for Dense {
    fn apply(&self, _cx: &C, x: &[f32], t: usize) -> Result<Vec<f32>, AttnError> {
        if x.len() != t * self.cols {
            return Err(AttnError::Len { what: "x [T, K]", expected: t * self.cols, got: x.len() });
        }
        Ok(linear(x, &self.data, t, self.cols, self.rows))
    }
}

/// Where the attention calls of a layer run.
pub trait Runner {
    /// One sequence's attention: `q` `[T, H, Dk]`, `out` `[T, H, Dv]`, `lse` `[T, H]`.
    fn attend(
        &self,
        p: &AttnParams,
        q: &[f32],
        seq: SeqSpec,
        out: &mut [f32],
        lse: &mut [f32],
    ) -> Result<(), AttnError>;

    /// Runs `f(i)` for every `i` in `0..n` (independent pieces of one step, such as the heads
    /// of an up-projection); a runner may spread them over threads. By default they run in
    /// order on the calling thread.
    fn parts(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        crate::linear::in_order(n, f)
    }
}

/// Runs every call with one plan on the current rayon pool (tests, benchmarks).
#[derive(Clone, Copy, Debug)]
pub struct Local(pub Option<Plan>);

impl Runner for Local {
    fn attend(
        &self,
        p: &AttnParams,
        q: &[f32],
        seq: SeqSpec,
        out: &mut [f32],
        lse: &mut [f32],
    ) -> Result<(), AttnError> {
        let plan =
            self.0.unwrap_or_else(|| if seq.q_len == 1 { Plan::decode(&p.shape) } else { Plan::prefill(&p.shape) });
        attend(p, &plan, q, &[seq], out, lse)
    }

    fn parts(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f)
    }
}

/// The cache of one sequence, lent to a forward pass.
pub trait CacheAccess {
    /// Stores K `[Hkv, D]` and V `[Hkv, D]` of token `pos` in `layer`.
    fn write_kv(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<(), AttnError>;
    /// Stores the latent row `[R + P]` of token `pos` in `layer`.
    fn write_latent(&mut self, layer: usize, pos: usize, row: &[f32]) -> Result<(), AttnError>;
    /// The kernels' view of `layer` covering tokens `0..len`.
    fn view(&self, layer: usize, len: usize) -> Result<KvSeq<'_>, AttnError>;
}

/// The caches of a batch of sequences, lent to a batched forward pass: segment `seg` of the
/// batch is one sequence with its own cache (each segment's tokens are contiguous rows of the
/// batch's activations).
pub trait BatchCache {
    /// Stores K `[Hkv, D]` and V `[Hkv, D]` of token `pos` of segment `seg` in `layer`.
    fn write_kv(&mut self, seg: usize, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<(), AttnError>;
    /// Stores the latent row `[R + P]` of token `pos` of segment `seg` in `layer`.
    fn write_latent(&mut self, seg: usize, layer: usize, pos: usize, row: &[f32]) -> Result<(), AttnError>;
    /// The kernels' view of segment `seg`'s `layer` covering tokens `0..len`.
    fn view(&self, seg: usize, layer: usize, len: usize) -> Result<KvSeq<'_>, AttnError>;
}

/// One sequence's cache as a batch of one segment.
pub struct Single<'a>(pub &'a mut dyn CacheAccess);

impl BatchCache for Single<'_> {
    fn write_kv(&mut self, seg: usize, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<(), AttnError> {
        one_segment(seg)?;
        self.0.write_kv(layer, pos, k, v)
    }
    fn write_latent(&mut self, seg: usize, layer: usize, pos: usize, row: &[f32]) -> Result<(), AttnError> {
        one_segment(seg)?;
        self.0.write_latent(layer, pos, row)
    }
    fn view(&self, seg: usize, layer: usize, len: usize) -> Result<KvSeq<'_>, AttnError> {
        one_segment(seg)?;
        self.0.view(layer, len)
    }
}

fn one_segment(seg: usize) -> Result<(), AttnError> {
    if seg != 0 {
        return Err(AttnError::Config(format!("segment {seg} of a one-sequence batch")));
    }
    Ok(())
}

/// StreamingLLM (arXiv 2309.17453): every query sees the first `sinks` tokens and the last
/// `window` tokens (itself included); everything between may be released from the cache.
///
/// Positions follow StreamingLLM's rule — positions *within the cache* — without rotating
/// any cached key again: keys keep the rotation of their true position p. A query at p
/// attends to the window with its own rotation at p (the window's distances p − j are the
/// in-cache distances), and to the sinks with a second rotation at min(p, S + W − 1): the
/// distance from the newest cache slot to sink j, as if the window sat right after the
/// sinks. The two partial softmaxes are merged by their log-sum-exp. No distance seen is
/// ever larger than S + W − 1, so generation can run past the trained context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamWindow {
    /// W ≥ 1
    pub window: usize,
    /// S
    pub sinks: usize,
}

impl StreamWindow {
    pub fn new(window: usize, sinks: usize) -> Result<StreamWindow, AttnError> {
        if window == 0 {
            return Err(AttnError::Mask("window must be ≥ 1".into()));
        }
        Ok(StreamWindow { window, sinks })
    }
    /// The most distinct positions any query sees: S + W.
    pub fn span(&self) -> usize {
        self.window.saturating_add(self.sinks)
    }
    /// After tokens `0..len` are cached, the positions no later query can see:
    /// `sinks..len + 1 − window` (empty while the window still covers the sinks).
    pub fn dead_range(&self, len: usize) -> std::ops::Range<usize> {
        let lo = self.sinks;
        let hi = (len + 1).saturating_sub(self.window).max(lo);
        lo..hi
    }
}

/// RoPE angles of a pass: token i of the pass sits at position `pos0 + i`.
#[derive(Clone, Debug)]
pub struct Positions {
    pub pos0: usize,
    /// `[T]`
    pub angles: Vec<RopeAngles>,
}

impl Positions {
    pub fn new(rope: &Rope, pos0: usize, t: usize) -> Positions {
        Positions { pos0, angles: (0..t).map(|i| rope.angles(pos0 + i)).collect() }
    }
    pub fn len(&self) -> usize {
        self.angles.len()
    }
    /// The angles for token `i` of the pass rotated at position `p`: the precomputed ones
    /// when `p` is its own position, else computed from `rope`.
    pub fn at(&self, rope: &Rope, i: usize, p: usize) -> std::borrow::Cow<'_, RopeAngles> {
        if p == self.pos0 + i {
            std::borrow::Cow::Borrowed(&self.angles[i])
        } else {
            std::borrow::Cow::Owned(rope.angles(p))
        }
    }
    pub fn is_empty(&self) -> bool {
        self.angles.is_empty()
    }
}

/// Builds a pass's queries `[T, H, Dk]` rotated so that query i sits at `pos(i)`.
pub type QueryFn<'a> = dyn Fn(&dyn Fn(usize) -> usize) -> Result<Vec<f32>, AttnError> + 'a;

/// Causal attention of a pass's `t` queries at positions `pos0..` over `kv` (its length is
/// `pos0 + t`), optionally under a [`StreamWindow`]. `queries(pos)` returns the queries
/// `[T, H, Dk]` rotated so that query i sits at `pos(i)`. Returns `[T, H, Dv]`.
#[allow(clippy::too_many_arguments)]
pub fn attend_causal<R: Runner + ?Sized>(
    runner: &R,
    shape: AttnShape,
    scale: f32,
    kv: KvSeq,
    pos0: usize,
    t: usize,
    window: Option<StreamWindow>,
    queries: &QueryFn,
) -> Result<Vec<f32>, AttnError> {
    let (h, dv) = (shape.heads, shape.dv);
    let mut out = vec![0f32; t * h * dv];
    let mut lse = vec![0f32; t * h];
    let q = queries(&|i| pos0 + i)?;
    let Some(sw) = window else {
        let p = AttnParams { shape, scale, mask: MaskSpec::CAUSAL, sink_logits: None };
        runner.attend(&p, &q, SeqSpec { q_len: t, q_pos: pos0, kv }, &mut out, &mut lse)?;
        return Ok(out);
    };
    let (w, s) = (sw.window, sw.sinks);
    let mask = MaskSpec { causal: true, window: Some(w), sinks: 0 };
    let p = AttnParams { shape, scale, mask, sink_logits: None };
    runner.attend(&p, &q, SeqSpec { q_len: t, q_pos: pos0, kv }, &mut out, &mut lse)?;
    // Queries at p ≥ W have sinks j < min(S, p − W + 1) outside their window.
    let i0 = w.saturating_sub(pos0);
    if s == 0 || i0 >= t {
        return Ok(out);
    }
    let newest = s + w - 1;
    let q2 = queries(&|i| (pos0 + i).min(newest))?;
    let n = t - i0;
    let sinks_kv = KvSeq { len: s.min(kv.len), ..kv };
    let p2 = AttnParams { shape, scale, mask: MaskSpec::CAUSAL, sink_logits: None };
    let mut out2 = vec![0f32; n * h * dv];
    let mut lse2 = vec![0f32; n * h];
    let seq2 = SeqSpec { q_len: n, q_pos: pos0 + i0 - w, kv: sinks_kv };
    runner.attend(&p2, &q2[i0 * h * shape.dk..], seq2, &mut out2, &mut lse2)?;
    merge_lse(&mut out[i0 * h * dv..], &mut lse[i0 * h..], &out2, &lse2, dv);
    Ok(out)
}

/// Merges two normalised partial attentions over disjoint key sets: `a` `[rows, Dv]` with
/// log-sum-exps `la` `[rows]` becomes the attention over both.
pub fn merge_lse(a: &mut [f32], la: &mut [f32], b: &[f32], lb: &[f32], dv: usize) {
    for (r, (l1, &l2)) in la.iter_mut().zip(lb).enumerate() {
        if l2 == f32::NEG_INFINITY {
            continue;
        }
        let m = l1.max(l2);
        let (w1, w2) = ((*l1 - m).exp(), (l2 - m).exp());
        let inv = 1.0 / (w1 + w2);
        for (x, y) in a[r * dv..(r + 1) * dv].iter_mut().zip(&b[r * dv..(r + 1) * dv]) {
            *x = (w1 * *x + w2 * y) * inv;
        }
        *l1 = m + (w1 + w2).ln();
    }
}
