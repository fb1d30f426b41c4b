//! Matrix products against packed weights: validation, activation preparation, the row /
//! activation blocking drivers and the threaded splitter.

use std::marker::PhantomData;
use std::ops::Range;

use latent_kernels::cpu::Isa;

use crate::acts::{ActRow, Q8Acts};
use crate::dispatch::{best_kernels, Kernels, Variant};
use crate::types::{check_len, QuantError, WeightType, QK, QK_K};
use crate::MAX_TILE;

/// A borrowed weight matrix `W: [rows N, cols K]`, row-major in type `wtype`: each row is
/// `wtype.row_bytes(K)` bytes (GGUF order: `dims[0] = K` is the row).
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub wtype: WeightType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// A validated matrix.
    pub fn new(wtype: WeightType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, QuantError> {
        let m = QMatrix { wtype, rows, cols, data };
        m.validate()?;
        Ok(m)
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> Result<usize, QuantError> {
        self.wtype.row_bytes(self.cols)
    }

    /// Checks `cols` against the block size and `data` against `rows * row_bytes`.
    pub fn validate(&self) -> Result<(), QuantError> {
        let rb = self.row_bytes()?;
        let total = self.rows.checked_mul(rb).ok_or(QuantError::Overflow("matrix bytes"))?;
        check_len("weight data", self.data.len(), total)
    }

    /// Packed bytes of row `n` (panics if out of range; call [`QMatrix::validate`] first).
    pub fn row(&self, n: usize) -> &'a [u8] {
        let rb = self.wtype.row_bytes(self.cols).unwrap_or(0);
        &self.data[n * rb..(n + 1) * rb]
    }
}

/// The two precisions of [`matmul`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulPrecision {
    /// f32 activations, weights dequantized on the fly (bit-exactly), f32 accumulation.
    Exact,
    /// Activations quantized once per call to 8-bit blocks (32-element blocks for
    /// Q4_0/Q4_1/Q8_0 weights, 256-element Q8_K-style blocks for K-quants), integer dot
    /// products per block, f32 accumulation of the scaled block sums. Float weights
    /// (F32/F16/BF16) have no integer path and are computed as `Exact`.
    Fast,
}

/// Activations made ready for a weight type and precision (quantized once for `Fast`), to
/// share between several [`matmul_prepared_rows`] calls (e.g. threads splitting the rows).
/// An input prepared for one weight type serves every type with the same activation block
/// (Q4_0/Q4_1/Q8_0 share 32-element blocks, the K-quants 256-element blocks) and the float
/// types (computed exactly).
#[derive(Debug)]
pub struct PreparedInput<'a> {
    x: &'a [f32],
    t: usize,
    k: usize,
    wtype: WeightType,
    q8: Option<Q8Acts>,
}

impl PreparedInput<'_> {
    /// Activation rows.
    pub fn rows(&self) -> usize {
        self.t
    }
    /// Elements per activation row.
    pub fn cols(&self) -> usize {
        self.k
    }
    /// Whether the integer path will be used.
    pub fn is_quantized(&self) -> bool {
        self.q8.is_some()
    }
    /// The weight type it was prepared for.
    pub fn wtype(&self) -> WeightType {
        self.wtype
    }
    /// The activation block of the quantized input (`None`: f32 input).
    pub fn q8_block(&self) -> Option<usize> {
        self.q8.as_ref().map(|a| a.block)
    }
    /// The f32 activations `[t, k]`.
    pub(crate) fn x(&self) -> &[f32] {
        self.x
    }
    pub(crate) fn q8(&self) -> Option<&Q8Acts> {
        self.q8.as_ref()
    }
}

/// Validates `x: [t, k]` for weights of type `wtype` and quantizes it when `p` is `Fast`.
pub fn prepare_input(
    p: MatmulPrecision,
    wtype: WeightType,
    x: &[f32],
    t: usize,
    k: usize,
) -> Result<PreparedInput<'_>, QuantError> {
    prepare_with(best_kernels(), p, wtype, x, t, k)
}

fn prepare_with<'a>(
    kern: &Kernels,
    p: MatmulPrecision,
    wtype: WeightType,
    x: &'a [f32],
    t: usize,
    k: usize,
) -> Result<PreparedInput<'a>, QuantError> {
    wtype.row_bytes(k)?;
    let n = t.checked_mul(k).ok_or(QuantError::Overflow("activation size"))?;
    check_len("x (activations [t, k])", x.len(), n)?;
    let q8 = match (p, wtype.is_quantized()) {
        (MatmulPrecision::Fast, true) => {
            let block = if wtype.is_k_quant() { QK_K } else { QK };
            let mut acts = Q8Acts::alloc(block, t, k);
            (kern.quant_acts)(x, &mut acts);
            if kern.spread_scales {
                acts.spread_scales();
            }
            Some(acts)
        }
        _ => None,
    };
    Ok(PreparedInput { x, t, k, wtype, q8 })
}

