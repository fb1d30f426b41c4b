//! Layout sizes, view strides, accounting, fork / copy-on-write, and the prefix cache
//! (publication only when fully written, hit limits, LRU eviction, reuse after truncation).

use latent_attention::testing::Rng;
use latent_attention::{KvDtype, RowFormat, ValueSource};
use latent_kv::*;

#[test]
fn layout_sizes() {
    // FP8 MLA latent row: 512 fp8 + 4 f32 scales + 64 bf16 = 656 bytes.
    let mla = CacheLayout::latent(2, 512, 64, KvDtype::Fp8);
    assert_eq!(mla.row_bytes(), 656);
    assert_eq!(mla.bytes_per_token(), 2 * 656);
    assert_eq!(mla.block_bytes(64), 2 * 64 * 656);
    assert_eq!(CacheLayout::latent(1, 512, 64, KvDtype::Bf16).row_bytes(), 1152);
    assert_eq!(CacheLayout::latent(1, 512, 64, KvDtype::Int8).row_bytes(), 656);
    // GQA: K and V planes.
    let g = CacheLayout::gqa(3, 2, 64, RowFormat::plain(KvDtype::Bf16));
    assert_eq!((g.row_bytes(), g.bytes_per_token_layer(), g.bytes_per_token()), (128, 512, 1536));
    assert_eq!(g.block_bytes(61), 3 * 2 * 2 * 61 * 128);
    let i8 = CacheLayout::gqa(1, 1, 64, RowFormat::plain(KvDtype::Int8));
    assert_eq!(i8.row_bytes(), 68);
    // Planes are padded to 64 bytes: 1 head × 1 token × 12 bytes → 64.
    let tiny = CacheLayout::gqa(2, 1, 3, RowFormat::plain(KvDtype::F32));
    assert_eq!((tiny.plane_bytes(1), tiny.block_bytes(1), tiny.bytes_per_token()), (64, 256, 48));
    for bs in [1usize, 7, 16, 61, 64] {
        for l in [mla, g, i8, tiny] {
            assert_eq!(l.block_bytes(bs) % ALIGN, 0);
            assert!(l.block_bytes(bs) >= bs * l.bytes_per_token());
            assert_eq!(l.checked_block_bytes(bs), Some(l.block_bytes(bs)));
        }
    }
    // 60 layers of DeepSeek-V2 at FP8: 60 · 656 bytes per token.
    assert_eq!(CacheLayout::latent(60, 512, 64, KvDtype::Fp8).bytes_per_token(), 39_360);
}

#[test]
fn views_are_head_major_with_layer_offsets() {
    let layout = CacheLayout::gqa(3, 2, 64, RowFormat::plain(KvDtype::F16));
    let mut pool = BlockPool::with_blocks(layout, 16, 5).unwrap();
    assert_eq!(pool.block_bytes(), layout.block_bytes(16));
    let s = pool.create();
    pool.append(s, 20).unwrap();
    let rb = 128;
    for layer in 0..3 {
        let v = pool.view(s, layer).unwrap();
        assert_eq!((v.k.token_bytes, v.k.head_bytes, v.k.block_bytes), (rb, 16 * rb, pool.block_bytes()));
        assert_eq!(v.k.offset_bytes, layer * 2 * 2 * 16 * rb);
        let ValueSource::Plane(vp) = v.v else { panic!("GQA values have a plane") };
        assert_eq!(vp.offset_bytes, v.k.offset_bytes + 2 * 16 * rb);
        assert_eq!((v.kv_heads, v.block_size, v.len, v.table.len()), (2, 16, 20, 2));
        assert_eq!(v.k.pool.len(), pool.capacity_bytes());
        assert_eq!(v.k.pool.as_ptr() as usize % ALIGN, 0, "pool memory is {ALIGN}-byte aligned");
        v.validate(0).unwrap();
    }
    let mla = CacheLayout::latent(2, 512, 64, KvDtype::Fp8);
    let mut lp = BlockPool::with_budget(mla, DEFAULT_BLOCK_SIZE, 10 << 20).unwrap();
    assert_eq!(lp.num_blocks(), (10 << 20) / (2 * 64 * 656));
    let s = lp.create();
    lp.append(s, 65).unwrap();
    let v = lp.view(s, 1).unwrap();
    assert!(matches!(v.v, ValueSource::KeyPrefix { dim: 512 }));
    assert_eq!((v.k.dim, v.k.token_bytes, v.k.offset_bytes, v.kv_heads), (576, 656, 64 * 656, 1));
    // Accounting.
    assert_eq!((lp.used_blocks(), lp.bytes_used()), (2, 2 * lp.block_bytes()));
    assert_eq!(lp.free_blocks() + lp.used_blocks(), lp.num_blocks());
    assert_eq!(lp.bytes_per_token(), 2 * 656);
}

