//! The block pool: one allocation holding every block of every layer, sequences as block
//! tables over it, reference-counted sharing (fork, prefix hits) with copy-on-write, and a
//! prefix cache of full blocks with LRU eviction.
//!
//! Dimension legend: L layers, B block size (tokens), Hkv KV heads (1 for a latent cache),
//! Dk row elements (D, or R + P), T tokens of one write.
//!
//! Block states (exactly one at a time):
//! * used: `refs ≥ 1`, in the tables of `refs` sequences (counted with multiplicity);
//! * cached: `refs = 0`, published (its content hash is in the prefix index), in the LRU;
//! * free: `refs = 0`, unpublished, on the free stack.
//!
//! Free and cached blocks both count as available; allocation takes a free block first and
//! evicts the least recently released cached block otherwise.
//!
//! Rules that keep shared content immutable:
//! * a write into a block with `refs > 1` first copies it to a private block;
//! * reserving tokens in a partly filled tail block makes it private first (copy if shared;
//!   unpublish if it was a published full block cut back by `truncate`), so appended tokens
//!   never land in a block another sequence or the prefix index can see;
//! * a block is published only when it is full of known token ids *and* every (layer, slot)
//!   row of it has been written, so a prefix hit never returns unwritten rows.

use crate::error::{KvError, SeqId};
use crate::layout::{CacheLayout, Mechanism, ALIGN};
use crate::prefix::{chain_hash, BlockKey, ROOT_HASH};
use latent_attention::{KvPlane, KvSeq, ValueSource, EVICTED};
use latent_kernels::Kernels;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// Tokens per block unless configured otherwise.
pub const DEFAULT_BLOCK_SIZE: usize = 64;

/// The byte freed and fresh blocks are filled with when poisoning: every element decodes to
/// NaN in every [`latent_attention::KvDtype`] (0xFF is NaN in f32, f16, bf16 and E4M3; an
/// int8 row's scales become NaN).
pub const POISON: u8 = 0xFF;

/// How many blocks the pool holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    Blocks(usize),
    /// As many blocks as fit in this many bytes.
    Budget(usize),
}

/// Everything fixed when the pool is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Tokens per block (≥ 1).
    pub block_size: usize,
    pub capacity: Capacity,
    /// Token limit of sequences made by `create` / `create_with_prefix`.
    pub max_tokens: usize,
    /// Fill free blocks, fresh blocks' unwritten slots and cut-back slots with [`POISON`],
    /// so any read of a row nobody wrote yields NaN.
    pub poison_free_blocks: bool,
}

impl PoolConfig {
    /// `blocks` blocks of `block_size` tokens; no token limit; poisoning in debug builds.
    pub fn blocks(block_size: usize, blocks: usize) -> PoolConfig {
        PoolConfig {
            block_size,
            capacity: Capacity::Blocks(blocks),
            max_tokens: usize::MAX,
            poison_free_blocks: cfg!(debug_assertions),
        }
    }
    /// As many blocks as `budget_bytes` holds.
    pub fn budget(block_size: usize, budget_bytes: usize) -> PoolConfig {
        PoolConfig { capacity: Capacity::Budget(budget_bytes), ..PoolConfig::blocks(block_size, 0) }
    }
}

struct Block {
    refs: u32,
    /// Set while the block is in the prefix index.
    key: Option<BlockKey>,
    /// Release tick while cached (the key of its LRU entry).
    tick: u64,
    /// Rows written: set bits of its `written` bitmap.
    written: u32,
}

#[derive(Clone)]
struct Seq {
    blocks: Vec<u32>, // logical → physical, ceil(len / B) entries
    len: usize,
    limit: usize,
    /// Token ids of positions `0..tokens.len()` (a prefix of `0..len`).
    tokens: Vec<u32>,
    /// Chain hash of each full block of `tokens`.
    hashes: Vec<u64>,
}

/// Owns the cache memory and lends [`KvSeq`] views of it to the attention kernels.
pub struct BlockPool {
    layout: CacheLayout,
    block_size: usize,
    block_bytes: usize,
    num_blocks: usize,
    poison: bool,
    default_limit: usize,
    /// `[num_blocks, block_bytes]` starting at `base` (aligned to [`ALIGN`]).
    /// Anonymous zero-filled mapping: the OS commits a page when it is first written, so a
    /// pool costs memory for the blocks used, not for its capacity.
    buf: memmap2::MmapMut,
    base: usize,
    blocks: Vec<Block>,
    free: Vec<u32>,
    lru: BTreeMap<u64, u32>,  // release tick → cached block
    index: HashMap<u64, u32>, // chain hash → published block
    tick: u64,
    /// `[num_blocks, words]` bit `layer · B + slot`: that row has been written.
    written: Vec<u64>,
    words: usize,
    seqs: HashMap<u64, Seq>,
    next_id: u64,
}