/// `y[t, n] = sum_k x[t, k] * dequant(W)[n, k]` for all `n`. `x: [t, K]`, `y: [t, N]`,
/// both row-major.
pub fn matmul(p: MatmulPrecision, w: &QMatrix, x: &[f32], y: &mut [f32], t: usize) -> Result<(), QuantError> {
    matmul_rows(p, w, x, y, t, 0..w.rows)
}

/// [`matmul`] restricted to output rows `n` in `row_range` (columns of `y`); other entries
/// of `y` (`[t, N]`, full size) are left untouched.
pub fn matmul_rows(
    p: MatmulPrecision,
    w: &QMatrix,
    x: &[f32],
    y: &mut [f32],
    t: usize,
    row_range: Range<usize>,
) -> Result<(), QuantError> {
    run_with(best_kernels(), p, w, x, y, t, row_range)
}

/// [`matmul`] with the best kernels of a forced instruction-set level.
pub fn matmul_isa(
    isa: Isa,
    p: MatmulPrecision,
    w: &QMatrix,
    x: &[f32],
    y: &mut [f32],
    t: usize,
) -> Result<(), QuantError> {
    let v = Variant::for_isa(isa).ok_or(QuantError::VariantUnavailable(isa.name()))?;
    matmul_rows_with(v, p, w, x, y, t, 0..w.rows)
}

/// [`matmul_rows`] with a forced kernel variant.
pub fn matmul_rows_with(
    v: Variant,
    p: MatmulPrecision,
    w: &QMatrix,
    x: &[f32],
    y: &mut [f32],
    t: usize,
    row_range: Range<usize>,
) -> Result<(), QuantError> {
    run_with(v.kernels()?, p, w, x, y, t, row_range)
}

/// [`matmul_rows`] on an input prepared once with [`prepare_input`].
pub fn matmul_prepared_rows(
    w: &QMatrix,
    input: &PreparedInput,
    y: &mut [f32],
    row_range: Range<usize>,
) -> Result<(), QuantError> {
    check_call(w, input, y.len(), &row_range)?;
    let out = OutView::new(y);
    // SAFETY: `out` comes from an exclusive borrow of `y`, so no other writer exists.
    unsafe { run_rows(best_kernels(), w, input, &out, row_range) };
    Ok(())
}

fn run_with(
    kern: &Kernels,
    p: MatmulPrecision,
    w: &QMatrix,
    x: &[f32],
    y: &mut [f32],
    t: usize,
    row_range: Range<usize>,
) -> Result<(), QuantError> {
    w.validate()?;
    let input = prepare_with(kern, p, w.wtype, x, t, w.cols)?;
    check_call(w, &input, y.len(), &row_range)?;
    let out = OutView::new(y);
    // SAFETY: `out` comes from an exclusive borrow of `y`, so no other writer exists.
    unsafe { run_rows(kern, w, &input, &out, row_range) };
    Ok(())
}

/// Splits the output rows of [`matmul`] over `pool`'s threads (activations are prepared
/// once, then each task computes a disjoint chunk of rows).
pub fn matmul_par(
    pool: &rayon::ThreadPool,
    p: MatmulPrecision,
    w: &QMatrix,
    x: &[f32],
    y: &mut [f32],
    t: usize,
) -> Result<(), QuantError> {
    let kern = best_kernels();
    w.validate()?;
    let input = prepare_with(kern, p, w.wtype, x, t, w.cols)?;
    check_call(w, &input, y.len(), &(0..w.rows))?;
    let n = w.rows;
    let threads = pool.current_num_threads().max(1);
    // A few chunks per thread for balance, but not so small that per-chunk overhead shows.
    let chunk = n.div_ceil(threads * 4).max(16).next_multiple_of(MAX_TILE);
    let out = OutView::new(y);
    let (out, input) = (&out, &input);
    pool.scope(|s| {
        for start in (0..n).step_by(chunk) {
            let end = (start + chunk).min(n);
            s.spawn(move |_| {
                // SAFETY: the chunks `start..end` are disjoint, so no two tasks write the
                // same entries of `y`, which stays exclusively borrowed until the scope ends.
                unsafe { run_rows(kern, w, input, out, start..end) }
            });
        }
    });
    Ok(())
}

