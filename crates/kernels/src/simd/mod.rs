//! The dispatch table of numeric kernels.
//!
//! Every kernel exists as a plain scalar twin ([`scalar`]) and as SIMD variants written once,
//! generically over the [`lanes::Lanes`] trait, and instantiated per instruction set inside
//! `#[target_feature]` functions. [`Kernels::best`] picks the table for [`Isa::best`] once per
//! process; [`Kernels::for_isa`] gives any other available table (tests compare every variant
//! against the scalar twin).
//!
//! Dimension legend: M rows of A and C, N columns of C, K the reduction dimension.

#[cfg(target_arch = "x86_64")]
pub mod amx;
mod generic;
pub mod lanes;
pub mod scalar;

use crate::cpu::Isa;
use std::sync::OnceLock;

/// A read-only row-major f32 matrix view: element (r, c) is `data[r * stride + c]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// A mutable row-major f32 matrix view: element (r, c) is `data[r * stride + c]`.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<'a> MatRef<'a> {
    /// A view of a dense `[rows, cols]` matrix.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, stride: cols }
    }
    fn check(&self, what: &str) {
        check_extent(what, self.data.len(), self.rows, self.cols, self.stride);
    }
}

impl<'a> MatMut<'a> {
    /// A view of a dense `[rows, cols]` matrix.
    pub fn dense(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut { data, rows, cols, stride: cols }
    }
    fn check(&self, what: &str) {
        check_extent(what, self.data.len(), self.rows, self.cols, self.stride);
    }
}

/// Elements (or bytes) a `[rows, cols]` view with row `stride` spans: `(rows − 1)·stride +
/// cols·unit`, 0 for an empty view, `None` when that overflows `usize` (such a view fits in
/// no buffer; wrapping around could make it look as if it did).
pub fn view_extent(rows: usize, cols: usize, stride: usize, unit: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(stride)?.checked_add(cols.checked_mul(unit)?)
}

/// Panics unless a `[rows, cols]` view with row `stride` fits in `len` elements (a view
/// whose extent overflows `usize` fits nowhere).
fn check_extent(what: &str, len: usize, rows: usize, cols: usize, stride: usize) {
    assert!(cols <= stride || rows <= 1, "{what}: cols > stride");
    assert!(
        view_extent(rows, cols, stride, 1).is_some_and(|e| len >= e),
        "{what}: buffer too small for [{rows}, {cols}] stride {stride}"
    );
}

/// One instruction set's implementations. All function pointers are safe to call: a table
/// is only handed out for an instruction set the CPU supports. Shape mismatches are
/// programming errors and panic with a message (callers validate user input first).
pub struct Kernels {
    pub isa: Isa,
    /// Σ a[i]·b[i] (equal lengths).
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// y[i] += alpha·x[i].
    pub axpy: fn(f32, &[f32], &mut [f32]),
    /// x[i] *= alpha.
    pub scale: fn(&mut [f32], f32),
    /// max over x (−∞ for empty input; NaN-free input assumed).
    pub max: fn(&[f32]) -> f32,
    /// x[i] = exp(x[i] − m), returns Σ x[i]. exp(−∞) = 0 exactly.
    pub exp_sub_sum: fn(&mut [f32], f32) -> f32,
    /// gate[i] = silu(gate[i]) · up[i] (SwiGLU; equal lengths).
    pub silu_mul: fn(&mut [f32], &[f32]),
    /// Little-endian f32 bytes → f32 (`src.len() == 4·dst.len()`).
    pub f32_from_bytes: fn(&[u8], &mut [f32]),
    /// Little-endian IEEE half bytes → f32 (`src.len() == 2·dst.len()`).
    pub f16_to_f32: fn(&[u8], &mut [f32]),
    /// Little-endian bfloat16 bytes → f32 (`src.len() == 2·dst.len()`).
    pub bf16_to_f32: fn(&[u8], &mut [f32]),
    /// FP8 E4M3 bytes × `scale` → f32 (`src.len() == dst.len()`).
    pub fp8_to_f32: fn(&[u8], f32, &mut [f32]),
    /// int8 bytes × `scale` → f32 (`src.len() == dst.len()`).
    pub i8_to_f32: fn(&[u8], f32, &mut [f32]),
    /// f32 → IEEE half bytes, round to nearest even.
    pub f32_to_f16: fn(&[f32], &mut [u8]),
    /// f32 → bfloat16 bytes, round to nearest even (NaN stays NaN).
    pub f32_to_bf16: fn(&[f32], &mut [u8]),
    /// C[M,N] = alpha · A[M,K] · B[N,K]ᵀ (C overwritten).
    pub gemm_nt: fn(f32, MatRef, MatRef, MatMut),
    /// C[M,N] += A[M,K] · B[K,N].
    pub gemm_nn: fn(MatRef, MatRef, MatMut),
    /// [`Kernels::gemm_nt`] with B read in its stored element type (no conversion pass).
    pub gemm_nt_raw: fn(f32, MatRef, RawMat, MatMut),
    /// [`Kernels::gemm_nn`] with B read in its stored element type.
    pub gemm_nn_raw: fn(MatRef, RawMat, MatMut),
    /// Prepares A for [`Kernels::gemm_nt_raw_packed`] calls against B of the given element
    /// type (the same A against many B: the queries of an attention work item against each
    /// block of keys). Tables without a packed form for that type record A's shape only.
    pub pack_nt: fn(MatRef, Elem, &mut NtPack),
    /// [`Kernels::gemm_nt_raw`] with A also given as `pack`, built by this table's
    /// [`Kernels::pack_nt`] from A as it is now. Panics when the pack has another shape.
    pub gemm_nt_raw_packed: fn(f32, MatRef, &NtPack, RawMat, MatMut),
}

