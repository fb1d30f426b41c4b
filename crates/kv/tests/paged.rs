//! Paged == contiguous: the kernels give the same outputs through `BlockPool::view` as
//! through a one-block dense cache holding the same rows, for every mechanism, block sizes
//! {1, 16, 61, 64}, random lengths (0 included), scattered physical blocks and NaN in every
//! free block.

mod common;
use common::{assert_same, pool, scattered_sequences, tables_scattered};
use latent_attention::testing::Rng;
use latent_attention::*;
use latent_kv::*;

const BLOCK_SIZES: [usize; 4] = [1, 16, 61, 64];
const LAYERS: usize = 2;

/// Sequence lengths of one batch: empty, tiny, two random, one at the maximum.
fn lens(rng: &mut Rng, max: usize) -> Vec<usize> {
    vec![0, 1 + rng.below(3), 1 + rng.below(max), 1 + rng.below(max), max]
}

fn poisoned_pool(layout: CacheLayout, bs: usize, lens: &[usize]) -> BlockPool {
    let need: usize = lens.iter().map(|l| l.div_ceil(bs)).sum();
    let cfg = PoolConfig { poison_free_blocks: true, ..PoolConfig::blocks(bs, 2 * need + 8) };
    BlockPool::new(layout, cfg).unwrap()
}

/// Random chunk boundaries covering `0..len`.
fn chunks(rng: &mut Rng, len: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut s = 0;
    while s < len {
        let e = (s + 1 + rng.below(80)).min(len);
        v.push((s, e));
        s = e;
    }
    v
}

/// `decode` or `prefill`.
type Entry = fn(&AttnParams, &[f32], &[SeqSpec], &mut [f32], &mut [f32]) -> Result<(), AttnError>;

fn run(f: Entry, p: &AttnParams, q: &[f32], specs: &[SeqSpec]) -> (Vec<f32>, Vec<f32>) {
    let t: usize = specs.iter().map(|s| s.q_len).sum();
    let mut out = vec![f32::NAN; t * p.shape.heads * p.shape.dv];
    let mut lse = vec![f32::NAN; t * p.shape.heads];
    f(p, q, specs, &mut out, &mut lse).unwrap();
    (out, lse)
}

/// Decode (last position of each sequence) and a chunked causal prefill (random prefix
/// already cached), paged vs dense.
fn compare_kernels(
    rng: &mut Rng,
    what: &str,
    shape: AttnShape,
    scale: f32,
    lens: &[usize],
    paged: &[KvSeq],
    dense: &[KvSeq],
) {
    let p = AttnParams { shape, scale, mask: MaskSpec::CAUSAL, sink_logits: None };
    // Over a bf16 cache, tiles of 16+ keys may run on AMX (queries and probabilities as bf16
    // hi + lo, ≈ 2⁻¹⁷ relative per product) while a block size of 1 keeps every tile on
    // AVX-512: measured up to 3.1e-5 apart at |out| ≈ 0.65 (MQA, 64 dims) and 7.4e-5 at 0.34
    // (MLA, 576-dim keys, whose scores sum more products).
    let tol = if paged.iter().any(|s| s.k.fmt.dtype == KvDtype::Bf16) { 1e-4 } else { 1e-5 };
    // Decode: one query at the last position (position 0 for an empty sequence).
    let q = rng.normals(lens.len() * shape.heads * shape.dk, 1.0);
    fn spec<'a>(lens: &[usize], kv: &[KvSeq<'a>]) -> Vec<SeqSpec<'a>> {
        lens.iter().zip(kv).map(|(&l, &kv)| SeqSpec { q_len: 1, q_pos: l.saturating_sub(1), kv }).collect()
    }
    let (o1, l1) = run(decode, &p, &q, &spec(lens, paged));
    let (o2, l2) = run(decode, &p, &q, &spec(lens, dense));
    assert_same(tol, &format!("decode out {what}"), &o1, &o2);
    assert_same(tol, &format!("decode lse {what}"), &l1, &l2);
    // Prefill: queries for positions p0..len.
    let p0: Vec<usize> = lens.iter().map(|&l| if l > 0 && rng.below(2) == 0 { rng.below(l) } else { 0 }).collect();
    let t: usize = lens.iter().zip(&p0).map(|(l, p)| l - p).sum();
    let q = rng.normals(t * shape.heads * shape.dk, 1.0);
    fn chunk<'a>(lens: &[usize], p0: &[usize], kv: &[KvSeq<'a>]) -> Vec<SeqSpec<'a>> {
        lens.iter().zip(p0).zip(kv).map(|((&l, &p), &kv)| SeqSpec { q_len: l - p, q_pos: p, kv }).collect()
    }
    let (o1, l1) = run(prefill, &p, &q, &chunk(lens, &p0, paged));
    let (o2, l2) = run(prefill, &p, &q, &chunk(lens, &p0, dense));
    assert_same(tol, &format!("prefill out {what}"), &o1, &o2);
    assert_same(tol, &format!("prefill lse {what}"), &l1, &l2);
}

