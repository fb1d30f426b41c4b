//! Intel AMX tile variants of the two raw-B GEMM tiles, for bfloat16 B (a bf16 KV cache):
//! the score tile `C = α·A·Bᵀ` and the value tile `C += A·B` of attention.
//!
//! AMX multiplies bf16 tiles into f32 tiles (`tdpbf16ps`: C[16, 16] += A[16, 32]·B[32, 16],
//! B stored as 16 rows of 16 (k, k+1) pairs). B's bf16 values go in exactly as stored; A is
//! f32, so it is split into two bf16 parts `A ≈ hi + lo` (hi = A rounded to bf16, lo = the
//! remainder rounded to bf16) and both parts are multiplied: the product then carries A to
//! about 2⁻¹⁷ relative, against 2⁻²⁴ for the f32 twin, and the sums run in f32.
//!
//! Layouts:
//! - Scores: the cache rows are A tiles as they lie (16 keys × 32 dims, one row per key), the
//!   queries are the B side (their dims paired, packed once per attention work item by
//!   [`pack_nt`] and used for every block of keys it reads), and the result tile is keys ×
//!   query rows, written transposed into C.
//! - Values: the probabilities are the A side (split into hi/lo per call), the cache rows are
//!   re-laid into the paired B layout per call (two keys' dims interleaved).
//!
//! Shapes the tiles do not fit (other element types, fewer than [`NT_MIN_ROWS`] /
//! [`NN_MIN_ROWS`] rows, a reduction dim that is not a multiple of 32 for scores or a value
//! width that is not a multiple of 16) go to the AVX-512 table. Tail keys are zero-padded in scratch, never read past the matrix.
//!
//! The tile configuration (every tile 16 rows × 64 bytes) is loaded once per thread and kept
//! (releasing the tiles after every call and loading the configuration again costs ~80 ns a
//! call and measured no faster decode).

use super::{
    check_gemm_nn_raw, check_gemm_nt_raw, generic, pack_shape_only, Elem, MatMut, MatRef, NtPack, PackLine, RawMat,
};
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

/// The score tile runs on AMX from this many A rows on: below, the 16-row tiles idle most of
/// their lanes and the AVX-512 tile is as fast.
pub const NT_MIN_ROWS: usize = 8;
/// The value tile runs on AMX from this many A rows on: it re-lays B into key pairs per call,
/// which the AVX-512 tile does not need, and pays off only with a full 16-row block (measured
/// at 9 rows: 22.5 against 21.2 ns per key; at 16: 26.6 against 34.3).
pub const NN_MIN_ROWS: usize = 16;

/// Whether the CPU has AMX-TILE and AMX-BF16, the OS saves tile state, and (on Linux) this
/// process was granted the tile data state. Asked once.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !(std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("xsave"))
        {
            return false;
        }
        let l7 = __cpuid_count(7, 0);
        let (tile, bf16) = ((l7.edx >> 24) & 1 == 1, (l7.edx >> 22) & 1 == 1);
        let osxsave = (__cpuid(1).ecx >> 27) & 1 == 1;
        if !(tile && bf16 && osxsave) {
            return false;
        }
        // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS manages the tile state.
        let (lo, _hi): (u32, u32);
        // SAFETY: OSXSAVE is set, so XGETBV with ECX = 0 is defined.
        unsafe { asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi, options(nomem, nostack)) };
        if (lo >> 17) & 3 != 3 {
            return false;
        }
        request_tile_permission()
    })
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permission set.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// Palette 1, all eight tiles 16 rows × 64 bytes.
const FULL: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

thread_local! {
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Loads the tile configuration on this thread unless it already holds it (nothing else in
/// the process configures tiles).
#[inline(always)]
unsafe fn ensure_config() {
    if !CONFIGURED.get() {
        asm!("ldtilecfg [{0}]", in(reg) FULL.0.as_ptr(), options(nostack, readonly, preserves_flags));
        CONFIGURED.set(true);
    }
}

#[inline(always)]
unsafe fn tload<const T: u8>(p: *const u8, stride: usize) {
    asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) p, s = in(reg) stride,
         options(nostack, readonly, preserves_flags));
}