impl BlockPool {
    /// A pool for `layout` as configured.
    pub fn new(layout: CacheLayout, cfg: PoolConfig) -> Result<BlockPool, KvError> {
        layout.validate()?;
        let bs = cfg.block_size;
        if bs == 0 {
            return Err(KvError::Config("block size must be ≥ 1".into()));
        }
        let block_bytes = layout
            .checked_block_bytes(bs)
            .ok_or_else(|| KvError::Config(format!("a block of {bs} tokens overflows the address space")))?;
        let n = match cfg.capacity {
            Capacity::Blocks(n) => n,
            Capacity::Budget(b) => b / block_bytes,
        };
        if n == 0 {
            return Err(match cfg.capacity {
                Capacity::Budget(budget) => KvError::Budget { budget, block_bytes },
                Capacity::Blocks(_) => KvError::Config("a pool needs at least one block".into()),
            });
        }
        if n > u32::MAX as usize {
            return Err(KvError::Config(format!("{n} blocks exceed the u32 block ids")));
        }
        let bytes = n
            .checked_mul(block_bytes)
            .and_then(|b| b.checked_add(ALIGN - 1))
            .ok_or_else(|| KvError::Config(format!("{n} blocks of {block_bytes} bytes overflow")))?;
        // Zero pages until first written; with poisoning, a block is filled when it is first
        // handed out (`alloc`), so an unused capacity costs no memory in any build.
        let buf = memmap2::MmapMut::map_anon(bytes).map_err(|_| KvError::Alloc { bytes })?;
        // Transparent huge pages where the kernel offers them on request: a sequence's
        // blocks lie scattered over the pool, and with 4 KiB pages every block of every
        // layer costs the decode kernels TLB misses and page walks (GQA decode at 32k, 64-token
        // blocks: paged / contiguous 1.19–1.25 → 1.09–1.14 on a Zen 4 machine). A failed
        // advice changes nothing but speed. Pages are still only committed when first written.
        #[cfg(target_os = "linux")]
        let _ = buf.advise(memmap2::Advice::HugePage);
        let base = (ALIGN - buf.as_ptr() as usize % ALIGN) % ALIGN;
        let words = (layout.layers * bs).div_ceil(64);
        Ok(BlockPool {
            layout,
            block_size: bs,
            block_bytes,
            num_blocks: n,
            poison: cfg.poison_free_blocks,
            default_limit: cfg.max_tokens,
            buf,
            base,
            blocks: (0..n).map(|_| Block { refs: 0, key: None, tick: 0, written: 0 }).collect(),
            // Popped from the end: block 0 is handed out first.
            free: (0..n as u32).rev().collect(),
            lru: BTreeMap::new(),
            index: HashMap::new(),
            tick: 0,
            written: vec![0; n * words],
            words,
            seqs: HashMap::new(),
            next_id: 0,
        })
    }

    /// `num_blocks` blocks of `block_size` tokens.
    pub fn with_blocks(layout: CacheLayout, block_size: usize, num_blocks: usize) -> Result<BlockPool, KvError> {
        BlockPool::new(layout, PoolConfig::blocks(block_size, num_blocks))
    }

    /// As many blocks of `block_size` tokens as fit in `budget_bytes`.
    pub fn with_budget(layout: CacheLayout, block_size: usize, budget_bytes: usize) -> Result<BlockPool, KvError> {
        BlockPool::new(layout, PoolConfig::budget(block_size, budget_bytes))
    }

    // ---- geometry and accounting ----

