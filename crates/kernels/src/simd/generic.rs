//! Kernel bodies written once over [`Lanes`], instantiated per instruction set.
//!
//! Each body is `#[inline(always)]` and only ever called from a `#[target_feature]` wrapper,
//! so the intrinsics inline into code compiled for that instruction set.

use super::lanes::Lanes;
use super::{
    check_gemm_nn, check_gemm_nn_raw, check_gemm_nt, check_gemm_nt_raw, check_pack, pack_shape_only, scalar, Elem,
    Kernels, MatMut, MatRef, NtPack, RawMat,
};

#[inline(always)]
unsafe fn dot<L: Lanes>(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [L::zero(); 4];
    let mut i = 0;
    while i + 4 * L::N <= n {
        for (u, acc) in acc.iter_mut().enumerate() {
            let o = i + u * L::N;
            *acc = L::fma(L::load(pa.add(o)), L::load(pb.add(o)), *acc);
        }
        i += 4 * L::N;
    }
    while i + L::N <= n {
        acc[0] = L::fma(L::load(pa.add(i)), L::load(pb.add(i)), acc[0]);
        i += L::N;
    }
    let v = L::add(L::add(acc[0], acc[1]), L::add(acc[2], acc[3]));
    let mut s = L::hsum(v);
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

#[inline(always)]
unsafe fn axpy<L: Lanes>(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    let n = x.len();
    let av = L::splat(alpha);
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i + L::N <= n {
        L::store(py.add(i), L::fma(av, L::load(px.add(i)), L::load(py.add(i))));
        i += L::N;
    }
    while i < n {
        y[i] += alpha * x[i];
        i += 1;
    }
}

#[inline(always)]
unsafe fn scale<L: Lanes>(x: &mut [f32], alpha: f32) {
    let n = x.len();
    let av = L::splat(alpha);
    let p = x.as_mut_ptr();
    let mut i = 0;
    while i + L::N <= n {
        L::store(p.add(i), L::mul(av, L::load(p.add(i))));
        i += L::N;
    }
    while i < n {
        x[i] *= alpha;
        i += 1;
    }
}

#[inline(always)]
unsafe fn max<L: Lanes>(x: &[f32]) -> f32 {
    let n = x.len();
    let p = x.as_ptr();
    let mut m = L::splat(f32::NEG_INFINITY);
    let mut i = 0;
    while i + L::N <= n {
        m = L::max(m, L::load(p.add(i)));
        i += L::N;
    }
    let mut s = L::hmax(m);
    while i < n {
        s = s.max(x[i]);
        i += 1;
    }
    s
}

/// silu(g) · u = g / (1 + e^−g) · u, lane by lane.
#[inline(always)]
unsafe fn silu_v<L: Lanes>(g: L::V, u: L::V) -> L::V {
    L::mul(L::div(g, L::add(L::splat(1.0), L::exp(L::mul(g, L::splat(-1.0))))), u)
}

/// gate[i] = silu(gate[i]) · up[i].
#[inline(always)]
unsafe fn silu_mul<L: Lanes>(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: gate and up lengths differ");
    let n = gate.len();
    let (g, u) = (gate.as_mut_ptr(), up.as_ptr());
    let mut i = 0;
    while i + L::N <= n {
        L::store(g.add(i), silu_v::<L>(L::load(g.add(i)), L::load(u.add(i))));
        i += L::N;
    }
    if i < n {
        // The tail through the same vector operations (every element rounds alike).
        let (mut tg, mut tu) = ([0f32; 64], [0f32; 64]);
        let r = n - i;
        tg[..r].copy_from_slice(&gate[i..]);
        tu[..r].copy_from_slice(&up[i..]);
        L::store(tg.as_mut_ptr(), silu_v::<L>(L::load(tg.as_ptr()), L::load(tu.as_ptr())));
        gate[i..].copy_from_slice(&tg[..r]);
    }
}

#[inline(always)]
unsafe fn exp_sub_sum<L: Lanes>(x: &mut [f32], m: f32) -> f32 {
    let n = x.len();
    let mv = L::splat(m);
    let p = x.as_mut_ptr();
    let mut acc = L::zero();
    let mut i = 0;
    while i + L::N <= n {
        // x − m via fma(x, 1, −m) keeps one rounding, like the scalar twin's subtraction.
        let e = L::exp(L::add(L::load(p.add(i)), L::mul(mv, L::splat(-1.0))));
        L::store(p.add(i), e);
        acc = L::add(acc, e);
        i += L::N;
    }
    let mut s = L::hsum(acc);
    if i < n {
        // Tail through the same vector exp so every element gets identical rounding.
        let mut t = [f32::NEG_INFINITY; 64];
        let r = n - i;
        t[..r].copy_from_slice(&x[i..]);
        let e = L::exp(L::add(L::load(t.as_ptr()), L::mul(mv, L::splat(-1.0))));
        L::store(t.as_mut_ptr(), e);
        for k in 0..r {
            x[i + k] = t[k];
            s += t[k];
        }
    }
    s
}

#[inline(always)]
#[allow(clippy::extra_unused_type_parameters)]
unsafe fn f32_from_bytes<L: Lanes>(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 4 * dst.len(), "f32_from_bytes: length mismatch");
    std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr() as *mut u8, src.len());
}

