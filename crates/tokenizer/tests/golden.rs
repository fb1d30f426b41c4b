//! Tokenization of the eval text against llama.cpp's, token for token.

mod common;

use std::time::Instant;

#[test]
fn rust_book_sample_matches_llama_cpp() {
    let tok = model_or_skip!();
    let text_path = common::shared_dir().join("data/eval/rust-book-sample.txt");
    let golden_path = common::shared_dir().join("golden/smollm2/rust-book-sample.tokens.json");
    if !text_path.exists() || !golden_path.exists() {
        eprintln!("SKIP: eval text or golden tokens missing under {}", common::shared_dir().display());
        return;
    }
    let text = std::fs::read_to_string(&text_path).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&golden_path).unwrap()).unwrap();
    let expected: Vec<u32> =
        golden["tokens"].as_array().expect("tokens array").iter().map(|v| v.as_u64().unwrap() as u32).collect();

    let t0 = Instant::now();
    let got = tok.encode(&text, false);
    let elapsed = t0.elapsed();
    eprintln!("encoded {} bytes into {} tokens in {:?}", text.len(), got.len(), elapsed);

    if got != expected {
        let first = got.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
        let lo = first.saturating_sub(5);
        let show = |ids: &[u32]| {
            ids.iter()
                .map(|&id| format!("{id}:{:?}", String::from_utf8_lossy(tok.token_bytes(id).unwrap_or(b"?"))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        panic!(
            "first difference at token {first} (got {} tokens, expected {})\n got: {}\nwant: {}",
            got.len(),
            expected.len(),
            show(&got[lo..(first + 8).min(got.len())]),
            show(&expected[lo..(first + 8).min(expected.len())]),
        );
    }
    // The first token is the whole word "Introduction".
    assert_eq!(tok.decode(&got[..1]).unwrap(), "Introduction");

    // Round trip.
    assert_eq!(tok.decode(&got).unwrap(), text);
    // With BOS: SmolLM2 asks for none.
    assert_eq!(tok.encode_with_bos(&text, false), expected);
}

#[test]
fn eval_text_is_fast() {
    let tok = model_or_skip!();
    let text_path = common::shared_dir().join("data/eval/rust-book-sample.txt");
    let Ok(text) = std::fs::read_to_string(&text_path) else {
        eprintln!("SKIP: eval text missing");
        return;
    };
    // A fresh tokenizer state does not matter for timing: measure a cold pass with words
    // that are new to the cache by perturbing the text.
    let cold: String = text.chars().rev().collect();
    let t0 = Instant::now();
    let n = tok.encode(&cold, false).len();
    let dt = t0.elapsed();
    eprintln!("cold pass: {n} tokens in {dt:?}");
    assert!(dt.as_secs_f64() < 1.0, "tokenizing ~8k words took {dt:?}");
}
