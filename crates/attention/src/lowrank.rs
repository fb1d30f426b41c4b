//! Low-rank K/V: the general form MLA instantiates (without its decoupled RoPE key).
//!
//! One latent c = W_D·x `[r]` per token is cached; KV head g's keys and values are
//! k_g = U_K,g·c and v_g = U_V,g·c (`[D]` each). Like MLA it runs two ways over the same
//! cache: *naive* (decompress per-head K/V, then GQA) and *absorbed* (q'_h = U_K,gᵀ·q_h,
//! attend over the latents as MQA with key dim r and value = c, then o_h = U_V,g·o'_h).
//! A GQA layer whose stacked K/V projection has rank ≤ r is represented exactly.

use crate::flash::{attend_one, AttnParams, AttnShape, MaskSpec, Plan, SeqSpec};
use crate::kv_view::{DenseKv, KvDtype, KvSeq};
use crate::linear::{absorb_heads, decompress_heads, expand_heads, in_order, linear, HeadMats};
use crate::AttnError;

/// A low-rank K/V layer: H query heads over Hkv (virtual) KV heads of dim D, cache rank r.
#[derive(Clone, Debug)]
pub struct LowRankKv {
    pub heads: usize,
    pub kv_heads: usize,
    /// D
    pub head_dim: usize,
    /// r
    pub rank: usize,
    /// C
    pub hidden: usize,
    /// `[r, C]`
    pub w_down: Vec<f32>,
    /// `[Hkv, D, r]`
    pub u_k: Vec<f32>,
    /// `[Hkv, D, r]`
    pub u_v: Vec<f32>,
    /// Softmax scale (usually 1/√D).
    pub scale: f32,
}

impl LowRankKv {
    pub fn validate(&self) -> Result<(), AttnError> {
        let (h, hk, d, r, c) = (self.heads, self.kv_heads, self.head_dim, self.rank, self.hidden);
        AttnShape { heads: h, kv_heads: hk, dk: d, dv: d }.validate()?;
        for (what, got, expected) in [
            ("w_down [r, C]", self.w_down.len(), r * c),
            ("u_k [Hkv, D, r]", self.u_k.len(), hk * d * r),
            ("u_v [Hkv, D, r]", self.u_v.len(), hk * d * r),
        ] {
            if got != expected {
                return Err(AttnError::Len { what, expected, got });
            }
        }
        Ok(())
    }

    /// Cache rows `[T, r]` for `x` `[T, C]`.
    pub fn compress(&self, x: &[f32], t: usize) -> Vec<f32> {
        linear(x, &self.w_down, t, self.hidden, self.rank)
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Absorbed attention of `q` `[T, H, D]` over a latent cache (rows `[r]`, values = rows).
    /// Returns `[T, H, D]`.
    pub fn attend_absorbed(
        &self,
        q: &[f32],
        t: usize,
        q_pos: usize,
        kv: KvSeq,
        mask: MaskSpec,
        plan: &Plan,
    ) -> Result<Vec<f32>, AttnError> {
        self.validate()?;
        let (h, d, r) = (self.heads, self.head_dim, self.rank);
        let mut qa = vec![0f32; t * h * r];
        absorb_heads(&in_order, q, t, h, d, d, HeadMats::F32(&self.u_k), self.group(), r, &mut qa, r);
        let o_lat = attend_one(
            &AttnParams {
                shape: AttnShape { heads: h, kv_heads: 1, dk: r, dv: r },
                scale: self.scale,
                mask,
                sink_logits: None,
            },
            plan,
            &qa,
            SeqSpec { q_len: t, q_pos, kv },
        )?;
        Ok(expand_heads(&in_order, &o_lat, t, h, r, HeadMats::F32(&self.u_v), self.group(), d))
    }

    /// Decompresses latent rows `[S, r]` into K and V `[S, Hkv, D]`.
    pub fn decompress(&self, rows: &[f32], s: usize) -> (Vec<f32>, Vec<f32>) {
        let (hk, d, r) = (self.kv_heads, self.head_dim, self.rank);
        (
            decompress_heads(rows, s, r, r, HeadMats::F32(&self.u_k), hk, d, d),
            decompress_heads(rows, s, r, r, HeadMats::F32(&self.u_v), hk, d, d),
        )
    }

    /// Naive attention: decompress, then GQA. Returns `[T, H, D]`.
    pub fn attend_naive(
        &self,
        q: &[f32],
        t: usize,
        q_pos: usize,
        kv: KvSeq,
        mask: MaskSpec,
        plan: &Plan,
    ) -> Result<Vec<f32>, AttnError> {
        self.validate()?;
        kv.validate(0)?;
        let (h, hk, d) = (self.heads, self.kv_heads, self.head_dim);
        let rows = kv.read_keys(0, 0, kv.len);
        let (kk, vv) = self.decompress(&rows, kv.len);
        let dense = DenseKv::new(KvDtype::F32, hk, d, d, &kk, &vv);
        let shape = AttnShape { heads: h, kv_heads: hk, dk: d, dv: d };
        attend_one(
            &AttnParams { shape, scale: self.scale, mask, sink_logits: None },
            plan,
            q,
            SeqSpec { q_len: t, q_pos, kv: dense.view() },
        )
    }
}