fn check_call(w: &QMatrix, input: &PreparedInput, y_len: usize, row_range: &Range<usize>) -> Result<(), QuantError> {
    w.validate()?;
    if let Some(acts) = &input.q8 {
        let need = if w.wtype.is_k_quant() { QK_K } else { QK };
        if w.wtype.is_quantized() && acts.block != need {
            return Err(QuantError::PreparedMismatch { prepared: input.wtype, weights: w.wtype });
        }
    }
    check_len("prepared input columns", input.k, w.cols)?;
    let ny = input.t.checked_mul(w.rows).ok_or(QuantError::Overflow("output size"))?;
    check_len("y (output [t, n])", y_len, ny)?;
    if row_range.start > row_range.end || row_range.end > w.rows {
        return Err(QuantError::RowRange { start: row_range.start, end: row_range.end, rows: w.rows });
    }
    Ok(())
}

/// Shared write access to the output for disjoint row ranges.
pub(crate) struct OutView<'a> {
    ptr: *mut f32,
    len: usize,
    _y: PhantomData<&'a mut [f32]>,
}

// SAFETY: `OutView` is only a pointer to an exclusively borrowed `[f32]`; all writes go
// through the unsafe `set`, whose callers guarantee that concurrent writers touch disjoint
// indices.
unsafe impl Send for OutView<'_> {}
// SAFETY: see `Send` above; shared references only allow writes through the unsafe `set`.
unsafe impl Sync for OutView<'_> {}

impl<'a> OutView<'a> {
    pub(crate) fn new(y: &'a mut [f32]) -> Self {
        OutView { ptr: y.as_mut_ptr(), len: y.len(), _y: PhantomData }
    }

    /// # Safety
    /// No other thread may access index `i` concurrently.
    #[inline(always)]
    pub(crate) unsafe fn set(&self, i: usize, v: f32) {
        assert!(i < self.len);
        // SAFETY: `i` is in bounds of the borrowed slice (checked above) and the caller
        // guarantees no concurrent access to this index.
        unsafe { self.ptr.add(i).write(v) }
    }

    /// Writes `v` at indices `i..i + v.len()`.
    ///
    /// # Safety
    /// No other thread may access those indices concurrently.
    #[inline(always)]
    pub(crate) unsafe fn set_slice(&self, i: usize, v: &[f32]) {
        assert!(i.checked_add(v.len()).is_some_and(|e| e <= self.len));
        // SAFETY: the range is in bounds of the borrowed slice (checked above) and the
        // caller guarantees no concurrent access to it; `v` is a distinct borrow.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(i), v.len()) }
    }
}

/// Weight bytes kept hot (L2) while several activation tiles pass over them.
const FAST_PANEL_BYTES: usize = 96 * 1024;
/// f32 bytes of dequantized weights per exact-path panel.
const EXACT_PANEL_BYTES: usize = 64 * 1024;

/// Computes output rows `rows` of a validated call.
///
/// # Safety
/// No concurrent call may write the same output rows through `out`.
unsafe fn run_rows(kern: &Kernels, w: &QMatrix, input: &PreparedInput, out: &OutView, rows: Range<usize>) {
    if rows.is_empty() || input.t == 0 {
        return;
    }
    if w.cols == 0 {
        for t in 0..input.t {
            for n in rows.clone() {
                // SAFETY: row `n` belongs to this call's rows (caller contract).
                unsafe { out.set(t * w.rows + n, 0.0) };
            }
        }
        return;
    }
    match &input.q8 {
        // SAFETY: forwarded caller contract.
        Some(acts) if w.wtype.is_quantized() => unsafe { fast_rows(kern, w, acts, out, rows) },
        // Float weights have no integer path (also when the input was prepared as `Fast`).
        // SAFETY: forwarded caller contract.
        _ => unsafe { exact_rows(kern, w, input.x, input.t, out, rows) },
    }
}

