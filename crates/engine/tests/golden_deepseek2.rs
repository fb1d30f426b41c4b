//! The tiny DeepSeek-V2-architecture models (../shared/golden/deepseek2-tiny) against
//! llama.cpp: teacher-forced top-32 logits and perplexity at ctx 128; absorbed == naive MLA;
//! only the latent is cached.

use latent_engine::{Engine, EngineOptions, MatmulPrecision, MlaPath};
use latent_formats::gguf::GgufFile;
use latent_models::deepseek2::Deepseek2;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden/deepseek2-tiny")
}

fn engine(variant: &str, path: MlaPath) -> Option<Engine> {
    let p = dir().join(format!("deepseek2-tiny-{variant}.gguf"));
    if !p.exists() {
        eprintln!("SKIP: {} not found", p.display());
        return None;
    }
    let file = Arc::new(GgufFile::open(&p).unwrap());
    let tok = latent_tokenizer::Tokenizer::from_gguf(&file).unwrap();
    let m = Deepseek2::load(file).unwrap();
    let opts = EngineOptions { threads: 2, precision: MatmulPrecision::Exact, mla_path: path, ..Default::default() };
    Some(Engine::new(Arc::new(m), tok, opts).unwrap())
}

/// The shared evaluation text (read only once a model was found, so a clone without
/// ../shared skips instead of failing).
fn eval_text() -> String {
    let p = dir().join("../../data/eval/rust-book-sample.txt");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn golden(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn forced_max_diff(e: &Engine, g: &Value) -> f64 {
    let toks: Vec<u32> = g["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let logits = e.forced_logits(&toks).unwrap();
    let v = e.model.info().vocab;
    let mut max_d = 0f64;
    for (i, p) in g["positions"].as_array().unwrap().iter().enumerate() {
        let row = &logits[i * v..(i + 1) * v];
        for (id, l) in p["top_ids"].as_array().unwrap().iter().zip(p["top_logits"].as_array().unwrap()) {
            max_d = max_d.max((row[id.as_u64().unwrap() as usize] as f64 - l.as_f64().unwrap()).abs());
        }
        let lse = latent_engine::logsumexp(row);
        max_d = max_d.max((lse - p["logsumexp"].as_f64().unwrap()).abs());
    }
    max_d
}

#[test]
fn forced_logits_and_perplexity_match_llama_cpp() {
    for variant in ["v2", "lite", "v3"] {
        let Some(e) = engine(variant, MlaPath::Auto) else { return };
        let text = eval_text();
        let d = forced_max_diff(&e, &golden(&format!("deepseek2-tiny-{variant}.forced64.top32.json")));
        let toks = e.tokenizer.encode(&text, false);
        let p = e.perplexity(&toks, 128, |_, _| {}).unwrap();
        let want = golden(&format!("deepseek2-tiny-{variant}.ppl128.json"))["ppl"].as_f64().unwrap();
        eprintln!(
            "{variant}: max |Δ logit| {d:.2e}; ppl {:.3} vs {want:.3} ({:+.5}%)",
            p.ppl,
            100.0 * (p.ppl / want - 1.0)
        );
        // Measured ≤ 4.8e-6 (f32 weights, f32 cache: summation order only).
        assert!(d <= 5e-5, "{variant}: max |Δ logit| {d}");
        assert!((p.ppl / want - 1.0).abs() <= 1e-5, "{variant}: ppl {} vs {want}", p.ppl);
    }
}

#[test]
fn absorbed_and_naive_paths_agree() {
    for variant in ["v2", "lite", "v3"] {
        let (Some(a), Some(n)) = (engine(variant, MlaPath::Absorbed), engine(variant, MlaPath::Naive)) else { return };
        let toks: Vec<u32> = (0..40).map(|i| (i * 977 + 13) % 49152).collect();
        let la = a.forced_logits(&toks).unwrap();
        let ln = n.forced_logits(&toks).unwrap();
        let d = la.iter().zip(&ln).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        eprintln!("{variant}: absorbed vs naive max |Δ| {d:.2e}");
        // Measured ≤ 5.9e-6.
        assert!(d < 5e-5, "{variant}: {d}");
        // Decode step by step through the absorbed path equals the prefill logits.
        let mut s = a.session(toks.len()).unwrap();
        let v = a.model.info().vocab;
        for (i, &t) in toks.iter().enumerate() {
            let l = s.feed(&[t], latent_engine::Logits::Last).unwrap();
            let d = l.iter().zip(&la[i * v..(i + 1) * v]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(d < 5e-5, "{variant} step {i}: {d}");
        }
    }
}

#[test]
fn cache_holds_only_the_latent() {
    let Some(e) = engine("v2", MlaPath::Absorbed) else { return };
    let s = e.session(100).unwrap();
    // 3 layers × (kv_lora 32 + rope 8) f32 elements per token: the latent and nothing else.
    assert_eq!(s.cache.bytes_per_token(), 3 * (32 + 8) * 4);
    assert!(matches!(s.cache.layout().mechanism, latent_kv::Mechanism::Latent { rank: 32, rope_dim: 8 }));
    let info = e.model.info();
    assert_eq!(info.cache, latent_models::CacheSpec::Latent { layers: 3, rank: 32, rope: 8 });
}

/// Group-limited routing (expert_group_count 2, used 1) on a model built by
/// `tools/make_grouped_deepseek2.py` (`.ci/run` builds it into `target/tiny-models/`), against
/// llama.cpp's logits and perplexity recorded in `tests/golden/`.
#[test]
fn group_limited_routing_matches_llama_cpp() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let p = std::env::var("LATENT_DS2_GROUPED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../../target/tiny-models/deepseek2-tiny-v3-grouped.gguf"));
    if !p.exists() {
        eprintln!("SKIP: {} not found (built by tools/make_grouped_deepseek2.py in .ci/run)", p.display());
        return;
    }
    let file = Arc::new(GgufFile::open(&p).unwrap());
    assert_eq!(file.get_u32("deepseek2.expert_group_count").unwrap(), 2);
    let tok = latent_tokenizer::Tokenizer::from_gguf(&file).unwrap();
    let m = Deepseek2::load(file).unwrap();
    let opts = EngineOptions { threads: 2, precision: MatmulPrecision::Exact, ..Default::default() };
    let e = Engine::new(Arc::new(m), tok, opts).unwrap();
    let g = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(root.join("tests/golden").join(name)).unwrap()).unwrap()
    };
    let d = forced_max_diff(&e, &g("deepseek2-tiny-v3-grouped.forced64.top32.json"));
    let text = eval_text();
    let ppl = e.perplexity(&e.tokenizer.encode(&text, false), 128, |_, _| {}).unwrap().ppl;
    let want = g("deepseek2-tiny-v3-grouped.ppl128.json")["ppl"].as_f64().unwrap();
    eprintln!("grouped: max |Δ logit| {d:.2e}; ppl {ppl:.3} vs {want:.3}");
    assert!(d <= 5e-5, "max |Δ logit| {d}");
    assert!((ppl / want - 1.0).abs() <= 1e-5, "ppl {ppl} vs {want}");
}
