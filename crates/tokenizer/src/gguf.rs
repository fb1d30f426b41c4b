//! Building a tokenizer from GGUF metadata.

use latent_formats::gguf::{GgufError, GgufFile};

use crate::error::TokenizerError;
use crate::tokenizer::{Tokenizer, TokenizerSpec};

/// GGUF metadata keys read by [`Tokenizer::from_gguf`].
pub mod keys {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
}

fn gguf_err(e: GgufError) -> TokenizerError {
    TokenizerError::Gguf(e.to_string())
}

fn opt_str(f: &GgufFile, key: &str) -> Result<Option<String>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(_) => f.get_str(key).map(|s| Some(s.to_string())).map_err(gguf_err),
    }
}

fn opt_bool(f: &GgufFile, key: &str) -> Result<Option<bool>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(_) => f.get_bool(key).map(Some).map_err(gguf_err),
    }
}

/// A special token id: the metadata's if present and in range, else `default` if in range
/// (llama.cpp ignores out-of-range ids with a warning).
fn special_id(f: &GgufFile, key: &str, default: Option<u32>, n: usize) -> Result<Option<u32>, TokenizerError> {
    let default = default.filter(|&d| (d as usize) < n);
    match f.get(key) {
        None => Ok(default),
        Some(_) => {
            let id = f.get_u32(key).map_err(gguf_err)?;
            Ok(if (id as usize) < n { Some(id) } else { default })
        }
    }
}

impl TokenizerSpec {
    /// Reads the `tokenizer.*` metadata of a GGUF file, with llama.cpp's defaults for what is
    /// absent (for `gpt2`: BOS and EOS default to id 11 when in range; `add_bos` defaults to
    /// true for the llama3 family of pre-tokenizers).
    pub fn from_gguf(f: &GgufFile) -> Result<TokenizerSpec, TokenizerError> {
        let model = f.get_str(keys::MODEL).map_err(gguf_err)?.to_string();
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model));
        }
        let pre = opt_str(f, keys::PRE)?.unwrap_or_default();
        let tokens: Vec<String> =
            f.get_str_array(keys::TOKENS).map_err(gguf_err)?.into_iter().map(str::to_string).collect();
        let n = tokens.len();
        // `contains`, not `get`: `get` would parse the array into a value kept for good.
        let token_types = if f.contains(keys::TOKEN_TYPE) {
            f.get_i32_array(keys::TOKEN_TYPE).map_err(gguf_err)?
        } else {
            Vec::new()
        };
        let merges: Vec<String> =
            f.get_str_array(keys::MERGES).map_err(gguf_err)?.into_iter().map(str::to_string).collect();

        let bos = special_id(f, keys::BOS_ID, Some(11), n)?;
        let eos = special_id(f, keys::EOS_ID, Some(11), n)?;
        let eot = special_id(f, keys::EOT_ID, None, n)?;
        let unk = special_id(f, keys::UNK_ID, None, n)?;
        let pad = special_id(f, keys::PAD_ID, None, n)?;
        let add_bos = opt_bool(f, keys::ADD_BOS)?.unwrap_or_else(|| TokenizerSpec::default_add_bos(&model, &pre));
        let add_eos = opt_bool(f, keys::ADD_EOS)?.unwrap_or(false);
        let chat_template = opt_str(f, keys::CHAT_TEMPLATE)?;
        Ok(TokenizerSpec {
            model,
            pre,
            tokens,
            token_types,
            merges,
            bos,
            eos,
            eot,
            unk,
            pad,
            add_bos,
            add_eos,
            chat_template,
        })
    }
}

impl Tokenizer {
    /// The tokenizer of a GGUF model.
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::new(TokenizerSpec::from_gguf(f)?)
    }

    /// Opens a GGUF file and builds its tokenizer.
    pub fn from_gguf_path(path: impl AsRef<std::path::Path>) -> Result<Tokenizer, TokenizerError> {
        let f = GgufFile::open(path).map_err(gguf_err)?;
        Tokenizer::from_gguf(&f)
    }
}
