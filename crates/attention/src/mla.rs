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

use crate::flash::{attend_one, AttnParams, AttnShape, MaskSpec, Plan, SeqSpec};
use crate::kv_view::{DenseKv, KvDtype, KvSeq};
use crate::linear::{absorb_heads, decompress_heads, expand_heads, linear, rms_norm};
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
pub enum QProj {
    /// w_q `[H·(N+P), C]`.
    Direct { w_q: Vec<f32> },
    /// w_dq `[Rq, C]`, q_norm `[Rq]`, w_uq `[H·(N+P), Rq]`.
    Lora { w_dq: Vec<f32>, q_norm: Vec<f32>, w_uq: Vec<f32> },
}

/// Weights of one MLA layer, row-major `[out, in]`.
#[derive(Clone, Debug)]
pub struct MlaWeights {
    pub q: QProj,
    /// `[R + P, C]`
    pub w_dkv: Vec<f32>,
    /// `[R]`
    pub kv_norm: Vec<f32>,
    /// `[H, N, R]`: k_nope_h = W_UK_h · c
    pub w_uk: Vec<f32>,
    /// `[H, V, R]`: v_h = W_UV_h · c
    pub w_uv: Vec<f32>,
    /// `[C, H·V]`
    pub w_o: Vec<f32>,
}

/// One MLA layer.
#[derive(Clone, Debug)]
pub struct Mla {
    pub cfg: MlaConfig,
    pub w: MlaWeights,
}

