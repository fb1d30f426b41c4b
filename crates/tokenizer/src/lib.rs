//! Tokenizers of GGUF models, exact against llama.cpp.
//!
//! - [`Tokenizer`]: gpt2-style byte-level BPE (`tokenizer.ggml.model = gpt2`) with the
//!   pre-tokenizer named by `tokenizer.ggml.pre`, special-token parsing, decoding.
//! - [`StreamDecoder`]: incremental detokenization that only yields complete UTF-8.
//! - [`Tokenizer::render_chat`]: the model's Jinja chat template.
//!
//! See `docs/TOKENIZER.md` for the pipeline.

mod bpe;
mod chat;
mod error;
mod gguf;
mod pretokenize;
mod stream;
mod table;
mod tokenizer;
mod unicode;
mod unicode_tables;
mod vocab;

pub use chat::{
    render_template, ChatMessage, CHAT_FUEL_BASE, CHAT_FUEL_PER_BYTE, CHAT_FUEL_PER_MESSAGE, CHAT_MAX_FORMAT_WIDTH,
    CHAT_MAX_JSON_INDENT, CHAT_RECURSION_LIMIT,
};
pub use error::TokenizerError;
pub use gguf::keys as gguf_keys;
pub use pretokenize::SUPPORTED_PRE_TOKENIZERS;
pub use stream::{DecodeState, StreamDecoder};
pub use tokenizer::{Tokenizer, TokenizerSpec};
pub use unicode_tables::UNICODE_VERSION;
pub use vocab::token_type;