    pub fn layout(&self) -> &CacheLayout {
        &self.layout
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// Bytes of one block (all layers, padding included).
    pub fn block_bytes(&self) -> usize {
        self.block_bytes
    }
    /// Bytes one token takes (all layers, scales included, no padding).
    pub fn bytes_per_token(&self) -> usize {
        self.layout.bytes_per_token()
    }
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    /// Blocks an allocation can take: free plus cached (evictable) ones.
    pub fn free_blocks(&self) -> usize {
        self.free.len() + self.lru.len()
    }
    /// Blocks referenced by at least one sequence.
    pub fn used_blocks(&self) -> usize {
        self.num_blocks - self.free_blocks()
    }
    /// Unreferenced blocks still holding a reusable prefix.
    pub fn cached_blocks(&self) -> usize {
        self.lru.len()
    }
    /// Sequences referencing `block`; `None` for an id outside the pool.
    pub fn refcount(&self, block: u32) -> Option<u32> {
        self.blocks.get(block as usize).map(|b| b.refs)
    }
    /// Whether `block` is in the prefix index.
    pub fn is_published(&self, block: u32) -> bool {
        self.blocks.get(block as usize).is_some_and(|b| b.key.is_some())
    }
    /// Bytes of the blocks in use.
    pub fn bytes_used(&self) -> usize {
        self.used_blocks() * self.block_bytes
    }
    /// Bytes of all blocks.
    pub fn capacity_bytes(&self) -> usize {
        self.num_blocks * self.block_bytes
    }
    pub fn num_sequences(&self) -> usize {
        self.seqs.len()
    }
    /// Live sequences in creation order.
    pub fn sequences(&self) -> Vec<SeqId> {
        let mut v: Vec<SeqId> = self.seqs.keys().map(|&k| SeqId(k)).collect();
        v.sort();
        v
    }

    // ---- sequences ----

    fn seq(&self, id: SeqId) -> Result<&Seq, KvError> {
        self.seqs.get(&id.0).ok_or(KvError::UnknownSequence(id))
    }

    /// Reserved tokens of `seq`.
    pub fn len(&self, seq: SeqId) -> Result<usize, KvError> {
        Ok(self.seq(seq)?.len)
    }
    /// Logical → physical block ids of `seq`.
    pub fn block_table(&self, seq: SeqId) -> Result<&[u32], KvError> {
        Ok(&self.seq(seq)?.blocks)
    }
    /// The recorded token ids of `seq` (a prefix of its positions).
    pub fn tokens(&self, seq: SeqId) -> Result<&[u32], KvError> {
        Ok(&self.seq(seq)?.tokens)
    }
    pub fn max_tokens(&self, seq: SeqId) -> Result<usize, KvError> {
        Ok(self.seq(seq)?.limit)
    }

    /// An empty sequence with the pool's token limit.
    pub fn create(&mut self) -> SeqId {
        self.create_limited(self.default_limit)
    }

    /// An empty sequence holding at most `max_tokens` tokens.
    pub fn create_limited(&mut self, max_tokens: usize) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(
            id.0,
            Seq { blocks: Vec::new(), len: 0, limit: max_tokens, tokens: Vec::new(), hashes: Vec::new() },
        );
        id
    }

    /// Published blocks matching `prompt`'s leading full blocks, with their hashes. At least
    /// one prompt token is always left to compute (its logits are needed).
    fn match_prefix(&self, prompt: &[u32], limit: usize) -> (Vec<u32>, Vec<u64>) {
        let bs = self.block_size;
        let max_blocks = prompt.len().saturating_sub(1).min(limit) / bs;
        let (mut blocks, mut hashes) = (Vec::new(), Vec::new());
        let mut parent = ROOT_HASH;
        for toks in prompt.chunks_exact(bs).take(max_blocks) {
            let h = chain_hash(parent, toks);
            match self.index.get(&h) {
                Some(&b) if self.blocks[b as usize].key.as_ref().is_some_and(|k| k.matches(parent, toks)) => {
                    blocks.push(b);
                    hashes.push(h);
                }
                _ => break,
            }
            parent = h;
        }
        (blocks, hashes)
    }

    /// Tokens of `prompt` a [`BlockPool::create_with_prefix`] would find cached now.
    pub fn cached_prefix_len(&self, prompt: &[u32]) -> usize {
        self.match_prefix(prompt, self.default_limit).0.len() * self.block_size
    }

    /// A sequence starting with the longest cached prefix of `prompt` (whole blocks, shared
    /// by reference). Returns it and the number of tokens it already holds; the caller
    /// appends and computes `prompt[cached..]`.
    pub fn create_with_prefix(&mut self, prompt: &[u32]) -> (SeqId, usize) {
        self.create_with_prefix_upto(prompt, self.default_limit)
    }

    /// [`BlockPool::create_with_prefix`] reusing at most `max_cached` tokens (whole blocks).
    pub fn create_with_prefix_upto(&mut self, prompt: &[u32], max_cached: usize) -> (SeqId, usize) {
        let (blocks, hashes) = self.match_prefix(prompt, max_cached.min(self.default_limit));
        for &b in &blocks {
            self.incref(b);
        }
        let len = blocks.len() * self.block_size;
        let id = self.create();
        let s = self.seqs.get_mut(&id.0).expect("just created");
        s.blocks = blocks;
        s.len = len;
        s.tokens = prompt[..len].to_vec();
        s.hashes = hashes;
        (id, len)
    }

