//! Every failure is a typed error with context, never a panic, and leaves the pool as it was.

use latent_attention::{KvDtype, RowFormat};
use latent_kv::*;

fn gqa(blocks: usize, bs: usize) -> BlockPool {
    let layout = CacheLayout::gqa(2, 2, 4, RowFormat::plain(KvDtype::F32));
    BlockPool::new(layout, PoolConfig { poison_free_blocks: true, ..PoolConfig::blocks(bs, blocks) }).unwrap()
}

/// What a failed operation must not change.
#[derive(Debug, PartialEq)]
struct State {
    seqs: Vec<(Vec<u32>, usize)>, // (table, len)
    refs: Vec<Option<u32>>,
    free: usize,
}

fn state(pool: &BlockPool) -> State {
    let seqs =
        pool.sequences().into_iter().map(|s| (pool.block_table(s).unwrap().to_vec(), pool.len(s).unwrap())).collect();
    State { seqs, refs: (0..pool.num_blocks() as u32).map(|b| pool.refcount(b)).collect(), free: pool.free_blocks() }
}

#[test]
fn out_of_blocks_on_append_changes_nothing() {
    let mut pool = gqa(3, 4);
    let a = pool.create();
    pool.append(a, 10).unwrap(); // 3 blocks
    let before = state(&pool);
    assert_eq!(pool.append(a, 3), Err(KvError::OutOfBlocks { needed: 1, free: 0 }));
    let b = pool.create();
    assert_eq!(pool.append(b, 1), Err(KvError::OutOfBlocks { needed: 1, free: 0 }));
    assert_eq!(pool.append_tokens(b, &[1, 2]), Err(KvError::OutOfBlocks { needed: 1, free: 0 }));
    assert_eq!(pool.len(b), Ok(0));
    pool.free(b).unwrap();
    assert_eq!(state(&pool), before);
    // The last block still has room for two tokens.
    assert_eq!(pool.append(a, 2), Ok(10..12));
    pool.check_invariants().unwrap();
}

#[test]
fn out_of_blocks_on_copy_on_write_changes_nothing() {
    let mut pool = gqa(2, 4);
    let a = pool.create();
    pool.append(a, 4).unwrap();
    for layer in 0..2 {
        pool.write_kv(a, layer, 0, &[1.0; 8], &[2.0; 8]).unwrap();
    }
    let b = pool.fork(a).unwrap();
    let c = pool.create();
    pool.append(c, 1).unwrap(); // takes the last free block
    let before = state(&pool);
    // Writing into the shared block needs a copy and there is no block for it.
    assert_eq!(pool.write_kv(b, 0, 0, &[3.0; 8], &[4.0; 8]), Err(KvError::OutOfBlocks { needed: 1, free: 0 }));
    assert_eq!(pool.write_kv_range(a, 1, 0, &[3.0; 16], &[4.0; 16]), Err(KvError::OutOfBlocks { needed: 1, free: 0 }));
    assert_eq!(state(&pool), before);
    assert_eq!(pool.read_kv(a, 0, 0).unwrap(), (vec![1.0; 8], vec![2.0; 8]));
    // Once a block is free the copy happens and the other sharer keeps its rows.
    pool.free(c).unwrap();
    pool.write_kv(b, 0, 0, &[3.0; 8], &[4.0; 8]).unwrap();
    assert_eq!(pool.read_kv(a, 0, 0).unwrap(), (vec![1.0; 8], vec![2.0; 8]));
    assert_eq!(pool.read_kv(b, 0, 0).unwrap(), (vec![3.0; 8], vec![4.0; 8]));
    pool.check_invariants().unwrap();
}

#[test]
fn out_of_blocks_on_copy_on_append() {
    let mut pool = gqa(2, 4);
    let a = pool.create();
    pool.append(a, 2).unwrap();
    let b = pool.fork(a).unwrap();
    let c = pool.create();
    pool.append(c, 1).unwrap();
    let before = state(&pool);
    // The partly filled tail is shared: appending to it needs a private copy first.
    assert_eq!(pool.blocks_for_append(a, 1), Ok(1));
    assert_eq!(pool.append(a, 1), Err(KvError::OutOfBlocks { needed: 1, free: 0 }));
    assert_eq!(state(&pool), before);
    pool.free(b).unwrap();
    assert_eq!(pool.blocks_for_append(a, 1), Ok(0));
    assert_eq!(pool.append(a, 1), Ok(2..3));
}