impl Mla {
    pub fn new(cfg: MlaConfig, w: MlaWeights) -> Result<Mla, AttnError> {
        let (c, h, r, n, p, v) = (cfg.hidden, cfg.heads, cfg.kv_lora_rank, cfg.nope, cfg.rope_dim, cfg.v_dim);
        let chk = |what: &'static str, got: usize, expected: usize| {
            if got == expected {
                Ok(())
            } else {
                Err(AttnError::Len { what, expected, got })
            }
        };
        match (&w.q, cfg.q_lora_rank) {
            (QProj::Direct { w_q }, None) => chk("w_q [H(N+P), C]", w_q.len(), h * (n + p) * c)?,
            (QProj::Lora { w_dq, q_norm, w_uq }, Some(rq)) => {
                chk("w_dq [Rq, C]", w_dq.len(), rq * c)?;
                chk("q_norm [Rq]", q_norm.len(), rq)?;
                chk("w_uq [H(N+P), Rq]", w_uq.len(), h * (n + p) * rq)?;
            }
            _ => return Err(AttnError::Config("query projection does not match q_lora_rank".into())),
        }
        chk("w_dkv [R+P, C]", w.w_dkv.len(), (r + p) * c)?;
        chk("kv_norm [R]", w.kv_norm.len(), r)?;
        chk("w_uk [H, N, R]", w.w_uk.len(), h * n * r)?;
        chk("w_uv [H, V, R]", w.w_uv.len(), h * v * r)?;
        chk("w_o [C, H V]", w.w_o.len(), c * h * v)?;
        if p % 2 != 0 || cfg.rope.dims != p {
            return Err(AttnError::Config(format!("rope dims {} must equal the (even) rope part {p}", cfg.rope.dims)));
        }
        Ok(Mla { cfg, w })
    }

    /// Random weights with activation-like scales (tests, benchmarks).
    pub fn random(cfg: MlaConfig, rng: &mut Rng) -> Mla {
        let (c, h, r, n, p, v) = (cfg.hidden, cfg.heads, cfg.kv_lora_rank, cfg.nope, cfg.rope_dim, cfg.v_dim);
        let mut m = |rows: usize, cols: usize| rng.normals(rows * cols, 1.0 / (cols as f32).sqrt());
        let q = match cfg.q_lora_rank {
            None => QProj::Direct { w_q: m(h * (n + p), c) },
            Some(rq) => QProj::Lora { w_dq: m(rq, c), q_norm: vec![1.0; rq], w_uq: m(h * (n + p), rq) },
        };
        let w = MlaWeights {
            q,
            w_dkv: m(r + p, c),
            kv_norm: vec![1.0; r],
            w_uk: m(h * n, r),
            w_uv: m(h * v, r),
            w_o: m(c, h * v),
        };
        let mut w = w;
        for (i, g) in w.kv_norm.iter_mut().enumerate() {
            *g = 0.5 + (i % 7) as f32 * 0.15;
        }
        Mla { cfg, w }
    }

    /// Cache rows for `t` tokens `x` `[T, C]` at positions `pos0..`: `[T, R+P]` =
    /// `[RMSNorm(c) | RoPE(k_r)]`.
    pub fn compress_kv(&self, x: &[f32], t: usize, pos0: usize) -> Vec<f32> {
        let cfg = &self.cfg;
        let (r, l) = (cfg.kv_lora_rank, cfg.latent_dim());
        let mut rows = linear(x, &self.w.w_dkv, t, cfg.hidden, l);
        for (i, row) in rows.chunks_exact_mut(l).enumerate() {
            rms_norm(&mut row[..r], &self.w.kv_norm, cfg.eps);
            cfg.rope.apply(&mut row[r..], pos0 + i);
        }
        rows
    }

    /// Queries `[T, H, N+P]` with RoPE applied to each head's last P dims.
    pub fn queries(&self, x: &[f32], t: usize, pos0: usize) -> Vec<f32> {
        let cfg = &self.cfg;
        let (h, qk) = (cfg.heads, cfg.qk_dim());
        let mut q = match &self.w.q {
            QProj::Direct { w_q } => linear(x, w_q, t, cfg.hidden, h * qk),
            QProj::Lora { w_dq, q_norm, w_uq } => {
                let rq = q_norm.len();
                let mut cq = linear(x, w_dq, t, cfg.hidden, rq);
                rms_norm(&mut cq, q_norm, cfg.eps);
                linear(&cq, w_uq, t, rq, h * qk)
            }
        };
        for ti in 0..t {
            for hi in 0..h {
                let head = &mut q[(ti * h + hi) * qk..][..qk];
                cfg.rope.apply(&mut head[cfg.nope..], pos0 + ti);
            }
        }
        q
    }

    /// Absorbed queries `[T, H, R+P]`: `[W_UK_hᵀ·q_nope_h | q_rope_h]`.
    pub fn absorb_queries(&self, q: &[f32], t: usize) -> Vec<f32> {
        let cfg = &self.cfg;
        let (h, n, r, qk, l) = (cfg.heads, cfg.nope, cfg.kv_lora_rank, cfg.qk_dim(), cfg.latent_dim());
        let mut out = vec![0f32; t * h * l];
        absorb_heads(q, t, h, qk, n, &self.w.w_uk, 1, r, &mut out, l);
        for ti in 0..t {
            for hi in 0..h {
                let src = &q[(ti * h + hi) * qk + n..][..cfg.rope_dim];
                out[(ti * h + hi) * l + r..][..cfg.rope_dim].copy_from_slice(src);
            }
        }
        out
    }

    /// Per-head outputs `[T, H, V]` from latent outputs `[T, H, R]`: o_h = W_UV_h · o'_h.
    pub fn expand_outputs(&self, o_lat: &[f32], t: usize) -> Vec<f32> {
        let cfg = &self.cfg;
        expand_heads(o_lat, t, cfg.heads, cfg.kv_lora_rank, &self.w.w_uv, 1, cfg.v_dim)
    }

    /// Attention shape of the absorbed path: MQA with key dim R+P and value dim R.
    pub fn absorbed_shape(&self) -> AttnShape {
        AttnShape { heads: self.cfg.heads, kv_heads: 1, dk: self.cfg.latent_dim(), dv: self.cfg.kv_lora_rank }
    }

    /// Absorbed attention of queries `q` `[T, H, N+P]` at positions `q_pos..` over the latent
    /// cache `kv` (rows `[R+P]`, values = first R). Returns `[T, H, V]`.
    pub fn attend_absorbed(
        &self,
        q: &[f32],
        t: usize,
        q_pos: usize,
        kv: KvSeq,
        mask: MaskSpec,
        plan: &Plan,
    ) -> Result<Vec<f32>, AttnError> {
        let cfg = &self.cfg;
        let qa = self.absorb_queries(q, t);
        let o_lat = attend_one(
            &AttnParams { shape: self.absorbed_shape(), scale: cfg.softmax_scale(), mask, sink_logits: None },
            plan,
            &qa,
            SeqSpec { q_len: t, q_pos, kv },
        )?;
        Ok(self.expand_outputs(&o_lat, t))
    }

    /// Decompresses latent rows `[S, R+P]` into per-head K `[S, H, N+P]` and V `[S, H, V]`.
    pub fn decompress(&self, rows: &[f32], s: usize) -> (Vec<f32>, Vec<f32>) {
        let cfg = &self.cfg;
        let (h, n, r, p, l, qk) = (cfg.heads, cfg.nope, cfg.kv_lora_rank, cfg.rope_dim, cfg.latent_dim(), cfg.qk_dim());
        let mut kk = decompress_heads(rows, s, l, r, &self.w.w_uk, h, n, qk);
        let vv = decompress_heads(rows, s, l, r, &self.w.w_uv, h, cfg.v_dim, cfg.v_dim);
        for j in 0..s {
            for hi in 0..h {
                kk[(j * h + hi) * qk + n..][..p].copy_from_slice(&rows[j * l + r..][..p]);
            }
        }
        (kk, vv)
    }

    /// Naive attention: decompress the whole latent cache `kv`, then MHA. Returns `[T, H, V]`.
    pub fn attend_naive(
        &self,
        q: &[f32],
        t: usize,
        q_pos: usize,
        kv: KvSeq,
        mask: MaskSpec,
        plan: &Plan,
    ) -> Result<Vec<f32>, AttnError> {
        let cfg = &self.cfg;
        kv.validate(0)?;
        let rows = kv.read_keys(0, 0, kv.len);
        let (kk, vv) = self.decompress(&rows, kv.len);
        let dense = DenseKv::new(KvDtype::F32, cfg.heads, cfg.qk_dim(), cfg.v_dim, &kk, &vv);
        let shape = AttnShape { heads: cfg.heads, kv_heads: cfg.heads, dk: cfg.qk_dim(), dv: cfg.v_dim };
        attend_one(
            &AttnParams { shape, scale: cfg.softmax_scale(), mask, sink_logits: None },
            plan,
            q,
            SeqSpec { q_len: t, q_pos, kv: dense.view() },
        )
    }

    /// y `[T, C]` = W_O · concat_h(o_h), from `[T, H, V]`.
    pub fn output(&self, o: &[f32], t: usize) -> Vec<f32> {
        let cfg = &self.cfg;
        linear(o, &self.w.w_o, t, cfg.heads * cfg.v_dim, cfg.hidden)
    }
}
