//! Small dense helpers the mechanisms share: y = x·Wᵀ through the kernel table's GEMM tile,
//! RMSNorm.

use latent_kernels::{Kernels, MatMut, MatRef};

/// y `[T, out]` = x `[T, in]` · wᵀ, w `[out, in]` row-major (the checkpoint layout).
pub fn linear(x: &[f32], w: &[f32], t: usize, inp: usize, out: usize) -> Vec<f32> {
    assert_eq!(x.len(), t * inp, "linear: x");
    assert_eq!(w.len(), out * inp, "linear: w");
    let mut y = vec![0f32; t * out];
    if t > 0 && out > 0 {
        (Kernels::best().gemm_nt)(
            1.0,
            MatRef::dense(x, t, inp),
            MatRef::dense(w, out, inp),
            MatMut::dense(&mut y, t, out),
        );
    }
    y
}

/// RMSNorm of each `dim`-row of `x` in place: x / √(mean(x²) + eps) · w.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let dim = w.len();
    for row in x.chunks_exact_mut(dim) {
        let ms: f32 = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v *= r * g;
        }
    }
}

/// Spreads `n` independent pieces of work over threads (see [`crate::Runner::parts`]).
pub type Parts<'a> = &'a dyn Fn(usize, &(dyn Fn(usize) + Sync));

/// The pieces one after another on the calling thread.
pub fn in_order(n: usize, f: &(dyn Fn(usize) + Sync)) {
    (0..n).for_each(f)
}

/// Runs `f(h)` → `[T, width]` for every head through `par` and scatters the results into
/// `out[t, h, 0..width]` (rows of `out_dim` elements per head; the rest is left untouched).
fn per_head(
    par: Parts,
    heads: usize,
    t: usize,
    width: usize,
    out: &mut [f32],
    out_dim: usize,
    f: &(dyn Fn(usize) -> Vec<f32> + Sync),
) {
    if width == 0 || t == 0 {
        return;
    }
    let slots: Vec<std::sync::Mutex<Vec<f32>>> = (0..heads).map(|_| Default::default()).collect();
    par(heads, &|h| {
        let v = f(h);
        *slots[h].lock().unwrap_or_else(|e| e.into_inner()) = v;
    });
    for (h, slot) in slots.into_iter().enumerate() {
        let v = slot.into_inner().unwrap_or_else(|e| e.into_inner());
        for (row, src) in v.chunks_exact(width).take(t).enumerate() {
            out[(row * heads + h) * out_dim..][..width].copy_from_slice(src);
        }
    }
}

/// Per-head absorption into a latent space: for each head h (using up-projection
/// `w[h / group]` `[n, r]`), `out[t, h, 0..r] = w[h/group]ᵀ · q[t, h, 0..n]`.
/// `q` rows have `q_dim` elements per head, `out` rows `out_dim` per head (≥ r; the rest is
/// left untouched). The heads are independent pieces of `par`; each head's result is the
/// same whichever thread computes it.
#[allow(clippy::too_many_arguments)]
pub fn absorb_heads(
    par: Parts,
    q: &[f32],
    t: usize,
    heads: usize,
    q_dim: usize,
    n: usize,
    w: &[f32],
    group: usize,
    r: usize,
    out: &mut [f32],
    out_dim: usize,
) {
    let k = Kernels::best();
    per_head(par, heads, t, r, out, out_dim, &|h| {
        let wi = h / group;
        let a = MatRef { data: &q[h * q_dim..], rows: t, cols: n, stride: heads * q_dim };
        let b = MatRef::dense(&w[wi * n * r..(wi + 1) * n * r], n, r);
        let mut c = vec![0f32; t * r];
        (k.gemm_nn)(a, b, MatMut::dense(&mut c, t, r));
        c
    });
}

/// Per-head expansion out of a latent space: `out[t, h, :] = w[h / group] · o[t, h, :]`,
/// `w` `[Hw, d, r]`, `o` `[T, H, r]`, `out` `[T, H, d]`; heads are pieces of `par`.
#[allow(clippy::too_many_arguments)]
pub fn expand_heads(
    par: Parts,
    o: &[f32],
    t: usize,
    heads: usize,
    r: usize,
    w: &[f32],
    group: usize,
    d: usize,
) -> Vec<f32> {
    let k = Kernels::best();
    let mut out = vec![0f32; t * heads * d];
    per_head(par, heads, t, d, &mut out, d, &|h| {
        let wi = h / group;
        let a = MatRef { data: &o[h * r..], rows: t, cols: r, stride: heads * r };
        let b = MatRef::dense(&w[wi * d * r..(wi + 1) * d * r], d, r);
        let mut c = vec![0f32; t * d];
        (k.gemm_nt)(1.0, a, b, MatMut::dense(&mut c, t, d));
        c
    });
    out
}

/// Decompresses latent rows (`c` = first `r` of each `row_dim`-row, `[S, row_dim]`) through
/// `w` `[Hw, d, r]` into `[S, Hw, out_dim]`, filling elements `0..d` of each head's row.
#[allow(clippy::too_many_arguments)]
pub fn decompress_heads(
    rows: &[f32],
    s: usize,
    row_dim: usize,
    r: usize,
    w: &[f32],
    hw: usize,
    d: usize,
    out_dim: usize,
) -> Vec<f32> {
    let k = Kernels::best();
    let mut out = vec![0f32; s * hw * out_dim];
    let c = MatRef { data: rows, rows: s, cols: r, stride: row_dim };
    for h in 0..hw {
        let b = MatRef::dense(&w[h * d * r..(h + 1) * d * r], d, r);
        (k.gemm_nt)(1.0, c, b, MatMut { data: &mut out[h * out_dim..], rows: s, cols: d, stride: hw * out_dim });
    }
    out
}
