//! Model architectures, one file each, built from shared blocks ([`blocks`]).
//!
//! A model is loaded from a GGUF file ([`load`]) and never owns a KV cache: every forward
//! pass borrows one through [`CacheAccess`], which the engine implements on its paged pool.
//!
//! Dimension legend: T tokens of the pass, C hidden size, H query heads, Hkv KV heads,
//! D head dim, F FFN hidden size, V vocabulary.

pub mod blocks;
pub mod deepseek2;
mod error;
pub mod llama;
pub mod moe;
pub mod reference;
pub mod testing;
pub mod weights;

pub use error::ModelError;
pub use latent_quant::MatmulPrecision;

pub use latent_attention::{BatchCache, CacheAccess, MlaPath, Single, StreamWindow};
use latent_formats::gguf::GgufFile;
use std::path::Path;
use std::sync::Arc;

/// What the cache must hold per token and layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSpec {
    /// K and V rows of `kv_heads × head_dim` per layer (MHA/GQA/MQA).
    Gqa { layers: usize, kv_heads: usize, head_dim: usize },
    /// One latent row `[rank | rope]` per layer (MLA).
    Latent { layers: usize, rank: usize, rope: usize },
}

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's `[V]`.
    Last,
    /// Every token's `[T, V]`.
    All,
    /// None (prefill of a prefix whose logits are not needed).
    None,
}

/// Execution settings of a forward pass.
pub struct Exec<'a> {
    /// Prefill-sized work (many rows) and attention.
    pub pool: &'a rayon::ThreadPool,
    /// Single-row matrix products of a decode step (short loops, no per-op pool wake-up).
    pub team: Option<&'a latent_kernels::team::Team>,
    pub precision: MatmulPrecision,
    /// StreamingLLM window with sinks (`None`: full causal attention).
    pub window: Option<StreamWindow>,
    /// MLA execution path (`Auto`: per pass, by [`latent_attention::Mla::choose_path`]).
    pub mla_path: MlaPath,
    /// Observer of intermediate activations (`None` in inference).
    pub tap: Option<&'a dyn Tap>,
}

/// Observes a forward pass's activations (calibration statistics for `latent convert`).
pub trait Tap: Sync {
    /// Layer `layer`'s normalized attention input `[ΣT, C]` (the rows of every pass, in order).
    fn attn_input(&self, layer: usize, xn: &[f32]);
}

/// Facts about a loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub architecture: String,
    pub name: String,
    pub vocab: usize,
    pub context: usize,
    pub hidden: usize,
    pub layers: usize,
    pub cache: CacheSpec,
}

/// One sequence's part of a batched forward pass: `tokens` (≥ 1) at positions
/// `pos0..pos0+T` of that sequence, and the logits it wants.
#[derive(Clone, Copy, Debug)]
pub struct Pass<'a> {
    pub tokens: &'a [u32],
    pub pos0: usize,
    pub logits: Logits,
}

/// A runnable architecture.
///
/// Batch invariance: a pass's logits and cache rows are bit-identical whether it runs alone
/// or in a batch with any others, in any order. The weight products run once over all rows
/// of the batch with kernels whose per-row result does not depend on the other rows; each
/// pass attends over its own cache alone, exactly as by itself.
pub trait Model: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// Runs every pass of a batch: pass s appends its K/V (or latents) to segment s of
    /// `cache` and gets its requested logits (`[V]`, `[T, V]` or none), in order.
    fn forward_batch(
        &self,
        ex: &Exec,
        passes: &[Pass],
        cache: &mut dyn BatchCache,
    ) -> Result<Vec<Vec<f32>>, ModelError>;

    /// Runs `tokens` at positions `pos0..pos0+T`, appending their K/V (or latents) to the
    /// cache, and returns the requested logits (`[V]` or `[T, V]`).
    fn forward(
        &self,
        ex: &Exec,
        tokens: &[u32],
        pos0: usize,
        cache: &mut dyn CacheAccess,
        logits: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = self.forward_batch(ex, &[Pass { tokens, pos0, logits }], &mut Single(cache))?;
        Ok(out.pop().unwrap_or_default())
    }
}

/// Loads any supported architecture from a GGUF file.
pub fn load(path: impl AsRef<Path>) -> Result<Arc<dyn Model>, ModelError> {
    let path = path.as_ref();
    let file =
        Arc::new(GgufFile::open(path).map_err(|e| ModelError::Gguf { path: path.display().to_string(), source: e })?);
    load_from(file)
}

/// Loads from an open GGUF file.
pub fn load_from(file: Arc<GgufFile>) -> Result<Arc<dyn Model>, ModelError> {
    let arch = file
        .architecture()
        .map_err(|e| ModelError::Metadata { key: "general.architecture".into(), msg: e.to_string() })?
        .to_string();
    match arch.as_str() {
        "llama" => Ok(Arc::new(llama::Llama::load(file)?)),
        "deepseek2" => Ok(Arc::new(deepseek2::Deepseek2::load(file)?)),
        other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
    }
}