#[test]
fn sequence_full_at_its_limit() {
    let mut pool = gqa(8, 4);
    let a = pool.create_limited(10);
    assert_eq!(pool.max_tokens(a), Ok(10));
    pool.append(a, 8).unwrap();
    let before = state(&pool);
    assert_eq!(pool.append(a, 3), Err(KvError::SequenceFull { seq: a, limit: 10, requested: 11 }));
    assert_eq!(pool.append(a, usize::MAX), Err(KvError::SequenceFull { seq: a, limit: 10, requested: usize::MAX }));
    assert_eq!(state(&pool), before);
    assert_eq!(pool.append(a, 2), Ok(8..10));
    assert!(matches!(pool.append_tokens(a, &[7]), Err(KvError::SequenceFull { limit: 10, .. })));
    // The pool-wide default applies to `create` and `create_with_prefix`.
    let layout = *pool.layout();
    let mut small = BlockPool::new(layout, PoolConfig { max_tokens: 5, ..PoolConfig::blocks(4, 8) }).unwrap();
    let s = small.create();
    assert_eq!(small.append(s, 6), Err(KvError::SequenceFull { seq: s, limit: 5, requested: 6 }));
    // A fork inherits the limit.
    let f = pool.fork(a).unwrap();
    assert!(matches!(pool.append(f, 1), Err(KvError::SequenceFull { limit: 10, .. })));
}

#[test]
fn double_free_and_use_after_free() {
    let mut pool = gqa(4, 4);
    let a = pool.create();
    pool.append(a, 5).unwrap();
    pool.free(a).unwrap();
    let e = Err(KvError::UnknownSequence(a));
    assert_eq!(pool.free(a), e);
    assert_eq!(pool.append(a, 1).map(|_| ()), e);
    assert_eq!(pool.append_tokens(a, &[1]).map(|_| ()), e);
    assert_eq!(pool.write_kv(a, 0, 0, &[0.0; 8], &[0.0; 8]), e);
    assert_eq!(pool.write_kv_range(a, 0, 0, &[0.0; 8], &[0.0; 8]), e);
    assert_eq!(pool.read_kv(a, 0, 0).map(|_| ()), e);
    assert_eq!(pool.view(a, 0).map(|_| ()), e);
    assert_eq!(pool.fork(a).map(|_| ()), e);
    assert_eq!(pool.truncate(a, 0), e);
    assert_eq!(pool.len(a).map(|_| ()), e);
    assert_eq!(pool.block_table(a).map(|_| ()), e);
    assert_eq!(pool.blocks_for_append(a, 1).map(|_| ()), e);
    // Ids are never reused: a new sequence does not revive the freed one.
    let b = pool.create();
    assert_ne!(a, b);
    assert_eq!(pool.len(a).map(|_| ()), e);
    assert_eq!(pool.free_blocks(), 4);
    assert_eq!(
        KvError::UnknownSequence(a).to_string(),
        format!("unknown sequence {a} (never created or already freed)")
    );
}

