//! Hand-written cases: how SmolLM2's tokenizer (pre-tokenizer `smollm`) splits text, and
//! BPE / special-token behaviour on a small synthetic vocabulary.

mod common;

use common::{pieces, tiny_spec};
use latent_tokenizer::{token_type, Tokenizer, TokenizerSpec};

fn encode_pieces(tok: &Tokenizer, text: &str) -> Vec<String> {
    let ids = tok.encode(text, false);
    assert_eq!(tok.decode(&ids).unwrap(), text, "round trip of {text:?}");
    pieces(tok, &ids)
}

#[test]
fn empty_string() {
    let tok = model_or_skip!();
    assert!(tok.encode("", false).is_empty());
    assert!(tok.encode("", true).is_empty());
    assert!(tok.encode_with_bos("", false).is_empty()); // SmolLM2 adds no BOS
    assert_eq!(tok.decode(&[]).unwrap(), "");
}

#[test]
fn leading_spaces() {
    let tok = model_or_skip!();
    assert_eq!(encode_pieces(tok, " Hello world"), [" Hello", " world"]);
    // A run of spaces gives all but the last to its own token; the last joins the word.
    assert_eq!(encode_pieces(tok, "  leading"), [" ", " leading"]);
    assert_eq!(encode_pieces(tok, "   three"), ["  ", " three"]);
    assert_eq!(tok.encode(" ", false), [216]);
}

#[test]
fn digits_are_split_one_by_one() {
    let tok = model_or_skip!();
    // smollm isolates every digit first, so the space before a number stays alone.
    assert_eq!(tok.pre_tokenize("in 2024, 3.14"), ["in", " ", "2", "0", "2", "4", ",", " ", "3", ".", "1", "4"]);
    assert_eq!(encode_pieces(tok, "1,000,000"), ["1", ",", "0", "0", "0", ",", "0", "0", "0"]);
    // Digit ids are consecutive: '0' = 32 ... '9' = 41.
    assert_eq!(tok.encode("0123456789", false), (32..=41).collect::<Vec<u32>>());
    // The piece boundary after a digit is hard: "x  1" keeps both spaces together.
    assert_eq!(encode_pieces(tok, "x  1"), ["x", "  ", "1"]);
    // Other numeric characters (\p{N}) are isolated too.
    assert_eq!(tok.pre_tokenize("½ ٣"), ["½", " ", "٣"]);
    // The generic gpt2 pre-tokenizer keeps " 2024" together, and splits "x  1" differently
    // (the last space goes with the number): a different tokenization.
    let gpt2 = Tokenizer::new(TokenizerSpec { pre: "gpt-2".into(), ..smollm_spec() }).unwrap();
    assert_eq!(gpt2.pre_tokenize("in 2024"), ["in", " 2024"]);
    assert_eq!(gpt2.pre_tokenize("x  1"), ["x", " ", " 1"]);
    assert_eq!(pieces(&gpt2, &gpt2.encode("x  1", false)), ["x", " ", " ", "1"]);
    assert_ne!(gpt2.encode("x  1", false), tok.encode("x  1", false));
}

fn smollm_spec() -> TokenizerSpec {
    let f = latent_formats::gguf::GgufFile::open(common::model_path()).unwrap();
    TokenizerSpec::from_gguf(&f).unwrap()
}