#[inline(always)]
unsafe fn f16_to_f32<L: Lanes>(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 2 * dst.len(), "f16_to_f32: length mismatch");
    let n = dst.len();
    let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + L::N <= n {
        L::store(pd.add(i), L::load_f16(ps.add(2 * i)));
        i += L::N;
    }
    scalar::f16_to_f32(&src[2 * i..], &mut dst[i..]);
}

#[inline(always)]
unsafe fn bf16_to_f32<L: Lanes>(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 2 * dst.len(), "bf16_to_f32: length mismatch");
    let n = dst.len();
    let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + L::N <= n {
        L::store(pd.add(i), L::load_bf16(ps.add(2 * i)));
        i += L::N;
    }
    scalar::bf16_to_f32(&src[2 * i..], &mut dst[i..]);
}

#[inline(always)]
unsafe fn fp8_to_f32<L: Lanes>(src: &[u8], scale: f32, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "fp8_to_f32: length mismatch");
    let n = dst.len();
    let sv = L::splat(scale * 256.0);
    let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + L::N <= n {
        L::store(pd.add(i), L::mul(L::load_fp8_scaled256(ps.add(i)), sv));
        i += L::N;
    }
    scalar::fp8_to_f32(&src[i..], scale, &mut dst[i..]);
}

#[inline(always)]
unsafe fn i8_to_f32<L: Lanes>(src: &[u8], scale: f32, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "i8_to_f32: length mismatch");
    let n = dst.len();
    let sv = L::splat(scale);
    let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + L::N <= n {
        L::store(pd.add(i), L::mul(L::load_i8(ps.add(i)), sv));
        i += L::N;
    }
    scalar::i8_to_f32(&src[i..], scale, &mut dst[i..]);
}

#[inline(always)]
unsafe fn f32_to_f16<L: Lanes>(src: &[f32], dst: &mut [u8]) {
    assert_eq!(2 * src.len(), dst.len(), "f32_to_f16: length mismatch");
    let n = src.len();
    let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + L::N <= n {
        L::store_f16(pd.add(2 * i), L::load(ps.add(i)));
        i += L::N;
    }
    scalar::f32_to_f16(&src[i..], &mut dst[2 * i..]);
}

#[inline(always)]
unsafe fn f32_to_bf16<L: Lanes>(src: &[f32], dst: &mut [u8]) {
    assert_eq!(2 * src.len(), dst.len(), "f32_to_bf16: length mismatch");
    let n = src.len();
    let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + L::N <= n {
        L::store_bf16(pd.add(2 * i), L::load(ps.add(i)));
        i += L::N;
    }
    scalar::f32_to_bf16(&src[i..], &mut dst[2 * i..]);
}

