//! Error type of the crate.

/// Everything that can go wrong while building or using a [`crate::Tokenizer`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` is not one this crate implements (only `gpt2` is).
    #[error("unsupported tokenizer model '{0}' (supported: gpt2)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not implement.
    #[error("unsupported pre-tokenizer '{0}'")]
    UnsupportedPreTokenizer(String),
    /// The vocabulary has no tokens.
    #[error("the vocabulary is empty")]
    EmptyVocab,
    /// Two tokens have the same text.
    #[error("duplicate token {token:?}: ids {first} and {second}")]
    DuplicateToken { token: String, first: u32, second: u32 },
    /// `token_types` is present but shorter than the vocabulary.
    #[error("{got} token types for {expected} tokens")]
    TokenTypesLength { expected: usize, got: usize },
    /// A merge rule is not two symbols separated by a space.
    #[error("malformed merge #{index}: {merge:?}")]
    MalformedMerge { index: usize, merge: String },
    /// A merge rule uses a symbol that is neither a token, a byte, nor the result of a merge.
    #[error("merge #{index} {merge:?} references unknown token {token:?}")]
    UnknownMergeToken { index: usize, merge: String, token: String },
    /// A special token id (bos, eos, ...) is not in the vocabulary.
    #[error("special token {name} = {id} is out of range (vocabulary of {vocab_size})")]
    SpecialTokenOutOfRange { name: &'static str, id: u32, vocab_size: usize },
    /// The metadata asks to add a special token that it does not define.
    #[error("{0} is to be added but no {0} token is set")]
    MissingSpecialToken(&'static str),
    /// A token id is not in the vocabulary.
    #[error("token id {id} is out of range (vocabulary of {vocab_size})")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    /// The decoded bytes are not valid UTF-8 (e.g. a character cut between tokens).
    #[error("decoded bytes are not valid UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    /// The model has no chat template.
    #[error("the model has no chat template")]
    NoChatTemplate,
    /// The chat template failed to compile or render (including `raise_exception`).
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A count or size from the metadata does not fit the tokenizer's 32-bit ids and
    /// offsets (the vocabulary, the merge rules with the symbols they form, or the total
    /// bytes of the token pieces).
    #[error("{what} of {size} exceeds the limit of {limit}")]
    TooLarge { what: &'static str, size: u64, limit: u64 },
    /// Reading the tokenizer metadata from a GGUF file failed.
    #[error("GGUF metadata: {0}")]
    Gguf(String),
}
