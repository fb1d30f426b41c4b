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

/// Per-head absorption into a latent space: for each head h (using up-projection
/// `w[h / group]` `[n, r]`), `out[t, h, 0..r] = w[h/group]ᵀ · q[t, h, 0..n]`.
/// `q` rows have `q_dim` elements per head, `out` rows `out_dim` per head (≥ r; the rest is
/// left untouched).
#[allow(clippy::too_many_arguments)]
pub fn absorb_heads(
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
    for h in 0..heads {
        let wi = h / group;
        let a = MatRef { data: &q[h * q_dim..], rows: t, cols: n, stride: heads * q_dim };
        let b = MatRef::dense(&w[wi * n * r..(wi + 1) * n * r], n, r);
        let mut c = MatMut { data: &mut out[h * out_dim..], rows: t, cols: r, stride: heads * out_dim };
        for row in 0..t {
            c.data[row * c.stride..row * c.stride + r].fill(0.0);
        }
        c.rows = t;
        (k.gemm_nn)(a, b, c);
    }
}

/// Per-head expansion out of a latent space: `out[t, h, :] = w[h / group] · o[t, h, :]`,
/// `w` `[Hw, d, r]`, `o` `[T, H, r]`, `out` `[T, H, d]`.
pub fn expand_heads(o: &[f32], t: usize, heads: usize, r: usize, w: &[f32], group: usize, d: usize) -> Vec<f32> {
    let k = Kernels::best();
    let mut out = vec![0f32; t * heads * d];
    for h in 0..heads {
        let wi = h / group;
        let a = MatRef { data: &o[h * r..], rows: t, cols: r, stride: heads * r };
        let b = MatRef::dense(&w[wi * d * r..(wi + 1) * d * r], d, r);
        (k.gemm_nt)(1.0, a, b, MatMut { data: &mut out[h * d..], rows: t, cols: d, stride: heads * d });
    }
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
