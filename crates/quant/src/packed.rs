//! Weights repacked at load for the decode matvec: 16 rows interleaved per group, so one
//! 512-bit integer dot (`vpdpbusd`) advances 16 rows by 4 elements against one broadcast
//! activation word, and each row's result stays in its own lane (no horizontal sums, no
//! per-row scale shuffles).
//!
//! Layout of a [`PackedMatrix`]: groups of [`PACK_ROWS`] rows (the last one padded with zero
//! rows), each a run of `cols / 32` blocks of [`PACKED_BLOCK`] bytes:
//! * bytes `0..256`: four 64-byte chunks; in chunk `c`, the 4 bytes of lane (row) `r` hold
//!   row `r`'s 4-bit quants of elements `8c..8c+4` in the low nibbles and `8c+4..8c+8` in
//!   the high nibbles;
//! * bytes `256..288`: the 16 rows' scales `d` (f16); bytes `288..320`: their offsets `m`
//!   (f16), so that a weight is `d * q + m`.
//!
//! Q4_1 maps onto it directly; Q4_0 (`d * (q − 8)`) with `m = −8d` (exact in f16 unless it
//! overflows, in which case the matrix is not packed). Both are 20 bytes per 32 weights, as
//! in the file. Per block and lane the kernels compute, in this order and in f32,
//! `acc = fma(isum, d · dx, acc)`, `accm = fma(m, s, accm)` (`dx`, `s = dx · Σa` from the
//! activation block) and finally `acc + accm`: every variant gives bit-identical results.
//!
//! Q8_0 (run on the exact path: f32 activations) packs into blocks of [`PACKED_BLOCK_Q8`]
//! bytes: for each element `k` of the block, the 16 rows' int8 quants (16 bytes), then the
//! 16 rows' scales `d` (f16), again the file's 34 bytes per 32 weights. Per block and lane:
//! four partial sums `s_c = Σ_{k ≡ c mod 4} fma(q_k, x_k, ·)` in order of `k`, then
//! `acc = fma((s_0 + s_1) + (s_2 + s_3), d, acc)`, bit-identical across variants.

use std::ops::Range;

use half::f16;

use crate::acts::ActRow;
use crate::dispatch::{best_kernels, Kernels};
use crate::matmul::{OutView, PreparedInput, QMatrix};
use crate::types::{QuantError, WeightType, QK};
use crate::MAX_TILE;

/// Rows per interleaved group.
pub const PACK_ROWS: usize = 16;
/// Bytes of one group's block (16 rows × 32 weights) of a packed Q4_0/Q4_1 matrix.
pub const PACKED_BLOCK: usize = 320;
/// Bytes of one group's block of a packed Q8_0 matrix.
pub const PACKED_BLOCK_Q8: usize = 544;

/// A `[rows N, cols K]` Q4_0/Q4_1 matrix in the interleaved layout (see the module docs).
#[derive(Clone)]
pub struct PackedMatrix {
    source: WeightType,
    rows: usize,
    cols: usize,
    /// `[ceil(N / 16), K / 32, 320]` bytes.
    data: Vec<u8>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({:?}, {}×{}, {} B)", self.source, self.rows, self.cols, self.data.len())
    }
}

impl PackedMatrix {
    /// Whether matrices of type `t` can be packed.
    pub fn supports(t: WeightType) -> bool {
        matches!(t, WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0)
    }

    /// Bytes per group block of a packed matrix of type `t`.
    fn block_bytes(t: WeightType) -> usize {
        if t == WeightType::Q8_0 {
            PACKED_BLOCK_Q8
        } else {
            PACKED_BLOCK
        }
    }

    /// Repacks a validated matrix; `Ok(None)` when its type has no packed form (or a Q4_0
    /// scale would overflow f16 as `−8d`).
    pub fn pack(m: &QMatrix) -> Result<Option<PackedMatrix>, QuantError> {
        Self::pack_releasing(m, &mut |_| {})
    }

