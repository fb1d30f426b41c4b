//! Flash-style tiled attention on the CPU: online softmax over KV tiles (no T×T score
//! matrix), GQA-aware (each KV tile is loaded once for all the query heads that share it),
//! split-KV with a log-sum-exp merge so one long sequence can use every core.
//!
//! Dimension legend: T queries (all sequences concatenated), H query heads, Hkv KV heads,
//! G = H / Hkv heads per group, Dk key/query dim, Dv value dim, S a sequence's KV length.
//!
//! A work item is (sequence, KV head g, query tile, KV split). Its rows are the
//! `q_tile × G` (query, head) pairs of the tile and group, row r = ti·G + hi. The item keeps
//! a running max `m`, a running sum `l` and an unnormalised accumulator per row; the
//! score and value products are the two GEMM tiles of the kernel table.
//!
//! Conventions: a row that sees no key (empty context, fully masked) has output 0 and
//! LSE = −∞; with a per-head sink logit s, the sink acts as one extra key with logit s and a
//! zero value, so an empty context gives output 0 and LSE = s.

use crate::kv_view::{KvPlane, KvSeq, ValueSource};
use crate::AttnError;
use latent_kernels::simd::NtPack;
use latent_kernels::{Kernels, MatMut, MatRef, RawMat};
use rayon::prelude::*;

/// Head counts and head dims of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub dk: usize,
    pub dv: usize,
}

impl AttnShape {
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }
    pub fn validate(&self) -> Result<(), AttnError> {
        if self.kv_heads == 0 || self.heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(AttnError::Heads { heads: self.heads, kv_heads: self.kv_heads });
        }
        if self.dk == 0 {
            return Err(AttnError::Config("key dim 0".into()));
        }
        Ok(())
    }
}

/// Which keys a query at position p may see: key j is visible iff j < S, and (if causal)
/// j ≤ p, and (if a window W is set) j > p − W or j < sinks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaskSpec {
    pub causal: bool,
    /// Sliding window W ≥ 1: the W most recent positions up to p.
    pub window: Option<usize>,
    /// The first `sinks` positions stay visible outside the window.
    pub sinks: usize,
}

impl MaskSpec {
    pub const CAUSAL: MaskSpec = MaskSpec { causal: true, window: None, sinks: 0 };
    pub const NONE: MaskSpec = MaskSpec { causal: false, window: None, sinks: 0 };

    #[inline]
    pub fn visible(&self, p: usize, j: usize) -> bool {
        (!self.causal || j <= p) && self.window.is_none_or(|w| j + w > p || j < self.sinks)
    }

    /// Key ranges (at most two, ascending, disjoint) any query in positions `p0..=p1` can see.
    fn ranges(&self, p0: usize, p1: usize, s: usize) -> [std::ops::Range<usize>; 2] {
        let hi = if self.causal { s.min(p1 + 1) } else { s };
        match self.window {
            None => [0..hi, hi..hi],
            Some(w) => {
                let lo = (p0 + 1).saturating_sub(w).min(hi);
                let sk = self.sinks.min(hi);
                if lo <= sk {
                    [0..hi, hi..hi]
                } else {
                    [0..sk, lo..hi]
                }
            }
        }
    }

    /// Whether every key in `j0..j1` is visible to every query in `p0..=p1`.
    fn tile_fully_visible(&self, p0: usize, p1: usize, j0: usize, j1: usize) -> bool {
        let causal_ok = !self.causal || j1 <= p0 + 1;
        let window_ok = self.window.is_none_or(|w| j0 + w > p1 || j1 <= self.sinks);
        causal_ok && window_ok
    }
}

/// Everything but the tensors.
#[derive(Clone, Copy, Debug)]
pub struct AttnParams<'a> {
    pub shape: AttnShape,
    /// Multiplies Q·Kᵀ (usually 1/√Dk; MLA: 1/√(nope+rope)).
    pub scale: f32,
    pub mask: MaskSpec,
    /// Optional learned sink logit per query head, `[H]`.
    pub sink_logits: Option<&'a [f32]>,
}

/// One sequence of a variable-length batch: `q_len` queries at positions
/// `q_pos .. q_pos + q_len` (their rows follow the previous sequence's in the query tensor),
/// attending over `kv`.
#[derive(Clone, Copy, Debug)]
pub struct SeqSpec<'a> {
    pub q_len: usize,
    pub q_pos: usize,
    pub kv: KvSeq<'a>,
}