#[test]
fn positions_layers_and_shapes_are_checked() {
    let mut pool = gqa(4, 4);
    let a = pool.create();
    pool.append(a, 5).unwrap();
    let (k, v) = ([0.5f32; 8], [0.25f32; 8]);
    assert_eq!(pool.write_kv(a, 0, 5, &k, &v), Err(KvError::PositionOutOfRange { seq: a, pos: 5, len: 5 }));
    assert_eq!(
        pool.write_kv_range(a, 0, 4, &[0.0; 16], &[0.0; 16]),
        Err(KvError::PositionOutOfRange { seq: a, pos: 5, len: 5 })
    );
    assert_eq!(pool.read_kv(a, 0, 7).map(|_| ()), Err(KvError::PositionOutOfRange { seq: a, pos: 7, len: 5 }));
    assert_eq!(pool.truncate(a, 6), Err(KvError::PositionOutOfRange { seq: a, pos: 6, len: 5 }));
    assert_eq!(pool.write_kv(a, 2, 0, &k, &v), Err(KvError::LayerOutOfRange { layer: 2, layers: 2 }));
    assert_eq!(pool.view(a, 9).map(|_| ()), Err(KvError::LayerOutOfRange { layer: 9, layers: 2 }));
    assert_eq!(pool.write_kv(a, 0, 0, &k[..7], &v), Err(KvError::Shape { what: "k [Hkv, D]", expected: 8, got: 7 }));
    assert_eq!(pool.write_kv(a, 0, 0, &k, &[0.0; 9]), Err(KvError::Shape { what: "v [Hkv, D]", expected: 8, got: 9 }));
    assert_eq!(
        pool.write_kv_range(a, 0, 0, &[0.0; 12], &[0.0; 12]),
        Err(KvError::Shape { what: "k [T, Hkv, D]", expected: 16, got: 12 })
    );
    assert_eq!(
        pool.write_kv_range(a, 0, 0, &[0.0; 16], &[0.0; 8]),
        Err(KvError::Shape { what: "v [T, Hkv, D]", expected: 16, got: 8 })
    );
    assert!(matches!(pool.write_latent(a, 0, 0, &[0.0; 8]), Err(KvError::WrongLayout { op: "write_latent", .. })));
    assert!(matches!(pool.read_latent(a, 0, 0), Err(KvError::WrongLayout { .. })));
    // Nothing was written: the rows still read as poison.
    assert!(pool.read_kv(a, 0, 0).unwrap().0.iter().all(|x| x.is_nan()));

    let latent = CacheLayout::latent(1, 8, 4, KvDtype::Bf16);
    let mut lp = BlockPool::with_blocks(latent, 4, 2).unwrap();
    let s = lp.create();
    lp.append(s, 1).unwrap();
    assert_eq!(
        lp.write_latent(s, 0, 0, &[0.0; 11]),
        Err(KvError::Shape { what: "latent row [R + P]", expected: 12, got: 11 })
    );
    assert_eq!(
        lp.write_latent_range(s, 0, 0, &[0.0; 13]),
        Err(KvError::Shape { what: "latent rows [T, R + P]", expected: 24, got: 13 })
    );
    assert!(matches!(lp.write_kv(s, 0, 0, &k, &v), Err(KvError::WrongLayout { op: "write_kv", .. })));
    lp.write_latent(s, 0, 0, &[1.0; 12]).unwrap();
    assert_eq!(lp.read_latent(s, 0, 0).unwrap(), vec![1.0; 12]);
    assert_eq!(pool.refcount(99), None);
}

#[test]
fn bad_configurations_are_rejected() {
    let layout = CacheLayout::gqa(2, 2, 64, RowFormat::plain(KvDtype::Bf16));
    let bb = layout.block_bytes(16);
    assert_eq!(
        BlockPool::with_budget(layout, 16, bb - 1).err(),
        Some(KvError::Budget { budget: bb - 1, block_bytes: bb })
    );
    assert_eq!(BlockPool::with_budget(layout, 16, 3 * bb + 7).unwrap().num_blocks(), 3);
    assert!(matches!(BlockPool::with_blocks(layout, 0, 4), Err(KvError::Config(_))));
    assert!(matches!(BlockPool::with_blocks(layout, 16, 0), Err(KvError::Config(_))));
    assert!(matches!(BlockPool::with_blocks(CacheLayout { layers: 0, ..layout }, 16, 1), Err(KvError::Config(_))));
    assert!(matches!(
        BlockPool::with_blocks(CacheLayout::gqa(1, 0, 64, RowFormat::plain(KvDtype::F32)), 16, 1),
        Err(KvError::Config(_))
    ));
    assert!(matches!(
        BlockPool::with_blocks(CacheLayout::latent(1, 0, 64, KvDtype::Fp8), 16, 1),
        Err(KvError::Config(_))
    ));
    assert!(matches!(BlockPool::with_blocks(layout, usize::MAX / 2, 4), Err(KvError::Config(_))));
    assert!(matches!(BlockPool::with_blocks(layout, 1 << 40, 1 << 30), Err(KvError::Config(_))));
    assert!(matches!(
        BlockPool::with_blocks(CacheLayout { layers: usize::MAX, ..layout }, 1, 1),
        Err(KvError::Config(_))
    ));
    assert!(matches!(
        BlockPool::with_blocks(CacheLayout::latent(1, usize::MAX, 64, KvDtype::Fp8), 16, 1),
        Err(KvError::Config(_))
    ));
    // More memory than any machine has: a typed error, not an abort.
    assert!(matches!(
        BlockPool::with_blocks(layout, 1 << 20, 1 << 20),
        Err(KvError::Alloc { .. } | KvError::Config(_))
    ));
}