    /// [`PackedMatrix::pack`], calling `done` with each byte range of `m.data` (about
    /// 1 MiB, in order) once it has been copied, so a caller can release the source's pages
    /// while the rest is packed (the peak then holds one copy, not two).
    pub fn pack_releasing(m: &QMatrix, done: &mut dyn FnMut(Range<usize>)) -> Result<Option<PackedMatrix>, QuantError> {
        m.validate()?;
        if !Self::supports(m.wtype) {
            return Ok(None);
        }
        let nb = m.cols / QK;
        let groups = m.rows.div_ceil(PACK_ROWS);
        let bytes = groups
            .checked_mul(nb)
            .and_then(|x| x.checked_mul(Self::block_bytes(m.wtype)))
            .ok_or(QuantError::Overflow("packed matrix"))?;
        let mut data = vec![0u8; bytes];
        let bs = m.wtype.row_bytes(QK)?;
        let mut release = Release { rb: m.wtype.row_bytes(m.cols)?, from: 0, rows: m.rows };
        if m.wtype == WeightType::Q8_0 {
            for n in 0..m.rows {
                let (g, lane) = (n / PACK_ROWS, n % PACK_ROWS);
                let row = m.row(n);
                for b in 0..nb {
                    let blk = &row[b * bs..(b + 1) * bs];
                    let dst = &mut data[(g * nb + b) * PACKED_BLOCK_Q8..][..PACKED_BLOCK_Q8];
                    for k in 0..QK {
                        dst[16 * k + lane] = blk[2 + k];
                    }
                    dst[512 + 2 * lane..][..2].copy_from_slice(&blk[0..2]);
                }
                release.row_done(n, done);
            }
            release.finish(done);
            return Ok(Some(PackedMatrix { source: m.wtype, rows: m.rows, cols: m.cols, data }));
        }
        for n in 0..m.rows {
            let (g, lane) = (n / PACK_ROWS, n % PACK_ROWS);
            let row = m.row(n);
            for b in 0..nb {
                let blk = &row[b * bs..(b + 1) * bs];
                let dst = &mut data[(g * nb + b) * PACKED_BLOCK..][..PACKED_BLOCK];
                let d = f16::from_le_bytes([blk[0], blk[1]]);
                let (mb, qs) = match m.wtype {
                    WeightType::Q4_1 => ([blk[2], blk[3]], &blk[4..20]),
                    _ => {
                        let m8 = f16::from_f32(-8.0 * d.to_f32());
                        if m8.to_f32() != -8.0 * d.to_f32() {
                            return Ok(None);
                        }
                        (m8.to_le_bytes(), &blk[2..18])
                    }
                };
                // Element i < 16 is the low nibble of qs[i], element i + 16 its high nibble.
                let q = |i: usize| if i < 16 { qs[i] & 15 } else { qs[i - 16] >> 4 };
                for c in 0..4 {
                    for i in 0..4 {
                        dst[64 * c + 4 * lane + i] = q(8 * c + i) | (q(8 * c + 4 + i) << 4);
                    }
                }
                dst[256 + 2 * lane..][..2].copy_from_slice(&blk[0..2]);
                dst[288 + 2 * lane..][..2].copy_from_slice(&mb);
            }
            release.row_done(n, done);
        }
        release.finish(done);
        Ok(Some(PackedMatrix { source: m.wtype, rows: m.rows, cols: m.cols, data }))
    }