fn f32_pool(bs: usize, blocks: usize) -> BlockPool {
    let layout = CacheLayout::gqa(2, 1, 4, RowFormat::plain(KvDtype::F32));
    BlockPool::new(layout, PoolConfig { poison_free_blocks: true, ..PoolConfig::blocks(bs, blocks) }).unwrap()
}

/// Writes rows derived from (layer, pos, tag) to every layer of `range`.
fn fill(pool: &mut BlockPool, s: SeqId, range: std::ops::Range<usize>, tag: f32) {
    for layer in 0..2 {
        for pos in range.clone() {
            let k = [tag + pos as f32, layer as f32, 1.0, 2.0];
            pool.write_kv(s, layer, pos, &k, &[-tag, pos as f32, 0.0, 0.0]).unwrap();
        }
    }
}

fn key(pool: &BlockPool, s: SeqId, pos: usize) -> f32 {
    pool.read_kv(s, 0, pos).unwrap().0[0]
}

#[test]
fn fork_shares_blocks_and_copies_on_write() {
    let mut pool = f32_pool(4, 8);
    let a = pool.create();
    pool.append(a, 6).unwrap();
    fill(&mut pool, a, 0..6, 100.0);
    let b = pool.fork(a).unwrap();
    let ta = pool.block_table(a).unwrap().to_vec();
    assert_eq!(pool.block_table(b).unwrap(), &ta[..]);
    assert_eq!(ta.iter().map(|&x| pool.refcount(x)).collect::<Vec<_>>(), vec![Some(2), Some(2)]);
    assert_eq!(pool.used_blocks(), 2);
    // Rewriting a full shared block copies it.
    pool.write_kv(b, 1, 2, &[7.0; 4], &[7.0; 4]).unwrap();
    let tb = pool.block_table(b).unwrap().to_vec();
    assert_ne!(tb[0], ta[0]);
    assert_eq!(tb[1], ta[1]);
    assert_eq!((pool.refcount(ta[0]), pool.refcount(tb[0])), (Some(1), Some(1)));
    assert_eq!(pool.read_kv(a, 1, 2).unwrap().0, vec![102.0, 1.0, 1.0, 2.0]);
    assert_eq!(pool.read_kv(b, 1, 2).unwrap().0, vec![7.0; 4]);
    // The copy carries every other row of the block.
    for pos in 0..4 {
        assert_eq!(key(&pool, b, pos), 100.0 + pos as f32);
    }
    // Appending into the shared, partly filled tail copies it first.
    assert_eq!(pool.append(a, 1), Ok(6..7));
    let ta2 = pool.block_table(a).unwrap().to_vec();
    assert_ne!(ta2[1], ta[1]);
    assert_eq!((pool.refcount(ta[1]), pool.refcount(ta2[1])), (Some(1), Some(1)));
    pool.write_kv(a, 0, 6, &[9.0; 4], &[9.0; 4]).unwrap();
    assert_eq!((key(&pool, a, 5), key(&pool, b, 5)), (105.0, 105.0));
    assert!(pool.read_kv(b, 0, 5).is_ok() && pool.read_kv(b, 0, 6).is_err());
    // Unwritten reserved rows read as poison.
    pool.append(b, 2).unwrap();
    assert!(key(&pool, b, 7).is_nan());
    pool.check_invariants().unwrap();
    pool.free(a).unwrap();
    pool.free(b).unwrap();
    assert_eq!((pool.free_blocks(), pool.used_blocks(), pool.bytes_used()), (8, 0, 0));
}