#[test]
fn unicode_text() {
    let tok = model_or_skip!();
    for text in ["你好世界", "こんにちは", "😀👍🏽 ok", "café", "cafe\u{301}", "Ünïcödé — “quotes”", "٣ \u{3000}x"]
    {
        let ids = tok.encode(text, false);
        assert!(!ids.is_empty());
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    // Letters stay one word; a combining mark (\p{M}, not a letter) starts a new one.
    assert_eq!(tok.pre_tokenize("你好世界"), ["你好世界"]);
    assert_eq!(tok.pre_tokenize("cafe\u{301}"), ["cafe", "\u{301}"]);
    assert_eq!(tok.pre_tokenize("café"), ["café"]);
    assert_eq!(encode_pieces(tok, "café"), ["c", "af", "é"]);
    // An emoji is 4 bytes: byte-level tokens that are not characters on their own.
    let ids = tok.encode("😀", false);
    assert!(ids.len() > 1);
    assert!(ids.iter().any(|&id| std::str::from_utf8(tok.token_bytes(id).unwrap()).is_err()));
    // Non-ASCII white space is white space.
    assert_eq!(tok.pre_tokenize(" \u{3000}x"), [" ", "\u{3000}", "x"]);
}

#[test]
fn newlines_and_whitespace_runs() {
    let tok = model_or_skip!();
    assert_eq!(tok.encode("a\n\nb", false), [81, 198, 198, 82]);
    assert_eq!(tok.pre_tokenize("a\n\n\n  b\t\tc  "), ["a", "\n\n\n ", " b", "\t", "\t", "c", "  "]);
    assert_eq!(encode_pieces(tok, "a\n\n\n  b\t\tc  "), ["a", "\n\n", "\n ", " b", "\t", "\t", "c", "  "]);
    assert_eq!(encode_pieces(tok, "\r\n"), ["\r\n"]);
    assert_eq!(encode_pieces(tok, "end.\n"), ["end", ".", "\n"]);
}

#[test]
fn contractions() {
    let tok = model_or_skip!();
    assert_eq!(tok.pre_tokenize("don't I'LL we've you'd"), ["don", "'t", " I", "'", "LL", " we", "'ve", " you", "'d"]);
    assert_eq!(encode_pieces(tok, "it's"), ["it", "'s"]);
}

#[test]
fn special_tokens_only_when_asked() {
    let tok = model_or_skip!();
    let text = "<|im_start|>user\nhi<|im_end|>";
    let plain = tok.encode(text, false);
    assert!(!plain.contains(&1) && !plain.contains(&2), "{plain:?}");
    assert_eq!(tok.decode(&plain).unwrap(), text);
    assert_eq!(&pieces(tok, &plain)[..4], ["<", "|", "im", "_"]);
    let parsed = tok.encode(text, true);
    assert_eq!(parsed, [1, 4093, 198, 6004, 2]);
    assert_eq!(tok.decode(&parsed).unwrap(), text);
    assert_eq!(tok.decode_skip_special(&parsed).unwrap(), "user\nhi");
}

#[test]
fn special_ids_and_end_of_generation() {
    let tok = model_or_skip!();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert!(!tok.add_bos());
    assert_eq!(tok.token_text(1), Some("<|im_start|>"));
    // llama.cpp's end-of-generation set for this vocabulary: <|endoftext|>, <|im_end|>, and
    // <reponame> (taken as a FIM "repo" token).
    assert_eq!(tok.eog_ids(), [0, 2, 4]);
    assert!(tok.is_eog(2) && tok.is_eog(0) && !tok.is_eog(1) && !tok.is_eog(198));
    assert!(tok.is_control(1));
    assert_eq!(tok.token_bytes(49152), None);
}

#[test]
fn bpe_applies_merges_by_rank() {
    // "a b" outranks "b c": "abc" -> "ab" + "c" -> "abc".
    let tok = Tokenizer::new(tiny_spec(&[("a", "b"), ("b", "c"), ("ab", "c")], &[])).unwrap();
    assert_eq!(pieces(&tok, &tok.encode("abc", false)), ["abc"]);
    // "b c" first: "a" + "bc", and no rule joins those.
    let tok = Tokenizer::new(tiny_spec(&[("b", "c"), ("a", "b"), ("ab", "c")], &[])).unwrap();
    assert_eq!(pieces(&tok, &tok.encode("abc", false)), ["a", "bc"]);
    // Equal ranks: leftmost first.
    let tok = Tokenizer::new(tiny_spec(&[("a", "a")], &[])).unwrap();
    assert_eq!(pieces(&tok, &tok.encode("aaa", false)), ["aa", "a"]);
    assert_eq!(pieces(&tok, &tok.encode("aaaa", false)), ["aa", "aa"]);
    // Merges never cross pre-token words.
    let tok = Tokenizer::new(tiny_spec(&[("a", " "), (" ", "a")], &[])).unwrap();
    assert_eq!(pieces(&tok, &tok.encode("a a", false)), ["a", " a"]);
}

#[test]
fn merge_result_missing_from_vocab_falls_back_to_bytes() {
    let mut spec = tiny_spec(&[("x", "y")], &[]);
    // Drop the "xy" token: the rule still applies, the result falls back to its bytes.
    assert_eq!(spec.tokens.pop().as_deref(), Some("xy"));
    spec.token_types.pop();
    let tok = Tokenizer::new(spec).unwrap();
    assert_eq!(tok.encode("xy", false), [b'x' as u32, b'y' as u32]);
}

#[test]
fn user_defined_tokens_are_always_split_out() {
    let spec = tiny_spec(&[], &[("<ctl>", token_type::CONTROL), ("<user>", token_type::USER_DEFINED)]);
    let tok = Tokenizer::new(spec).unwrap();
    let (ctl, user) = (tok.token_id("<ctl>").unwrap(), tok.token_id("<user>").unwrap());
    let ids = tok.encode("a<user>b<ctl>", false);
    assert!(ids.contains(&user) && !ids.contains(&ctl));
    let ids = tok.encode("a<user>b<ctl>", true);
    assert_eq!(ids, [b'a' as u32, user, b'b' as u32, ctl]);
}

#[test]
fn longest_special_token_wins() {
    let spec = tiny_spec(&[], &[("<a>", token_type::CONTROL), ("<a><a>", token_type::CONTROL)]);
    let tok = Tokenizer::new(spec).unwrap();
    let (a, aa) = (tok.token_id("<a>").unwrap(), tok.token_id("<a><a>").unwrap());
    assert_eq!(tok.encode("<a><a><a>", true), [aa, a]);
}

#[test]
fn bos_and_eos_follow_the_spec() {
    let mut spec = tiny_spec(&[], &[("<s>", token_type::CONTROL), ("</s>", token_type::CONTROL)]);
    spec.bos = Some(256);
    spec.eos = Some(257);
    spec.add_bos = true;
    let tok = Tokenizer::new(spec.clone()).unwrap();
    assert_eq!(tok.encode_with_bos("a", false), [256, b'a' as u32]);
    assert_eq!(tok.encode("a", false), [b'a' as u32]);
    assert!(tok.is_eog(257));
    spec.add_eos = true;
    let tok = Tokenizer::new(spec).unwrap();
    assert_eq!(tok.encode_with_bos("a", false), [256, b'a' as u32, 257]);
    // The llama3 family asks for BOS by default.
    assert!(TokenizerSpec::default_add_bos("gpt2", "llama-bpe"));
    assert!(!TokenizerSpec::default_add_bos("gpt2", "smollm"));
}

#[test]
fn other_pre_tokenizers() {
    let with_pre = |pre: &str| Tokenizer::new(TokenizerSpec { pre: pre.into(), ..tiny_spec(&[], &[]) }).unwrap();
    assert_eq!(with_pre("llama-bpe").pre_tokenize("I'M 12345!!\n\n"), ["I", "'M", " ", "123", "45", "!!\n\n"]);
    assert_eq!(with_pre("qwen2").pre_tokenize("x 123"), ["x", " ", "1", "2", "3"]);
    assert_eq!(with_pre("default").pre_tokenize("a+b 12345"), ["a", "+", "b", " ", "123", "45"]);
    assert_eq!(with_pre("deepseek-llm").pre_tokenize("Hello world\n42"), ["Hello", " world", "\n", "42"]);
    assert_eq!(with_pre("deepseek-v3").pre_tokenize("Hi 中文 1234"), ["Hi", " ", "中文", " ", "123", "4"]);
    assert_eq!(with_pre("").pre_tokenize("ok"), ["ok"]);
    for pre in latent_tokenizer::SUPPORTED_PRE_TOKENIZERS {
        let tok = with_pre(pre);
        let text = "Hello, world! It's 2024 — naïve café 中文 😀\n\n  x";
        assert_eq!(tok.decode(&tok.encode(text, false)).unwrap(), text, "{pre}");
    }
}

#[test]
fn llama3_family_takes_whole_words_from_the_vocabulary() {
    // "abc" is a token but the merges would give "ab" + "c": the llama3 family (ignore_merges)
    // takes the word as is, the others run the merges.
    let mut spec = tiny_spec(&[("a", "b")], &[]);
    spec.tokens.push("abc".into());
    spec.token_types.push(token_type::NORMAL);
    let gpt2 = Tokenizer::new(spec.clone()).unwrap();
    assert_eq!(pieces(&gpt2, &gpt2.encode("abc", false)), ["ab", "c"]);
    let llama3 = Tokenizer::new(TokenizerSpec { pre: "llama-bpe".into(), ..spec }).unwrap();
    assert_eq!(pieces(&llama3, &llama3.encode("abc", false)), ["abc"]);
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    let tok = std::sync::Arc::new(Tokenizer::new(tiny_spec(&[("a", "b")], &[])).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let tok = tok.clone();
            std::thread::spawn(move || {
                let text = format!("ab {i} ab abab");
                (0..200).all(|_| tok.decode(&tok.encode(&text, false)).unwrap() == text)
            })
        })
        .collect();
    assert!(handles.into_iter().all(|h| h.join().unwrap()));
}