    /// The file type it was packed from.
    pub fn source(&self) -> WeightType {
        self.source
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes held (the same as the file's for whole groups).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Row `n` dequantized into `out` (`[K]`), bit-identical to the file row's dequantization
    /// (an embedding lookup that need not touch the file's pages).
    pub fn dequantize_row(&self, n: usize, out: &mut [f32]) -> Result<(), QuantError> {
        if n >= self.rows {
            return Err(QuantError::RowRange { start: n, end: n + 1, rows: self.rows });
        }
        crate::types::check_len("dequantized row", out.len(), self.cols)?;
        let (g, lane) = (n / PACK_ROWS, n % PACK_ROWS);
        let bb = Self::block_bytes(self.source);
        for (blk, o) in self.group(g).chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
            if self.source == WeightType::Q8_0 {
                let d = f16::from_le_bytes([blk[512 + 2 * lane], blk[513 + 2 * lane]]).to_f32();
                for (k, ok) in o.iter_mut().enumerate() {
                    *ok = blk[16 * k + lane] as i8 as f32 * d;
                }
            } else {
                let d = f16::from_le_bytes([blk[256 + 2 * lane], blk[257 + 2 * lane]]).to_f32();
                let m = f16::from_le_bytes([blk[288 + 2 * lane], blk[289 + 2 * lane]]).to_f32();
                for c in 0..4 {
                    for i in 0..4 {
                        let byte = blk[64 * c + 4 * lane + i];
                        // Q4_1: d·q + m; Q4_0: d·(q − 8) = d·q + (−8d) with the same rounding.
                        o[8 * c + i] = self.q4_value(byte & 15, d, m);
                        o[8 * c + 4 + i] = self.q4_value(byte >> 4, d, m);
                    }
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn q4_value(&self, q: u8, d: f32, m: f32) -> f32 {
        if self.source == WeightType::Q4_0 {
            (q as i32 - 8) as f32 * d
        } else {
            q as f32 * d + m
        }
    }

    fn group(&self, g: usize) -> &[u8] {
        let gb = self.cols / QK * Self::block_bytes(self.source);
        &self.data[g * gb..(g + 1) * gb]
    }
}

/// Reports copied source rows in ~1 MiB byte ranges.
struct Release {
    rb: usize,
    from: usize,
    rows: usize,
}

impl Release {
    fn row_done(&mut self, n: usize, done: &mut dyn FnMut(Range<usize>)) {
        let end = (n + 1) * self.rb;
        if end - self.from >= 1 << 20 {
            done(self.from..end);
            self.from = end;
        }
    }
    fn finish(&mut self, done: &mut dyn FnMut(Range<usize>)) {
        let end = self.rows * self.rb;
        if end > self.from {
            done(self.from..end);
        }
    }
}

/// The packed kernel: one group's blocks `w` against up to `MAX_TILE` activation rows;
/// `out[t][lane]`.
pub(crate) type PackedDotFn = fn(&[u8], &[ActRow<'_>], &mut [[f32; PACK_ROWS]; MAX_TILE]);
/// The packed Q8_0 kernel on f32 activation rows (each `[K]`).
pub(crate) type PackedDotF32Fn = fn(&[u8], &[&[f32]], &mut [[f32; PACK_ROWS]; MAX_TILE]);

fn check(p: &PackedMatrix, input: &PreparedInput, rows: &Range<usize>) -> Result<(), QuantError> {
    // Q8_0 runs on f32 activations, the 4-bit types on 32-blocks of int8 activations.
    let want = if p.source == WeightType::Q8_0 { None } else { Some(QK) };
    if input.q8_block() != want {
        return Err(QuantError::PreparedMismatch { prepared: input.wtype(), weights: p.source });
    }
    crate::types::check_len("prepared input columns", input.cols(), p.cols)?;
    if rows.start > rows.end || rows.end > p.rows || !rows.start.is_multiple_of(PACK_ROWS) {
        return Err(QuantError::RowRange { start: rows.start, end: rows.end, rows: p.rows });
    }
    Ok(())
}

/// `y[t, i] = x[t] · W[rows.start + i]` for the rows `rows` (`rows.start` a multiple of
/// [`PACK_ROWS`]) of a packed matrix; `y` is `[t, rows.len()]`, `input` prepared `Fast`
/// for a 32-block type (Q4_0/Q4_1) or `Exact` (Q8_0).
pub fn matmul_packed_rows(
    p: &PackedMatrix,
    input: &PreparedInput,
    y: &mut [f32],
    rows: Range<usize>,
) -> Result<(), QuantError> {
    packed_rows_on(best_kernels(), p, input, y, rows)
}

/// [`matmul_packed_rows`] with a forced kernel variant (tests compare them).
pub fn matmul_packed_rows_with(
    v: crate::Variant,
    p: &PackedMatrix,
    input: &PreparedInput,
    y: &mut [f32],
    rows: Range<usize>,
) -> Result<(), QuantError> {
    packed_rows_on(v.kernels()?, p, input, y, rows)
}

fn packed_rows_on(
    kern: &Kernels,
    p: &PackedMatrix,
    input: &PreparedInput,
    y: &mut [f32],
    rows: Range<usize>,
) -> Result<(), QuantError> {
    check(p, input, &rows)?;
    crate::types::check_len("y (output [t, rows])", y.len(), input.rows() * rows.len())?;
    let n_out = rows.len();
    let col0 = rows.start;
    let out = OutView::new(y);
    // SAFETY: `out` comes from an exclusive borrow of `y`.
    unsafe { run_packed(kern, p, input, &out, n_out, col0, rows) };
    Ok(())
}

/// [`matmul_packed_rows`] over all rows, split by groups over `pool`; `y` is `[t, N]`.
pub fn matmul_packed_par(
    pool: &rayon::ThreadPool,
    p: &PackedMatrix,
    input: &PreparedInput,
    y: &mut [f32],
) -> Result<(), QuantError> {
    check(p, input, &(0..p.rows))?;
    crate::types::check_len("y (output [t, n])", y.len(), input.rows() * p.rows)?;
    let kern = best_kernels();
    let groups = p.rows.div_ceil(PACK_ROWS);
    let threads = pool.current_num_threads().max(1);
    let per = groups.div_ceil(threads * 4).max(1);
    let out = OutView::new(y);
    let out = &out;
    pool.scope(|s| {
        for g0 in (0..groups).step_by(per) {
            let r = g0 * PACK_ROWS..((g0 + per) * PACK_ROWS).min(p.rows);
            // SAFETY: the row ranges are disjoint, so no two tasks write the same entries.
            s.spawn(move |_| unsafe { run_packed(kern, p, input, out, p.rows, 0, r) });
        }
    });
    Ok(())
}

/// Writes `y[t * n_out + (n − col0)]` for the rows `n` in `rows`.
///
/// # Safety
/// No concurrent call may write the same entries through `out`.
unsafe fn run_packed(
    kern: &Kernels,
    p: &PackedMatrix,
    input: &PreparedInput,
    out: &OutView,
    n_out: usize,
    col0: usize,
    rows: Range<usize>,
) {
    let acts = input.q8();
    let (t_all, k) = (input.rows(), input.cols());
    let mut res = [[0f32; PACK_ROWS]; MAX_TILE];
    let mut act_rows = [ActRow::default(); MAX_TILE];
    let mut xs: [&[f32]; MAX_TILE] = [&[]; MAX_TILE];
    // The activation rows of tile t0 (for a single tile, a decode step, set once per call
    // rather than once per 16-row group).
    fn set_rows<'a>(
        acts: Option<&'a crate::acts::Q8Acts>,
        x: &'a [f32],
        k: usize,
        (t0, nt): (usize, usize),
        act_rows: &mut [ActRow<'a>; MAX_TILE],
        xs: &mut [&'a [f32]; MAX_TILE],
    ) {
        match acts {
            Some(acts) => {
                for (i, r) in act_rows[..nt].iter_mut().enumerate() {
                    *r = acts.row(t0 + i);
                }
            }
            None => {
                for (i, xr) in xs[..nt].iter_mut().enumerate() {
                    *xr = &x[(t0 + i) * k..(t0 + i + 1) * k];
                }
            }
        }
    }
    let single = t_all <= MAX_TILE;
    if single {
        set_rows(acts, input.x(), k, (0, t_all), &mut act_rows, &mut xs);
    }
    let mut n0 = rows.start;
    while n0 < rows.end {
        let nr = (rows.end - n0).min(PACK_ROWS);
        let w = p.group(n0 / PACK_ROWS);
        for t0 in (0..t_all).step_by(MAX_TILE) {
            let nt = (t_all - t0).min(MAX_TILE);
            if !single {
                set_rows(acts, input.x(), k, (t0, nt), &mut act_rows, &mut xs);
            }
            match acts {
                Some(_) => (kern.packed_dot)(w, &act_rows[..nt], &mut res),
                None => (kern.packed_dot_f32)(w, &xs[..nt], &mut res),
            }
            for (i, vals) in res[..nt].iter().enumerate() {
                // SAFETY: rows `n0 .. n0 + nr` belong to this call's rows (caller contract).
                unsafe { out.set_slice((t0 + i) * n_out + n0 - col0, &vals[..nr]) };
            }
        }
        n0 += nr;
    }
}

/// The portable packed kernel (the twin every SIMD variant must match bit for bit).
pub(crate) fn packed_dot_scalar(w: &[u8], rows: &[ActRow<'_>], out: &mut [[f32; PACK_ROWS]; MAX_TILE]) {
    let nb = w.len() / PACKED_BLOCK;
    for (t, r) in rows.iter().enumerate() {
        let mut acc = [0f32; PACK_ROWS];
        let mut accm = [0f32; PACK_ROWS];
        for b in 0..nb {
            let blk = &w[b * PACKED_BLOCK..(b + 1) * PACKED_BLOCK];
            let a = &r.qs[QK * b..QK * (b + 1)];
            for lane in 0..PACK_ROWS {
                let mut isum = 0i32;
                for c in 0..4 {
                    for i in 0..4 {
                        let byte = blk[64 * c + 4 * lane + i];
                        isum += (byte & 15) as i32 * a[8 * c + i] as i32 + (byte >> 4) as i32 * a[8 * c + 4 + i] as i32;
                    }
                }
                let d = f16::from_le_bytes([blk[256 + 2 * lane], blk[257 + 2 * lane]]).to_f32();
                let m = f16::from_le_bytes([blk[288 + 2 * lane], blk[289 + 2 * lane]]).to_f32();
                acc[lane] = (isum as f32).mul_add(d * r.d[b], acc[lane]);
                accm[lane] = m.mul_add(r.s[b], accm[lane]);
            }
        }
        for lane in 0..PACK_ROWS {
            out[t][lane] = acc[lane] + accm[lane];
        }
    }
}

/// The portable packed Q8_0 kernel on f32 activations (the twin of the SIMD variants).
pub(crate) fn packed_dot_f32_scalar(w: &[u8], xs: &[&[f32]], out: &mut [[f32; PACK_ROWS]; MAX_TILE]) {
    for (t, x) in xs.iter().enumerate() {
        let mut acc = [0f32; PACK_ROWS];
        for (b, blk) in w.chunks_exact(PACKED_BLOCK_Q8).enumerate() {
            let xb = &x[QK * b..QK * (b + 1)];
            for lane in 0..PACK_ROWS {
                let mut s = [0f32; 4];
                for (k, &xk) in xb.iter().enumerate() {
                    let q = blk[16 * k + lane] as i8 as f32;
                    s[k % 4] = q.mul_add(xk, s[k % 4]);
                }
                let d = f16::from_le_bytes([blk[512 + 2 * lane], blk[513 + 2 * lane]]).to_f32();
                acc[lane] = ((s[0] + s[1]) + (s[2] + s[3])).mul_add(d, acc[lane]);
            }
        }
        out[t] = acc;
    }
}
