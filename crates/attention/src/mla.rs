//! Multi-Head Latent Attention (DeepSeek-V2, arXiv:2405.04434).
//!
//! Per token x `[C]`:
//! - queries: q = W_UQ·RMSNorm(W_DQ·x) (q_lora) or q = W_Q·x, split per head into
//!   q_nope `[N]` and q_rope `[P]`; RoPE on q_rope;
//! - latent: [c | k_r] = W_DKV·x, c ← RMSNorm(c) `[R]`, k_r ← RoPE(k_r) `[P]` — the only thing
//!   cached: one row `[R + P]` per token, shared by all heads;
//! - per head h: k_h = [W_UK_h·c | k_r], v_h = W_UV_h·c, softmax scale 1/√(N+P) (× mscale²
//!   under YaRN), y = W_O·concat_h(o_h).
//!
//! Two execution paths over the same cache:
//! - **naive**: decompress every cached row into per-head K `[S, H, N+P]` and V `[S, H, V]`,
//!   then MHA;
//! - **absorbed**: q'_h = [W_UK_hᵀ·q_nope_h | q_rope_h] `[R+P]`; attend over the latent rows as
//!   MQA (key dim R+P, value = c, dim R); o_h = W_UV_h·o'_h. The cache is read once per step
//!   for all heads.

use crate::flash::{AttnParams, AttnShape, MaskSpec, SeqSpec};
use crate::kv_view::{DenseKv, KvDtype, KvSeq};
use crate::layer::{
    attend_causal, BatchCache, CacheAccess, Dense, Matrix, MatrixDims, Positions, Runner, Single, StreamWindow,
};
use crate::linear::{absorb_heads, decompress_heads, expand_heads, rms_norm, HeadWeights, Parts};
use crate::rope::Rope;
use crate::testing::Rng;
use crate::AttnError;

/// Dimensions and constants of one MLA layer.
#[derive(Clone, Copy, Debug)]
pub struct MlaConfig {
    /// C
    pub hidden: usize,
    /// H
    pub heads: usize,
    /// Query compression rank; `None` projects queries directly.
    pub q_lora_rank: Option<usize>,
    /// R
    pub kv_lora_rank: usize,
    /// N: per-head non-rotary query/key dims.
    pub nope: usize,
    /// P: rotary dims (per-head query part, one shared key part).
    pub rope_dim: usize,
    /// V: per-head value dims.
    pub v_dim: usize,
    pub eps: f32,
    pub rope: Rope,
    /// Multiplies the softmax scale: 1, or mscale² under YaRN.
    pub scale_mult: f32,
}

impl MlaConfig {
    /// Softmax scale: `scale_mult / √(N + P)` — never 1/√(R + P).
    pub fn softmax_scale(&self) -> f32 {
        self.scale_mult / ((self.nope + self.rope_dim) as f32).sqrt()
    }
    /// Elements of one cached row: R + P.
    pub fn latent_dim(&self) -> usize {
        self.kv_lora_rank + self.rope_dim
    }
    /// Per-head query/key dim: N + P.
    pub fn qk_dim(&self) -> usize {
        self.nope + self.rope_dim
    }
}

/// Query projection.
#[derive(Clone, Debug)]
pub enum QProj<M = Dense> {
    /// w_q `[H·(N+P), C]`.
    Direct { w_q: M },
    /// w_dq `[Rq, C]`, q_norm `[Rq]`, w_uq `[H·(N+P), Rq]`.
    Lora { w_dq: M, q_norm: Vec<f32>, w_uq: M },
}

/// Weights of one MLA layer, `[out, in]`. The per-head up-projections are f32 or bf16 as
/// stored (they are absorbed into the query and output sides).
#[derive(Clone, Debug)]
pub struct MlaWeights<M = Dense> {
    pub q: QProj<M>,
    /// `[R + P, C]`
    pub w_dkv: M,
    /// `[R]`
    pub kv_norm: Vec<f32>,
    /// `[H, N, R]`: k_nope_h = W_UK_h · c
    pub w_uk: HeadWeights,
    /// `[H, V, R]`: v_h = W_UV_h · c
    pub w_uv: HeadWeights,
    /// `[C, H·V]`
    pub w_o: M,
}