    /// Free blocks that `append(seq, n)` would take (new blocks plus a copy of a shared tail).
    pub fn blocks_for_append(&self, seq: SeqId, n: usize) -> Result<usize, KvError> {
        let s = self.seq(seq)?;
        if n == 0 {
            return Ok(0);
        }
        let new_len = s.len.saturating_add(n);
        let grow = new_len.div_ceil(self.block_size) - s.blocks.len();
        let tail_copy =
            s.len % self.block_size != 0 && self.blocks[*s.blocks.last().expect("partial") as usize].refs > 1;
        Ok(grow + tail_copy as usize)
    }

    /// Reserves `n` more token slots at the end of `seq`, allocating blocks as needed.
    /// Returns the reserved positions. Their rows must be written before they are read.
    pub fn append(&mut self, seq: SeqId, n: usize) -> Result<Range<usize>, KvError> {
        let s = self.seq(seq)?;
        let (len, limit) = (s.len, s.limit);
        let new_len = len.checked_add(n).filter(|&l| l <= limit);
        let Some(new_len) = new_len else {
            return Err(KvError::SequenceFull { seq, limit, requested: len.saturating_add(n) });
        };
        let needed = self.blocks_for_append(seq, n)?;
        if needed > self.free_blocks() {
            return Err(KvError::OutOfBlocks { needed, free: self.free_blocks() });
        }
        if n == 0 {
            return Ok(len..len);
        }
        let bs = self.block_size;
        if !len.is_multiple_of(bs) {
            let idx = len / bs;
            self.make_private(seq, idx, len - idx * bs);
            let b = self.seqs[&seq.0].blocks[idx];
            // The slots past `len` get new tokens: the block no longer holds its old content.
            self.unpublish(b);
            self.clear_written_from(b, len - idx * bs);
            self.poison_slots_from(b, len - idx * bs);
        }
        let grow = new_len.div_ceil(bs) - self.seqs[&seq.0].blocks.len();
        for _ in 0..grow {
            let b = self.alloc();
            self.seqs.get_mut(&seq.0).expect("checked").blocks.push(b);
        }
        self.seqs.get_mut(&seq.0).expect("checked").len = new_len;
        Ok(len..new_len)
    }

    /// [`BlockPool::append`] recording the token ids of the new positions, which makes the
    /// sequence's full blocks eligible for prefix caching. Ids are recorded only while every
    /// earlier position's id is known.
    pub fn append_tokens(&mut self, seq: SeqId, tokens: &[u32]) -> Result<Range<usize>, KvError> {
        let r = self.append(seq, tokens.len())?;
        let bs = self.block_size;
        let s = self.seqs.get_mut(&seq.0).expect("appended");
        if s.tokens.len() == r.start {
            s.tokens.extend_from_slice(tokens);
        }
        let first = s.hashes.len();
        while s.hashes.len() < s.tokens.len() / bs {
            let i = s.hashes.len();
            let parent = if i == 0 { ROOT_HASH } else { s.hashes[i - 1] };
            let h = chain_hash(parent, &s.tokens[i * bs..(i + 1) * bs]);
            s.hashes.push(h);
        }
        let last = s.hashes.len();
        for i in first..last {
            self.try_publish(seq, i);
        }
        Ok(r)
    }

    /// A new sequence sharing all of `seq`'s blocks (copy-on-write).
    pub fn fork(&mut self, seq: SeqId) -> Result<SeqId, KvError> {
        let s = self.seq(seq)?.clone();
        for &b in s.blocks.iter().filter(|&&b| b != EVICTED) {
            self.incref(b);
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(id.0, s);
        Ok(id)
    }

    /// Releases `seq`'s blocks; the id becomes unknown.
    pub fn free(&mut self, seq: SeqId) -> Result<(), KvError> {
        let s = self.seqs.remove(&seq.0).ok_or(KvError::UnknownSequence(seq))?;
        // Tail first: a released prefix's later blocks are evicted before its earlier ones.
        for &b in s.blocks.iter().rev().filter(|&&b| b != EVICTED) {
            self.decref(b);
        }
        Ok(())
    }

    /// Cuts `seq` back to `len` tokens (rollback), releasing blocks past the end.
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), KvError> {
        let s = self.seq(seq)?;
        if len > s.len {
            return Err(KvError::PositionOutOfRange { seq, pos: len, len: s.len });
        }
        let bs = self.block_size;
        let s = self.seqs.get_mut(&seq.0).expect("checked");
        let released = s.blocks.split_off(len.div_ceil(bs));
        s.len = len;
        s.tokens.truncate(len);
        s.hashes.truncate(len / bs);
        for &b in released.iter().rev().filter(|&&b| b != EVICTED) {
            self.decref(b);
        }
        Ok(())
    }

