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
            eprintln!(
                "SKIP: model not found at {} (set LATENT_MODEL)",
                path.display()
            );
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
