//! Optional conformance run over llama.cpp-style vocabulary test sets: a directory
//! (`$LATENT_VOCAB_TESTS`) of `NAME.gguf` vocabulary files, each with `NAME.gguf.inp`
//! (inputs separated by `\n__ggml_vocab_test__\n`) and `NAME.gguf.out` (one line of
//! space-separated expected ids per input; encoded without special tokens). Skipped when the
//! variable is unset.

use std::path::Path;

use latent_tokenizer::{Tokenizer, TokenizerError};

fn read_cases(dir: &Path, name: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(dir.join(format!("{name}.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap();
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(sep) {
            Some(n) => {
                inputs.push(inp[pos..pos + n].to_string());
                pos += n + sep.len();
            }
            None => {
                inputs.push(inp[pos..].to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> =
        out.lines().map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect()).collect();
    assert_eq!(inputs.len(), outputs.len(), "{name}: inputs and outputs differ in count");
    inputs.into_iter().zip(outputs).collect()
}

#[test]
fn vocab_test_sets() {
    let Some(dir) = std::env::var_os("LATENT_VOCAB_TESTS") else {
        eprintln!("SKIP: set LATENT_VOCAB_TESTS to a directory of NAME.gguf + .inp/.out test sets");
        return;
    };
    let dir = Path::new(&dir);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".gguf") && dir.join(format!("{n}.inp")).exists())
        .collect();
    names.sort();
    let mut failures = Vec::new();
    let mut checked = 0;
    for name in &names {
        let tok = match Tokenizer::from_gguf_path(dir.join(name)) {
            Ok(t) => t,
            Err(e @ (TokenizerError::UnsupportedModel(_) | TokenizerError::UnsupportedPreTokenizer(_))) => {
                eprintln!("{name}: skipped ({e})");
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        let cases = read_cases(dir, name);
        let mut bad = 0;
        for (text, want) in &cases {
            let got = tok.encode(text, false);
            if &got != want {
                bad += 1;
                failures.push(format!("{name} ({}): {text:?}\n   got {got:?}\n  want {want:?}", tok.pre_tokenizer()));
            }
        }
        checked += cases.len();
        eprintln!("{name} ({}): {}/{} cases match", tok.pre_tokenizer(), cases.len() - bad, cases.len());
    }
    assert!(failures.is_empty(), "{} of {checked} cases differ:\n{}", failures.len(), failures.join("\n"));
}