    /// Returns to the pool the blocks of `seq` that lie wholly inside `positions` (a
    /// sliding window's dead middle). Their table entries become [`EVICTED`]: reading or
    /// writing a position in them is an error, and the kernels refuse a view whose visible
    /// keys include one. Returns how many blocks were released.
    pub fn release(&mut self, seq: SeqId, positions: Range<usize>) -> Result<usize, KvError> {
        let s = self.seq(seq)?;
        let bs = self.block_size;
        let hi = positions.end.min(s.len);
        let first = positions.start.div_ceil(bs);
        let last = hi / bs; // blocks first..last are whole inside
        let mut released = Vec::new();
        let s = self.seqs.get_mut(&seq.0).expect("checked");
        for i in first..last.max(first) {
            if s.blocks[i] != EVICTED {
                released.push(s.blocks[i]);
                s.blocks[i] = EVICTED;
            }
        }
        // Released blocks hold no reusable prefix any more for this sequence.
        s.hashes.truncate(first.min(s.hashes.len()));
        s.tokens.truncate((first * bs).min(s.tokens.len()));
        for &b in &released {
            self.decref(b);
        }
        Ok(released.len())
    }

    /// Blocks of `seq` currently held (released ones not counted).
    pub fn held_blocks(&self, seq: SeqId) -> Result<usize, KvError> {
        Ok(self.seq(seq)?.blocks.iter().filter(|&&b| b != EVICTED).count())
    }

    fn check_live(&self, seq: SeqId, s: &Seq, pos: usize) -> Result<(), KvError> {
        if s.blocks.get(pos / self.block_size) == Some(&EVICTED) {
            return Err(KvError::Released { seq, pos });
        }
        Ok(())
    }

    // ---- rows ----

    fn check_layer(&self, layer: usize) -> Result<(), KvError> {
        if layer >= self.layout.layers {
            return Err(KvError::LayerOutOfRange { layer, layers: self.layout.layers });
        }
        Ok(())
    }

    fn gqa_dims(&self, op: &'static str) -> Result<(usize, usize), KvError> {
        match self.layout.mechanism {
            Mechanism::Gqa { kv_heads, head_dim } => Ok((kv_heads, head_dim)),
            m => Err(KvError::WrongLayout { op, needs: "K/V (gqa)", has: m.name() }),
        }
    }

    fn latent_dim(&self, op: &'static str) -> Result<usize, KvError> {
        match self.layout.mechanism {
            Mechanism::Latent { rank, rope_dim } => Ok(rank + rope_dim),
            m => Err(KvError::WrongLayout { op, needs: "latent", has: m.name() }),
        }
    }

