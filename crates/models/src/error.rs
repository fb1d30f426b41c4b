use thiserror::Error;

/// Errors loading or running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{path}")]
    Gguf {
        path: String,
        #[source]
        source: latent_formats::gguf::GgufError,
    },
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
    #[error("stream window of {span} tokens (window + sinks) exceeds the context of {ctx}")]
    Window { span: usize, ctx: usize },
    #[error("non-finite logits (NaN or infinity) at position {token}: the model's weights or settings overflow")]
    NonFinite { token: usize },
    #[error("invalid batch: {0}")]
    Config(String),
    #[error(transparent)]
    Quant(#[from] latent_quant::QuantError),
    #[error(transparent)]
    Attention(#[from] latent_attention::AttnError),
}