#[inline(always)]
unsafe fn tstore<const T: u8>(p: *mut u8, stride: usize) {
    asm!("tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) p, s = in(reg) stride,
         options(nostack, preserves_flags));
}

#[inline(always)]
unsafe fn tzero<const T: u8>() {
    asm!("tilezero tmm{t}", t = const T, options(nomem, nostack, preserves_flags));
}

/// tmm C += tmm A · tmm B (bf16 pairs, f32 accumulation).
#[inline(always)]
unsafe fn tdp<const C: u8, const A: u8, const B: u8>() {
    asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B,
         options(nomem, nostack, preserves_flags));
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A growable 64-byte-aligned byte buffer.
#[derive(Default)]
struct Lines(Vec<Line>);

impl Lines {
    /// The first `n` bytes (grown as needed; contents unspecified).
    fn get(&mut self, n: usize) -> *mut u8 {
        let lines = n.div_ceil(64);
        if self.0.len() < lines {
            self.0.resize(lines, Line([0; 64]));
        }
        self.0.as_mut_ptr() as *mut u8
    }
}

#[derive(Default)]
struct Scratch {
    /// Query tiles for calls without a pack.
    pack: NtPack,
    /// Result tiles `[4][16 keys, 16 rows]` f32.
    out: Lines,
    /// Zero-padded copy of the last (< 16) key rows.
    pad: Lines,
    /// Value side: `[key chunk][hi, lo]` probability tiles and `[key chunk][16-dim tile]` values.
    probs: Lines,
    values: Lines,
    /// The accumulator rows `[16, N]` f32.
    acc: Lines,
}

/// Sixteen f32 lanes → their bf16 hi and lo parts (as in [`split`]), 16 bits each.
#[inline(always)]
unsafe fn split16(x: __m512) -> (__m256i, __m256i) {
    #[inline(always)]
    unsafe fn rne(x: __m512) -> __m512i {
        let b = _mm512_castps_si512(x);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        let r = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
        let r = _mm512_and_si512(r, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        let q = _mm512_and_si512(
            _mm512_or_si512(b, _mm512_set1_epi32(0x0040_0000)),
            _mm512_set1_epi32(0xFFFF_0000u32 as i32),
        );
        _mm512_mask_mov_epi32(r, nan, q)
    }
    let hi = rne(x);
    let lo = rne(_mm512_sub_ps(x, _mm512_castsi512_ps(hi)));
    (_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(hi)), _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(lo)))
}

/// Prefetches `len` bytes at `p` into L1 (a hint; never faults).
#[inline(always)]
unsafe fn prefetch(p: *const u8, len: usize) {
    let mut off = 0;
    while off < len {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8);
        off += 64;
    }
}

/// [`super::Kernels::gemm_nt_raw`] on AMX for bf16 B with `K % 32 == 0`; other shapes go to
/// the AVX-512 tile.
pub fn gemm_nt_raw(alpha: f32, a: MatRef, b: RawMat, c: MatMut) {
    if !nt_fits(&a, &b) {
        return (generic::AVX512.gemm_nt_raw)(alpha, a, b, c);
    }
    check_gemm_nt_raw(&a, &b, &c);
    SCRATCH.with_borrow_mut(|s| {
        let mut pack = std::mem::take(&mut s.pack);
        pack_nt(a, Elem::Bf16, &mut pack);
        // SAFETY: this table is handed out only after `available()` confirmed AVX-512 and AMX
        // with the OS's tile permission; the checks above bound every tile read.
        unsafe { nt_tiles(alpha, a, &pack, b, c, s) };
        s.pack = pack;
    })
}

/// [`super::Kernels::gemm_nt_raw_packed`]: as [`gemm_nt_raw`] with A's tiles from `pack`.
pub fn gemm_nt_raw_packed(alpha: f32, a: MatRef, pack: &NtPack, b: RawMat, c: MatMut) {
    super::check_pack(&a, pack);
    if !nt_fits(&a, &b) || !pack.tiled {
        return (generic::AVX512.gemm_nt_raw)(alpha, a, b, c);
    }
    check_gemm_nt_raw(&a, &b, &c);
    // SAFETY: as in `gemm_nt_raw`.
    SCRATCH.with_borrow_mut(|s| unsafe { nt_tiles(alpha, a, pack, b, c, s) })
}

