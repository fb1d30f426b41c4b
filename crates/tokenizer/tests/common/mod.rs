//! Shared helpers: locating the model and golden files, loading the tokenizer once.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use latent_tokenizer::Tokenizer;

/// `<workspace>/../shared`.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// The SmolLM2 GGUF: `$LATENT_MODEL`, else the shared copy.
pub fn model_path() -> PathBuf {
    match std::env::var_os("LATENT_MODEL") {
        Some(p) => PathBuf::from(p),
        None => shared_dir().join("models/smollm2-135m-instruct-q4_1.gguf"),
    }
}

/// The model's tokenizer, or `None` (with the reason printed) when the model is absent.
pub fn smollm() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = model_path();
        if !path.exists() {
            eprintln!("SKIP: model not found at {} (set LATENT_MODEL)", path.display());
            return None;
        }
        Some(Tokenizer::from_gguf_path(&path).expect("tokenizer of the model"))
    })
    .as_ref()
}

/// Skips the calling test (prints why) when the model is absent.
#[macro_export]
macro_rules! model_or_skip {
    () => {
        match common::smollm() {
            Some(t) => t,
            None => {
                eprintln!("SKIP: no model");
                return;
            }
        }
    };
}

use latent_tokenizer::{token_type, TokenizerSpec};

/// The gpt2 byte-level character of a byte, computed independently of the crate.
pub fn byte_char(b: u8) -> char {
    let printable = |x: u32| (0x21..=0x7E).contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x);
    if printable(b as u32) {
        return char::from_u32(b as u32).unwrap();
    }
    let n = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// A text in the byte-level alphabet.
pub fn encode_bytes(s: &str) -> String {
    s.bytes().map(byte_char).collect()
}

/// A small byte-level vocabulary: the 256 byte tokens (id = byte), then the results of
/// `merges` (in the byte-level alphabet, written here in plain text with ' ' for a space
/// inside a symbol being "Ġ"), then `specials` as `(text, token_type)`.
pub fn tiny_spec(merges: &[(&str, &str)], specials: &[(&str, i32)]) -> TokenizerSpec {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut token_types = vec![token_type::NORMAL; 256];
    let mut merge_strs = Vec::new();
    for (a, b) in merges {
        let (ea, eb) = (encode_bytes(a), encode_bytes(b));
        let joined = format!("{ea}{eb}");
        if !tokens.contains(&joined) {
            tokens.push(joined);
            token_types.push(token_type::NORMAL);
        }
        merge_strs.push(format!("{ea} {eb}"));
    }
    for (text, ty) in specials {
        tokens.push(text.to_string());
        token_types.push(*ty);
    }
    TokenizerSpec {
        model: "gpt2".into(),
        pre: "gpt-2".into(),
        tokens,
        token_types,
        merges: merge_strs,
        ..Default::default()
    }
}

/// Decoded text of each token.
pub fn pieces(tok: &latent_tokenizer::Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter().map(|&id| String::from_utf8_lossy(tok.token_bytes(id).expect("id in range")).into_owned()).collect()
}
