//! Random operation sequences against a plain model of what every sequence holds:
//! create / prefix-hit create / append / append tokens / write / rewrite / fork / truncate /
//! free, plus operations on freed ids. After every step: the pool's own invariants, refcounts
//! equal to table occurrences (never negative, no block both free and used), every written
//! row reads back exactly (so a copy-on-write never changed another sharer), every reserved
//! but unwritten row reads NaN (poison), and failed operations changed nothing.

use latent_attention::testing::Rng;
use latent_attention::{KvDtype, RowFormat};
use latent_kv::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// How often each interesting path ran (the test fails if one never did).
static PREFIX_HITS: AtomicUsize = AtomicUsize::new(0);
static COW_WRITES: AtomicUsize = AtomicUsize::new(0);
static COW_APPENDS: AtomicUsize = AtomicUsize::new(0);
static OUT_OF_BLOCKS: AtomicUsize = AtomicUsize::new(0);
static SEQ_FULL: AtomicUsize = AtomicUsize::new(0);
static EVICTIONS: AtomicUsize = AtomicUsize::new(0);
static DEAD_OPS: AtomicUsize = AtomicUsize::new(0);

const LAYERS: usize = 2;
const HKV: usize = 2;
const D: usize = 3;
const ROW: usize = HKV * D;
/// Base prompts sequences follow, so equal prefixes (and prefix hits) are common.
const BASES: usize = 3;
const BASE_LEN: usize = 48;

fn base_token(base: usize, pos: usize) -> u32 {
    if pos < BASE_LEN {
        (Rng((base * 1000 + pos) as u64).next_u64() % 5) as u32
    } else {
        7 + (pos % 3) as u32
    }
}

/// The K/V a model would compute for `layer` at the last position of `prefix`: a function
/// of the whole prefix, so equal prefixes give equal rows.
fn tracked_rows(layer: usize, prefix: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut h = 0x1234_5678u64 ^ layer as u64;
    for &t in prefix {
        h = Rng(h ^ t as u64).next_u64();
    }
    let mut r = Rng(h);
    (r.normals(ROW, 1.0), r.normals(ROW, 1.0))
}

/// One token's K and V rows, `[Hkv, D]` each.
type KvRows = (Vec<f32>, Vec<f32>);

#[derive(Clone, Debug)]
struct MSeq {
    id: SeqId,
    len: usize,
    limit: usize,
    tokens: Vec<u32>,
    /// The base prompt tokens are appended from.
    base: usize,
    rows: Vec<Vec<Option<KvRows>>>, // [layer][pos]: None until written
}

impl MSeq {
    fn truncate(&mut self, len: usize) {
        self.len = len;
        self.tokens.truncate(len);
        for r in &mut self.rows {
            r.truncate(len);
        }
    }
    fn grow(&mut self, n: usize) {
        self.len += n;
        for r in &mut self.rows {
            r.resize(self.len, None);
        }
    }
}

struct Model {
    live: Vec<MSeq>,
    dead: Vec<SeqId>,
    salt: u64,
}

/// Everything observable about the pool's bookkeeping.
#[derive(Debug, PartialEq)]
struct Snapshot {
    seqs: Vec<(SeqId, usize, Vec<u32>, Vec<u32>)>,
    refs: Vec<Option<u32>>,
    free: usize,
    cached: usize,
}

fn snapshot(pool: &BlockPool) -> Snapshot {
    Snapshot {
        seqs: pool
            .sequences()
            .into_iter()
            .map(|s| (s, pool.len(s).unwrap(), pool.block_table(s).unwrap().to_vec(), pool.tokens(s).unwrap().to_vec()))
            .collect(),
        refs: (0..pool.num_blocks() as u32).map(|b| pool.refcount(b)).collect(),
        free: pool.free_blocks(),
        cached: pool.cached_blocks(),
    }
}