#[test]
fn truncate_releases_blocks_and_rolls_back() {
    let mut pool = f32_pool(4, 6);
    let a = pool.create();
    pool.append_tokens(a, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).unwrap();
    assert_eq!(pool.used_blocks(), 3);
    pool.truncate(a, 5).unwrap();
    assert_eq!((pool.len(a), pool.used_blocks(), pool.tokens(a).unwrap()), (Ok(5), 2, &[1, 2, 3, 4, 5][..]));
    pool.truncate(a, 4).unwrap();
    assert_eq!(pool.used_blocks(), 1);
    pool.truncate(a, 0).unwrap();
    assert_eq!((pool.used_blocks(), pool.block_table(a).unwrap().len()), (0, 0));
    pool.append(a, 3).unwrap();
    assert_eq!(pool.used_blocks(), 1);
    // An empty sequence has an empty, valid view.
    let e = pool.create();
    let v = pool.view(e, 1).unwrap();
    assert_eq!((v.len, v.table.len()), (0, 0));
    v.validate(0).unwrap();
}

fn prompt(seed: u64, n: usize) -> Vec<u32> {
    let mut r = Rng(seed);
    (0..n).map(|_| r.below(1000) as u32).collect()
}

/// A sequence holding `p` with every row written (tag = first token).
fn prefill(pool: &mut BlockPool, p: &[u32]) -> SeqId {
    let s = pool.create();
    let r = pool.append_tokens(s, p).unwrap();
    fill(pool, s, r, p[0] as f32 * 1000.0);
    s
}

#[test]
fn prefix_hits_share_written_full_blocks() {
    let mut pool = f32_pool(16, 40);
    let p = prompt(1, 150);
    let a = prefill(&mut pool, &p);
    let ta = pool.block_table(a).unwrap().to_vec();
    assert_eq!(ta.len(), 10);
    assert!(ta[..9].iter().all(|&b| pool.is_published(b)) && !pool.is_published(ta[9]));
    // A hit while the owner is alive shares its blocks.
    let (b, cached) = pool.create_with_prefix(&p);
    assert_eq!(cached, 144);
    assert_eq!(pool.block_table(b).unwrap(), &ta[..9]);
    assert!(ta[..9].iter().all(|&x| pool.refcount(x) == Some(2)));
    assert_eq!(pool.tokens(b).unwrap(), &p[..144]);
    for pos in 0..144 {
        assert_eq!(pool.read_kv(b, 1, pos).unwrap(), pool.read_kv(a, 1, pos).unwrap());
    }
    // The caller computes the rest.
    pool.append_tokens(b, &p[144..]).unwrap();
    assert_eq!(pool.len(b), Ok(150));
    // A prompt that is exactly cached still leaves its last token to compute.
    assert_eq!(pool.cached_prefix_len(&p[..144]), 128);
    assert_eq!(pool.cached_prefix_len(&p[..145]), 144);
    // A changed token stops the match at its block.
    let mut q = p.clone();
    q[40] += 1;
    assert_eq!(pool.cached_prefix_len(&q), 32);
    // Released prefixes stay cached until the blocks are needed.
    pool.free(a).unwrap();
    pool.free(b).unwrap();
    assert_eq!((pool.used_blocks(), pool.cached_blocks(), pool.free_blocks()), (0, 9, 40));
    let (c, cached) = pool.create_with_prefix(&p);
    assert_eq!((cached, pool.cached_blocks(), pool.used_blocks()), (144, 0, 9));
    assert_eq!(key(&pool, c, 100), p[0] as f32 * 1000.0 + 100.0);
    pool.check_invariants().unwrap();
}

#[test]
fn blocks_are_published_only_when_fully_written() {
    let mut pool = f32_pool(4, 10);
    let p = prompt(2, 9);
    let a = pool.create();
    pool.append_tokens(a, &p).unwrap();
    assert_eq!(pool.cached_prefix_len(&p), 0);
    // Layer 0 only: not yet.
    for pos in 0..8 {
        pool.write_kv(a, 0, pos, &[1.0; 4], &[1.0; 4]).unwrap();
    }
    assert_eq!(pool.cached_prefix_len(&p), 0);
    for pos in 0..5 {
        pool.write_kv(a, 1, pos, &[1.0; 4], &[1.0; 4]).unwrap();
    }
    assert_eq!(pool.cached_prefix_len(&p), 4);
    for pos in 5..8 {
        pool.write_kv(a, 1, pos, &[1.0; 4], &[1.0; 4]).unwrap();
    }
    assert_eq!(pool.cached_prefix_len(&p), 8);
    // Rows appended without token ids are never published.
    let u = pool.create();
    pool.append(u, 8).unwrap();
    fill(&mut pool, u, 0..8, 5.0);
    assert_eq!(pool.tokens(u).unwrap().len(), 0);
    assert!(pool.block_table(u).unwrap().iter().all(|&b| !pool.is_published(b)));
    pool.check_invariants().unwrap();
}