/// [`super::Kernels::gemm_nn_raw`] on AMX for bf16 B with `N % 16 == 0`; other shapes go to
/// the AVX-512 tile.
pub fn gemm_nn_raw(a: MatRef, b: RawMat, c: MatMut) {
    if b.elem != Elem::Bf16 || a.rows < NN_MIN_ROWS || b.cols == 0 || !b.cols.is_multiple_of(16) || b.rows < 16 {
        return (generic::AVX512.gemm_nn_raw)(a, b, c);
    }
    check_gemm_nn_raw(&a, &b, &c);
    // SAFETY: as in `gemm_nt_raw`.
    SCRATCH.with_borrow_mut(|s| unsafe { nn_tiles(a, b, c, s) })
}

/// Whether the score tile runs on AMX for this A and B.
fn nt_fits(a: &MatRef, b: &RawMat) -> bool {
    b.elem == Elem::Bf16 && a.rows >= NT_MIN_ROWS && a.cols > 0 && a.cols.is_multiple_of(32) && b.rows >= 16
}

/// [`super::Kernels::pack_nt`]: A `[M, K]` as the B-side tiles of the score tile,
/// `[16-row block][32-dim chunk][hi, lo]` tiles of 1 KiB (16 rows of dim pairs × 16 A rows);
/// the shape only when B is not bf16 or A's shape does not fit the tiles.
pub fn pack_nt(a: MatRef, b_elem: Elem, pack: &mut NtPack) {
    pack_shape_only(a, b_elem, pack);
    pack.tiled = b_elem == Elem::Bf16 && a.rows >= NT_MIN_ROWS && a.cols > 0 && a.cols.is_multiple_of(32);
    if pack.tiled {
        // SAFETY: the table holding this function is handed out only after `available()`.
        unsafe { pack_tiles(&a, pack) }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn pack_tiles(a: &MatRef, pack: &mut NtPack) {
    let (m, k) = (a.rows, a.cols);
    let (blocks, chunks) = (m.div_ceil(16), k / 32);
    let lines = blocks * chunks * 2 * 16;
    if pack.lines.len() < lines {
        pack.lines.resize(lines, PackLine([0; 64]));
    }
    let t = pack.lines.as_mut_ptr() as *mut u8;
    // Dim pair i of A row n goes to byte i·64 + n·4 of a tile. Tile columns past A's rows
    // are left as they are: they only reach result columns that are never read.
    let idx = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
    for r in 0..m {
        let (rb, n) = (r / 16, r % 16);
        let row = a.data.as_ptr().add(r * a.stride);
        for ch in 0..chunks {
            let (h0, l0) = split16(_mm512_loadu_ps(row.add(ch * 32)));
            let (h1, l1) = split16(_mm512_loadu_ps(row.add(ch * 32 + 16)));
            let hi = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h0), h1);
            let lo = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(l0), l1);
            let base = t.add((rb * chunks + ch) * 2048 + n * 4);
            _mm512_i32scatter_epi32::<4>(base as *mut i32, idx, hi);
            _mm512_i32scatter_epi32::<4>(base.add(1024) as *mut i32, idx, lo);
        }
    }
}

