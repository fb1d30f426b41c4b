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
//! ```
//! use latent_attention::KvDtype;
//! use latent_kv::{BlockPool, CacheLayout, DEFAULT_BLOCK_SIZE};
//!
//! // DeepSeek-V2-Lite-like MLA cache: 27 layers of [c_KV (512) | k_rope (64)], FP8 latent.
//! let layout = CacheLayout::latent(27, 512, 64, KvDtype::Fp8);
//! let mut pool = BlockPool::with_budget(layout, DEFAULT_BLOCK_SIZE, 64 << 20)?;
//! let prompt = [1u32, 2, 3];
//! let (seq, cached) = pool.create_with_prefix(&prompt);
//! let new = pool.append_tokens(seq, &prompt[cached..])?;
//! for layer in 0..27 {
//!     for pos in new.clone() {
//!         pool.write_latent(seq, layer, pos, &[0.5; 576])?; // computed by the model
//!     }
//! }
//! let view = pool.view(seq, 0)?; // what latent_attention::decode reads
//! assert_eq!((view.len, pool.bytes_per_token()), (3, 27 * 656));
//! pool.free(seq)?;
//! # Ok::<(), latent_kv::KvError>(())
//! ```
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