    /// Stores the K and V rows of one token: `k`, `v` `[Hkv, D]`.
    pub fn write_kv(&mut self, seq: SeqId, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<(), KvError> {
        let (hkv, d) = self.gqa_dims("write_kv")?;
        check_len("k [Hkv, D]", hkv * d, k.len())?;
        check_len("v [Hkv, D]", hkv * d, v.len())?;
        self.write_rows(seq, layer, pos, 1, &[k, v])
    }

    /// Stores the K and V rows of tokens `start..start+T`: `k`, `v` `[T, Hkv, D]`.
    pub fn write_kv_range(
        &mut self,
        seq: SeqId,
        layer: usize,
        start: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), KvError> {
        let (hkv, d) = self.gqa_dims("write_kv_range")?;
        let t = k.len() / (hkv * d);
        check_len("k [T, Hkv, D]", k.len().div_ceil(hkv * d) * hkv * d, k.len())?;
        check_len("v [T, Hkv, D]", t * hkv * d, v.len())?;
        self.write_rows(seq, layer, start, t, &[k, v])
    }

    /// Stores the latent row `[c_KV (R) | k_rope (P)]` of one token.
    pub fn write_latent(&mut self, seq: SeqId, layer: usize, pos: usize, row: &[f32]) -> Result<(), KvError> {
        let dk = self.latent_dim("write_latent")?;
        check_len("latent row [R + P]", dk, row.len())?;
        self.write_rows(seq, layer, pos, 1, &[row])
    }

    /// Stores the latent rows of tokens `start..start+T`: `rows` `[T, R + P]`.
    pub fn write_latent_range(&mut self, seq: SeqId, layer: usize, start: usize, rows: &[f32]) -> Result<(), KvError> {
        let dk = self.latent_dim("write_latent_range")?;
        check_len("latent rows [T, R + P]", rows.len().div_ceil(dk) * dk, rows.len())?;
        self.write_rows(seq, layer, start, rows.len() / dk, &[rows])
    }

    /// Encodes `n` tokens of every plane (`planes[p]` `[n, Hkv, Dk]`) at `start..start+n`.
    fn write_rows(
        &mut self,
        seq: SeqId,
        layer: usize,
        start: usize,
        n: usize,
        planes: &[&[f32]],
    ) -> Result<(), KvError> {
        self.check_layer(layer)?;
        let s = self.seq(seq)?;
        if start.saturating_add(n) > s.len {
            let pos = start.saturating_add(n.saturating_sub(1));
            return Err(KvError::PositionOutOfRange { seq, pos, len: s.len });
        }
        if n == 0 {
            return Ok(());
        }
        let bs = self.block_size;
        let (i0, i1) = (start / bs, (start + n - 1) / bs);
        for i in i0..=i1 {
            self.check_live(seq, s, i * bs)?;
        }
        let shared: Vec<usize> = (i0..=i1).filter(|&i| self.blocks[s.blocks[i] as usize].refs > 1).collect();
        if shared.len() > self.free_blocks() {
            return Err(KvError::OutOfBlocks { needed: shared.len(), free: self.free_blocks() });
        }
        let len = s.len;
        for i in shared {
            self.make_private(seq, i, (len - i * bs).min(bs));
        }
        let phys: Vec<u32> = self.seqs[&seq.0].blocks[i0..=i1].to_vec();
        let (hkv, dk, rb) = (self.layout.kv_heads(), self.layout.key_dim(), self.layout.row_bytes());
        let kern = Kernels::best();
        for t in 0..n {
            let pos = start + t;
            let (b, slot) = (phys[pos / bs - i0] as usize, pos % bs);
            for (p, src) in planes.iter().enumerate() {
                for h in 0..hkv {
                    let off = self.base + b * self.block_bytes + self.layout.row_offset(bs, layer, p, h, slot);
                    let row = &src[(t * hkv + h) * dk..][..dk];
                    self.layout.fmt.encode(kern, row, &mut self.buf[off..off + rb]);
                }
            }
            self.set_written(b, layer, slot);
        }
        for i in i0..=i1 {
            self.try_publish(seq, i);
        }
        Ok(())
    }

    /// Decodes plane `p`'s rows of one token: `[Hkv, Dk]`.
    fn read_rows(&self, seq: SeqId, layer: usize, pos: usize, p: usize) -> Result<Vec<f32>, KvError> {
        self.check_layer(layer)?;
        let s = self.seq(seq)?;
        if pos >= s.len {
            return Err(KvError::PositionOutOfRange { seq, pos, len: s.len });
        }
        self.check_live(seq, s, pos)?;
        let (hkv, dk, rb, bs) =
            (self.layout.kv_heads(), self.layout.key_dim(), self.layout.row_bytes(), self.block_size);
        let b = s.blocks[pos / bs] as usize;
        let mut out = vec![0f32; hkv * dk];
        for (h, dst) in out.chunks_exact_mut(dk).enumerate() {
            let off = self.base + b * self.block_bytes + self.layout.row_offset(bs, layer, p, h, pos % bs);
            self.layout.fmt.decode(Kernels::best(), &self.buf[off..off + rb], dst);
        }
        Ok(out)
    }

    /// The stored (rounded) K and V rows of one token, `[Hkv, D]` each.
    pub fn read_kv(&self, seq: SeqId, layer: usize, pos: usize) -> Result<(Vec<f32>, Vec<f32>), KvError> {
        self.gqa_dims("read_kv")?;
        Ok((self.read_rows(seq, layer, pos, 0)?, self.read_rows(seq, layer, pos, 1)?))
    }

    /// The stored (rounded) latent row of one token, `[R + P]`.
    pub fn read_latent(&self, seq: SeqId, layer: usize, pos: usize) -> Result<Vec<f32>, KvError> {
        self.latent_dim("read_latent")?;
        self.read_rows(seq, layer, pos, 0)
    }

    /// The kernels' view of `seq` in `layer`: all blocks of all layers are one pool, a layer
    /// is a byte offset inside each block.
    pub fn view(&self, seq: SeqId, layer: usize) -> Result<KvSeq<'_>, KvError> {
        self.check_layer(layer)?;
        let s = self.seq(seq)?;
        let bs = self.block_size;
        let pool = &self.buf[self.base..self.base + self.capacity_bytes()];
        let rb = self.layout.row_bytes();
        let plane = |p: usize| KvPlane {
            pool,
            fmt: self.layout.fmt,
            block_bytes: self.block_bytes,
            token_bytes: rb,
            head_bytes: bs * rb,
            offset_bytes: self.layout.plane_offset(bs, layer, p),
            dim: self.layout.key_dim(),
        };
        let v = match self.layout.mechanism {
            Mechanism::Gqa { .. } => ValueSource::Plane(plane(1)),
            Mechanism::Latent { rank, .. } => ValueSource::KeyPrefix { dim: rank },
        };
        Ok(KvSeq { k: plane(0), v, kv_heads: self.layout.kv_heads(), block_size: bs, table: &s.blocks, len: s.len })
    }

