use std::sync::Arc;
use thiserror::Error;

/// A boxed error from outside this crate (a cache, a quantized matrix), kept as the source.
pub type External = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Errors from attention entry points: shapes and views that do not fit together, and the
/// errors of the caches and weights a layer runs on (kept typed, as the source).
#[derive(Debug, Error, Clone)]
pub enum AttnError {
    #[error("query heads {heads} not a positive multiple of kv heads {kv_heads}")]
    Heads { heads: usize, kv_heads: usize },
    #[error("{what}: expected {expected} elements, got {got}")]
    Len { what: &'static str, expected: usize, got: usize },
    #[error("sequence {seq}: {msg}")]
    Seq { seq: usize, msg: String },
    #[error("invalid mask: {0}")]
    Mask(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Cache(External),
    #[error("matrix {name}")]
    Matrix {
        name: String,
        #[source]
        source: External,
    },
}

impl AttnError {
    /// Wraps a cache's error.
    pub fn cache(e: impl std::error::Error + Send + Sync + 'static) -> AttnError {
        AttnError::Cache(Arc::new(e))
    }
}
