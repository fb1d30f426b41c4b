//! The MHA/GQA/MQA attention layer: Q/K/V projections, RoPE, the pass's K/V stored in the
//! lent cache, one flash attention call (two under a stream window), output projection.
//!
//! Dimension legend: T tokens of the pass, C hidden, H query heads, Hkv KV heads, D head dim.

use crate::flash::AttnShape;
use crate::layer::{
    attend_causal, BatchCache, CacheAccess, Matrix, MatrixDims, Positions, Runner, Single, StreamWindow,
};
use crate::rope::Rope;
use crate::AttnError;

/// One grouped-query attention layer (MHA when Hkv = H, MQA when Hkv = 1).
#[derive(Clone, Debug)]
pub struct GqaLayer<M> {
    /// `[H·D, C]`
    pub wq: M,
    /// `[Hkv·D, C]`
    pub wk: M,
    /// `[Hkv·D, C]`
    pub wv: M,
    /// `[C, H·D]`
    pub wo: M,
    /// Heads and head dims (dk = dv = D).
    pub shape: AttnShape,
    /// RoPE on the first `rope.dims` of each query and key head.
    pub rope: Rope,
    /// Softmax scale (1/√D).
    pub scale: f32,
}

impl<M: MatrixDims> GqaLayer<M> {
    /// Checks the weights against the shape.
    pub fn new(wq: M, wk: M, wv: M, wo: M, shape: AttnShape, rope: Rope) -> Result<GqaLayer<M>, AttnError> {
        shape.validate()?;
        let d = shape.dk;
        if shape.dv != d {
            return Err(AttnError::Config(format!("key dim {d} and value dim {} differ", shape.dv)));
        }
        if rope.dims > d || !rope.dims.is_multiple_of(2) {
            return Err(AttnError::Config(format!("RoPE dims {} must be even and ≤ the head dim {d}", rope.dims)));
        }
        let c = wq.dims().1;
        for (what, m, expected) in [
            ("wq [H·D, C]", &wq, (shape.heads * d, c)),
            ("wk [Hkv·D, C]", &wk, (shape.kv_heads * d, c)),
            ("wv [Hkv·D, C]", &wv, (shape.kv_heads * d, c)),
            ("wo [C, H·D]", &wo, (c, shape.heads * d)),
        ] {
            if m.dims() != expected {
                let (r, k) = m.dims();
                return Err(AttnError::Len { what, expected: expected.0 * expected.1, got: r * k });
            }
        }
        Ok(GqaLayer { wq, wk, wv, wo, shape, rope, scale: 1.0 / (d as f32).sqrt() })
    }
}

impl<M> GqaLayer<M> {
    /// RoPE on every head of `x` `[T, heads, D]`, token i at `at(i)`.
    fn rotate(&self, x: &mut [f32], heads: usize, pos: &Positions, at: &dyn Fn(usize) -> usize) {
        let d = self.shape.dk;
        for ti in 0..pos.len() {
            let a = pos.at(&self.rope, ti, at(ti));
            for h in 0..heads {
                a.apply(&mut x[(ti * heads + h) * d..][..d]);
            }
        }
    }

    /// The whole layer for a pass: `x` `[T, C]` (already normed) at `pos`; stores the pass's
    /// K/V in `layer` of `cache`, attends, projects out. Returns `[T, C]`.
    pub fn forward<C: Runner + ?Sized>(
        &self,
        cx: &C,
        x: &[f32],
        pos: &Positions,
        layer: usize,
        cache: &mut dyn CacheAccess,
        window: Option<StreamWindow>,
    ) -> Result<Vec<f32>, AttnError>
    where
        M: Matrix<C>,
    {
        self.forward_batch(cx, x, &[pos], layer, &mut Single(cache), window)
    }

    /// The layer for a batch of sequences: `x` `[ΣT, C]` (already normed) holds segment s's
    /// tokens at `segs[s]` as consecutive rows. The projections run once over all rows;
    /// each segment stores its K/V in its own cache and attends over it alone, exactly as a
    /// pass of that segment by itself would. Returns `[ΣT, C]`.
    pub fn forward_batch<C: Runner + ?Sized>(
        &self,
        cx: &C,
        x: &[f32],
        segs: &[&Positions],
        layer: usize,
        cache: &mut dyn BatchCache,
        window: Option<StreamWindow>,
    ) -> Result<Vec<f32>, AttnError>
    where
        M: Matrix<C>,
    {
        let (h, hk, d) = (self.shape.heads, self.shape.kv_heads, self.shape.dk);
        let total: usize = segs.iter().map(|p| p.len()).sum();
        let mut qkv = M::apply_group(cx, &[&self.wq, &self.wk, &self.wv], x, total)?.into_iter();
        let (Some(q), Some(mut k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
            return Err(AttnError::Config("grouped product returned fewer results".into()));
        };
        // q [ΣT, H, D], k [ΣT, Hkv, D], v [ΣT, Hkv, D]; o [ΣT, H, D]
        let mut o = vec![0f32; total * h * d];
        let mut r0 = 0;
        for (si, pos) in segs.iter().enumerate() {
            let t = pos.len();
            let (ks, vs) = (&mut k[r0 * hk * d..(r0 + t) * hk * d], &v[r0 * hk * d..(r0 + t) * hk * d]);
            self.rotate(ks, hk, pos, &|i| pos.pos0 + i);
            for i in 0..t {
                let row = i * hk * d..(i + 1) * hk * d;
                cache.write_kv(si, layer, pos.pos0 + i, &ks[row.clone()], &vs[row])?;
            }
            let kv = cache.view(si, layer, pos.pos0 + t)?;
            let qs = &q[r0 * h * d..(r0 + t) * h * d];
            let os =
                attend_causal(cx, self.shape, self.scale, kv, pos.pos0, t, window, &|at: &dyn Fn(usize) -> usize| {
                    let mut qr = qs.to_vec();
                    self.rotate(&mut qr, h, pos, at);
                    Ok(qr)
                })?; // [T, H, D]
            o[r0 * h * d..(r0 + t) * h * d].copy_from_slice(&os);
            r0 += t;
        }
        self.wo.apply(cx, &o, total)
    }
}
