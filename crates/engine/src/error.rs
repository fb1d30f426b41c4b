use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] latent_models::ModelError),
    #[error(transparent)]
    Tokenizer(#[from] latent_tokenizer::TokenizerError),
    #[error("prompt of {prompt} tokens plus {gen} to generate exceeds the context of {ctx}")]
    ContextFull { prompt: usize, gen: usize, ctx: usize },
    #[error("KV cache full: {0}")]
    CacheFull(String),
    #[error("KV cache")]
    Kv(#[from] latent_kv::KvError),
    #[error("{0}")]
    Invalid(String),
    #[error("thread pool: {0}")]
    Threads(String),
}