fn gqa_case(rng: &mut Rng, heads: usize, kv_heads: usize, d: usize, dtype: KvDtype, bs: usize) -> bool {
    let layout = CacheLayout::gqa(LAYERS, kv_heads, d, RowFormat::plain(dtype));
    let lens = lens(rng, 300);
    let mut pool = poisoned_pool(layout, bs, &lens);
    let seqs = scattered_sequences(&mut pool, rng, &lens);
    let row = kv_heads * d;
    // data[layer][seq] = (k [S, Hkv, D], v [S, Hkv, D])
    let mut data = Vec::new();
    for layer in 0..LAYERS {
        let mut per_seq = Vec::new();
        for (&s, &len) in seqs.iter().zip(&lens) {
            let k = rng.activations(len * row, d, 16, 4.0);
            let v = rng.normals(len * row, 1.0);
            for (a, b) in chunks(rng, len) {
                pool.write_kv_range(s, layer, a, &k[a * row..b * row], &v[a * row..b * row]).unwrap();
            }
            per_seq.push((k, v));
        }
        data.push(per_seq);
    }
    assert!(pool.free_blocks() > 0);
    pool.check_invariants().unwrap();
    let shape = AttnShape { heads, kv_heads, dk: d, dv: d };
    for (layer, per_seq) in data.iter().enumerate() {
        let dense: Vec<DenseKv> = per_seq.iter().map(|(k, v)| DenseKv::new(dtype, kv_heads, d, d, k, v)).collect();
        let dv: Vec<KvSeq> = dense.iter().map(|c| c.view()).collect();
        let pv: Vec<KvSeq> = seqs.iter().map(|&s| pool.view(s, layer).unwrap()).collect();
        let what = format!("H={heads} Hkv={kv_heads} D={d} {} bs={bs} layer={layer} lens={lens:?}", dtype.name());
        compare_kernels(rng, &what, shape, 1.0 / (d as f32).sqrt(), &lens, &pv, &dv);
    }
    tables_scattered(&pool, &seqs)
}

#[test]
fn gqa_paged_equals_contiguous() {
    let tp = pool(2);
    let mut rng = Rng(101);
    let mut scattered = 0;
    for bs in BLOCK_SIZES {
        for dtype in KvDtype::ALL {
            scattered += tp.install(|| gqa_case(&mut rng, 8, 2, 64, dtype, bs)) as usize;
        }
    }
    assert!(scattered >= 15, "block tables were not scattered ({scattered} of 20 cases)");
}

#[test]
fn mqa_paged_equals_contiguous() {
    let tp = pool(2);
    let mut rng = Rng(102);
    let mut scattered = 0;
    for bs in BLOCK_SIZES {
        for dtype in [KvDtype::F32, KvDtype::Bf16, KvDtype::Int8] {
            scattered += tp.install(|| gqa_case(&mut rng, 8, 1, 64, dtype, bs)) as usize;
        }
    }
    assert!(scattered >= 9);
}