/// How many KV splits a (sequence, head group, query tile) gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvSplit {
    /// One pass over the whole context.
    Single,
    /// Exactly this many splits (capped by the number of visible keys).
    Fixed(usize),
    /// Enough splits that all threads have work, each at least `min_split` keys long.
    Auto,
}

/// Tiling and work partition.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Queries per tile.
    pub q_tile: usize,
    /// Keys per tile.
    pub kv_tile: usize,
    pub split: KvSplit,
    /// Smallest split under `Auto`.
    pub min_split: usize,
    /// Spread work items over the current rayon pool; `false` runs them on the calling
    /// thread (small decode steps, where a pool hand-off costs more than the work).
    pub parallel: bool,
    /// One work item covers every KV head of its key range when the cache's blocks are
    /// shorter than `kv_tile` and each thread still gets an item: the item's tiles read each
    /// block's heads one after the other, so a plane of a block is one sequential stream
    /// instead of one short stream per head (a paged cache's next block lies elsewhere in
    /// the pool). The tiles and their arithmetic are the per-head item's: with the same
    /// splits the result is bit-identical.
    pub group_heads: bool,
}

impl Plan {
    /// Prefill: query tiles of ≈128 rows per head group, no KV split.
    pub fn prefill(shape: &AttnShape) -> Plan {
        Plan {
            q_tile: (128 / shape.group()).max(1),
            kv_tile: 64,
            split: KvSplit::Single,
            min_split: 512,
            parallel: true,
            group_heads: false,
        }
    }
    /// Decode: one query tile, KV split across threads.
    pub fn decode(shape: &AttnShape) -> Plan {
        let kv_tile = if shape.group() >= 32 { 64 } else { 512 };
        Plan {
            q_tile: (128 / shape.group()).max(1),
            kv_tile,
            split: KvSplit::Auto,
            min_split: 256,
            parallel: true,
            group_heads: true,
        }
    }
}

/// Prefill entry point: `q` `[T, H, Dk]`, `out` `[T, H, Dv]`, `lse` `[T, H]`.
pub fn prefill(p: &AttnParams, q: &[f32], seqs: &[SeqSpec], out: &mut [f32], lse: &mut [f32]) -> Result<(), AttnError> {
    attend(p, &Plan::prefill(&p.shape), q, seqs, out, lse)
}

/// Decode entry point (split-KV): same tensors as [`prefill`].
pub fn decode(p: &AttnParams, q: &[f32], seqs: &[SeqSpec], out: &mut [f32], lse: &mut [f32]) -> Result<(), AttnError> {
    attend(p, &Plan::decode(&p.shape), q, seqs, out, lse)
}

/// One sequence `seq` of queries `q` `[T, H, Dk]`: returns the outputs `[T, H, Dv]` (the
/// LSE is dropped).
pub fn attend_one(p: &AttnParams, plan: &Plan, q: &[f32], seq: SeqSpec) -> Result<Vec<f32>, AttnError> {
    let mut out = vec![0f32; seq.q_len * p.shape.heads * p.shape.dv];
    let mut lse = vec![0f32; seq.q_len * p.shape.heads];
    attend(p, plan, q, &[seq], &mut out, &mut lse)?;
    Ok(out)
}

struct Item {
    seq: usize,
    q_row0: usize, // row of the sequence's first query in q
    g: usize,      // first KV head
    gn: usize,     // KV heads g..g+gn
    q0: usize,
    qn: usize,
    split: usize,
    nsplit: usize,
}

struct Partial {
    acc: Vec<f32>, // [gn, rows, Dv], normalised
    lse: Vec<f32>, // [gn, rows]
}

/// Who runs the work items of one call.
#[derive(Clone, Copy)]
pub enum Workers<'a> {
    /// The calling thread alone.
    Caller,
    /// The current rayon pool.
    Rayon,
    /// A spinning team (decode steps: no sleeping pool to wake per call).
    Team(&'a latent_kernels::team::Team),
}

/// The general entry point with an explicit plan. Runs on the current rayon pool when
/// `plan.parallel`, else on the calling thread.
pub fn attend(
    p: &AttnParams,
    plan: &Plan,
    q: &[f32],
    seqs: &[SeqSpec],
    out: &mut [f32],
    lse: &mut [f32],
) -> Result<(), AttnError> {
    let workers = if plan.parallel { Workers::Rayon } else { Workers::Caller };
    attend_with(p, plan, workers, q, seqs, out, lse)
}