/// Which execution path an MLA pass takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MlaPath {
    /// [`Mla::choose_path`] decides per pass.
    #[default]
    Auto,
    Absorbed,
    Naive,
}

/// The naive path's decompressed K/V of a pass may not exceed this many bytes.
pub const NAIVE_MAX_BYTES: usize = 256 << 20;

/// One MLA layer.
#[derive(Clone, Debug)]
pub struct Mla<M = Dense> {
    pub cfg: MlaConfig,
    pub w: MlaWeights<M>,
}

fn dims_of<M: MatrixDims>(m: &M) -> (usize, usize) {
    m.dims()
}

impl<M: MatrixDims> Mla<M> {
    /// Checks every weight against the configuration.
    pub fn new(cfg: MlaConfig, w: MlaWeights<M>) -> Result<Mla<M>, AttnError> {
        let (c, h, r, n, p, v) = (cfg.hidden, cfg.heads, cfg.kv_lora_rank, cfg.nope, cfg.rope_dim, cfg.v_dim);
        let chk = |what: &'static str, got: (usize, usize), expected: (usize, usize)| {
            if got == expected {
                Ok(())
            } else {
                Err(AttnError::Len { what, expected: expected.0 * expected.1, got: got.0 * got.1 })
            }
        };
        if h == 0 || r == 0 || c == 0 {
            return Err(AttnError::Config(format!("MLA needs heads, rank and hidden ≥ 1 (got {h}, {r}, {c})")));
        }
        match (&w.q, cfg.q_lora_rank) {
            (QProj::Direct { w_q }, None) => chk("w_q [H(N+P), C]", dims_of(w_q), (h * (n + p), c))?,
            (QProj::Lora { w_dq, q_norm, w_uq }, Some(rq)) => {
                chk("w_dq [Rq, C]", dims_of(w_dq), (rq, c))?;
                chk("q_norm [Rq]", (q_norm.len(), 1), (rq, 1))?;
                chk("w_uq [H(N+P), Rq]", dims_of(w_uq), (h * (n + p), rq))?;
            }
            _ => return Err(AttnError::Config("query projection does not match q_lora_rank".into())),
        }
        chk("w_dkv [R+P, C]", dims_of(&w.w_dkv), (r + p, c))?;
        chk("kv_norm [R]", (w.kv_norm.len(), 1), (r, 1))?;
        chk("w_uk [H, N, R]", (w.w_uk.len(), 1), (h * n * r, 1))?;
        chk("w_uv [H, V, R]", (w.w_uv.len(), 1), (h * v * r, 1))?;
        chk("w_o [C, H V]", dims_of(&w.w_o), (c, h * v))?;
        if p % 2 != 0 || cfg.rope.dims != p {
            return Err(AttnError::Config(format!("rope dims {} must equal the (even) rope part {p}", cfg.rope.dims)));
        }
        Ok(Mla { cfg, w })
    }
}

impl Mla<Dense> {
    /// Random weights with activation-like scales (tests, benchmarks).
    pub fn random(cfg: MlaConfig, rng: &mut Rng) -> Mla {
        let (c, h, r, n, p, v) = (cfg.hidden, cfg.heads, cfg.kv_lora_rank, cfg.nope, cfg.rope_dim, cfg.v_dim);
        let mut m =
            |rows: usize, cols: usize| Dense { rows, cols, data: rng.normals(rows * cols, 1.0 / (cols as f32).sqrt()) };
        let q = match cfg.q_lora_rank {
            None => QProj::Direct { w_q: m(h * (n + p), c) },
            Some(rq) => QProj::Lora { w_dq: m(rq, c), q_norm: vec![1.0; rq], w_uq: m(h * (n + p), rq) },
        };
        let w_dkv = m(r + p, c);
        let w_uk = HeadWeights::F32(m(h * n, r).data);
        let w_uv = HeadWeights::F32(m(h * v, r).data);
        let w_o = m(c, h * v);
        let kv_norm = (0..r).map(|i| 0.5 + (i % 7) as f32 * 0.15).collect();
        Mla { cfg, w: MlaWeights { q, w_dkv, kv_norm, w_uk, w_uv, w_o } }
    }
}