fn check(pool: &BlockPool, m: &Model) -> Result<(), TestCaseError> {
    pool.check_invariants().map_err(TestCaseError::fail)?;
    let bs = pool.block_size();
    // Refcounts are exactly the table occurrences; free ⇔ unreferenced.
    let mut occ = vec![0u32; pool.num_blocks()];
    for s in &m.live {
        for &b in pool.block_table(s.id).unwrap() {
            occ[b as usize] += 1;
        }
    }
    for (b, &n) in occ.iter().enumerate() {
        prop_assert_eq!(pool.refcount(b as u32), Some(n), "block {}", b);
    }
    let used = occ.iter().filter(|&&n| n > 0).count();
    prop_assert_eq!(pool.used_blocks(), used);
    prop_assert_eq!(pool.free_blocks(), pool.num_blocks() - used);
    prop_assert_eq!(pool.bytes_used(), used * pool.block_bytes());
    prop_assert_eq!(pool.num_sequences(), m.live.len());
    for s in &m.live {
        prop_assert_eq!(pool.len(s.id).unwrap(), s.len);
        prop_assert_eq!(pool.tokens(s.id).unwrap(), &s.tokens[..]);
        prop_assert_eq!(pool.block_table(s.id).unwrap().len(), s.len.div_ceil(bs));
        for layer in 0..LAYERS {
            for pos in 0..s.len {
                let (k, v) = pool.read_kv(s.id, layer, pos).unwrap();
                match &s.rows[layer][pos] {
                    Some((wk, wv)) => {
                        prop_assert_eq!(&k, wk, "{} layer {} pos {} K", s.id, layer, pos);
                        prop_assert_eq!(&v, wv, "{} layer {} pos {} V", s.id, layer, pos);
                    }
                    None => prop_assert!(
                        k.iter().chain(&v).all(|x| x.is_nan()),
                        "{} layer {} pos {} unwritten but reads {:?}",
                        s.id,
                        layer,
                        pos,
                        k
                    ),
                }
            }
        }
    }
    for &d in &m.dead {
        prop_assert_eq!(pool.len(d), Err(KvError::UnknownSequence(d)));
    }
    Ok(())
}

