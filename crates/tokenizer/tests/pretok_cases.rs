//! Optional: pre-tokenization against cases computed with a reference regex engine
//! (`tools/pretok_cases.py`), read from `$LATENT_PRETOK_CASES`. Skipped when unset.

mod common;

use latent_tokenizer::{Tokenizer, TokenizerSpec};

#[test]
fn pretokenizer_cases() {
    let Some(path) = std::env::var_os("LATENT_PRETOK_CASES") else {
        eprintln!("SKIP: set LATENT_PRETOK_CASES to a file written by tools/pretok_cases.py");
        return;
    };
    let data = std::fs::read_to_string(path).unwrap();
    let mut toks: std::collections::HashMap<String, Tokenizer> = Default::default();
    let mut failures = Vec::new();
    let mut n = 0;
    for line in data.lines() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let pre = case["pre"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        let want: Vec<&str> = case["pieces"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        let tok = toks.entry(pre.to_string()).or_insert_with(|| {
            Tokenizer::new(TokenizerSpec { pre: pre.into(), ..common::tiny_spec(&[], &[]) }).unwrap()
        });
        let got = tok.pre_tokenize(text);
        n += 1;
        if got != want {
            failures.push(format!("{pre}: {text:?}\n   got {got:?}\n  want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {n} cases differ:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{n} cases match");
}