impl<M> Mla<M> {
    /// Cache rows `[T, R+P]` = `[RMSNorm(c) | RoPE(k_r)]` of `x` `[T, C]` at `pos`.
    pub fn compress_kv<C: ?Sized>(&self, cx: &C, x: &[f32], pos: &Positions) -> Result<Vec<f32>, AttnError>
    where
        M: Matrix<C>,
    {
        self.compress_kv_batch(cx, x, &[pos])
    }

    /// Cache rows `[ΣT, R+P]` of a batch `x` `[ΣT, C]` whose segment s sits at `segs[s]`.
    pub fn compress_kv_batch<C: ?Sized>(&self, cx: &C, x: &[f32], segs: &[&Positions]) -> Result<Vec<f32>, AttnError>
    where
        M: Matrix<C>,
    {
        let total: usize = segs.iter().map(|p| p.len()).sum();
        Ok(self.latent_rows(self.w.w_dkv.apply(cx, x, total)?, segs))
    }

    /// Cache rows `[ΣT, R+P]` from the down-projection `W_DKV · x` `[ΣT, R+P]`: the latent
    /// normed, the shared key rotated at each token's position.
    fn latent_rows(&self, mut rows: Vec<f32>, segs: &[&Positions]) -> Vec<f32> {
        let (r, l) = (self.cfg.kv_lora_rank, self.cfg.latent_dim());
        let angles = segs.iter().flat_map(|p| p.angles.iter());
        for (row, a) in rows.chunks_exact_mut(l).zip(angles) {
            rms_norm(&mut row[..r], &self.w.kv_norm, self.cfg.eps);
            a.apply(&mut row[r..]);
        }
        rows
    }

    /// Queries `[ΣT, H, N+P]` (before RoPE) and cache rows `[ΣT, R+P]` of `x` `[ΣT, C]`, the
    /// two products of `x` run as one group (the same values as [`Mla::project_queries`]
    /// and [`Mla::compress_kv_batch`]).
    fn project_all<C: ?Sized>(&self, cx: &C, x: &[f32], segs: &[&Positions]) -> Result<(Vec<f32>, Vec<f32>), AttnError>
    where
        M: Matrix<C>,
    {
        let total: usize = segs.iter().map(|p| p.len()).sum();
        let mut g = M::apply_group(cx, &[self.first_q(), &self.w.w_dkv], x, total)?.into_iter();
        let (a, kv) = (g.next().unwrap_or_default(), g.next().unwrap_or_default());
        Ok((self.queries_from(cx, a, total)?, self.latent_rows(kv, segs)))
    }

    /// The query path's first product of `x`: `W_Q` (direct) or `W_DQ` (q_lora).
    fn first_q(&self) -> &M {
        match &self.w.q {
            QProj::Direct { w_q } => w_q,
            QProj::Lora { w_dq, .. } => w_dq,
        }
    }

    /// Queries `[T, H, N+P]` from the first product `a` of [`Mla::first_q`].
    fn queries_from<C: ?Sized>(&self, cx: &C, a: Vec<f32>, t: usize) -> Result<Vec<f32>, AttnError>
    where
        M: Matrix<C>,
    {
        match &self.w.q {
            QProj::Direct { .. } => Ok(a),
            QProj::Lora { q_norm, w_uq, .. } => {
                let mut cq = a;
                rms_norm(&mut cq, q_norm, self.cfg.eps);
                w_uq.apply(cx, &cq, t)
            }
        }
    }

    /// Queries `[T, H, N+P]` of `x` `[T, C]`, before RoPE.
    pub fn project_queries<C: ?Sized>(&self, cx: &C, x: &[f32], t: usize) -> Result<Vec<f32>, AttnError>
    where
        M: Matrix<C>,
    {
        self.queries_from(cx, self.first_q().apply(cx, x, t)?, t)
    }