/// One 64-byte line of an [`NtPack`].
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct PackLine(pub(crate) [u8; 64]);

/// A matrix laid out by [`Kernels::pack_nt`] for repeated score tiles (see [`amx`]).
#[derive(Default)]
pub struct NtPack {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Whether `lines` holds tiles (else the packed call runs the plain tile).
    pub(crate) tiled: bool,
    pub(crate) lines: Vec<PackLine>,
}

/// [`Kernels::pack_nt`] of the tables without a packed form.
pub(crate) fn pack_shape_only(a: MatRef, _b_elem: Elem, pack: &mut NtPack) {
    a.check("pack_nt A");
    pack.rows = a.rows;
    pack.cols = a.cols;
    pack.tiled = false;
}

fn check_pack(a: &MatRef, pack: &NtPack) {
    assert!(pack.rows == a.rows && pack.cols == a.cols, "gemm_nt_raw_packed: the pack was built for another A shape");
}

/// Element type of a [`RawMat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    Bf16,
    /// Signed 8-bit integers (the caller applies scales).
    I8,
    /// FP8 E4M3, read as value × 2⁻⁸ (the caller applies scales × 256).
    Fp8Scaled256,
}

impl Elem {
    pub fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::Bf16 => 2,
            Elem::I8 | Elem::Fp8Scaled256 => 1,
        }
    }
}

/// A read-only row-major matrix in its stored little-endian element type: element (r, c)
/// starts at byte `r * stride_bytes + c * elem.bytes()`.
#[derive(Clone, Copy, Debug)]
pub struct RawMat<'a> {
    pub data: &'a [u8],
    pub elem: Elem,
    pub rows: usize,
    pub cols: usize,
    pub stride_bytes: usize,
    /// The rows read after these ones (the next block of a paged cache; empty when none),
    /// `stride_bytes` apart: the tiles prefetch them while they work on the last rows of this
    /// matrix. Never read.
    pub ahead: &'a [u8],
}

impl RawMat<'_> {
    fn check(&self, what: &str) {
        assert!(
            view_extent(self.rows, self.cols, self.stride_bytes, self.elem.bytes())
                .is_some_and(|e| self.data.len() >= e),
            "{what}: buffer too small for [{}, {}] stride {} bytes",
            self.rows,
            self.cols,
            self.stride_bytes
        );
    }

    /// Row `r` converted to f32 (scalar; for the reference twins). Panics when row `r` lies
    /// outside the buffer (offsets are computed without wrapping around).
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        let start = r.checked_mul(self.stride_bytes);
        let end = start.zip(self.cols.checked_mul(self.elem.bytes())).and_then(|(s, n)| s.checked_add(n));
        let b = match (start, end) {
            (Some(s), Some(e)) if s <= e && e <= self.data.len() => &self.data[s..e],
            _ => panic!(
                "RawMat::row_f32: row {r} of [{}, {}] stride {} bytes is outside the {}-byte buffer",
                self.rows,
                self.cols,
                self.stride_bytes,
                self.data.len()
            ),
        };
        let mut out = vec![0f32; self.cols];
        match self.elem {
            Elem::F32 => scalar::f32_from_bytes(b, &mut out),
            Elem::F16 => scalar::f16_to_f32(b, &mut out),
            Elem::Bf16 => scalar::bf16_to_f32(b, &mut out),
            Elem::I8 => scalar::i8_to_f32(b, 1.0, &mut out),
            Elem::Fp8Scaled256 => scalar::fp8_to_f32(b, 1.0 / 256.0, &mut out),
        }
        out
    }
}