/// Applies one operation to pool and model. `(kind, a, b, c)` pick the operation and its
/// arguments.
fn step(pool: &mut BlockPool, m: &mut Model, op: (u8, u16, u16, u16)) -> Result<(), TestCaseError> {
    let kind = match op.0 % 14 {
        12 | 13 => 1,
        k => k,
    };
    let (a, b, c) = (op.1 as usize, op.2 as usize, op.3 as usize);
    let bs = pool.block_size();
    let before = snapshot(pool);
    let pick = |m: &Model| (!m.live.is_empty()).then(|| a % m.live.len());
    let new_seq = |id, limit, base| MSeq { id, len: 0, limit, tokens: vec![], base, rows: vec![vec![]; LAYERS] };
    match kind {
        // Create, sometimes with a small token limit.
        0 => {
            let (id, limit) =
                if b % 4 == 0 { (pool.create_limited(c % 20), c % 20) } else { (pool.create(), usize::MAX) };
            m.live.push(new_seq(id, limit, a % BASES));
            return check(pool, m);
        }
        // Create from a prompt along a base (sometimes with one token changed).
        1 => {
            let base = a % BASES;
            let mut prompt: Vec<u32> = (0..b % (BASE_LEN + 8)).map(|p| base_token(base, p)).collect();
            if c % 3 == 0 && !prompt.is_empty() {
                let i = c % prompt.len();
                prompt[i] += 1;
            }
            let expect = pool.cached_prefix_len(&prompt);
            let (id, cached) = pool.create_with_prefix(&prompt);
            prop_assert_eq!(cached, expect);
            if cached > 0 {
                PREFIX_HITS.fetch_add(1, Relaxed);
            }
            prop_assert!(cached.is_multiple_of(bs) && (cached < prompt.len() || cached == 0));
            let mut s = new_seq(id, usize::MAX, base);
            s.grow(cached);
            s.tokens = prompt[..cached].to_vec();
            for layer in 0..LAYERS {
                for pos in 0..cached {
                    s.rows[layer][pos] = Some(tracked_rows(layer, &prompt[..=pos]));
                }
            }
            m.live.push(s);
            return check(pool, m);
        }
        // Append: plain (kind 2) or with token ids (3, 4).
        2..=4 => {
            let Some(i) = pick(m) else { return Ok(()) };
            let n = b % (2 * bs + 3);
            let s = &m.live[i];
            let tail_shared =
                !s.len.is_multiple_of(bs) && pool.refcount(*pool.block_table(s.id).unwrap().last().unwrap()) > Some(1);
            let needed = if n == 0 { 0 } else { (s.len + n).div_ceil(bs) - s.len.div_ceil(bs) + tail_shared as usize };
            let res = if kind == 2 {
                pool.append(s.id, n)
            } else {
                let toks: Vec<u32> = (s.len..s.len + n).map(|p| base_token(s.base, p)).collect();
                pool.append_tokens(s.id, &toks)
            };
            if s.len + n > s.limit {
                prop_assert_eq!(res, Err(KvError::SequenceFull { seq: s.id, limit: s.limit, requested: s.len + n }));
                SEQ_FULL.fetch_add(1, Relaxed);
            } else if needed > before.free {
                prop_assert_eq!(res, Err(KvError::OutOfBlocks { needed, free: before.free }));
                OUT_OF_BLOCKS.fetch_add(1, Relaxed);
            } else {
                prop_assert_eq!(res, Ok(s.len..s.len + n));
                if n > 0 && tail_shared {
                    COW_APPENDS.fetch_add(1, Relaxed);
                }
                if needed > before.free - before.cached.min(before.free) && before.cached > 0 {
                    EVICTIONS.fetch_add(1, Relaxed);
                }
                let s = &mut m.live[i];
                if kind != 2 && s.tokens.len() == s.len {
                    s.tokens.extend((s.len..s.len + n).map(|p| base_token(s.base, p)));
                }
                s.grow(n);
                return check(pool, m);
            }
        }
        // Write every layer of positions start..len (one range write per layer), or (kind 6)
        // rewrite one row.
        5 | 6 => {
            let Some(i) = pick(m) else { return Ok(()) };
            let s = m.live[i].clone();
            if s.len == 0 {
                return Ok(());
            }
            let (start, end) = if kind == 5 { (b % s.len, s.len) } else { (b % s.len, b % s.len + 1) };
            let layers: Vec<usize> = if kind == 5 { (0..LAYERS).collect() } else { vec![c % LAYERS] };
            for layer in layers {
                let mut k = Vec::new();
                let mut v = Vec::new();
                for pos in start..end {
                    let (rk, rv) = if pos < s.tokens.len() {
                        tracked_rows(layer, &s.tokens[..=pos])
                    } else {
                        m.salt += 1;
                        let mut r = Rng(m.salt);
                        (r.normals(ROW, 1.0), r.normals(ROW, 1.0))
                    };
                    k.extend(rk);
                    v.extend(rv);
                }
                let table = pool.block_table(s.id).unwrap().to_vec();
                let shared: Vec<usize> =
                    (start / bs..=(end - 1) / bs).filter(|&j| pool.refcount(table[j]) > Some(1)).collect();
                let free = pool.free_blocks();
                let snap = snapshot(pool);
                let res = if kind == 5 {
                    pool.write_kv_range(s.id, layer, start, &k, &v)
                } else {
                    pool.write_kv(s.id, layer, start, &k, &v)
                };
                if shared.len() > free {
                    prop_assert_eq!(res, Err(KvError::OutOfBlocks { needed: shared.len(), free }));
                    prop_assert_eq!(snapshot(pool), snap);
                    OUT_OF_BLOCKS.fetch_add(1, Relaxed);
                    break;
                }
                prop_assert_eq!(res, Ok(()));
                COW_WRITES.fetch_add(shared.len(), Relaxed);
                // A shared block was copied, never written in place.
                let after = pool.block_table(s.id).unwrap();
                for &j in &shared {
                    prop_assert_ne!(after[j], table[j], "shared block {} written in place", table[j]);
                    prop_assert!(pool.refcount(table[j]) >= Some(1));
                }
                for (t, pos) in (start..end).enumerate() {
                    m.live[i].rows[layer][pos] =
                        Some((k[t * ROW..(t + 1) * ROW].to_vec(), v[t * ROW..(t + 1) * ROW].to_vec()));
                }
                check(pool, m)?;
            }
            return check(pool, m);
        }
        7 => {
            let Some(i) = pick(m) else { return Ok(()) };
            let id = pool.fork(m.live[i].id).unwrap();
            let mut s = m.live[i].clone();
            s.id = id;
            m.live.push(s);
            return check(pool, m);
        }
        8 => {
            let Some(i) = pick(m) else { return Ok(()) };
            let len = b % (m.live[i].len + 1);
            pool.truncate(m.live[i].id, len).unwrap();
            m.live[i].truncate(len);
            return check(pool, m);
        }
        9 | 10 => {
            let Some(i) = pick(m) else { return Ok(()) };
            let s = m.live.swap_remove(i);
            pool.free(s.id).unwrap();
            m.dead.push(s.id);
            return check(pool, m);
        }
        // Any operation on a freed id.
        _ => {
            if m.dead.is_empty() {
                return Ok(());
            }
            let d = m.dead[a % m.dead.len()];
            DEAD_OPS.fetch_add(1, Relaxed);
            let e = Err(KvError::UnknownSequence(d));
            match b % 7 {
                0 => prop_assert_eq!(pool.free(d), e),
                1 => prop_assert_eq!(pool.append(d, 1).map(|_| ()), e),
                2 => prop_assert_eq!(pool.fork(d).map(|_| ()), e),
                3 => prop_assert_eq!(pool.truncate(d, 0), e),
                4 => prop_assert_eq!(pool.write_kv(d, 0, 0, &[0.0; ROW], &[0.0; ROW]), e),
                5 => prop_assert_eq!(pool.view(d, 0).map(|_| ()), e),
                _ => prop_assert_eq!(pool.append_tokens(d, &[1, 2]).map(|_| ()), e),
            }
        }
    }
    // Failed (or no-op) operations change nothing.
    prop_assert_eq!(snapshot(pool), before);
    check(pool, m)
}