    /// Queries `q` `[T, H, N+P]` with RoPE on each head's last P dims, token i at `pos(i)`
    /// (`angles[i]` when that is the pass's own position).
    fn rotate(&self, q: &[f32], t: usize, pos: &Positions, at: &dyn Fn(usize) -> usize) -> Vec<f32> {
        let cfg = &self.cfg;
        let (h, qk, n) = (cfg.heads, cfg.qk_dim(), cfg.nope);
        let mut q = q.to_vec();
        for ti in 0..t {
            let a = pos.at(&cfg.rope, ti, at(ti));
            for hi in 0..h {
                a.apply(&mut q[(ti * h + hi) * qk + n..][..cfg.rope_dim]);
            }
        }
        q
    }

    /// Queries `[T, H, N+P]` of `x` `[T, C]`, rotated at their positions.
    pub fn queries<C: ?Sized>(&self, cx: &C, x: &[f32], pos: &Positions) -> Result<Vec<f32>, AttnError>
    where
        M: Matrix<C>,
    {
        let q = self.project_queries(cx, x, pos.len())?;
        Ok(self.rotate(&q, pos.len(), pos, &|i| pos.pos0 + i))
    }

    /// Absorbed queries `[T, H, R+P]`: `[W_UK_hᵀ·q_nope_h | q_rope_h]`.
    pub fn absorb_queries(&self, par: Parts, q: &[f32], t: usize) -> Vec<f32> {
        let cfg = &self.cfg;
        let (h, n, r, qk, l) = (cfg.heads, cfg.nope, cfg.kv_lora_rank, cfg.qk_dim(), cfg.latent_dim());
        let mut out = vec![0f32; t * h * l];
        absorb_heads(par, q, t, h, qk, n, self.w.w_uk.view(), 1, r, &mut out, l);
        for ti in 0..t {
            for hi in 0..h {
                let src = &q[(ti * h + hi) * qk + n..][..cfg.rope_dim];
                out[(ti * h + hi) * l + r..][..cfg.rope_dim].copy_from_slice(src);
            }
        }
        out
    }

    /// Per-head outputs `[T, H, V]` from latent outputs `[T, H, R]`: o_h = W_UV_h · o'_h.
    pub fn expand_outputs(&self, par: Parts, o_lat: &[f32], t: usize) -> Vec<f32> {
        let cfg = &self.cfg;
        expand_heads(par, o_lat, t, cfg.heads, cfg.kv_lora_rank, self.w.w_uv.view(), 1, cfg.v_dim)
    }

    /// Attention shape of the absorbed path: MQA with key dim R+P and value dim R.
    pub fn absorbed_shape(&self) -> AttnShape {
        AttnShape { heads: self.cfg.heads, kv_heads: 1, dk: self.cfg.latent_dim(), dv: self.cfg.kv_lora_rank }
    }

    /// Decompresses latent rows `[S, R+P]` into per-head K `[S, H, N+P]` and V `[S, H, V]`.
    pub fn decompress(&self, rows: &[f32], s: usize) -> (Vec<f32>, Vec<f32>) {
        let cfg = &self.cfg;
        let (h, n, r, p, l, qk) = (cfg.heads, cfg.nope, cfg.kv_lora_rank, cfg.rope_dim, cfg.latent_dim(), cfg.qk_dim());
        let mut kk = decompress_heads(rows, s, l, r, self.w.w_uk.view(), h, n, qk);
        let vv = decompress_heads(rows, s, l, r, self.w.w_uv.view(), h, cfg.v_dim, cfg.v_dim);
        for j in 0..s {
            for hi in 0..h {
                kk[(j * h + hi) * qk + n..][..p].copy_from_slice(&rows[j * l + r..][..p]);
            }
        }
        (kk, vv)
    }

    /// Bytes of per-head K/V the naive path decompresses for `s` keys.
    pub fn naive_bytes(&self, s: usize) -> usize {
        let cfg = &self.cfg;
        s.saturating_mul(cfg.heads * (cfg.qk_dim() + cfg.v_dim) * 4)
    }