/// [`attend`] on explicit workers (`plan.parallel` is ignored). The result does not depend
/// on the workers: the items and their merge order are fixed by the plan and the thread
/// count only.
pub fn attend_with(
    p: &AttnParams,
    plan: &Plan,
    workers: Workers<'_>,
    q: &[f32],
    seqs: &[SeqSpec],
    out: &mut [f32],
    lse: &mut [f32],
) -> Result<(), AttnError> {
    let sh = p.shape;
    sh.validate()?;
    if let Some(w) = p.mask.window {
        if w == 0 {
            return Err(AttnError::Mask("window must be ≥ 1".into()));
        }
    }
    if plan.q_tile == 0 || plan.kv_tile == 0 {
        return Err(AttnError::Config("tile sizes must be ≥ 1".into()));
    }
    let t: usize = seqs.iter().map(|s| s.q_len).sum();
    let chk = |what, expected: usize, got: usize| {
        if expected == got {
            Ok(())
        } else {
            Err(AttnError::Len { what, expected, got })
        }
    };
    chk("q [T, H, Dk]", t * sh.heads * sh.dk, q.len())?;
    chk("out [T, H, Dv]", t * sh.heads * sh.dv, out.len())?;
    chk("lse [T, H]", t * sh.heads, lse.len())?;
    if let Some(s) = p.sink_logits {
        chk("sink logits [H]", sh.heads, s.len())?;
    }
    for (i, s) in seqs.iter().enumerate() {
        let e = |msg: String| AttnError::Seq { seq: i, msg };
        if s.kv.kv_heads != sh.kv_heads || s.kv.dk() != sh.dk || s.kv.dv() != sh.dv {
            return Err(e(format!(
                "cache has {} heads × (dk {}, dv {}), call expects {} × ({}, {})",
                s.kv.kv_heads,
                s.kv.dk(),
                s.kv.dv(),
                sh.kv_heads,
                sh.dk,
                sh.dv
            )));
        }
        s.kv.validate(i)?;
        if s.q_len > 0 {
            for r in p.mask.ranges(s.q_pos, s.q_pos + s.q_len - 1, s.kv.len) {
                if s.kv.touches_evicted(r.clone()) {
                    return Err(e(format!("keys {r:?} include rows released from the cache")));
                }
            }
        }
    }

    // Work items.
    let g = sh.group();
    let threads = match workers {
        Workers::Caller => 1,
        Workers::Rayon => rayon::current_num_threads().max(1),
        Workers::Team(team) => team.threads(),
    };
    let nsplit_of = |visible: usize, heads: usize| match plan.split {
        KvSplit::Single => 1,
        KvSplit::Fixed(n) => n.max(1).min(visible.max(1)),
        KvSplit::Auto => {
            let want = (2 * threads).div_ceil(heads * seqs.len().max(1));
            want.min(visible / plan.min_split.max(1)).max(1)
        }
    };
    let mut items = Vec::new();
    let mut row = 0;
    for (si, s) in seqs.iter().enumerate() {
        let mut q0 = 0;
        while q0 < s.q_len {
            let qn = plan.q_tile.min(s.q_len - q0);
            let (p0, p1) = (s.q_pos + q0, s.q_pos + q0 + qn - 1);
            let visible: usize = p.mask.ranges(p0, p1, s.kv.len).iter().map(|r| r.len()).sum();
            // All heads in one item per split, when the blocks are short and there are as
            // many items as threads (else one item per head keeps every thread busy).
            let all_heads = nsplit_of(visible, 1);
            let grouped = plan.group_heads
                && sh.kv_heads > 1
                && s.kv.block_size < plan.kv_tile
                && all_heads * seqs.len() >= threads;
            let (gn, nsplit) = if grouped { (sh.kv_heads, all_heads) } else { (1, nsplit_of(visible, sh.kv_heads)) };
            for gi in (0..sh.kv_heads).step_by(gn) {
                for split in 0..nsplit {
                    items.push(Item { seq: si, q_row0: row, g: gi, gn, q0, qn, split, nsplit });
                }
            }
            q0 += qn;
        }
        row += s.q_len;
    }

    let k = Kernels::best();
    let run = |it: &Item| run_item(k, p, plan, q, &seqs[it.seq], it);
    let parts: Vec<Partial> = match workers {
        _ if threads == 1 || items.len() == 1 => items.iter().map(run).collect(),
        Workers::Team(team) => {
            let slots: Vec<std::sync::OnceLock<Partial>> = items.iter().map(|_| std::sync::OnceLock::new()).collect();
            team.run(items.len(), &|i| {
                let _ = slots[i].set(run(&items[i]));
            });
            // `Team::run` returns only after every index ran (a panicking task is re-raised).
            slots.into_iter().map(|s| s.into_inner().expect("the team runs every item")).collect()
        }
        _ => items.par_iter().map(run).collect(),
    };

    // Merge splits (log-sum-exp weighted) and scatter rows into out / lse.
    let mut i = 0;
    while i < items.len() {
        let it = &items[i];
        let n = it.nsplit;
        let rows = it.qn * g;
        for r in 0..it.gn * rows {
            let (hg, rr) = (r / rows, r % rows);
            let (ti, hi) = (rr / g, rr % g);
            let qrow = it.q_row0 + it.q0 + ti;
            let h = (it.g + hg) * g + hi;
            let o = &mut out[(qrow * sh.heads + h) * sh.dv..][..sh.dv];
            let m = parts[i..i + n].iter().map(|pt| pt.lse[r]).fold(f32::NEG_INFINITY, f32::max);
            if m == f32::NEG_INFINITY {
                o.fill(0.0);
                lse[qrow * sh.heads + h] = f32::NEG_INFINITY;
                continue;
            }
            if n == 1 {
                o.copy_from_slice(&parts[i].acc[r * sh.dv..(r + 1) * sh.dv]);
                lse[qrow * sh.heads + h] = parts[i].lse[r];
                continue;
            }
            o.fill(0.0);
            let mut wsum = 0.0f32;
            for pt in &parts[i..i + n] {
                let w = (pt.lse[r] - m).exp();
                if w > 0.0 {
                    (k.axpy)(w, &pt.acc[r * sh.dv..(r + 1) * sh.dv], o);
                    wsum += w;
                }
            }
            (k.scale)(o, 1.0 / wsum);
            lse[qrow * sh.heads + h] = m + wsum.ln();
        }
        i += n;
    }
    Ok(())
}

