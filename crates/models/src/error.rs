use thiserror::Error;

/// Errors loading or running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("GGUF: {0}")]
    Gguf(String),
    #[error("unsupported architecture {0:?}")]
    UnsupportedArchitecture(String),
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {name:?}: expected shape {expected:?}, found {found:?}")]
    Shape { name: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("tensor {name:?}: unsupported type {ty}")]
    TensorType { name: String, ty: String },
    #[error("metadata {key:?}: {msg}")]
    Metadata { key: String, msg: String },
    #[error("token id {id} out of range (vocabulary {vocab})")]
    Token { id: u32, vocab: usize },
    #[error("position {pos} + {n} tokens exceeds the context of {ctx}")]
    Context { pos: usize, n: usize, ctx: usize },
    #[error("cache: {0}")]
    Cache(String),
    #[error(transparent)]
    Quant(#[from] latent_quant::QuantError),
    #[error(transparent)]
    Attention(#[from] latent_attention::AttnError),
}