    /// The path a pass of `t` new tokens over `s` keys (its own included) takes. `Auto` picks
    /// naive when the pass's own tokens are more than a quarter of the keys (a fresh prefill,
    /// or a chunk over a short prefix: decompressing S rows costs less than absorbing T
    /// queries, and the MHA that follows has key dim N+P instead of R+P), absorbed otherwise
    /// (decode, and chunks over a long cached prefix, where the cache is read once for all
    /// heads). Naive is never used beyond [`NAIVE_MAX_BYTES`] of decompressed K/V, nor under a
    /// stream window (its released rows cannot be decompressed). Fitted to `latent bench
    /// attention --mechanisms mla-layer` (DeepSeek-V2-Lite shapes; docs/BENCHMARKS.md): naive
    /// wins every fresh prefill (1.2–1.8×) and absorbed every decode step (70–150×); for a
    /// 512-token chunk the two are within ~15% from S ≈ 3·T to 9·T, where the absorbed path
    /// is kept for its memory (naive decompresses S·H·(N+P+V) floats).
    pub fn choose_path(&self, want: MlaPath, t: usize, s: usize, window: Option<StreamWindow>) -> MlaPath {
        let naive_ok = window.is_none() && self.naive_bytes(s) <= NAIVE_MAX_BYTES;
        match want {
            MlaPath::Absorbed => MlaPath::Absorbed,
            MlaPath::Naive if naive_ok => MlaPath::Naive,
            MlaPath::Naive => MlaPath::Absorbed,
            MlaPath::Auto if naive_ok && 4 * t > s => MlaPath::Naive,
            MlaPath::Auto => MlaPath::Absorbed,
        }
    }

    /// Attention of un-rotated queries `q` `[T, H, N+P]` at `pos` over the latent cache `kv`
    /// (length `pos0 + T`; rows `[R+P]`, values = first R). Returns `[T, H, V]`.
    pub fn attend<R: Runner + ?Sized>(
        &self,
        runner: &R,
        q: &[f32],
        pos: &Positions,
        kv: KvSeq,
        window: Option<StreamWindow>,
        path: MlaPath,
    ) -> Result<Vec<f32>, AttnError> {
        let cfg = &self.cfg;
        let t = pos.len();
        let scale = cfg.softmax_scale();
        let par: Parts = &|n, f| runner.parts(n, f);
        match self.choose_path(path, t, kv.len, window) {
            MlaPath::Naive => {
                kv.validate(0)?;
                let rows = kv.read_keys(0, 0, kv.len);
                let (kk, vv) = self.decompress(&rows, kv.len);
                let dense = DenseKv::new(KvDtype::F32, cfg.heads, cfg.qk_dim(), cfg.v_dim, &kk, &vv);
                let shape = AttnShape { heads: cfg.heads, kv_heads: cfg.heads, dk: cfg.qk_dim(), dv: cfg.v_dim };
                attend_causal(runner, shape, scale, dense.view(), pos.pos0, t, None, &|at: &dyn Fn(usize) -> usize| {
                    Ok(self.rotate(q, t, pos, at))
                })
            }
            _ => {
                let o_lat = attend_causal(
                    runner,
                    self.absorbed_shape(),
                    scale,
                    kv,
                    pos.pos0,
                    t,
                    window,
                    &|at: &dyn Fn(usize) -> usize| Ok(self.absorb_queries(par, &self.rotate(q, t, pos, at), t)),
                )?;
                Ok(self.expand_outputs(par, &o_lat, t))
            }
        }
    }

    /// Attention of already rotated queries `q` `[T, H, N+P]` at `q_pos..` over `kv` with an
    /// explicit `mask`, on the absorbed path. Returns `[T, H, V]`.
    pub fn attend_absorbed<R: Runner + ?Sized>(
        &self,
        runner: &R,
        q: &[f32],
        t: usize,
        q_pos: usize,
        kv: KvSeq,
        mask: MaskSpec,
    ) -> Result<Vec<f32>, AttnError> {
        let cfg = &self.cfg;
        let par: Parts = &|n, f| runner.parts(n, f);
        let qa = self.absorb_queries(par, q, t);
        let p = AttnParams { shape: self.absorbed_shape(), scale: cfg.softmax_scale(), mask, sink_logits: None };
        let mut o_lat = vec![0f32; t * cfg.heads * cfg.kv_lora_rank];
        let mut lse = vec![0f32; t * cfg.heads];
        runner.attend(&p, &qa, SeqSpec { q_len: t, q_pos, kv }, &mut o_lat, &mut lse)?;
        Ok(self.expand_outputs(par, &o_lat, t))
    }

