//! Invalid specs and inputs give typed errors.

mod common;

use common::tiny_spec;
use latent_tokenizer::{token_type, Tokenizer, TokenizerError, TokenizerSpec};

fn err(spec: TokenizerSpec) -> TokenizerError {
    Tokenizer::new(spec).expect_err("spec should be rejected")
}

#[test]
fn bad_specs() {
    let ok = tiny_spec(&[("a", "b")], &[]);
    assert!(Tokenizer::new(ok.clone()).is_ok());

    assert_eq!(
        err(TokenizerSpec { tokens: vec![], token_types: vec![], merges: vec![], ..ok.clone() }),
        TokenizerError::EmptyVocab
    );

    let mut s = ok.clone();
    s.merges.push("qq z".into()); // "qq" is no token and no merge result
    assert!(matches!(err(s), TokenizerError::UnknownMergeToken { index: 1, token, .. } if token == "qq"));

    let mut s = ok.clone();
    s.merges.push("abc".into());
    assert!(matches!(err(s), TokenizerError::MalformedMerge { index: 1, .. }));

    let mut s = ok.clone();
    s.tokens.push("a".into());
    s.token_types.push(token_type::NORMAL);
    assert!(matches!(err(s), TokenizerError::DuplicateToken { first: 97, .. }));

    let mut s = ok.clone();
    s.token_types.truncate(10);
    assert!(matches!(err(s), TokenizerError::TokenTypesLength { got: 10, .. }));

    assert_eq!(
        err(TokenizerSpec { model: "llama".into(), ..ok.clone() }),
        TokenizerError::UnsupportedModel("llama".into())
    );
    assert_eq!(
        err(TokenizerSpec { pre: "tekken".into(), ..ok.clone() }),
        TokenizerError::UnsupportedPreTokenizer("tekken".into())
    );
    assert!(matches!(
        err(TokenizerSpec { eos: Some(100_000), ..ok.clone() }),
        TokenizerError::SpecialTokenOutOfRange { name: "eos", id: 100_000, .. }
    ));
    assert_eq!(
        err(TokenizerSpec { add_bos: true, bos: None, ..ok.clone() }),
        TokenizerError::MissingSpecialToken("bos")
    );
}

#[test]
fn bad_ids() {
    let tok = Tokenizer::new(tiny_spec(&[], &[])).unwrap();
    assert_eq!(tok.decode(&[97, 300]), Err(TokenizerError::TokenOutOfRange { id: 300, vocab_size: 256 }));
    assert_eq!(tok.decode(&[0xE4]), Err(TokenizerError::InvalidUtf8 { valid_up_to: 0 }));
    assert_eq!(tok.decode_lossy(&[b'a' as u32, 0xE4]).unwrap(), "a\u{FFFD}");
    assert_eq!(tok.decode_bytes(&[b'a' as u32, 0xE4]).unwrap(), [b'a', 0xE4]);
}

#[test]
fn gguf_errors() {
    let missing = Tokenizer::from_gguf_path("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(missing, TokenizerError::Gguf(_)), "{missing}");
}