/// The `split`-th of `nsplit` equal shares of the keys in `ranges`, as sub-ranges.
fn split_ranges(ranges: &[std::ops::Range<usize>; 2], split: usize, nsplit: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    let (a, b) = (total * split / nsplit, total * (split + 1) / nsplit);
    let mut outr = Vec::new();
    let mut off = 0;
    for r in ranges {
        let (s, e) = (off, off + r.len());
        let (lo, hi) = (a.max(s), b.min(e));
        if lo < hi {
            outr.push(r.start + (lo - s)..r.start + (hi - s));
        }
        off = e;
    }
    outr
}

/// The first rows of `head` in `plane` from `pos` on (up to the end of its block and `end`),
/// for the tiles to prefetch while they finish the rows read before them: the next block of a
/// paged cache lies elsewhere in the pool, where no hardware prefetcher follows.
fn ahead_rows<'a>(
    s: &SeqSpec<'a>,
    plane: KvPlane<'a>,
    head: usize,
    pos: usize,
    end: usize,
    scales: &mut Vec<f32>,
) -> &'a [u8] {
    if pos >= end {
        return &[];
    }
    let m = 32.min(end - pos).min(s.kv.block_size - pos % s.kv.block_size);
    plane.raw_rows(&s.kv, head, pos, m, scales).map_or(&[], |r| r.data)
}

/// The first `n` elements of `buf`, grown (zero-filled) to hold them.
fn grown(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

/// The online-softmax state of one KV head's rows in a work item.
struct HeadState {
    qm: Vec<f32>,          // [rows, Dk]
    qpack: Option<NtPack>, // qm laid out for the score tiles, at the first raw read
    m: Vec<f32>,           // [rows] running max
    l: Vec<f32>,           // [rows] running sum
    acc: Vec<f32>,         // [rows, Dv] unnormalised
    sc: Vec<f32>,          // [rows, tile] scores, then probabilities
}

/// Scratch shared by the heads of a work item.
struct Scratch {
    kbuf: Vec<f32>,
    vbuf: Vec<f32>,
    kscales: Vec<f32>,
    vscales: Vec<f32>,
    ascales: Vec<f32>,
}

/// One tile: keys `j0..j0+n` (block segments `segs`) of a split ending at `end`, for queries
/// at positions `p0..=p1`, over the item's heads `g0..g0+gn`.
struct Tile<'t> {
    j0: usize,
    n: usize,
    end: usize,
    p0: usize,
    p1: usize,
    g0: usize,
    gn: usize,
    raw_ok: bool,
    segs: &'t [(usize, usize)],
}