#[test]
fn mla_latent_paged_equals_contiguous() {
    let tp = pool(2);
    let mut rng = Rng(103);
    let (r, p, heads) = (512usize, 64usize, 16usize);
    let dk = r + p;
    let mut scattered = 0;
    for bs in BLOCK_SIZES {
        for dtype in [KvDtype::Bf16, KvDtype::Fp8, KvDtype::F32] {
            let layout = CacheLayout::latent(LAYERS, r, p, dtype);
            let lens = lens(&mut rng, 160);
            let mut pool = poisoned_pool(layout, bs, &lens);
            let seqs = scattered_sequences(&mut pool, &mut rng, &lens);
            let mut data = Vec::new();
            for layer in 0..LAYERS {
                let mut per_seq = Vec::new();
                for (&s, &len) in seqs.iter().zip(&lens) {
                    let rows = rng.activations(len * dk, dk, 32, 6.0);
                    for (a, b) in chunks(&mut rng, len) {
                        pool.write_latent_range(s, layer, a, &rows[a * dk..b * dk]).unwrap();
                    }
                    per_seq.push(rows);
                }
                data.push(per_seq);
            }
            pool.check_invariants().unwrap();
            let shape = AttnShape { heads, kv_heads: 1, dk, dv: r };
            for (layer, per_seq) in data.iter().enumerate() {
                let fmt = RowFormat::latent(dtype, p);
                let dense: Vec<DenseLatent> = per_seq.iter().map(|rows| DenseLatent::new(fmt, dk, r, rows)).collect();
                let dv: Vec<KvSeq> = dense.iter().map(|c| c.view()).collect();
                let pv: Vec<KvSeq> = seqs.iter().map(|&s| pool.view(s, layer).unwrap()).collect();
                assert!(pv.iter().all(|v| matches!(v.v, ValueSource::KeyPrefix { dim: 512 })));
                let what = format!("MLA H={heads} {} bs={bs} layer={layer} lens={lens:?}", dtype.name());
                tp.install(|| compare_kernels(&mut rng, &what, shape, 1.0 / (192f32).sqrt(), &lens, &pv, &dv));
            }
            scattered += tables_scattered(&pool, &seqs) as usize;
        }
    }
    assert!(scattered >= 9);
}

/// The view's rows are exactly the rows written (not merely close after attention).
#[test]
fn views_read_back_what_was_written() {
    let mut rng = Rng(104);
    for bs in BLOCK_SIZES {
        let layout = CacheLayout::gqa(3, 2, 64, RowFormat::plain(KvDtype::Bf16));
        let lens = lens(&mut rng, 200);
        let mut pool = poisoned_pool(layout, bs, &lens);
        let seqs = scattered_sequences(&mut pool, &mut rng, &lens);
        for (&s, &len) in seqs.iter().zip(&lens) {
            for layer in 0..3 {
                let k = rng.normals(len * 128, 1.0);
                let v = rng.normals(len * 128, 1.0);
                pool.write_kv_range(s, layer, 0, &k, &v).unwrap();
                let want = round_trip_rows(layout.fmt, &k, 64);
                let view = pool.view(s, layer).unwrap();
                for h in 0..2 {
                    let got = view.read_keys(h, 0, len);
                    for pos in 0..len {
                        assert_eq!(&got[pos * 64..(pos + 1) * 64], &want[(pos * 2 + h) * 64..][..64]);
                    }
                }
                for pos in 0..len {
                    let (_, vr) = pool.read_kv(s, layer, pos).unwrap();
                    assert_eq!(vr, round_trip_rows(layout.fmt, &v[pos * 128..(pos + 1) * 128], 64));
                }
            }
        }
    }
}
