//! Small dense helpers the mechanisms share: y = x·Wᵀ through the kernel table's GEMM tile,
//! RMSNorm.

use latent_kernels::{Elem, Kernels, MatMut, MatRef, RawMat};

/// Stacked per-head matrices `[Hw, rows, cols]` (MLA's and low-rank K/V's up-projections),
/// kept in the precision they were stored in: the kernels read bf16 as it is (bf16 → f32 is
/// exact), so a bf16 matrix gives exactly what its f32 copy would, from half the bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum HeadWeights {
    F32(Vec<f32>),
    /// bf16 bit patterns, little-endian, two bytes per element.
    Bf16(Vec<u8>),
}

impl HeadWeights {
    /// Elements (not bytes).
    pub fn len(&self) -> usize {
        match self {
            HeadWeights::F32(w) => w.len(),
            HeadWeights::Bf16(b) => b.len() / 2,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            HeadWeights::F32(w) => 4 * w.len(),
            HeadWeights::Bf16(b) => b.len(),
        }
    }

    /// The elements as f32 (a copy for bf16).
    pub fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        match self {
            HeadWeights::F32(w) => std::borrow::Cow::Borrowed(w),
            HeadWeights::Bf16(b) => {
                let mut out = vec![0f32; b.len() / 2];
                (Kernels::best().bf16_to_f32)(b, &mut out);
                std::borrow::Cow::Owned(out)
            }
        }
    }

    /// A view of the stack.
    pub fn view(&self) -> HeadMats<'_> {
        match self {
            HeadWeights::F32(w) => HeadMats::F32(w),
            HeadWeights::Bf16(b) => HeadMats::Bf16(b),
        }
    }
}

/// A borrowed [`HeadWeights`] stack `[Hw, rows, cols]`.
#[derive(Clone, Copy, Debug)]
pub enum HeadMats<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u8]),
}

/// Matrix `i` `[rows, cols]` of a stack, as the GEMM tiles read it.
enum One<'a> {
    F32(MatRef<'a>),
    Raw(RawMat<'a>),
}

impl<'a> HeadMats<'a> {
    fn one(self, i: usize, rows: usize, cols: usize) -> One<'a> {
        let n = rows * cols;
        match self {
            HeadMats::F32(w) => One::F32(MatRef::dense(&w[i * n..(i + 1) * n], rows, cols)),
            HeadMats::Bf16(b) => One::Raw(RawMat {
                data: &b[2 * i * n..2 * (i + 1) * n],
                elem: Elem::Bf16,
                rows,
                cols,
                stride_bytes: 2 * cols,
                ahead: &[],
            }),
        }
    }
}

/// C = A·Bᵀ with B matrix `i` `[rows, cols]` of a stack.
fn nt(k: &Kernels, a: MatRef, w: HeadMats, i: usize, rows: usize, cols: usize, c: MatMut) {
    match w.one(i, rows, cols) {
        One::F32(b) => (k.gemm_nt)(1.0, a, b, c),
        One::Raw(b) => (k.gemm_nt_raw)(1.0, a, b, c),
    }
}

/// C += A·B with B matrix `i` `[rows, cols]` of a stack.
fn nn(k: &Kernels, a: MatRef, w: HeadMats, i: usize, rows: usize, cols: usize, c: MatMut) {
    match w.one(i, rows, cols) {
        One::F32(b) => (k.gemm_nn)(a, b, c),
        One::Raw(b) => (k.gemm_nn_raw)(a, b, c),
    }
}

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
    w: HeadMats,
    group: usize,
    r: usize,
    out: &mut [f32],
    out_dim: usize,
) {
    let k = Kernels::best();
    per_head(par, heads, t, r, out, out_dim, &|h| {
        let a = MatRef { data: &q[h * q_dim..], rows: t, cols: n, stride: heads * q_dim };
        let mut c = vec![0f32; t * r];
        nn(k, a, w, h / group, n, r, MatMut::dense(&mut c, t, r));
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
    w: HeadMats,
    group: usize,
    d: usize,
) -> Vec<f32> {
    let k = Kernels::best();
    let mut out = vec![0f32; t * heads * d];
    per_head(par, heads, t, d, &mut out, d, &|h| {
        let a = MatRef { data: &o[h * r..], rows: t, cols: r, stride: heads * r };
        let mut c = vec![0f32; t * d];
        nt(k, a, w, h / group, d, r, MatMut::dense(&mut c, t, d));
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
    w: HeadMats,
    hw: usize,
    d: usize,
    out_dim: usize,
) -> Vec<f32> {
    let k = Kernels::best();
    let mut out = vec![0f32; s * hw * out_dim];
    let c = MatRef { data: rows, rows: s, cols: r, stride: row_dim };
    for h in 0..hw {
        nt(k, c, w, h, d, r, MatMut { data: &mut out[h * out_dim..], rows: s, cols: d, stride: hw * out_dim });
    }
    out
}
