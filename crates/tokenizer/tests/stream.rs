//! Streaming detokenizer: complete UTF-8 only, same text as a full decode.

mod common;

use common::tiny_spec;
use latent_tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

fn stream_all(tok: &Tokenizer, ids: &[u32]) -> (Vec<String>, String) {
    let mut dec = StreamDecoder::new(tok);
    let mut outs = Vec::new();
    for &id in ids {
        outs.push(dec.push(id).unwrap());
    }
    let tail = dec.finish();
    (outs, tail)
}

#[test]
fn characters_split_across_byte_tokens() {
    // No merges: every byte is its own token, so every multi-byte character is split.
    let tok = Tokenizer::new(tiny_spec(&[], &[])).unwrap();
    let text = "é😀中a";
    let ids = tok.encode(text, false);
    assert_eq!(ids.len(), text.len());
    let (outs, tail) = stream_all(&tok, &ids);
    assert_eq!(outs, ["", "é", "", "", "", "😀", "", "", "中", "a"]);
    assert_eq!(tail, "");
    assert_eq!(outs.concat(), tok.decode(&ids).unwrap());
}

#[test]
fn invalid_bytes() {
    let tok = Tokenizer::new(tiny_spec(&[], &[])).unwrap();
    // A lone continuation byte can never be completed: replaced at once.
    let mut dec = StreamDecoder::new(&tok);
    assert_eq!(dec.push(0x80).unwrap(), "\u{FFFD}");
    // A lead byte is held; a byte that cannot continue it settles it.
    assert_eq!(dec.push(0xE4).unwrap(), "");
    assert_eq!(dec.pending_bytes(), [0xE4]);
    assert_eq!(dec.push(b'a' as u32).unwrap(), "\u{FFFD}a");
    // Held bytes at the end become U+FFFD only in finish().
    assert_eq!(dec.push(0xE4).unwrap(), "");
    assert_eq!(dec.push(0xB8).unwrap(), "");
    assert_eq!(dec.finish(), "\u{FFFD}");
    // Same as a lossy decode of everything.
    let ids = [0x80, 0xE4, b'a' as u32, 0xE4, 0xB8];
    let (outs, tail) = stream_all(&tok, &ids);
    assert_eq!(outs.concat() + &tail, tok.decode_lossy(&ids).unwrap());
    assert!(matches!(tok.decode(&ids), Err(TokenizerError::InvalidUtf8 { valid_up_to: 0 })));
    // Out-of-range ids are errors.
    let mut dec = StreamDecoder::new(&tok);
    assert!(matches!(dec.push(100_000), Err(TokenizerError::TokenOutOfRange { id: 100_000, .. })));
}

#[test]
fn model_stream_equals_decode() {
    let tok = model_or_skip!();
    let text = "Rust 🦀 est génial — 中文字符, emoji 😀👍🏽 and combining e\u{301}!\n<|im_end|>";
    let mut ids = tok.encode(text, false);
    ids.push(2); // <|im_end|> as a token
                 // The test must exercise split characters.
    assert!(ids.iter().any(|&id| std::str::from_utf8(tok.token_bytes(id).unwrap()).is_err()));
    let (outs, tail) = stream_all(tok, &ids);
    assert_eq!(tail, "");
    assert!(outs.iter().all(|s| !s.contains('\u{FFFD}')), "{outs:?}");
    assert_eq!(outs.concat(), tok.decode(&ids).unwrap());
    assert!(outs.concat().ends_with("<|im_end|><|im_end|>"));
    // Skipping special tokens drops only the control token's text.
    let mut dec = StreamDecoder::new(tok).skip_special(true);
    let mut s = String::new();
    for &id in &ids {
        s += &dec.push(id).unwrap();
    }
    s += &dec.finish();
    assert_eq!(s, tok.decode_skip_special(&ids).unwrap());
    assert!(s.ends_with("<|im_end|>") && !s.ends_with("<|im_end|><|im_end|>"));
}
