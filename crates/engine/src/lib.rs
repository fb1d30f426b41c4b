//! The engine: a loaded model with its tokenizer, thread pool and precision; sessions that
//! own a sequence's KV cache and lend it to the model; sampling; generation, teacher-forced
//! logits and perplexity.

mod cache;
mod error;
pub mod sampling;
mod session;
pub use session::logsumexp;

pub use cache::SeqCache;
pub use error::EngineError;
pub use latent_attention::KvDtype;
pub use latent_models::{Logits, MatmulPrecision, MlaPath, StreamWindow};
pub use sampling::{Sampler, SamplingParams};
pub use session::{Engine, EngineOptions, GenerateOutput, PerplexityOutput, Session};