#[test]
fn rewritten_tail_after_truncate_is_unpublished_until_rewritten() {
    let mut pool = f32_pool(4, 10);
    let p = prompt(3, 9);
    let a = prefill(&mut pool, &p[..8]);
    assert_eq!(pool.cached_prefix_len(&p), 8);
    // Cut back into block 1: its content is intact, so it stays reusable…
    pool.truncate(a, 6).unwrap();
    assert_eq!(pool.cached_prefix_len(&p), 8);
    // …until new tokens are appended into it: then it is unpublished, and the new content
    // is published only once written.
    let mut q = p.clone();
    q[6] += 1;
    q[7] += 1;
    pool.append_tokens(a, &q[6..8]).unwrap();
    assert_eq!(pool.cached_prefix_len(&p), 4);
    assert_eq!(pool.cached_prefix_len(&q), 4);
    assert!(key(&pool, a, 6).is_nan(), "reserved slots are poisoned, not stale");
    fill(&mut pool, a, 6..8, 1.0);
    assert_eq!(pool.cached_prefix_len(&q), 8);
    assert_eq!(pool.cached_prefix_len(&p), 4);
    pool.check_invariants().unwrap();
}

#[test]
fn lru_evicts_least_recently_released_tail_first() {
    // 12 blocks of 4 tokens; two 4-block prompts cached, then a sequence needing 6 blocks.
    let mut pool = f32_pool(4, 12);
    let (p1, p2) = (prompt(4, 17), prompt(5, 17));
    let a = prefill(&mut pool, &p1[..16]);
    pool.free(a).unwrap();
    let b = prefill(&mut pool, &p2[..16]);
    pool.free(b).unwrap();
    assert_eq!((pool.cached_blocks(), pool.free_blocks()), (8, 12));
    let c = pool.create();
    pool.append(c, 24).unwrap(); // 4 free blocks, then 2 evictions
    assert_eq!(pool.cached_blocks(), 6);
    // p1 was released first; its last two blocks went first.
    assert_eq!((pool.cached_prefix_len(&p1), pool.cached_prefix_len(&p2)), (8, 16));
    // A hit refreshes nothing while held; releasing makes it the most recent.
    let (d, n) = pool.create_with_prefix(&p1);
    assert_eq!(n, 8);
    pool.free(d).unwrap();
    pool.append(c, 8).unwrap(); // evicts p2's tail (released before p1's head blocks)
    assert_eq!((pool.cached_prefix_len(&p1), pool.cached_prefix_len(&p2)), (8, 8));
    // Running out of everything: all cached blocks go, then OutOfBlocks.
    pool.append(c, 16).unwrap();
    assert_eq!((pool.cached_blocks(), pool.free_blocks()), (0, 0));
    assert_eq!(pool.cached_prefix_len(&p1), 0);
    assert_eq!(pool.append(c, 1), Err(KvError::OutOfBlocks { needed: 1, free: 0 }));
    pool.check_invariants().unwrap();
}

#[test]
fn poisoning_can_be_turned_off() {
    let layout = CacheLayout::gqa(1, 1, 4, RowFormat::plain(KvDtype::F32));
    let mut pool =
        BlockPool::new(layout, PoolConfig { poison_free_blocks: false, ..PoolConfig::blocks(4, 2) }).unwrap();
    let s = pool.create();
    pool.append(s, 1).unwrap();
    assert_eq!(pool.read_kv(s, 0, 0).unwrap().0, vec![0.0; 4]);
    assert_eq!(PoolConfig::blocks(4, 2).poison_free_blocks, cfg!(debug_assertions));
    // 0xFF decodes to NaN in every dtype.
    for dtype in KvDtype::ALL {
        let fmt = RowFormat::plain(dtype);
        let bytes = vec![POISON; fmt.row_bytes(200)];
        let mut out = vec![0f32; 200];
        fmt.decode(latent_kernels::Kernels::best(), &bytes, &mut out);
        assert!(out.iter().all(|x| x.is_nan()), "{dtype:?}");
    }
}
