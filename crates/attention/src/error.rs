use thiserror::Error;

/// Errors from attention entry points: shapes and views that do not fit together.
#[derive(Debug, Error, Clone, PartialEq)]
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
}