fn run_item(k: &Kernels, p: &AttnParams, plan: &Plan, q: &[f32], s: &SeqSpec, it: &Item) -> Partial {
    let sh = p.shape;
    let g = sh.group();
    let (dk, dv) = (sh.dk, sh.dv);
    let rows = it.qn * g;
    let kt = plan.kv_tile;
    let (p0, p1) = (s.q_pos + it.q0, s.q_pos + it.q0 + it.qn - 1);
    let ranges = p.mask.ranges(p0, p1, s.kv.len);
    // Tiles hold at most `kt` keys of one range: the scratch is sized for the longest tile
    // this item can have, not the plan's (a short decode would clear the plan's size).
    let span = ranges.iter().map(|r| r.len()).max().unwrap_or(0).clamp(1, kt);

    let mut heads: Vec<HeadState> = (it.g..it.g + it.gn)
        .map(|hg| {
            // Q rows of this tile and head: [rows, Dk].
            let mut qm = vec![0f32; rows * dk];
            for ti in 0..it.qn {
                let src = &q[((it.q_row0 + it.q0 + ti) * sh.heads + hg * g) * dk..][..g * dk];
                qm[ti * g * dk..(ti + 1) * g * dk].copy_from_slice(src);
            }
            let mut m = vec![f32::NEG_INFINITY; rows];
            let mut l = vec![0f32; rows];
            if let (Some(sl), 0) = (p.sink_logits, it.split) {
                for r in 0..rows {
                    m[r] = sl[hg * g + r % g];
                    l[r] = 1.0;
                }
            }
            HeadState { qm, qpack: None, m, l, acc: vec![0f32; rows * dv], sc: vec![0f32; rows * span] }
        })
        .collect();
    // Decode buffers for rows the tiles cannot read in place are grown on first use only (an
    // f32/f16/bf16 cache never needs them, and zeroing them per item and layer cost a
    // decode step at 8k context ~3 % in memset).
    let mut scr = Scratch {
        kbuf: Vec::new(),
        vbuf: Vec::new(),
        kscales: Vec::with_capacity(span),
        vscales: Vec::with_capacity(span),
        ascales: Vec::new(),
    };

    // Plain-typed rows (and 8-bit rows with one scale group) are read in place by the GEMM
    // tiles; a tile spans several blocks and is processed block segment by block segment, so
    // the softmax bookkeeping is paid per tile, not per block.
    // Probe the format on the first visible row (rows outside the ranges may be released).
    let first = ranges.iter().find(|r| !r.is_empty()).map(|r| r.start);
    let raw_ok = first.is_some_and(|j| s.kv.k.raw_rows(&s.kv, it.g, j, 1, &mut scr.kscales).is_some())
        && match s.kv.v {
            ValueSource::Plane(vp) => first.is_some_and(|j| vp.raw_rows(&s.kv, it.g, j, 1, &mut scr.vscales).is_some()),
            ValueSource::KeyPrefix { .. } => true,
        };
    let bs = s.kv.block_size;
    let mut segs: Vec<(usize, usize)> = Vec::new();
    for r in split_ranges(&ranges, it.split, it.nsplit) {
        let mut j0 = r.start;
        while j0 < r.end {
            let n = kt.min(r.end - j0);
            segs.clear();
            let mut a = j0;
            while a < j0 + n {
                let len = (bs - a % bs).min(j0 + n - a);
                segs.push((a, len));
                a += len;
            }
            let t = Tile { j0, n, end: r.end, p0, p1, g0: it.g, gn: it.gn, raw_ok, segs: &segs };
            tile_scores(k, p, s, &mut heads, &mut scr, &t);
            for st in heads.iter_mut() {
                tile_softmax(k, p, st, &t);
            }
            tile_values(k, p, s, &mut heads, &mut scr, &t);
            j0 += n;
        }
    }

    let mut acc = Vec::with_capacity(it.gn * rows * dv);
    let mut lse = vec![f32::NEG_INFINITY; it.gn * rows];
    for (hi, st) in heads.iter_mut().enumerate() {
        for row in 0..rows {
            let a = &mut st.acc[row * dv..(row + 1) * dv];
            if st.l[row] > 0.0 {
                (k.scale)(a, 1.0 / st.l[row]);
                lse[hi * rows + row] = st.m[row] + st.l[row].ln();
            } else {
                a.fill(0.0);
            }
        }
        acc.extend_from_slice(&st.acc);
    }
    Partial { acc, lse }
}