fn op() -> impl Strategy<Value = (u8, u16, u16, u16)> {
    (any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>())
}

fn run_case(bs: usize, blocks: usize, ops: Vec<(u8, u16, u16, u16)>) -> Result<(), TestCaseError> {
    let layout = CacheLayout::gqa(LAYERS, HKV, D, RowFormat::plain(KvDtype::F32));
    let cfg = PoolConfig { poison_free_blocks: true, ..PoolConfig::blocks(bs, blocks) };
    let mut pool = BlockPool::new(layout, cfg).unwrap();
    let mut m = Model { live: vec![], dead: vec![], salt: 0 };
    for o in ops {
        step(&mut pool, &mut m, o)?;
    }
    for s in std::mem::take(&mut m.live) {
        pool.free(s.id).unwrap();
        m.dead.push(s.id);
    }
    check(&pool, &m)?;
    prop_assert_eq!(pool.free_blocks(), pool.num_blocks());
    prop_assert_eq!(pool.used_blocks(), 0);
    prop_assert_eq!(pool.bytes_used(), 0);
    for b in 0..pool.num_blocks() as u32 {
        prop_assert_eq!(pool.refcount(b), Some(0));
    }
    Ok(())
}

#[test]
fn random_operations_keep_the_pool_consistent() {
    let mut runner = TestRunner::new(Config { cases: 512, failure_persistence: None, ..Config::default() });
    let strategy = (1usize..6, 2usize..40, prop::collection::vec(op(), 1..100));
    if let Err(e) = runner.run(&strategy, |(bs, blocks, ops)| run_case(bs, blocks, ops)) {
        panic!("{e}");
    }
    let counts = [
        ("prefix hits", &PREFIX_HITS),
        ("copy-on-write writes", &COW_WRITES),
        ("copy-on-append tails", &COW_APPENDS),
        ("out of blocks", &OUT_OF_BLOCKS),
        ("sequence full", &SEQ_FULL),
        ("appends evicting cached blocks", &EVICTIONS),
        ("operations on freed ids", &DEAD_OPS),
    ];
    for (what, n) in counts {
        let n = n.load(Relaxed);
        println!("{what}: {n}");
        assert!(n > 0, "no {what} in 512 random runs");
    }
}