/// # Safety
/// As [`run_rows`].
unsafe fn fast_rows(kern: &Kernels, w: &QMatrix, acts: &Q8Acts, out: &OutView, rows: Range<usize>) {
    let n_all = w.rows;
    let rb = w.wtype.row_bytes(w.cols).unwrap_or(0).max(1);
    let t = acts.t;
    let panel = (FAST_PANEL_BYTES / rb).clamp(1, rows.len());
    let mut res = vec![0f32; panel * MAX_TILE];
    let mut act_rows = [ActRow::default(); MAX_TILE];
    let mut p0 = rows.start;
    while p0 < rows.end {
        let p1 = (p0 + panel).min(rows.end);
        let np = p1 - p0;
        let wpanel = &w.data[p0 * rb..p1 * rb];
        for t0 in (0..t).step_by(MAX_TILE) {
            let nt = (t - t0).min(MAX_TILE);
            for (i, r) in act_rows[..nt].iter_mut().enumerate() {
                *r = acts.row(t0 + i);
            }
            (kern.fast_dot)(w.wtype, wpanel, rb, &act_rows[..nt], &mut res[..np * MAX_TILE]);
            for (r, vals) in res[..np * MAX_TILE].chunks_exact(MAX_TILE).enumerate() {
                for (i, &v) in vals[..nt].iter().enumerate() {
                    // SAFETY: row `p0 + r` belongs to this call's rows (caller contract).
                    unsafe { out.set((t0 + i) * n_all + p0 + r, v) };
                }
            }
        }
        p0 = p1;
    }
}

/// # Safety
/// As [`run_rows`].
unsafe fn exact_rows(kern: &Kernels, w: &QMatrix, x: &[f32], t: usize, out: &OutView, rows: Range<usize>) {
    let n_all = w.rows;
    let k = w.cols;
    let rb = w.wtype.row_bytes(k).unwrap_or(0);
    // Types the fused kernel covers always take it, in tiles of up to MAX_TILE activation
    // rows over each L2-sized weight panel: an activation row's result is then the same
    // whatever other rows share the call (batch invariance; the tile kernel below
    // accumulates in another order on some variants).
    if let Some(fused) = kern.exact_fused {
        let rb = w.wtype.row_bytes(k).unwrap_or(0).max(1);
        let panel = (FAST_PANEL_BYTES / rb).clamp(1, rows.len());
        let mut res = vec![0f32; panel * MAX_TILE];
        let mut p0 = rows.start;
        let mut covered = true;
        'panels: while p0 < rows.end {
            let p1 = (p0 + panel).min(rows.end);
            let np = p1 - p0;
            for t0 in (0..t).step_by(MAX_TILE) {
                let nt = (t - t0).min(MAX_TILE);
                let xs = &x[t0 * k..(t0 + nt) * k];
                if !fused(w.wtype, &w.data[p0 * rb..p1 * rb], rb, xs, nt, k, &mut res[..np * MAX_TILE]) {
                    // Decided by the type alone: the first call, before anything was written.
                    covered = false;
                    break 'panels;
                }
                for (r, vals) in res[..np * MAX_TILE].chunks_exact(MAX_TILE).enumerate() {
                    for (i, &v) in vals[..nt].iter().enumerate() {
                        // SAFETY: row `p0 + r` belongs to this call's rows (caller contract).
                        unsafe { out.set((t0 + i) * n_all + p0 + r, v) };
                    }
                }
            }
            p0 = p1;
        }
        if covered {
            return;
        }
    }
    let panel = if t <= 1 {
        MAX_TILE
    } else {
        (EXACT_PANEL_BYTES / (4 * k.max(1)) / MAX_TILE * MAX_TILE).clamp(MAX_TILE, 8 * MAX_TILE)
    };
    let panel = panel.min(rows.len().next_multiple_of(MAX_TILE));
    let mut scratch = vec![0f32; panel * k];
    let mut res = [[0f32; MAX_TILE]; MAX_TILE];
    let tnt = kern.tile_nt.clamp(1, MAX_TILE);
    let mut p0 = rows.start;
    while p0 < rows.end {
        let p1 = (p0 + panel).min(rows.end);
        let np = p1 - p0;
        for (r, dst) in scratch.chunks_exact_mut(k.max(1)).take(np).enumerate() {
            let n = p0 + r;
            (kern.dequant)(w.wtype, &w.data[n * rb..(n + 1) * rb], dst);
        }
        for t0 in (0..t).step_by(tnt) {
            let nt = (t - t0).min(tnt);
            let xs = &x[t0 * k..(t0 + nt) * k];
            for r0 in (0..np).step_by(MAX_TILE) {
                let nr = (np - r0).min(MAX_TILE);
                (kern.tile)(&scratch[r0 * k..(r0 + nr) * k], nr, xs, nt, k, &mut res);
                for (r, row) in res[..nr].iter().enumerate() {
                    for (i, &v) in row[..nt].iter().enumerate() {
                        // SAFETY: row `p0 + r0 + r` belongs to this call's rows.
                        unsafe { out.set((t0 + i) * n_all + p0 + r0 + r, v) };
                    }
                }
            }
        }
        p0 = p1;
    }
}