/// The rows of `plane` read after segment `(a, len)` of the item's head `hi`, to prefetch
/// at its end: segments are read block by block, a block's heads one after the other. One
/// head continues into the next block (when the segment ends on a block boundary; else the
/// next tile continues in place); with several heads, head `hi` continues into head `hi + 1`
/// of the same segment and the last head into the first head of the next segment.
fn next_rows<'a>(
    s: &SeqSpec<'a>,
    plane: KvPlane<'a>,
    t: &Tile,
    hi: usize,
    a: usize,
    len: usize,
    scales: &mut Vec<f32>,
) -> &'a [u8] {
    let bs = s.kv.block_size;
    let (head, pos) = if hi + 1 < t.gn {
        (t.g0 + hi + 1, a)
    } else if t.gn > 1 || (a + len).is_multiple_of(bs) {
        (t.g0, a + len)
    } else {
        return &[];
    };
    ahead_rows(s, plane, head, pos, t.end, scales)
}

/// S = scale · Q · Kᵀ `[rows, n]` for every head of the tile, segment by segment.
fn tile_scores<'a>(k: &Kernels, p: &AttnParams, s: &SeqSpec<'a>, heads: &mut [HeadState], scr: &mut Scratch, t: &Tile) {
    let dk = p.shape.dk;
    let n = t.n;
    if !t.raw_ok {
        for (hi, st) in heads.iter_mut().enumerate() {
            let rows = st.m.len();
            s.kv.k.load_rows(k, &s.kv, t.g0 + hi, t.j0, n, grown(&mut scr.kbuf, n * dk));
            let scm = MatMut { data: &mut st.sc[..rows * n], rows, cols: n, stride: n };
            (k.gemm_nt)(p.scale, MatRef::dense(&st.qm, rows, dk), MatRef::dense(&scr.kbuf[..n * dk], n, dk), scm);
        }
        return;
    }
    for &(a, len) in t.segs {
        let c0 = a - t.j0;
        for (hi, st) in heads.iter_mut().enumerate() {
            let head = t.g0 + hi;
            let rows = st.m.len();
            let scm = MatMut { data: &mut st.sc[c0..], rows, cols: len, stride: n };
            if let Some(kr) = s.kv.k.raw_rows(&s.kv, head, a, len, &mut scr.kscales) {
                let kr = RawMat { ahead: next_rows(s, s.kv.k, t, hi, a, len, &mut scr.ascales), ..kr };
                let qm = MatRef::dense(&st.qm, rows, dk);
                let pack = st.qpack.get_or_insert_with(|| {
                    let mut pack = NtPack::default();
                    (k.pack_nt)(qm, kr.elem, &mut pack);
                    pack
                });
                (k.gemm_nt_raw_packed)(p.scale, qm, pack, kr, scm);
                if !scr.kscales.is_empty() {
                    for srow in st.sc[..rows * n].chunks_exact_mut(n) {
                        srow[c0..c0 + len].iter_mut().zip(&scr.kscales).for_each(|(v, s)| *v *= s);
                    }
                }
            } else {
                // A segment the raw path cannot read in place is decoded instead, never skipped.
                s.kv.k.load_rows(k, &s.kv, head, a, len, grown(&mut scr.kbuf, len * dk));
                (k.gemm_nt)(
                    p.scale,
                    MatRef::dense(&st.qm, rows, dk),
                    MatRef::dense(&scr.kbuf[..len * dk], len, dk),
                    scm,
                );
            }
        }
    }
}