/// C[M, N] = α · A[M, K] · B[N, K]ᵀ, B bf16 rows `ldb` bytes apart, K % 32 == 0, N ≥ 16, A's
/// tiles in `pack`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn nt_tiles(alpha: f32, a: MatRef, pack: &NtPack, b: RawMat, c: MatMut, s: &mut Scratch) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    let (ldb, ldc) = (b.stride_bytes, c.stride);
    let chunks = k / 32;
    let row_bytes = k * 2;
    let qt = pack.lines.as_ptr() as *const u8;
    let out = s.out.get(4 * 1024);
    let pad = s.pad.get(16 * row_bytes);
    let ahead_rows = b.ahead.len().checked_div(ldb).unwrap_or(0);
    ensure_config();
    let pb = b.data.as_ptr();
    let pc = c.data.as_mut_ptr();
    let mut j = 0;
    while j < n {
        // The rows of the next group (past the end: the rows that follow B), prefetched a
        // few per chunk while this group computes.
        let next_row = |r: usize| -> *const u8 {
            let r = j + 64 + r;
            if r < n {
                pb.add(r * ldb)
            } else if r - n < ahead_rows {
                b.ahead.as_ptr().add((r - n) * ldb)
            } else {
                std::ptr::null()
            }
        };
        let per_chunk = 64usize.div_ceil(chunks);
        let full = (n - j) / 16;
        let (src, ld, tiles, valid) = if full >= 4 {
            (pb.add(j * ldb), ldb, 4, 64)
        } else if full >= 1 {
            (pb.add(j * ldb), ldb, 1, 16)
        } else {
            // The last < 16 keys: a zero-padded copy (tile loads read 16 whole rows).
            let rem = n - j;
            for r in 0..16 {
                let d = pad.add(r * row_bytes);
                if r < rem {
                    std::ptr::copy_nonoverlapping(pb.add((j + r) * ldb), d, row_bytes);
                } else {
                    std::ptr::write_bytes(d, 0, row_bytes);
                }
            }
            (pad as *const u8, row_bytes, 1, rem)
        };
        for rb in 0..m.div_ceil(16) {
            let q = qt.add(rb * chunks * 2 * 1024);
            if tiles == 4 {
                tzero::<0>();
                tzero::<1>();
                tzero::<2>();
                tzero::<3>();
                for ch in 0..chunks {
                    if rb == 0 {
                        for r in ch * per_chunk..((ch + 1) * per_chunk).min(64) {
                            let p = next_row(r);
                            if !p.is_null() {
                                prefetch(p, row_bytes);
                            }
                        }
                    }
                    let (qh, kp) = (q.add(ch * 2048), src.add(ch * 64));
                    tload::<6>(qh, 64);
                    tload::<7>(qh.add(1024), 64);
                    tload::<4>(kp, ld);
                    tload::<5>(kp.add(16 * ld), ld);
                    tdp::<0, 4, 6>();
                    tdp::<1, 5, 6>();
                    tdp::<0, 4, 7>();
                    tdp::<1, 5, 7>();
                    tload::<4>(kp.add(32 * ld), ld);
                    tload::<5>(kp.add(48 * ld), ld);
                    tdp::<2, 4, 6>();
                    tdp::<3, 5, 6>();
                    tdp::<2, 4, 7>();
                    tdp::<3, 5, 7>();
                }
                tstore::<0>(out, 64);
                tstore::<1>(out.add(1024), 64);
                tstore::<2>(out.add(2048), 64);
                tstore::<3>(out.add(3072), 64);
            } else {
                tzero::<0>();
                for ch in 0..chunks {
                    let qh = q.add(ch * 2048);
                    tload::<6>(qh, 64);
                    tload::<7>(qh.add(1024), 64);
                    tload::<4>(src.add(ch * 64), ld);
                    tdp::<0, 4, 6>();
                    tdp::<0, 4, 7>();
                }
                tstore::<0>(out, 64);
            }
            // out[key][row] → C[row][j + key], scaled.
            let o = out as *const f32;
            for r in 0..16.min(m - rb * 16) {
                let crow = pc.add((rb * 16 + r) * ldc + j);
                for t in 0..valid {
                    *crow.add(t) = alpha * *o.add(t * 16 + r);
                }
            }
        }
        j += valid;
    }
}