    // ---- blocks ----

    /// Takes an available block (caller checked `free_blocks() > 0`): a free one, else the
    /// least recently released cached one (evicted from the prefix index).
    fn alloc(&mut self) -> u32 {
        let b = match self.free.pop() {
            Some(b) => {
                self.poison_slots_from(b, 0);
                b
            }
            None => {
                let (_, b) = self.lru.pop_first().expect("caller checked free_blocks");
                self.unpublish(b);
                self.clear_written_from(b, 0);
                self.poison_slots_from(b, 0);
                b
            }
        };
        self.blocks[b as usize].refs = 1;
        b
    }

    fn incref(&mut self, b: u32) {
        let blk = &mut self.blocks[b as usize];
        if blk.refs == 0 {
            self.lru.remove(&blk.tick);
        }
        blk.refs += 1;
    }

    fn decref(&mut self, b: u32) {
        let blk = &mut self.blocks[b as usize];
        blk.refs -= 1;
        if blk.refs > 0 {
            return;
        }
        if blk.key.is_some() {
            self.tick += 1;
            blk.tick = self.tick;
            self.lru.insert(self.tick, b);
        } else {
            self.clear_written_from(b, 0);
            self.poison_slots_from(b, 0);
            self.free.push(b);
        }
    }

    /// Gives `seq` a private copy of its logical block `idx` if that block is shared; the
    /// copy keeps the written-row marks of the sequence's first `filled` slots.
    fn make_private(&mut self, seq: SeqId, idx: usize, filled: usize) {
        let b = self.seqs[&seq.0].blocks[idx];
        if self.blocks[b as usize].refs <= 1 {
            return;
        }
        let nb = self.alloc();
        let src = self.base + b as usize * self.block_bytes;
        self.buf.copy_within(src..src + self.block_bytes, self.base + nb as usize * self.block_bytes);
        for layer in 0..self.layout.layers {
            for slot in 0..filled {
                if self.is_written(b as usize, layer, slot) {
                    self.set_written(nb as usize, layer, slot);
                }
            }
        }
        self.poison_slots_from(nb, filled);
        self.decref(b);
        self.seqs.get_mut(&seq.0).expect("checked").blocks[idx] = nb;
    }

    /// Publishes `seq`'s logical block `idx` if it is full of known tokens, fully written
    /// and no block with its hash is published yet.
    fn try_publish(&mut self, seq: SeqId, idx: usize) {
        let s = &self.seqs[&seq.0];
        let (Some(&hash), Some(&b)) = (s.hashes.get(idx), s.blocks.get(idx)) else { return };
        if b == EVICTED {
            return;
        }
        let full = self.layout.layers * self.block_size;
        let blk = &self.blocks[b as usize];
        if blk.key.is_some() || blk.written as usize != full || self.index.contains_key(&hash) {
            return;
        }
        let bs = self.block_size;
        let parent = if idx == 0 { ROOT_HASH } else { s.hashes[idx - 1] };
        let tokens = s.tokens[idx * bs..(idx + 1) * bs].into();
        self.index.insert(hash, b);
        self.blocks[b as usize].key = Some(BlockKey { hash, parent, tokens });
    }

    fn unpublish(&mut self, b: u32) {
        if let Some(key) = self.blocks[b as usize].key.take() {
            if self.index.get(&key.hash) == Some(&b) {
                self.index.remove(&key.hash);
            }
        }
    }

    fn bit(&self, b: usize, layer: usize, slot: usize) -> (usize, u64) {
        let i = layer * self.block_size + slot;
        (b * self.words + i / 64, 1u64 << (i % 64))
    }