/// Masks one head's scores and turns them into probabilities, rescaling its running state.
fn tile_softmax(k: &Kernels, p: &AttnParams, st: &mut HeadState, t: &Tile) {
    let g = p.shape.group();
    let dv = p.shape.dv;
    let n = t.n;
    let full = p.mask.tile_fully_visible(t.p0, t.p1, t.j0, t.j0 + n);
    for row in 0..st.m.len() {
        let srow = &mut st.sc[row * n..(row + 1) * n];
        if !full {
            let pos = t.p0 + row / g;
            for (c, v) in srow.iter_mut().enumerate() {
                if !p.mask.visible(pos, t.j0 + c) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        let mnew = st.m[row].max((k.max)(srow));
        if mnew == f32::NEG_INFINITY {
            srow.fill(0.0);
            continue;
        }
        let alpha = (st.m[row] - mnew).exp();
        let sum = (k.exp_sub_sum)(srow, mnew);
        st.l[row] = st.l[row] * alpha + sum;
        if alpha != 1.0 {
            (k.scale)(&mut st.acc[row * dv..(row + 1) * dv], alpha);
        }
        st.m[row] = mnew;
    }
}

/// acc += P · V for every head of the tile, segment by segment (8-bit value scales fold into
/// P's columns).
fn tile_values<'a>(k: &Kernels, p: &AttnParams, s: &SeqSpec<'a>, heads: &mut [HeadState], scr: &mut Scratch, t: &Tile) {
    let (dk, dv) = (p.shape.dk, p.shape.dv);
    let n = t.n;
    if !t.raw_ok {
        for (hi, st) in heads.iter_mut().enumerate() {
            let head = t.g0 + hi;
            let rows = st.m.len();
            let pm = MatRef::dense(&st.sc[..rows * n], rows, n);
            let accm = MatMut::dense(&mut st.acc, rows, dv);
            match s.kv.v {
                ValueSource::KeyPrefix { .. } => {
                    // The key pass left the (last head's) rows in `kbuf`.
                    if t.gn > 1 {
                        s.kv.k.load_rows(k, &s.kv, head, t.j0, n, grown(&mut scr.kbuf, n * dk));
                    }
                    (k.gemm_nn)(pm, MatRef { data: &scr.kbuf[..n * dk], rows: n, cols: dv, stride: dk }, accm)
                }
                ValueSource::Plane(vp) => {
                    vp.load_rows(k, &s.kv, head, t.j0, n, grown(&mut scr.vbuf, n * dv));
                    (k.gemm_nn)(pm, MatRef::dense(&scr.vbuf[..n * dv], n, dv), accm)
                }
            }
        }
        return;
    }
    for &(a, len) in t.segs {
        let c0 = a - t.j0;
        for (hi, st) in heads.iter_mut().enumerate() {
            let head = t.g0 + hi;
            let rows = st.m.len();
            let vr = match s.kv.v {
                // The key pass just read these rows.
                ValueSource::KeyPrefix { dim } => {
                    s.kv.k.raw_rows(&s.kv, head, a, len, &mut scr.vscales).map(|kr| RawMat { cols: dim, ..kr })
                }
                ValueSource::Plane(vp) => vp
                    .raw_rows(&s.kv, head, a, len, &mut scr.vscales)
                    .map(|vr| RawMat { ahead: next_rows(s, vp, t, hi, a, len, &mut scr.ascales), ..vr }),
            };
            if let Some(vr) = vr {
                if !scr.vscales.is_empty() {
                    for prow in st.sc[..rows * n].chunks_exact_mut(n) {
                        prow[c0..c0 + len].iter_mut().zip(&scr.vscales).for_each(|(v, s)| *v *= s);
                    }
                }
                let pm = MatRef { data: &st.sc[c0..], rows, cols: len, stride: n };
                (k.gemm_nn_raw)(pm, vr, MatMut::dense(&mut st.acc, rows, dv));
            } else {
                let pm = MatRef { data: &st.sc[c0..], rows, cols: len, stride: n };
                let accm = MatMut::dense(&mut st.acc, rows, dv);
                match s.kv.v {
                    ValueSource::KeyPrefix { .. } => {
                        s.kv.k.load_rows(k, &s.kv, head, a, len, grown(&mut scr.kbuf, len * dk));
                        let vm = MatRef { data: &scr.kbuf[..len * dk], rows: len, cols: dv, stride: dk };
                        (k.gemm_nn)(pm, vm, accm)
                    }
                    ValueSource::Plane(vp) => {
                        vp.load_rows(k, &s.kv, head, a, len, grown(&mut scr.vbuf, len * dv));
                        (k.gemm_nn)(pm, MatRef::dense(&scr.vbuf[..len * dv], len, dv), accm)
                    }
                }
            }
        }
    }
}