/// Prefetch hint for the cache lines of `len` bytes at `p` (never faults).
#[inline(always)]
unsafe fn prefetch_span(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut off = 0;
        while off < len {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(off) as *const i8);
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// The rows of B's plane that are read after this call (the next block of a paged cache),
/// `ldb` bytes apart like B's: the tiles prefetch them while they work on B's last rows.
/// Only prefetched, never read.
#[derive(Clone, Copy)]
struct Ahead {
    p: *const u8,
    rows: usize,
}

impl Ahead {
    const NONE: Ahead = Ahead { p: std::ptr::null(), rows: 0 };

    fn of(b: &RawMat) -> Ahead {
        match b.ahead.len().checked_div(b.stride_bytes) {
            Some(rows) if rows > 0 => Ahead { p: b.ahead.as_ptr(), rows },
            _ => Ahead::NONE,
        }
    }

    /// Row `r` of B's continuation, `t` rows past B's `n` (null when not held).
    fn row(self, t: usize, n: usize, ldb: usize) -> *const u8 {
        match t.checked_sub(n) {
            Some(r) if r < self.rows => self.p.wrapping_add(r * ldb),
            _ => std::ptr::null(),
        }
    }
}

/// How the micro-kernels read B in its stored element type.
trait BElem {
    const BYTES: usize;
    unsafe fn vec<L: Lanes>(p: *const u8) -> L::V;
    unsafe fn one(p: *const u8) -> f32;
}

struct EF32;
struct EBf16;
struct EF16;

impl BElem for EF32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn vec<L: Lanes>(p: *const u8) -> L::V {
        L::load(p as *const f32)
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        (p as *const f32).read_unaligned()
    }
}

impl BElem for EBf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn vec<L: Lanes>(p: *const u8) -> L::V {
        L::load_bf16(p)
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        f32::from_bits(((p as *const u16).read_unaligned() as u32) << 16)
    }
}

impl BElem for EF16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn vec<L: Lanes>(p: *const u8) -> L::V {
        L::load_f16(p)
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        half::f16::from_bits((p as *const u16).read_unaligned()).to_f32()
    }
}

struct EI8;
struct EFp8;

impl BElem for EI8 {
    const BYTES: usize = 1;
    #[inline(always)]
    unsafe fn vec<L: Lanes>(p: *const u8) -> L::V {
        L::load_i8(p)
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        (*p as i8) as f32
    }
}

impl BElem for EFp8 {
    const BYTES: usize = 1;
    #[inline(always)]
    unsafe fn vec<L: Lanes>(p: *const u8) -> L::V {
        L::load_fp8_scaled256(p)
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        crate::fp8::e4m3_to_f32(*p) / 256.0
    }
}

