//! The paged KV cache: a fixed pool of blocks that owns the cache memory of every layer,
//! sequences as block tables over it, and the [`latent_attention::KvSeq`] views the attention
//! kernels read.
//!
//! * [`CacheLayout`]: what a token stores per mechanism — K and V rows (MHA/GQA/MQA) or one
//!   latent row `[c_KV | k_rope]` (MLA, low-rank) — and the byte layout of a block.
//! * [`BlockPool`]: capacity fixed at start (blocks or a byte budget); sequences append,
//!   write, fork (copy-on-write sharing), truncate and free; full blocks are prefix-cached
//!   by a chained hash of their token ids and evicted least recently released first.
//!
//! The byte layout, sharing rules and error semantics are specified in `docs/KV_CACHE.md`.
//!
//! Dimension legend: L layers, B block size, T tokens, Hkv KV heads, D head dim,
//! R kv_lora_rank, P rope dim.

mod error;
mod layout;
mod pool;
pub mod prefix;

pub use error::{KvError, SeqId};
pub use layout::{CacheLayout, Mechanism, ALIGN, MAX_DIM};
pub use pool::{BlockPool, Capacity, PoolConfig, DEFAULT_BLOCK_SIZE, POISON};