fn check_gemm_nt_raw(a: &MatRef, b: &RawMat, c: &MatMut) {
    a.check("gemm_nt_raw A");
    b.check("gemm_nt_raw B");
    c.check("gemm_nt_raw C");
    assert_eq!(a.cols, b.cols, "gemm_nt_raw: K mismatch");
    assert_eq!(c.rows, a.rows, "gemm_nt_raw: M mismatch");
    assert_eq!(c.cols, b.rows, "gemm_nt_raw: N mismatch");
}

fn check_gemm_nn_raw(a: &MatRef, b: &RawMat, c: &MatMut) {
    a.check("gemm_nn_raw A");
    b.check("gemm_nn_raw B");
    c.check("gemm_nn_raw C");
    assert_eq!(a.cols, b.rows, "gemm_nn_raw: K mismatch");
    assert_eq!(c.rows, a.rows, "gemm_nn_raw: M mismatch");
    assert_eq!(c.cols, b.cols, "gemm_nn_raw: N mismatch");
}

impl Kernels {
    /// The table for the best instruction set of this CPU (see [`Isa::best`]).
    pub fn best() -> &'static Kernels {
        static BEST: OnceLock<&'static Kernels> = OnceLock::new();
        BEST.get_or_init(|| Kernels::for_isa(Isa::best()).unwrap_or(&SCALAR))
    }

    /// The table for `isa`, if this CPU supports it and it is compiled for this target.
    pub fn for_isa(isa: Isa) -> Option<&'static Kernels> {
        if !Isa::available().contains(&isa) {
            return None;
        }
        match isa {
            Isa::Scalar => Some(&SCALAR),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(&generic::AVX2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Some(&generic::AVX512),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Some(&AMX),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Some(&generic::NEON),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Every table this CPU supports, scalar first.
    pub fn all() -> Vec<&'static Kernels> {
        Isa::available().into_iter().filter_map(Kernels::for_isa).collect()
    }
}

fn check_gemm_nt(a: &MatRef, b: &MatRef, c: &MatMut) {
    a.check("gemm_nt A");
    b.check("gemm_nt B");
    c.check("gemm_nt C");
    assert_eq!(a.cols, b.cols, "gemm_nt: K mismatch");
    assert_eq!(c.rows, a.rows, "gemm_nt: M mismatch");
    assert_eq!(c.cols, b.rows, "gemm_nt: N mismatch");
}

fn check_gemm_nn(a: &MatRef, b: &MatRef, c: &MatMut) {
    a.check("gemm_nn A");
    b.check("gemm_nn B");
    c.check("gemm_nn C");
    assert_eq!(a.cols, b.rows, "gemm_nn: K mismatch");
    assert_eq!(c.rows, a.rows, "gemm_nn: M mismatch");
    assert_eq!(c.cols, b.cols, "gemm_nn: N mismatch");
}

/// AVX-512 with the bf16 raw GEMM tiles on AMX ([`amx`]).
#[cfg(target_arch = "x86_64")]
static AMX: Kernels = Kernels {
    isa: Isa::Amx,
    gemm_nt_raw: amx::gemm_nt_raw,
    gemm_nn_raw: amx::gemm_nn_raw,
    pack_nt: amx::pack_nt,
    gemm_nt_raw_packed: amx::gemm_nt_raw_packed,
    ..generic::AVX512
};

