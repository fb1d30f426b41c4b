//! A sequence's KV cache as the model sees it: a sequence in a paged [`BlockPool`], lent to
//! the model through [`CacheAccess`]. Slots are reserved as the model writes positions; the
//! kernels read the block-table view.

use latent_attention::{KvSeq, RowFormat};
use latent_kv::{BlockPool, CacheLayout, KvError, SeqId, DEFAULT_BLOCK_SIZE};
use latent_models::{CacheAccess, CacheSpec, ModelError};

pub struct SeqCache {
    pool: BlockPool,
    seq: SeqId,
    capacity: usize,
}

fn kv_err(e: KvError) -> ModelError {
    ModelError::Cache(e.to_string())
}

impl SeqCache {
    /// A pool holding `capacity` tokens of `spec` in `fmt`, with one sequence.
    pub fn new(spec: CacheSpec, fmt: RowFormat, capacity: usize) -> Result<SeqCache, KvError> {
        let layout = match spec {
            CacheSpec::Gqa { layers, kv_heads, head_dim } => CacheLayout::gqa(layers, kv_heads, head_dim, fmt),
            CacheSpec::Latent { layers, rank, rope } => CacheLayout::latent(layers, rank, rope, fmt.dtype),
        };
        let blocks = capacity.div_ceil(DEFAULT_BLOCK_SIZE).max(1);
        let mut pool = BlockPool::with_blocks(layout, DEFAULT_BLOCK_SIZE, blocks)?;
        let seq = pool.create_limited(capacity);
        Ok(SeqCache { pool, seq, capacity })
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

    pub fn layout(&self) -> &CacheLayout {
        self.pool.layout()
    }

    fn reserve(&mut self, pos: usize) -> Result<(), ModelError> {
        let len = self.pool.len(self.seq).map_err(kv_err)?;
        if pos >= len {
            self.pool.append(self.seq, pos + 1 - len).map_err(kv_err)?;
        }
        Ok(())
    }
}

impl CacheAccess for SeqCache {
    fn write_kv(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<(), ModelError> {
        self.reserve(pos)?;
        self.pool.write_kv(self.seq, layer, pos, k, v).map_err(kv_err)
    }

    fn write_latent(&mut self, layer: usize, pos: usize, row: &[f32]) -> Result<(), ModelError> {
        self.reserve(pos)?;
        self.pool.write_latent(self.seq, layer, pos, row).map_err(kv_err)
    }

    fn view(&self, layer: usize, len: usize) -> Result<KvSeq<'_>, ModelError> {
        let mut v = self.pool.view(self.seq, layer).map_err(kv_err)?;
        if len > v.len {
            return Err(ModelError::Cache(format!("{len} tokens requested, {} written", v.len)));
        }
        v.len = len;
        Ok(v)
    }
}
