//! SmolLM2-135M converted to MLA at half its KV cache: the file loads, and its perplexity on
//! scored text the calibration never saw stays within the measured cost of the method.

use latent_attention::KvDtype;
use latent_convert::report::perplexity;
use latent_convert::{convert, Calibration, ConvertOptions, Method, Source, WeightType};
use latent_formats::gguf::GgufFile;
use std::path::PathBuf;
use std::sync::Arc;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

#[test]
fn smollm2_at_half_the_kv_cache() {
    let model = std::env::var("LATENT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| shared().join("models/smollm2-135m-instruct-q4_1.gguf"));
    let text = shared().join("data/eval/rust-book-sample.txt");
    if !model.exists() || !text.exists() {
        eprintln!("SKIP: needs {} and {} (set LATENT_MODEL)", model.display(), text.display());
        return;
    }
    let src = Source::open(&model.display().to_string()).expect("source");
    let text = std::fs::read_to_string(&text).expect("eval text");
    let tok = latent_tokenizer::Tokenizer::from_gguf(&src.file).expect("tokenizer");
    let ids = tok.encode(&text, false);
    // Calibration on the first 2048 tokens (4 sequences of 512: one is held out for the
    // per-layer choices); scored: 2 windows of 512 after the first 4096.
    let cal = Calibration::collect_ids(&src, &ids[..2048], 512, 2).expect("calibration");
    let eval = &ids[4096..4096 + 1024];
    let opts = ConvertOptions {
        kv_rank: 128,
        rope_dim: 64,
        method: Method::FULL,
        q_type: Some(WeightType::Q8_0),
        latent_type: WeightType::F32,
    };
    let conv = convert(&src, &cal, &opts).expect("convert");
    let file = Arc::new(GgufFile::from_bytes(conv.bytes).expect("gguf"));
    let base = perplexity(src.file.clone(), eval, 512, 2, KvDtype::F32).expect("source ppl");
    let mla = perplexity(file, eval, 512, 2, KvDtype::F32).expect("converted ppl");
    eprintln!("source {base:.3}, MLA at 50 % {mla:.3} ({:+.1} %)", 100.0 * (mla / base - 1.0));
    assert!(mla.is_finite() && mla > base, "converted {mla} vs source {base}");
    // Measured here: +35.0 % (2048 calibration tokens, one sequence of 4 held out; +35.9 %
    // without the key refit); the report's protocol (6 windows, 4096 calibration tokens)
    // measures +14.2 % for this method and +81 % for the known recipe (docs/BENCHMARKS.md,
    // "Conversion").
    assert!(mla < base * 1.40, "converted perplexity {mla} vs source {base}");
}