/// The scalar twin table.
pub static SCALAR: Kernels = Kernels {
    isa: Isa::Scalar,
    dot: scalar::dot,
    axpy: scalar::axpy,
    scale: scalar::scale,
    max: scalar::max,
    exp_sub_sum: scalar::exp_sub_sum,
    silu_mul: scalar::silu_mul,
    f32_from_bytes: scalar::f32_from_bytes,
    f16_to_f32: scalar::f16_to_f32,
    bf16_to_f32: scalar::bf16_to_f32,
    fp8_to_f32: scalar::fp8_to_f32,
    i8_to_f32: scalar::i8_to_f32,
    f32_to_f16: scalar::f32_to_f16,
    f32_to_bf16: scalar::f32_to_bf16,
    gemm_nt: scalar::gemm_nt,
    gemm_nn: scalar::gemm_nn,
    gemm_nt_raw: scalar::gemm_nt_raw,
    gemm_nn_raw: scalar::gemm_nn_raw,
    pack_nt: pack_shape_only,
    gemm_nt_raw_packed: scalar::gemm_nt_raw_packed,
};

#[cfg(test)]
mod extent_tests {
    use super::*;

    fn panic_message(f: impl FnOnce()) -> String {
        let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("panics");
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[test]
    fn extents_are_checked_not_wrapped() {
        assert_eq!(view_extent(0, usize::MAX, usize::MAX, 8), Some(0));
        assert_eq!(view_extent(3, 4, 10, 1), Some(24));
        assert_eq!(view_extent(3, 4, 10, 2), Some(28));
        assert_eq!(view_extent(usize::MAX, 2, 2, 1), None);
        // (2^62 + 1 − 1) · 4 wraps to 0 in 64 bits: the old unchecked sum said 4 elements.
        let rows = (1usize << (usize::BITS - 2)) + 1;
        assert_eq!(view_extent(rows, 4, 4, 1), None);
        assert_eq!(view_extent(1, usize::MAX, 0, 2), None);
        assert_eq!(view_extent(2, 1, usize::MAX, 1), None);
    }

    /// Absurd view sizes whose extent wraps around `usize` are refused with the "buffer too
    /// small" panic by every kernel table, before any element is read.
    #[test]
    fn absurd_views_are_refused_by_every_table() {
        let rows = (1usize << (usize::BITS - 2)) + 1;
        let buf = [0f32; 16];
        let bytes = [0u8; 16];
        for k in Kernels::all() {
            let a = MatRef { data: &buf[..4], rows, cols: 4, stride: 4 };
            let b = MatRef::dense(&buf[..4], 1, 4);
            let mut c = [0f32; 4];
            let msg = panic_message(|| (k.gemm_nt)(1.0, a, b, MatMut { data: &mut c, rows, cols: 1, stride: 1 }));
            assert!(msg.contains("buffer too small"), "{:?}: {msg}", k.isa);
            let b = MatRef { data: &buf[..4], rows: 4, cols: usize::MAX, stride: usize::MAX };
            let msg = panic_message(|| (k.gemm_nn)(MatRef::dense(&buf, 1, 4), b, MatMut::dense(&mut c, 1, 4)));
            assert!(msg.contains("buffer too small"), "{:?}: {msg}", k.isa);
            // Raw B: (rows − 1)·stride_bytes wraps to 0 in bytes.
            let rb = RawMat { data: &bytes, elem: Elem::F32, rows, cols: 4, stride_bytes: 4, ahead: &[] };
            let msg =
                panic_message(|| (k.gemm_nt_raw)(1.0, MatRef::dense(&buf, 4, 4), rb, MatMut::dense(&mut c, 4, 1)));
            assert!(msg.contains("buffer too small"), "{:?}: {msg}", k.isa);
            let rb = RawMat {
                data: &bytes,
                elem: Elem::F16,
                rows: 1,
                cols: usize::MAX / 2 + 1,
                stride_bytes: 0,
                ahead: &[],
            };
            let msg = panic_message(|| (k.gemm_nn_raw)(MatRef::dense(&buf, 1, 1), rb, MatMut::dense(&mut c, 1, 4)));
            assert!(msg.contains("buffer too small"), "{:?}: {msg}", k.isa);
        }
        let rb = RawMat { data: &bytes, elem: Elem::F32, rows: 2, cols: 2, stride_bytes: usize::MAX / 2, ahead: &[] };
        let msg = panic_message(|| drop(rb.row_f32(3)));
        assert!(msg.contains("outside the 16-byte buffer"), "{msg}");
        assert_eq!(RawMat { stride_bytes: 8, ..rb }.row_f32(1), vec![0.0, 0.0]);
    }
}