    /// The naive twin of [`Mla::attend_absorbed`]: decompress the whole cache, then MHA.
    pub fn attend_naive<R: Runner + ?Sized>(
        &self,
        runner: &R,
        q: &[f32],
        t: usize,
        q_pos: usize,
        kv: KvSeq,
        mask: MaskSpec,
    ) -> Result<Vec<f32>, AttnError> {
        let cfg = &self.cfg;
        kv.validate(0)?;
        let rows = kv.read_keys(0, 0, kv.len);
        let (kk, vv) = self.decompress(&rows, kv.len);
        let dense = DenseKv::new(KvDtype::F32, cfg.heads, cfg.qk_dim(), cfg.v_dim, &kk, &vv);
        let shape = AttnShape { heads: cfg.heads, kv_heads: cfg.heads, dk: cfg.qk_dim(), dv: cfg.v_dim };
        let p = AttnParams { shape, scale: cfg.softmax_scale(), mask, sink_logits: None };
        let mut out = vec![0f32; t * cfg.heads * cfg.v_dim];
        let mut lse = vec![0f32; t * cfg.heads];
        runner.attend(&p, q, SeqSpec { q_len: t, q_pos, kv: dense.view() }, &mut out, &mut lse)?;
        Ok(out)
    }

    /// y `[T, C]` = W_O · concat_h(o_h), from `[T, H, V]`.
    pub fn output<C: ?Sized>(&self, cx: &C, o: &[f32], t: usize) -> Result<Vec<f32>, AttnError>
    where
        M: Matrix<C>,
    {
        self.w.w_o.apply(cx, o, t)
    }

    /// The whole layer for a pass: `x` `[T, C]` (already normed) at `pos`; stores the pass's
    /// latent rows in `layer` of `cache`, attends, projects out. Returns `[T, C]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<C: Runner + ?Sized>(
        &self,
        cx: &C,
        x: &[f32],
        pos: &Positions,
        layer: usize,
        cache: &mut dyn CacheAccess,
        window: Option<StreamWindow>,
        path: MlaPath,
    ) -> Result<Vec<f32>, AttnError>
    where
        M: Matrix<C>,
    {
        self.forward_batch(cx, x, &[pos], layer, &mut Single(cache), window, path)
    }

    /// The layer for a batch of sequences: `x` `[ΣT, C]` (already normed) holds segment s's
    /// tokens at `segs[s]` as consecutive rows. The projections run once over all rows; each
    /// segment stores its latent rows in its own cache and attends over it alone, on the
    /// path its own pass would take ([`Mla::choose_path`] of its T and S). Returns `[ΣT, C]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_batch<C: Runner + ?Sized>(
        &self,
        cx: &C,
        x: &[f32],
        segs: &[&Positions],
        layer: usize,
        cache: &mut dyn BatchCache,
        window: Option<StreamWindow>,
        path: MlaPath,
    ) -> Result<Vec<f32>, AttnError>
    where
        M: Matrix<C>,
    {
        let total: usize = segs.iter().map(|p| p.len()).sum();
        let (h, qk, v, l) = (self.cfg.heads, self.cfg.qk_dim(), self.cfg.v_dim, self.cfg.latent_dim());
        let (q, rows) = self.project_all(cx, x, segs)?; // [ΣT, H, N+P], [ΣT, R+P]
        let mut o = vec![0f32; total * h * v]; // [ΣT, H, V]
        let mut r0 = 0;
        for (si, pos) in segs.iter().enumerate() {
            let t = pos.len();
            for (i, row) in rows[r0 * l..(r0 + t) * l].chunks_exact(l).enumerate() {
                cache.write_latent(si, layer, pos.pos0 + i, row)?;
            }
            let kv = cache.view(si, layer, pos.pos0 + t)?;
            let os = self.attend(cx, &q[r0 * h * qk..(r0 + t) * h * qk], pos, kv, window, path)?;
            o[r0 * h * v..(r0 + t) * h * v].copy_from_slice(&os);
            r0 += t;
        }
        self.output(cx, &o, total)
    }
}
