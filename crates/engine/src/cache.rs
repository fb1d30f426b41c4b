//! A sequence's KV cache as the model sees it: a sequence in a paged [`BlockPool`], lent to
//! the model through [`CacheAccess`]. Slots are reserved as the model writes positions; the
//! kernels read the block-table view. Under a stream window the blocks no later query can
//! see go back to the pool after every pass, so a stream's memory stays flat.

use latent_attention::{AttnError, KvSeq, RowFormat};
use latent_kv::{BlockPool, CacheLayout, KvError, SeqId, DEFAULT_BLOCK_SIZE};
use latent_models::{CacheAccess, CacheSpec, StreamWindow};

pub struct SeqCache {
    pool: BlockPool,
    seq: SeqId,
    capacity: usize,
    window: Option<StreamWindow>,
    /// The most tokens held at once (released rows not counted).
    peak_tokens: usize,
}

impl SeqCache {
    /// A pool holding `capacity` tokens of `spec` in `fmt`, with one sequence.
    pub fn new(spec: CacheSpec, fmt: RowFormat, capacity: usize) -> Result<SeqCache, KvError> {
        SeqCache::with_window(spec, fmt, capacity, None, capacity)
    }

    /// A sequence of up to `capacity` tokens. With a `window`, the pool holds only what one
    /// pass of up to `pass_tokens` can see (sinks + window + the pass, rounded up to blocks)
    /// and the sequence may grow past it: [`SeqCache::release_dead`] frees the rest.
    pub fn with_window(
        spec: CacheSpec,
        fmt: RowFormat,
        capacity: usize,
        window: Option<StreamWindow>,
        pass_tokens: usize,
    ) -> Result<SeqCache, KvError> {
        let layout = match spec {
            CacheSpec::Gqa { layers, kv_heads, head_dim } => CacheLayout::gqa(layers, kv_heads, head_dim, fmt),
            CacheSpec::Latent { layers, rank, rope } => CacheLayout::latent(layers, rank, rope, fmt.dtype),
        };
        let bs = DEFAULT_BLOCK_SIZE;
        let blocks = match window {
            None => capacity.div_ceil(bs),
            Some(w) => {
                let live = w.sinks.div_ceil(bs) + (w.window.saturating_add(pass_tokens)).div_ceil(bs) + 2;
                live.min(capacity.div_ceil(bs))
            }
        };
        let mut pool = BlockPool::with_blocks(layout, bs, blocks.max(1))?;
        let seq = pool.create_limited(capacity);
        Ok(SeqCache { pool, seq, capacity, window, peak_tokens: 0 })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes the cache holds per token (all layers, scales included).
    pub fn bytes_per_token(&self) -> usize {
        self.pool.bytes_per_token()
    }

    /// Bytes of the blocks in use.
    pub fn bytes_used(&self) -> usize {
        self.pool.bytes_used()
    }

    /// Bytes of one block (block size tokens of every layer, planes aligned).
    pub fn block_bytes(&self) -> usize {
        self.pool.block_bytes()
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    pub fn layout(&self) -> &CacheLayout {
        self.pool.layout()
    }

    /// Tokens whose rows are held now (positions written minus those released).
    pub fn held_tokens(&self) -> usize {
        let len = self.pool.len(self.seq).unwrap_or(0);
        let bs = self.pool.block_size();
        let total = len.div_ceil(bs);
        let held = self.pool.held_blocks(self.seq).unwrap_or(total);
        len - (total - held) * bs
    }

    /// The most tokens held at once so far.
    pub fn peak_tokens(&self) -> usize {
        self.peak_tokens.max(self.held_tokens())
    }

    /// After a pass: records the peak, then returns the blocks no later query can see.
    pub fn release_dead(&mut self) -> Result<usize, KvError> {
        self.peak_tokens = self.peak_tokens();
        let Some(w) = self.window else { return Ok(0) };
        let len = self.pool.len(self.seq)?;
        self.pool.release(self.seq, w.dead_range(len))
    }

    fn reserve(&mut self, pos: usize) -> Result<(), KvError> {
        let len = self.pool.len(self.seq)?;
        if pos >= len {
            self.pool.append(self.seq, pos + 1 - len)?;
        }
        Ok(())
    }
}

impl CacheAccess for SeqCache {
    fn write_kv(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<(), AttnError> {
        self.reserve(pos).map_err(AttnError::cache)?;
        self.pool.write_kv(self.seq, layer, pos, k, v).map_err(AttnError::cache)
    }

    fn write_latent(&mut self, layer: usize, pos: usize, row: &[f32]) -> Result<(), AttnError> {
        self.reserve(pos).map_err(AttnError::cache)?;
        self.pool.write_latent(self.seq, layer, pos, row).map_err(AttnError::cache)
    }

    fn view(&self, layer: usize, len: usize) -> Result<KvSeq<'_>, AttnError> {
        let mut v = self.pool.view(self.seq, layer).map_err(AttnError::cache)?;
        if len > v.len {
            let seq = self.seq;
            return Err(AttnError::cache(KvError::PositionOutOfRange { seq, pos: len - 1, len: v.len }));
        }
        v.len = len;
        Ok(v)
    }
}
