//! Byte-level BPE round trips and the streaming decoder.
//!
//! Built once (lazily): a small gpt2-style vocabulary written as GGUF metadata with
//! `GgufBuilder`, read back with `GgufFile` and `Tokenizer::from_gguf` — one tokenizer per
//! supported pre-tokenizer, all over the same vocabulary (the first input byte picks one).
//! The vocabulary has the 256 byte tokens, merges over ASCII and multi-byte UTF-8 (every merge
//! result is a token, so byte-level BPE is lossless), control, user-defined, unknown, unused
//! and byte-type tokens, a normal token outside the byte alphabet and an empty token.
//!
//! Per input:
//! - if the rest is UTF-8, `decode(encode(text))` is `text` exactly, with and without
//!   special-token parsing, and encoding twice (the word cache) gives the same ids;
//! - the rest as little-endian u16 token ids (mod the vocabulary size) through
//!   `StreamDecoder`: the concatenated output is `decode_lossy` of the ids, and with
//!   `skip_special` it is `decode_skip_special` whenever that is valid UTF-8.
#![no_main]

use std::sync::OnceLock;

use latent_formats::gguf::{GgufBuilder, GgufFile};
use latent_tokenizer::{gguf_keys as keys, token_type, StreamDecoder, Tokenizer, SUPPORTED_PRE_TOKENIZERS};
use libfuzzer_sys::fuzz_target;

/// The gpt2 byte-level character of a byte.
fn byte_char(b: u8) -> char {
    let printable = |x: u32| (0x21..=0x7E).contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x);
    if printable(b as u32) {
        return char::from_u32(b as u32).unwrap();
    }
    let n = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// Merges over raw bytes, highest priority first; each result becomes a token.
const MERGES: &[(&[u8], &[u8])] = &[
    (b"t", b"h"),
    (b"h", b"e"),
    (b"th", b"e"),
    (b" ", b"t"),
    (b" t", b"he"),
    (b"i", b"n"),
    (b"in", b"g"),
    (b" ", b"a"),
    (b"e", b"r"),
    (b"o", b"n"),
    (b" ", b"s"),
    (b"r", b"e"),
    (b" ", b" "),
    (b"  ", b"  "),
    (b"\n", b"\n"),
    (b"1", b"2"),
    (b"12", b"3"),
    (b"'", b"s"),
    (b"\xc3", b"\xa9"), // é
    (b"\xe4", b"\xb8"),
    (b"\xe4\xb8", b"\xad"), // 中
    (b"\xf0", b"\x9f"),
    (b"<", b"|"),
    (b"|", b">"),
];

/// Special tokens: (text, token type).
const SPECIALS: &[(&str, i32)] = &[
    ("<|endoftext|>", token_type::CONTROL),
    ("<|im_start|>", token_type::CONTROL),
    ("<|im_end|>", token_type::CONTROL),
    ("<tool>", token_type::USER_DEFINED),
    ("<|im", token_type::USER_DEFINED), // a prefix of other specials
    ("<unk>", token_type::UNKNOWN),
    ("<unused0>", token_type::UNUSED),
    ("<0x41>", token_type::BYTE),
    ("日本", token_type::NORMAL), // not in the byte alphabet: decodes to a marker
    ("", token_type::NORMAL),     // empty: renamed [EMPTY_n]
];

/// Bytes in the byte-level alphabet.
fn encode_bytes(s: &[u8]) -> String {
    s.iter().map(|&b| byte_char(b)).collect()
}

fn gguf_vocab(pre: &str) -> Vec<u8> {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![token_type::NORMAL; 256];
    let mut merges = Vec::new();
    for (a, b) in MERGES {
        let (ea, eb) = (encode_bytes(a), encode_bytes(b));
        let joined = format!("{ea}{eb}");
        if !tokens.contains(&joined) {
            tokens.push(joined);
            types.push(token_type::NORMAL);
        }
        merges.push(format!("{ea} {eb}"));
    }
    for (text, ty) in SPECIALS {
        tokens.push(text.to_string());
        types.push(*ty);
    }
    let eos = tokens.iter().position(|t| t == "<|endoftext|>").unwrap() as u32;
    let mut b = GgufBuilder::new();
    b.meta(keys::MODEL, "gpt2")
        .meta(keys::PRE, pre)
        .meta(keys::TOKENS, tokens)
        .meta(keys::TOKEN_TYPE, types)
        .meta(keys::MERGES, merges)
        .meta(keys::BOS_ID, eos)
        .meta(keys::EOS_ID, eos)
        .meta(keys::ADD_BOS, false);
    b.build().expect("vocabulary GGUF")
}

fn tokenizers() -> &'static [Tokenizer] {
    static TOKS: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    TOKS.get_or_init(|| {
        SUPPORTED_PRE_TOKENIZERS
            .iter()
            .map(|pre| {
                let file = GgufFile::from_bytes(gguf_vocab(pre)).expect("vocabulary parses");
                Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("tokenizer for pre {pre:?}: {e}"))
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let toks = tokenizers();
    let tok = &toks[sel as usize % toks.len()];
    let n = tok.vocab_size() as u32;

    if let Ok(text) = std::str::from_utf8(rest) {
        for parse_special in [false, true] {
            let ids = tok.encode(text, parse_special);
            assert!(ids.iter().all(|&id| id < n), "id out of range: {ids:?}");
            let back = tok.decode(&ids).unwrap_or_else(|e| panic!("decode of {ids:?}: {e}"));
            assert_eq!(back, text, "pre {} parse_special {parse_special}: ids {ids:?}", tok.pre_tokenizer());
            // The word cache is transparent.
            assert_eq!(tok.encode(text, parse_special), ids);
        }
        // Pre-tokenization covers the text exactly, in order.
        assert_eq!(tok.pre_tokenize(text).concat(), text, "pre {}", tok.pre_tokenizer());
    }

    let ids: Vec<u32> =
        rest.chunks(2).map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32 % n).collect();
    let mut stream = StreamDecoder::new(tok);
    let mut out = String::new();
    for &id in &ids {
        out.push_str(&stream.push(id).expect("id in range"));
        assert!(stream.pending_bytes().len() < 4, "pending {:?}", stream.pending_bytes());
    }
    out.push_str(&stream.finish());
    assert_eq!(out, tok.decode_lossy(&ids).unwrap());

    let mut stream = StreamDecoder::new(tok).skip_special(true);
    let mut out = String::new();
    for &id in &ids {
        out.push_str(&stream.push(id).expect("id in range"));
    }
    out.push_str(&stream.finish());
    if let Ok(s) = tok.decode_skip_special(&ids) {
        assert_eq!(out, s);
    }
    // An out-of-range id is an error, not a panic.
    assert!(StreamDecoder::new(tok).push(n).is_err());
});