/// C[MR, NR] = alpha · A[MR, K] · B[NR, K]ᵀ for one register block; B rows `ldb` bytes apart.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nt_block<L: Lanes, E: BElem, const MR: usize, const NR: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    pf: *const u8,
) {
    let mut acc = [[L::zero(); NR]; MR];
    let kv = k / L::N * L::N;
    let mut p = 0;
    while p < kv {
        if !pf.is_null() {
            for j in 0..NR {
                prefetch_span(pf.wrapping_add(j * ldb + p * E::BYTES), 1);
            }
        }
        let mut bv = [L::zero(); NR];
        for (j, bv) in bv.iter_mut().enumerate() {
            *bv = E::vec::<L>(b.add(j * ldb + p * E::BYTES));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = L::load(a.add(i * lda + p));
            for j in 0..NR {
                acc[j] = L::fma(av, bv[j], acc[j]);
            }
        }
        p += L::N;
    }
    // The MR·NR lane sums, four at a time (the same tree as one at a time).
    let mut sums = [[0f32; NR]; MR];
    {
        let (v, o) = (acc.as_flattened(), sums.as_flattened_mut());
        let mut t = 0;
        while t + 4 <= v.len() {
            o[t..t + 4].copy_from_slice(&L::hsum4(v[t], v[t + 1], v[t + 2], v[t + 3]));
            t += 4;
        }
        while t < v.len() {
            o[t] = L::hsum(v[t]);
            t += 1;
        }
    }
    for (i, sums) in sums.iter().enumerate() {
        for (j, &s0) in sums.iter().enumerate() {
            let mut s = s0;
            for q in kv..k {
                s += *a.add(i * lda + q) * E::one(b.add(j * ldb + q * E::BYTES));
            }
            *c.add(i * ldc + j) = alpha * s;
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nt_rows<L: Lanes, E: BElem, const MR: usize, const NR: usize>(
    k: usize,
    n: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    ahead: Ahead,
) {
    let mut j = 0;
    while j + NR <= n {
        // Pull the rows two blocks ahead towards the cache while this block computes.
        // The rows four blocks ahead are pulled towards the cache one line per row and step of
        // the dot loop, spread over the block's work: a burst of whole rows at the block's
        // start filled the line-fill buffers and stalled the FMAs behind it.
        const AHEAD: usize = 4;
        let t = j + AHEAD * NR;
        let pf = if t + NR <= n {
            b.wrapping_add(t * ldb)
        } else if t >= n && t + NR - n <= ahead.rows {
            ahead.row(t, n, ldb)
        } else {
            std::ptr::null()
        };
        nt_block::<L, E, MR, NR>(k, a, lda, b.add(j * ldb), ldb, c.add(j), ldc, alpha, pf);
        j += NR;
    }
    while j < n {
        nt_block::<L, E, MR, 1>(k, a, lda, b.add(j * ldb), ldb, c.add(j), ldc, alpha, std::ptr::null());
        j += 1;
    }
}

/// The NT driver: `m × n` output, B rows `ldb` bytes apart.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nt_drive<L: Lanes, E: BElem, const MR: usize, const NR: usize>(
    alpha: f32,
    m: usize,
    n: usize,
    k: usize,
    pa: *const f32,
    lda: usize,
    pb: *const u8,
    ldb: usize,
    pc: *mut f32,
    ldc: usize,
    ahead: Ahead,
) {
    let mut i = 0;
    while i + MR <= m {
        nt_rows::<L, E, MR, NR>(k, n, pa.add(i * lda), lda, pb, ldb, pc.add(i * ldc), ldc, alpha, ahead);
        i += MR;
    }
    // The last rows in one more pass over B, not several (decode has a few rows: a GQA
    // group or an MLA layer's heads, and each pass streams every key once more).
    let (pa, pc) = (pa.add(i * lda), pc.add(i * ldc));
    macro_rules! tail {
        ($($r:literal)*) => {
            match m - i {
                0 => {}
                $($r if $r < MR => nt_rows::<L, E, $r, NR>(k, n, pa, lda, pb, ldb, pc, ldc, alpha, ahead),)*
                r => unreachable!("{r} tail rows with a {MR}-row block"),
            }
        };
    }
    tail!(1 2 3 4 5 6 7 8);
}

#[inline(always)]
unsafe fn gemm_nt<L: Lanes, const MR: usize, const NR: usize>(alpha: f32, a: MatRef, b: MatRef, c: MatMut) {
    check_gemm_nt(&a, &b, &c);
    let pb = b.data.as_ptr() as *const u8;
    nt_drive::<L, EF32, MR, NR>(
        alpha,
        c.rows,
        c.cols,
        a.cols,
        a.data.as_ptr(),
        a.stride,
        pb,
        b.stride * 4,
        c.data.as_mut_ptr(),
        c.stride,
        Ahead::NONE,
    );
}

#[inline(always)]
unsafe fn gemm_nt_raw<L: Lanes, const MR: usize, const NR: usize>(alpha: f32, a: MatRef, b: RawMat, c: MatMut) {
    check_gemm_nt_raw(&a, &b, &c);
    let (m, n, k) = (c.rows, c.cols, a.cols);
    let (pa, pb, pc) = (a.data.as_ptr(), b.data.as_ptr(), c.data.as_mut_ptr());
    let ahead = Ahead::of(&b);
    match b.elem {
        Elem::F32 => nt_drive::<L, EF32, MR, NR>(alpha, m, n, k, pa, a.stride, pb, b.stride_bytes, pc, c.stride, ahead),
        Elem::Bf16 => {
            nt_drive::<L, EBf16, MR, NR>(alpha, m, n, k, pa, a.stride, pb, b.stride_bytes, pc, c.stride, ahead)
        }
        Elem::F16 => nt_drive::<L, EF16, MR, NR>(alpha, m, n, k, pa, a.stride, pb, b.stride_bytes, pc, c.stride, ahead),
        Elem::I8 => nt_drive::<L, EI8, MR, NR>(alpha, m, n, k, pa, a.stride, pb, b.stride_bytes, pc, c.stride, ahead),
        Elem::Fp8Scaled256 => {
            nt_drive::<L, EFp8, MR, NR>(alpha, m, n, k, pa, a.stride, pb, b.stride_bytes, pc, c.stride, ahead)
        }
    }
}

/// C[MR, NV·N] += A[MR, K] · B[K, NV·N] for one register block; B rows `ldb` bytes apart.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nn_block<L: Lanes, E: BElem, const MR: usize, const NV: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    ahead: Ahead,
) {
    let mut acc = [[L::zero(); NV]; MR];
    for (i, acc) in acc.iter_mut().enumerate() {
        for (v, acc) in acc.iter_mut().enumerate() {
            *acc = L::load(c.add(i * ldc + v * L::N));
        }
    }
    for p in 0..k {
        if p + 16 < k {
            prefetch_span(b.wrapping_add((p + 16) * ldb), NV * L::N * E::BYTES);
        } else {
            let q = ahead.row(p + 16, k, ldb);
            if !q.is_null() {
                prefetch_span(q, NV * L::N * E::BYTES);
            }
        }
        let mut bv = [L::zero(); NV];
        for (v, bv) in bv.iter_mut().enumerate() {
            *bv = E::vec::<L>(b.add(p * ldb + v * L::N * E::BYTES));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = L::splat(*a.add(i * lda + p));
            for v in 0..NV {
                acc[v] = L::fma(av, bv[v], acc[v]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (v, acc) in acc.iter().enumerate() {
            L::store(c.add(i * ldc + v * L::N), *acc);
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nn_rows<L: Lanes, E: BElem, const MR: usize, const NV: usize>(
    k: usize,
    n: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    ahead: Ahead,
) {
    let mut j = 0;
    while j + NV * L::N <= n {
        let ah = Ahead { p: ahead.p.wrapping_add(j * E::BYTES), ..ahead };
        nn_block::<L, E, MR, NV>(k, a, lda, b.add(j * E::BYTES), ldb, c.add(j), ldc, ah);
        j += NV * L::N;
    }
    while j + L::N <= n {
        let ah = Ahead { p: ahead.p.wrapping_add(j * E::BYTES), ..ahead };
        nn_block::<L, E, MR, 1>(k, a, lda, b.add(j * E::BYTES), ldb, c.add(j), ldc, ah);
        j += L::N;
    }
    while j < n {
        for i in 0..MR {
            let mut s = *c.add(i * ldc + j);
            for p in 0..k {
                s += *a.add(i * lda + p) * E::one(b.add(p * ldb + j * E::BYTES));
            }
            *c.add(i * ldc + j) = s;
        }
        j += 1;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nn_drive<L: Lanes, E: BElem, const MR: usize, const NV: usize>(
    m: usize,
    n: usize,
    k: usize,
    pa: *const f32,
    lda: usize,
    pb: *const u8,
    ldb: usize,
    pc: *mut f32,
    ldc: usize,
    ahead: Ahead,
) {
    let mut i = 0;
    while i + MR <= m {
        nn_rows::<L, E, MR, NV>(k, n, pa.add(i * lda), lda, pb, ldb, pc.add(i * ldc), ldc, ahead);
        i += MR;
    }
    // The last rows in one more pass over B (as in `nt_drive`).
    let (pa, pc) = (pa.add(i * lda), pc.add(i * ldc));
    macro_rules! tail {
        ($($r:literal)*) => {
            match m - i {
                0 => {}
                $($r if $r < MR => nn_rows::<L, E, $r, NV>(k, n, pa, lda, pb, ldb, pc, ldc, ahead),)*
                r => unreachable!("{r} tail rows with a {MR}-row block"),
            }
        };
    }
    tail!(1 2 3 4 5 6 7 8);
}

#[inline(always)]
unsafe fn gemm_nn<L: Lanes, const MR: usize, const NV: usize>(a: MatRef, b: MatRef, c: MatMut) {
    check_gemm_nn(&a, &b, &c);
    let pb = b.data.as_ptr() as *const u8;
    nn_drive::<L, EF32, MR, NV>(
        c.rows,
        c.cols,
        a.cols,
        a.data.as_ptr(),
        a.stride,
        pb,
        b.stride * 4,
        c.data.as_mut_ptr(),
        c.stride,
        Ahead::NONE,
    );
}

#[inline(always)]
unsafe fn gemm_nn_raw<L: Lanes, const MR: usize, const NV: usize>(a: MatRef, b: RawMat, c: MatMut) {
    check_gemm_nn_raw(&a, &b, &c);
    let (m, n, k) = (c.rows, c.cols, a.cols);
    let (pa, pb, pc) = (a.data.as_ptr(), b.data.as_ptr(), c.data.as_mut_ptr());
    let ahead = Ahead::of(&b);
    match b.elem {
        Elem::F32 => nn_drive::<L, EF32, MR, NV>(m, n, k, pa, a.stride, pb, b.stride_bytes, pc, c.stride, ahead),
        Elem::Bf16 => nn_drive::<L, EBf16, MR, NV>(m, n, k, pa, a.stride, pb, b.stride_bytes, pc, c.stride, ahead),
        Elem::F16 => nn_drive::<L, EF16, MR, NV>(m, n, k, pa, a.stride, pb, b.stride_bytes, pc, c.stride, ahead),
        Elem::I8 => nn_drive::<L, EI8, MR, NV>(m, n, k, pa, a.stride, pb, b.stride_bytes, pc, c.stride, ahead),
        Elem::Fp8Scaled256 => {
            nn_drive::<L, EFp8, MR, NV>(m, n, k, pa, a.stride, pb, b.stride_bytes, pc, c.stride, ahead)
        }
    }
}

/// Instantiates every kernel for one instruction set inside `#[target_feature]` wrappers and
/// builds its table. The safe wrappers are sound because a table is only handed out by
/// [`Kernels::for_isa`] after runtime detection confirmed the features.
macro_rules! instantiate {
    ($table:ident, $m:ident, $L:ty, $feat:literal, $isa:expr, nt = ($mr:literal, $nr:literal), nn = ($nmr:literal, $nv:literal)) => {
        mod $m {
            use super::*;
            #[target_feature(enable = $feat)]
            unsafe fn dot_tf(a: &[f32], b: &[f32]) -> f32 {
                dot::<$L>(a, b)
            }
            #[target_feature(enable = $feat)]
            unsafe fn axpy_tf(alpha: f32, x: &[f32], y: &mut [f32]) {
                axpy::<$L>(alpha, x, y)
            }
            #[target_feature(enable = $feat)]
            unsafe fn scale_tf(x: &mut [f32], alpha: f32) {
                scale::<$L>(x, alpha)
            }
            #[target_feature(enable = $feat)]
            unsafe fn max_tf(x: &[f32]) -> f32 {
                max::<$L>(x)
            }
            #[target_feature(enable = $feat)]
            unsafe fn silu_mul_tf(gate: &mut [f32], up: &[f32]) {
                silu_mul::<$L>(gate, up)
            }
            #[target_feature(enable = $feat)]
            unsafe fn exp_sub_sum_tf(x: &mut [f32], m: f32) -> f32 {
                exp_sub_sum::<$L>(x, m)
            }
            #[target_feature(enable = $feat)]
            unsafe fn f32_from_bytes_tf(s: &[u8], d: &mut [f32]) {
                f32_from_bytes::<$L>(s, d)
            }
            #[target_feature(enable = $feat)]
            unsafe fn f16_to_f32_tf(s: &[u8], d: &mut [f32]) {
                f16_to_f32::<$L>(s, d)
            }
            #[target_feature(enable = $feat)]
            unsafe fn bf16_to_f32_tf(s: &[u8], d: &mut [f32]) {
                bf16_to_f32::<$L>(s, d)
            }
            #[target_feature(enable = $feat)]
            unsafe fn fp8_to_f32_tf(s: &[u8], sc: f32, d: &mut [f32]) {
                fp8_to_f32::<$L>(s, sc, d)
            }
            #[target_feature(enable = $feat)]
            unsafe fn i8_to_f32_tf(s: &[u8], sc: f32, d: &mut [f32]) {
                i8_to_f32::<$L>(s, sc, d)
            }
            #[target_feature(enable = $feat)]
            unsafe fn f32_to_f16_tf(s: &[f32], d: &mut [u8]) {
                f32_to_f16::<$L>(s, d)
            }
            #[target_feature(enable = $feat)]
            unsafe fn f32_to_bf16_tf(s: &[f32], d: &mut [u8]) {
                f32_to_bf16::<$L>(s, d)
            }
            #[target_feature(enable = $feat)]
            unsafe fn gemm_nt_tf(alpha: f32, a: MatRef, b: MatRef, c: MatMut) {
                gemm_nt::<$L, $mr, $nr>(alpha, a, b, c)
            }
            #[target_feature(enable = $feat)]
            unsafe fn gemm_nn_tf(a: MatRef, b: MatRef, c: MatMut) {
                gemm_nn::<$L, $nmr, $nv>(a, b, c)
            }
            #[target_feature(enable = $feat)]
            unsafe fn gemm_nt_raw_tf(alpha: f32, a: MatRef, b: RawMat, c: MatMut) {
                gemm_nt_raw::<$L, $mr, $nr>(alpha, a, b, c)
            }
            #[target_feature(enable = $feat)]
            unsafe fn gemm_nn_raw_tf(a: MatRef, b: RawMat, c: MatMut) {
                gemm_nn_raw::<$L, $nmr, $nv>(a, b, c)
            }
            // SAFETY (all wrappers below): this table is reachable only through
            // `Kernels::for_isa`, which checks at run time that the CPU has `$feat`.
            pub fn dot_(a: &[f32], b: &[f32]) -> f32 {
                unsafe { dot_tf(a, b) }
            }
            pub fn axpy_(alpha: f32, x: &[f32], y: &mut [f32]) {
                unsafe { axpy_tf(alpha, x, y) }
            }
            pub fn scale_(x: &mut [f32], alpha: f32) {
                unsafe { scale_tf(x, alpha) }
            }
            pub fn max_(x: &[f32]) -> f32 {
                unsafe { max_tf(x) }
            }
            pub fn silu_mul_(gate: &mut [f32], up: &[f32]) {
                unsafe { silu_mul_tf(gate, up) }
            }
            pub fn exp_sub_sum_(x: &mut [f32], m: f32) -> f32 {
                unsafe { exp_sub_sum_tf(x, m) }
            }
            pub fn f32_from_bytes_(s: &[u8], d: &mut [f32]) {
                unsafe { f32_from_bytes_tf(s, d) }
            }
            pub fn f16_to_f32_(s: &[u8], d: &mut [f32]) {
                unsafe { f16_to_f32_tf(s, d) }
            }
            pub fn bf16_to_f32_(s: &[u8], d: &mut [f32]) {
                unsafe { bf16_to_f32_tf(s, d) }
            }
            pub fn fp8_to_f32_(s: &[u8], sc: f32, d: &mut [f32]) {
                unsafe { fp8_to_f32_tf(s, sc, d) }
            }
            pub fn i8_to_f32_(s: &[u8], sc: f32, d: &mut [f32]) {
                unsafe { i8_to_f32_tf(s, sc, d) }
            }
            pub fn f32_to_f16_(s: &[f32], d: &mut [u8]) {
                unsafe { f32_to_f16_tf(s, d) }
            }
            pub fn f32_to_bf16_(s: &[f32], d: &mut [u8]) {
                unsafe { f32_to_bf16_tf(s, d) }
            }
            pub fn gemm_nt_(alpha: f32, a: MatRef, b: MatRef, c: MatMut) {
                unsafe { gemm_nt_tf(alpha, a, b, c) }
            }
            pub fn gemm_nn_(a: MatRef, b: MatRef, c: MatMut) {
                unsafe { gemm_nn_tf(a, b, c) }
            }
            pub fn gemm_nt_raw_(alpha: f32, a: MatRef, b: RawMat, c: MatMut) {
                unsafe { gemm_nt_raw_tf(alpha, a, b, c) }
            }
            pub fn gemm_nn_raw_(a: MatRef, b: RawMat, c: MatMut) {
                unsafe { gemm_nn_raw_tf(a, b, c) }
            }
            pub fn gemm_nt_raw_packed_(alpha: f32, a: MatRef, pack: &NtPack, b: RawMat, c: MatMut) {
                check_pack(&a, pack);
                unsafe { gemm_nt_raw_tf(alpha, a, b, c) }
            }
        }
        pub(super) static $table: Kernels = Kernels {
            isa: $isa,
            dot: $m::dot_,
            axpy: $m::axpy_,
            scale: $m::scale_,
            max: $m::max_,
            exp_sub_sum: $m::exp_sub_sum_,
            silu_mul: $m::silu_mul_,
            f32_from_bytes: $m::f32_from_bytes_,
            f16_to_f32: $m::f16_to_f32_,
            bf16_to_f32: $m::bf16_to_f32_,
            fp8_to_f32: $m::fp8_to_f32_,
            i8_to_f32: $m::i8_to_f32_,
            f32_to_f16: $m::f32_to_f16_,
            f32_to_bf16: $m::f32_to_bf16_,
            gemm_nt: $m::gemm_nt_,
            gemm_nn: $m::gemm_nn_,
            gemm_nt_raw: $m::gemm_nt_raw_,
            gemm_nn_raw: $m::gemm_nn_raw_,
            pack_nt: pack_shape_only,
            gemm_nt_raw_packed: $m::gemm_nt_raw_packed_,
        };
    };
}

#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2, Avx512};
#[cfg(target_arch = "x86_64")]
instantiate!(AVX2, avx2, Avx2, "avx2,fma,f16c", crate::cpu::Isa::Avx2, nt = (3, 3), nn = (4, 2));
#[cfg(target_arch = "x86_64")]
instantiate!(
    AVX512,
    avx512,
    Avx512,
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    crate::cpu::Isa::Avx512,
    nt = (9, 3),
    nn = (6, 4)
);
#[cfg(target_arch = "aarch64")]
use super::lanes::Neon;
#[cfg(target_arch = "aarch64")]
instantiate!(NEON, neon, Neon, "neon", crate::cpu::Isa::Neon, nt = (4, 4), nn = (8, 2));
