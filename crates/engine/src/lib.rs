//! The engine: a loaded model with its tokenizer, thread pool and precision; the scheduler
//! that runs many sequences in one paged pool with batched forward steps (the step function
//! every command and the server run); sessions that own one sequence's KV cache for
//! teacher-forced logits and perplexity; sampling; serving metrics.

mod cache;
mod error;
pub mod metrics;
pub mod sampling;
pub mod scheduler;
mod session;
pub use session::logsumexp;

pub use cache::SeqCache;
pub use error::EngineError;
pub use latent_attention::KvDtype;
pub use latent_models::{Logits, MatmulPrecision, MlaPath, StreamWindow};
pub use metrics::Metrics;
pub use sampling::{Sampler, SamplingParams};
pub use scheduler::{
    Client, Event, Finish, Request, RequestHandle, Scheduler, SchedulerOptions, Sink, StepReport, SubmitError,
    TokenLogprob, Usage,
};
pub use session::{Engine, EngineOptions, GenerateOutput, PerplexityOutput, Session};
