//! What one token costs in the cache and where its rows sit inside a block.
//!
//! Dimension legend: L layers, B block size (tokens), Hkv KV heads, D head dim,
//! R kv_lora_rank, P rope dim, rb bytes of one row in its [`RowFormat`].
//!
//! A block holds `B` tokens of every layer: `[L, planes, plane]` where `planes` is K, V for
//! [`Mechanism::Gqa`] and the latent row alone for [`Mechanism::Latent`], and one plane is
//! head-major `[Hkv, B, rb]`, padded to [`ALIGN`] bytes. Head-major keeps each head's rows
//! of a block contiguous, so decode streams them without strides.

use crate::error::KvError;
use latent_attention::{KvDtype, RowFormat};

/// Largest layer count, head count or row dim a layout accepts.
pub const MAX_DIM: usize = 1 << 20;

/// Alignment (bytes) of the pool, of every block and of every plane inside a block.
pub const ALIGN: usize = 64;

/// Which rows a token stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// MHA / GQA / MQA: a K and a V plane of `kv_heads × head_dim` per token.
    Gqa { kv_heads: usize, head_dim: usize },
    /// MLA / low-rank K/V: one latent row `[c_KV (R) | k_rope (P)]` per token; the values
    /// are its first R elements (`ValueSource::KeyPrefix`).
    Latent { rank: usize, rope_dim: usize },
}

impl Mechanism {
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::Gqa { .. } => "K/V (gqa)",
            Mechanism::Latent { .. } => "latent",
        }
    }
}

/// The cache geometry of a model: layers, mechanism and row format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheLayout {
    pub layers: usize,
    pub mechanism: Mechanism,
    pub fmt: RowFormat,
}

fn round_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

impl CacheLayout {
    /// K and V planes of `kv_heads × head_dim` per token and layer, rows stored in `fmt`.
    /// MHA is `kv_heads = heads`, MQA `kv_heads = 1`.
    pub fn gqa(layers: usize, kv_heads: usize, head_dim: usize, fmt: RowFormat) -> CacheLayout {
        CacheLayout { layers, mechanism: Mechanism::Gqa { kv_heads, head_dim }, fmt }
    }

    /// One latent row `[c_KV (R) | k_rope (P)]` per token and layer. With an 8-bit `dtype`
    /// the RoPE part stays bf16 ([`RowFormat::latent`]). `rope_dim = 0` is a plain low-rank
    /// cache.
    pub fn latent(layers: usize, kv_lora_rank: usize, rope_dim: usize, dtype: KvDtype) -> CacheLayout {
        CacheLayout {
            layers,
            mechanism: Mechanism::Latent { rank: kv_lora_rank, rope_dim },
            fmt: RowFormat::latent(dtype, rope_dim),
        }
    }

    /// Checks every dimension is usable.
    pub fn validate(&self) -> Result<(), KvError> {
        let bad = |m: String| Err(KvError::Config(m));
        if self.layers == 0 {
            return bad("layers must be ≥ 1".into());
        }
        let (heads, dim) = match self.mechanism {
            Mechanism::Gqa { kv_heads, head_dim } => (kv_heads, head_dim),
            Mechanism::Latent { rank, rope_dim } => (1, rank.saturating_add(rope_dim)),
        };
        if self.layers > MAX_DIM || heads > MAX_DIM || dim > MAX_DIM {
            return bad(format!("layers {}, heads {heads}, row dim {dim}: each must be ≤ {MAX_DIM}", self.layers));
        }
        if self.fmt.dtype.is_8bit() && self.fmt.group == 0 {
            return bad("8-bit scale group must be ≥ 1".into());
        }
        match self.mechanism {
            Mechanism::Gqa { kv_heads, head_dim } if kv_heads == 0 || head_dim == 0 => {
                bad(format!("kv_heads {kv_heads} and head_dim {head_dim} must be ≥ 1"))
            }
            Mechanism::Latent { rank: 0, .. } => bad("kv_lora_rank must be ≥ 1".into()),
            _ => Ok(()),
        }
    }

    /// Planes per layer: 2 (K, V) or 1 (latent).
    pub fn planes(&self) -> usize {
        match self.mechanism {
            Mechanism::Gqa { .. } => 2,
            Mechanism::Latent { .. } => 1,
        }
    }

    /// Rows per token, layer and plane: Hkv, or 1 for a latent cache.
    pub fn kv_heads(&self) -> usize {
        match self.mechanism {
            Mechanism::Gqa { kv_heads, .. } => kv_heads,
            Mechanism::Latent { .. } => 1,
        }
    }

    /// Elements of a key row: D, or R + P.
    pub fn key_dim(&self) -> usize {
        match self.mechanism {
            Mechanism::Gqa { head_dim, .. } => head_dim,
            Mechanism::Latent { rank, rope_dim } => rank + rope_dim,
        }
    }

    /// Elements of a value row: D, or R (the key row's prefix).
    pub fn value_dim(&self) -> usize {
        match self.mechanism {
            Mechanism::Gqa { head_dim, .. } => head_dim,
            Mechanism::Latent { rank, .. } => rank,
        }
    }

    /// Bytes of one stored row (every plane's rows have the key dim's size), scales included.
    pub fn row_bytes(&self) -> usize {
        self.fmt.row_bytes(self.key_dim())
    }

    /// Bytes one token takes in one layer (all planes and heads, no padding).
    pub fn bytes_per_token_layer(&self) -> usize {
        self.planes() * self.kv_heads() * self.row_bytes()
    }

    /// Bytes one token takes in all layers, scales included, no padding.
    pub fn bytes_per_token(&self) -> usize {
        self.layers * self.bytes_per_token_layer()
    }

    /// Bytes of one plane of a block: `[Hkv, B, rb]` rounded up to [`ALIGN`].
    pub fn plane_bytes(&self, block_size: usize) -> usize {
        round_up(self.kv_heads() * block_size * self.row_bytes(), ALIGN)
    }

    /// Bytes of one block of `block_size` tokens (all layers), a multiple of [`ALIGN`].
    pub fn block_bytes(&self, block_size: usize) -> usize {
        self.layers * self.planes() * self.plane_bytes(block_size)
    }

    /// [`CacheLayout::block_bytes`], `None` if it overflows.
    pub fn checked_block_bytes(&self, block_size: usize) -> Option<usize> {
        let plane = self.kv_heads().checked_mul(block_size)?.checked_mul(self.row_bytes())?.checked_add(ALIGN - 1)?;
        (plane / ALIGN * ALIGN).checked_mul(self.layers.checked_mul(self.planes())?)
    }

    /// Offset of (layer, plane) inside a block.
    pub fn plane_offset(&self, block_size: usize, layer: usize, plane: usize) -> usize {
        (layer * self.planes() + plane) * self.plane_bytes(block_size)
    }

    /// Offset of the row of (layer, plane, head, slot) inside a block.
    pub fn row_offset(&self, block_size: usize, layer: usize, plane: usize, head: usize, slot: usize) -> usize {
        self.plane_offset(block_size, layer, plane) + (head * block_size + slot) * self.row_bytes()
    }
}