/// C[M, N] += A[M, K] · B[K, N], B bf16 rows `ldb` bytes apart, N % 16 == 0, K ≥ 16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn nn_tiles(a: MatRef, b: RawMat, c: MatMut, s: &mut Scratch) {
    let (m, n, kk) = (c.rows, c.cols, a.cols);
    let (ldb, lda, ldc) = (b.stride_bytes, a.stride, c.stride);
    let (kc, nt) = (kk.div_ceil(32), n / 16);
    let pb = b.data.as_ptr();
    // B re-laid as [key chunk][dim tile] tiles of 16 (key pair) rows × 16 dims × 2.
    let vt = s.values.get(kc * nt * 1024);
    let zero = _mm256_setzero_si256();
    for ch in 0..kc {
        for i in 0..16 {
            let (r0, r1) = (ch * 32 + 2 * i, ch * 32 + 2 * i + 1);
            for t in 0..nt {
                let x0 = if r0 < kk { _mm256_loadu_si256(pb.add(r0 * ldb + t * 32) as *const __m256i) } else { zero };
                let x1 = if r1 < kk { _mm256_loadu_si256(pb.add(r1 * ldb + t * 32) as *const __m256i) } else { zero };
                let v = _mm512_or_si512(_mm512_cvtepu16_epi32(x0), _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(x1)));
                _mm512_store_si512(vt.add(((ch * nt + t) * 16 + i) * 64) as *mut __m512i, v);
            }
        }
    }
    let pt = s.probs.get(kc * 2 * 1024);
    let acc = s.acc.get(16 * n * 4) as *mut f32;
    let pa = a.data.as_ptr();
    let pc = c.data.as_mut_ptr();
    ensure_config();
    for rb in 0..m.div_ceil(16) {
        let mb = 16.min(m - rb * 16);
        // A's rows of this block split into hi/lo tiles, zero past K and past the block's rows.
        for ch in 0..kc {
            for r in 0..16 {
                let (dh, dl) = (pt.add(ch * 2048 + r * 64), pt.add(ch * 2048 + 1024 + r * 64));
                for half in 0..2 {
                    let k0 = ch * 32 + half * 16;
                    let x = if r < mb && k0 < kk {
                        let mask: __mmask16 = if kk - k0 >= 16 { 0xFFFF } else { (1u16 << (kk - k0)) - 1 };
                        _mm512_maskz_loadu_ps(mask, pa.add((rb * 16 + r) * lda + k0))
                    } else {
                        _mm512_setzero_ps()
                    };
                    let (h, l) = split16(x);
                    _mm256_storeu_si256(dh.add(half * 32) as *mut __m256i, h);
                    _mm256_storeu_si256(dl.add(half * 32) as *mut __m256i, l);
                }
            }
        }
        // The block's C rows, zero-padded to 16.
        for r in 0..16 {
            let d = acc.add(r * n);
            if r < mb {
                std::ptr::copy_nonoverlapping(pc.add((rb * 16 + r) * ldc), d, n);
            } else {
                std::ptr::write_bytes(d, 0, n);
            }
        }
        let ab = acc as *mut u8;
        let lacc = n * 4;
        let mut t = 0;
        while t < nt {
            if nt - t >= 4 {
                let c0 = ab.add(t * 64);
                tload::<0>(c0, lacc);
                tload::<1>(c0.add(64), lacc);
                tload::<2>(c0.add(128), lacc);
                tload::<3>(c0.add(192), lacc);
                for ch in 0..kc {
                    let p = pt.add(ch * 2048);
                    tload::<4>(p, 64);
                    tload::<5>(p.add(1024), 64);
                    let v = vt.add((ch * nt + t) * 1024);
                    tload::<6>(v, 64);
                    tload::<7>(v.add(1024), 64);
                    tdp::<0, 4, 6>();
                    tdp::<1, 4, 7>();
                    tdp::<0, 5, 6>();
                    tdp::<1, 5, 7>();
                    tload::<6>(v.add(2048), 64);
                    tload::<7>(v.add(3072), 64);
                    tdp::<2, 4, 6>();
                    tdp::<3, 4, 7>();
                    tdp::<2, 5, 6>();
                    tdp::<3, 5, 7>();
                }
                tstore::<0>(c0, lacc);
                tstore::<1>(c0.add(64), lacc);
                tstore::<2>(c0.add(128), lacc);
                tstore::<3>(c0.add(192), lacc);
                t += 4;
            } else {
                let c0 = ab.add(t * 64);
                tload::<0>(c0, lacc);
                for ch in 0..kc {
                    let p = pt.add(ch * 2048);
                    tload::<4>(p, 64);
                    tload::<5>(p.add(1024), 64);
                    tload::<6>(vt.add((ch * nt + t) * 1024), 64);
                    tdp::<0, 4, 6>();
                    tdp::<0, 5, 6>();
                }
                tstore::<0>(c0, lacc);
                t += 1;
            }
        }
        for r in 0..mb {
            std::ptr::copy_nonoverlapping(acc.add(r * n), pc.add((rb * 16 + r) * ldc), n);
        }
    }
}