    fn is_written(&self, b: usize, layer: usize, slot: usize) -> bool {
        let (w, m) = self.bit(b, layer, slot);
        self.written[w] & m != 0
    }

    fn set_written(&mut self, b: usize, layer: usize, slot: usize) {
        let (w, m) = self.bit(b, layer, slot);
        if self.written[w] & m == 0 {
            self.written[w] |= m;
            self.blocks[b].written += 1;
        }
    }

    /// Forgets the writes of slots `from..B` in every layer of block `b`.
    fn clear_written_from(&mut self, b: u32, from: usize) {
        let b = b as usize;
        for layer in 0..self.layout.layers {
            for slot in from..self.block_size {
                let (w, m) = self.bit(b, layer, slot);
                if self.written[w] & m != 0 {
                    self.written[w] &= !m;
                    self.blocks[b].written -= 1;
                }
            }
        }
    }

    /// Fills the rows of slots `from..B` of block `b` with [`POISON`] (if poisoning is on).
    fn poison_slots_from(&mut self, b: u32, from: usize) {
        if !self.poison || from >= self.block_size {
            return;
        }
        let (bs, rb) = (self.block_size, self.layout.row_bytes());
        let start = self.base + b as usize * self.block_bytes;
        if from == 0 {
            self.buf[start..start + self.block_bytes].fill(POISON);
            return;
        }
        for layer in 0..self.layout.layers {
            for p in 0..self.layout.planes() {
                for h in 0..self.layout.kv_heads() {
                    let o = start + self.layout.row_offset(bs, layer, p, h, from);
                    self.buf[o..o + (bs - from) * rb].fill(POISON);
                }
            }
        }
    }

    /// Checks every internal invariant; `Err` names the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let bs = self.block_size;
        let mut refs = vec![0u64; self.num_blocks];
        for (&id, s) in &self.seqs {
            if s.blocks.len() != s.len.div_ceil(bs) {
                return Err(format!("seq#{id}: {} blocks for {} tokens", s.blocks.len(), s.len));
            }
            if s.len > s.limit || s.tokens.len() > s.len || s.hashes.len() > s.tokens.len() / bs {
                return Err(format!(
                    "seq#{id}: len {} limit {} tokens {} hashes {}",
                    s.len,
                    s.limit,
                    s.tokens.len(),
                    s.hashes.len()
                ));
            }
            for &b in s.blocks.iter().filter(|&&b| b != EVICTED) {
                refs[b as usize] += 1;
            }
        }
        let mut state = vec![0u8; self.num_blocks]; // bit 0 free stack, bit 1 LRU
        for &b in &self.free {
            if state[b as usize] != 0 {
                return Err(format!("block {b} twice on the free stack"));
            }
            state[b as usize] |= 1;
        }
        for (&t, &b) in &self.lru {
            if state[b as usize] != 0 || self.blocks[b as usize].tick != t {
                return Err(format!("block {b} in the LRU twice, also free, or with a stale tick"));
            }
            state[b as usize] |= 2;
        }
        for (i, blk) in self.blocks.iter().enumerate() {
            if blk.refs as u64 != refs[i] {
                return Err(format!("block {i}: refcount {} but {} table entries", blk.refs, refs[i]));
            }
            let expect = match (blk.refs, blk.key.is_some()) {
                (0, false) => 1,
                (0, true) => 2,
                _ => 0,
            };
            if state[i] != expect {
                return Err(format!(
                    "block {i}: refs {} published {} but state {}",
                    blk.refs,
                    blk.key.is_some(),
                    state[i]
                ));
            }
            let bits: u32 = self.written[i * self.words..(i + 1) * self.words].iter().map(|w| w.count_ones()).sum();
            if bits != blk.written || (blk.refs == 0 && blk.key.is_none() && bits != 0) {
                return Err(format!("block {i}: {} written rows counted, {bits} marked", blk.written));
            }
            if let Some(k) = &blk.key {
                if self.index.get(&k.hash) != Some(&(i as u32)) || blk.written as usize != self.layout.layers * bs {
                    return Err(format!("block {i}: published but not indexed or not fully written"));
                }
            }
        }
        for (&h, &b) in &self.index {
            if self.blocks[b as usize].key.as_ref().map(|k| k.hash) != Some(h) {
                return Err(format!("index entry {h:#x} → block {b} without that key"));
            }
        }
        Ok(())
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), KvError> {
    if expected == got {
        Ok(())
    } else {
        Err(KvError::Shape { what, expected, got })
    }
}
