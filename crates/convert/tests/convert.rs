//! The converter on tiny random Llama models built in memory.

use latent_convert::{convert, Calibration, ConvertError, ConvertOptions, Method, Source, WeightType};
use latent_engine::{Engine, EngineOptions, MatmulPrecision, MlaPath};
use latent_formats::gguf::{GgufFile, MetaValue};
use latent_models::testing::{TinyDeepseek2, TinyLlama};
use latent_tokenizer::{Tokenizer, TokenizerSpec};
use std::sync::Arc;

fn source(t: &TinyLlama) -> Source {
    let f = Arc::new(GgufFile::from_bytes(t.gguf()).expect("tiny gguf"));
    Source::from_file(f, "tiny").expect("llama source")
}

fn ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

fn logits(file: Arc<GgufFile>, toks: &[u32], path: MlaPath) -> Vec<f32> {
    let model = latent_models::load_from(file).expect("model");
    let tok = Tokenizer::new(TokenizerSpec::byte_level(model.info().vocab)).expect("tokenizer");
    let e = Engine::new(
        model,
        tok,
        EngineOptions { threads: 2, precision: MatmulPrecision::Exact, mla_path: path, ..Default::default() },
    )
    .expect("engine");
    e.forced_logits(toks).expect("logits")
}

/// A conversion that drops nothing: one KV head (MQA) keeps RoPE on every frequency (P = D,
/// no position-free key dims) and the latent has the values' full rank (R = D). The file
/// runs as latent's deepseek2 model (absorbed and naive MLA, f32 weights and cache) and
/// gives the source's logits.
///
/// Twice: from an f32 source with the queries written as F32, and from a Q8_0 source with
/// the queries left in the source's type (its rows copied, scales ±1 exact).
#[test]
fn lossless_conversion_gives_the_source_logits() {
    for (wtype, q_type) in [(WeightType::F32, Some(WeightType::F32)), (WeightType::Q8_0, None)] {
        lossless(wtype, q_type);
    }
}

fn lossless(wtype: WeightType, q_type: Option<WeightType>) {
    let t = TinyLlama { kv_heads: 1, heads: 4, hidden: 64, layers: 2, seed: 5, wtype, ..TinyLlama::default() };
    let src = source(&t);
    let d = src.cfg.head_dim;
    let cal = Calibration::collect_ids(&src, &ids(96, t.vocab, 1), 48, 2).expect("calibration");
    let want = logits(src.file.clone(), &ids(40, t.vocab, 9), MlaPath::Auto);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for method in [Method::BASELINE, Method::FULL] {
        let opts = ConvertOptions { kv_rank: d, rope_dim: d, method, q_type, latent_type: WeightType::F32 };
        let conv = convert(&src, &cal, &opts).expect("convert");
        for l in &conv.layers {
            assert!(l.rel_err < 1e-5, "{method:?}: calibration attention error {}", l.rel_err);
        }
        let file = Arc::new(GgufFile::from_bytes(conv.bytes).expect("written gguf parses"));
        for path in [MlaPath::Absorbed, MlaPath::Naive] {
            let got = logits(file.clone(), &ids(40, t.vocab, 9), path);
            let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= 1e-4 * scale.max(1.0),
                "{wtype:?} {method:?} {path:?}: max |Δlogit| {err} (logit scale {scale})"
            );
        }
    }
}

/// `latent_type: BF16` writes the latent down-projection and both up-projections as BF16
/// (and says so in the metadata); the lossless case then gives the source's logits up to the
/// rounding of those three matrices to bf16 (measured: max |Δlogit| 9.7e-3 at a logit scale
/// of 4.6, i.e. 2.1e-3 of it, vs ≤ 1e-4 in F32), on both MLA paths. F16 and block types are
/// refused.
#[test]
fn bf16_latent_projections_are_written_and_run_as_stored() {
    let t = TinyLlama {
        kv_heads: 1,
        heads: 4,
        hidden: 64,
        layers: 2,
        seed: 5,
        wtype: WeightType::F32,
        ..TinyLlama::default()
    };
    let src = source(&t);
    let d = src.cfg.head_dim;
    let cal = Calibration::collect_ids(&src, &ids(96, t.vocab, 1), 48, 2).expect("calibration");
    let toks = ids(40, t.vocab, 9);
    let want = logits(src.file.clone(), &toks, MlaPath::Auto);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let opts = ConvertOptions {
        kv_rank: d,
        rope_dim: d,
        method: Method::FULL,
        q_type: Some(WeightType::F32),
        latent_type: WeightType::BF16,
    };
    let file = Arc::new(GgufFile::from_bytes(convert(&src, &cal, &opts).expect("convert").bytes).expect("gguf"));
    for l in 0..2 {
        for n in ["attn_kv_a_mqa", "attn_k_b", "attn_v_b"] {
            let ti = file.tensor(&format!("blk.{l}.{n}.weight")).expect("tensor");
            assert_eq!(WeightType::from_ggml_id(ti.ggml_type.id()), Some(WeightType::BF16), "{n}");
        }
    }
    assert_eq!(file.get_str("latent.convert.latent_type").ok(), Some("BF16"));
    for path in [MlaPath::Absorbed, MlaPath::Naive] {
        let got = logits(file.clone(), &toks, path);
        let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("bf16 latent projections {path:?}: max |Δlogit| {err:.2e} (logit scale {scale:.2})");
        assert!(err <= 4e-3 * scale.max(1.0), "{path:?}: max |Δlogit| {err} (logit scale {scale})");
        assert!(err > 0.0, "{path:?}: bf16 matrices gave the f32 logits bit for bit: not read as stored?");
    }
    for bad in [WeightType::F16, WeightType::Q8_0] {
        let o = ConvertOptions { latent_type: bad, ..opts.clone() };
        assert!(
            matches!(o.check(&src), Err(ConvertError::Invalid(m)) if m.contains("F32 or BF16")),
            "{bad:?} accepted"
        );
    }
}

/// A lossy conversion of a GQA model (RoPE dropped on mixed heads, latent below full rank)
/// gives finite logits close to, but not equal to, the source's, with every method; the
/// refits do not make the calibration error worse than the baseline's.
#[test]
fn lossy_gqa_conversion_runs_and_the_refits_help_on_calibration() {
    let t = TinyLlama { kv_heads: 2, heads: 4, hidden: 64, layers: 2, seed: 7, ..TinyLlama::default() };
    let src = source(&t);
    let d = src.cfg.head_dim;
    let cal = Calibration::collect_ids(&src, &ids(128, t.vocab, 2), 64, 2).expect("calibration");
    let toks = ids(48, t.vocab, 11);
    let want = logits(src.file.clone(), &toks, MlaPath::Auto);
    let mut errs = Vec::new();
    for (name, method) in Method::steps() {
        let opts = ConvertOptions {
            kv_rank: d,
            rope_dim: d / 2,
            method,
            q_type: Some(WeightType::Q8_0),
            latent_type: WeightType::F32,
        };
        let conv = convert(&src, &cal, &opts).expect("convert");
        let e: f64 = conv.layers.iter().map(|l| l.rel_err).sum::<f64>() / conv.layers.len() as f64;
        assert!(e.is_finite() && e > 1e-4, "{name}: lossy conversion reports error {e}");
        errs.push(e);
        let got = logits(Arc::new(GgufFile::from_bytes(conv.bytes).expect("gguf")), &toks, MlaPath::Auto);
        assert!(got.iter().all(|v| v.is_finite()), "{name}: non-finite logits");
        let cos = {
            let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
            for (a, b) in got.iter().zip(&want) {
                ab += (*a as f64) * (*b as f64);
                aa += (*a as f64).powi(2);
                bb += (*b as f64).powi(2);
            }
            ab / (aa.sqrt() * bb.sqrt())
        };
        assert!(cos > 0.9, "{name}: logits cosine {cos} to the source");
    }
    assert!(errs[3] <= errs[0] * 1.001, "joint value refit error {} above the baseline's {}", errs[3], errs[0]);
    // The key refit starts from the least-squares keys and takes only steps that lower the
    // heads' output errors.
    assert!(errs[4] <= errs[3] * 1.001, "key refit error {} above the value refits' {}", errs[4], errs[3]);
}

/// With 4 or more calibration sequences a quarter is held out: every layer reports the
/// held-out error of its value fit, which is one the method allows; with fewer, none.
#[test]
fn value_fit_is_chosen_on_held_out_sequences() {
    use latent_convert::layer::ValueFit;
    let t = TinyLlama { kv_heads: 2, heads: 4, hidden: 64, layers: 2, seed: 5, ..TinyLlama::default() };
    let src = source(&t);
    let d = src.cfg.head_dim;
    let four = Calibration::collect_ids(&src, &ids(128, t.vocab, 3), 32, 2).expect("calibration");
    assert_eq!(four.seqs, 4);
    let two = Calibration::collect_ids(&src, &ids(64, t.vocab, 3), 32, 2).expect("calibration");
    for (method, most) in [
        (Method::BASELINE, ValueFit::Pca),
        (Method::parse("value").expect("method"), ValueFit::PerHead),
        (Method::FULL, ValueFit::Joint),
    ] {
        let opts = ConvertOptions {
            kv_rank: d / 2,
            rope_dim: d / 2,
            method,
            q_type: Some(WeightType::F32),
            latent_type: WeightType::F32,
        };
        let conv = convert(&src, &four, &opts).expect("convert");
        for (l, f) in conv.layers.iter().enumerate() {
            assert!(f.value_fit <= most, "layer {l}: {:?} beyond {most:?}", f.value_fit);
            assert!(method.rope_avg || !f.rope_avg, "layer {l}: expected-rotation keys with {method:?}");
            if method.v_refit {
                let e = f.heldout_err.unwrap_or(f64::NAN);
                assert!(e.is_finite() && e > 0.0, "layer {l}: held-out error {e}");
            } else {
                assert_eq!(f.value_fit, ValueFit::Pca);
            }
        }
        let conv = convert(&src, &two, &opts).expect("convert");
        // Without held-out sequences every refit the method names is taken.
        let all = |f: &latent_convert::LayerFacts| {
            f.heldout_err.is_none() && f.value_fit == most && f.rope_avg == method.rope_avg
        };
        assert!(conv.layers.iter().all(all), "{method:?}");
    }
}

#[test]
fn written_file_has_deepseek2_metadata_and_shapes() {
    let t = TinyLlama {
        kv_heads: 2,
        heads: 4,
        hidden: 64,
        layers: 2,
        tied: true,
        seed: 3,
        wtype: WeightType::Q4_1,
        ..TinyLlama::default()
    };
    let src = source(&t);
    let d = src.cfg.head_dim; // 16
    let cal = Calibration::collect_ids(&src, &ids(64, t.vocab, 4), 32, 1).expect("calibration");
    let (r, p) = (12, d / 2);
    let opts = ConvertOptions {
        kv_rank: r,
        rope_dim: p,
        method: Method::BASELINE,
        q_type: None,
        latent_type: WeightType::F32,
    };
    let f = GgufFile::from_bytes(convert(&src, &cal, &opts).expect("convert").bytes).expect("gguf");
    assert_eq!(f.architecture().unwrap(), "deepseek2");
    let u = |k: &str| f.get_u32(&format!("deepseek2.{k}")).unwrap_or_else(|e| panic!("{k}: {e}")) as usize;
    assert_eq!(u("attention.kv_lora_rank"), r);
    assert_eq!(u("attention.q_lora_rank"), 0);
    assert_eq!(u("attention.head_count"), 4);
    assert_eq!(u("attention.head_count_kv"), 1);
    assert_eq!(u("attention.key_length"), r + p);
    assert_eq!(u("attention.value_length"), r);
    assert_eq!(u("attention.key_length_mla"), d + p); // nope query: the head's own D dims
    assert_eq!(u("attention.value_length_mla"), d);
    assert_eq!(u("rope.dimension_count"), p);
    assert_eq!(u("leading_dense_block_count"), 2);
    assert_eq!(f.get("latent.convert.norm_free_latent"), Some(&MetaValue::Bool(true)));
    let dims = |n: &str| f.tensor(n).unwrap_or_else(|| panic!("{n} missing")).dims.clone();
    assert_eq!(dims("blk.0.attn_q.weight"), vec![64, (4 * (d + p)) as u64]);
    // attn_q is the source's Q4_1 rows: per head its 16 rows as they are, then the RoPE rows
    // (every other frequency) with only their block scales changed.
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.ggml_type, src.file.tensor("blk.0.attn_q.weight").unwrap().ggml_type);
    let (qd, sd) = (f.tensor_data(q), src.file.tensor_data_by_name("blk.0.attn_q.weight").unwrap());
    let rb = 2 * 20; // 64 Q4_1 elements
    for hh in 0..4 {
        for j in 0..d {
            let got = &qd[(hh * (d + p) + j) * rb..][..rb];
            assert_eq!(got, &sd[(hh * d + j) * rb..][..rb], "head {hh} nope row {j}");
        }
        for k in 0..p {
            let j = 2 * (k / 2) * (d / p) + k % 2; // source dim of RoPE row k
            let (got, want) = (&qd[(hh * (d + p) + d + k) * rb..][..rb], &sd[(hh * d + j) * rb..][..rb]);
            for blk in 0..2 {
                assert_eq!(got[blk * 20 + 4..][..16], want[blk * 20 + 4..][..16], "head {hh} rope row {k}: quants");
            }
        }
    }
    assert_eq!(dims("blk.1.attn_kv_a_mqa.weight"), vec![64, (r + p) as u64]);
    assert_eq!(dims("blk.1.attn_kv_a_norm.weight"), vec![r as u64]);
    assert_eq!(dims("blk.0.attn_k_b.weight"), vec![d as u64, r as u64, 4]);
    assert_eq!(dims("blk.0.attn_v_b.weight"), vec![r as u64, d as u64, 4]);
    assert_eq!(dims("blk.0.attn_output.weight"), vec![64, 64]);
    // Tied source embeddings get their own output matrix (llama.cpp's deepseek2 needs one).
    assert_eq!(f.tensor_data_by_name("output.weight"), f.tensor_data_by_name("token_embd.weight"));
    assert!(f.tensor("blk.0.attn_k.weight").is_none());
}

#[test]
fn bad_arguments_are_clear_errors() {
    let t = TinyLlama { kv_heads: 2, heads: 4, hidden: 64, layers: 1, ..TinyLlama::default() };
    let src = source(&t);
    let d = src.cfg.head_dim; // 16: Ny = 3·2·16 − P
    let bad = |r: usize, p: usize, want: &str| {
        let o = ConvertOptions {
            kv_rank: r,
            rope_dim: p,
            method: Method::FULL,
            q_type: Some(WeightType::Q8_0),
            latent_type: WeightType::F32,
        };
        match o.check(&src) {
            Err(ConvertError::Invalid(m)) => assert!(m.contains(want), "R={r} P={p}: {m}"),
            other => panic!("R={r} P={p}: expected an argument error, got {other:?}"),
        }
    };
    bad(0, d, "--kv-rank 0");
    bad(3 * 2 * d - d + 1, d, "--kv-rank");
    bad(8, 3, "--rope-dim 3");
    bad(8, 12, "--rope-dim 12");
    bad(8, 2 * d, "--rope-dim");
    bad(8, 0, "--rope-dim 0");
    let f = Arc::new(GgufFile::from_bytes(TinyDeepseek2::default().gguf()).unwrap());
    match Source::from_file(f, "ds.gguf") {
        Err(ConvertError::Invalid(m)) => assert!(m.contains("llama-architecture"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a deepseek2 source was accepted"),
    }
    let cal = Calibration::collect_ids(&src, &ids(10, t.vocab, 1), 32, 1);
    assert!(matches!(cal, Err(ConvertError::Invalid(_))), "too few calibration tokens accepted");
}

/// RoPE on every other frequency (P = D/2) is exact when the source's keys have nothing at
/// the other frequencies: with those key rows zeroed in the source, the conversion at full
/// latent rank gives the source's logits.
#[test]
fn half_rope_is_exact_when_the_dropped_frequencies_are_empty() {
    use latent_formats::gguf::GgufBuilder;
    let t = TinyLlama { kv_heads: 1, heads: 4, hidden: 64, layers: 2, seed: 13, ..TinyLlama::default() };
    let f = GgufFile::from_bytes(t.gguf()).expect("tiny");
    let d = 16;
    let mut b = GgufBuilder::new();
    for (k, v) in f.metadata() {
        b.meta(k, v.clone());
    }
    for ti in f.tensors() {
        let mut data = f.tensor_data(ti).to_vec();
        if ti.name.ends_with("attn_k.weight") {
            let c = ti.dims[0] as usize;
            for row in 0..ti.dims[1] as usize {
                if (row % d) / 2 % 2 == 1 {
                    data[row * c * 4..(row + 1) * c * 4].fill(0);
                }
            }
        }
        b.tensor(ti.name.clone(), &ti.dims, ti.ggml_type, data);
    }
    let file = Arc::new(GgufFile::from_bytes(b.build().unwrap()).unwrap());
    let src = Source::from_file(file, "tiny-half").unwrap();
    let cal = Calibration::collect_ids(&src, &ids(96, t.vocab, 1), 48, 2).expect("calibration");
    let toks = ids(40, t.vocab, 9);
    let want = logits(src.file.clone(), &toks, MlaPath::Auto);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (p, nk) = (d / 2, d / 2);
    let opts = ConvertOptions {
        kv_rank: nk + d,
        rope_dim: p,
        method: Method::BASELINE,
        q_type: Some(WeightType::F32),
        latent_type: WeightType::F32,
    };
    let conv = convert(&src, &cal, &opts).expect("convert");
    let conv_errs: Vec<f64> = conv.layers.iter().map(|l| l.rel_err).collect();
    let got = logits(Arc::new(GgufFile::from_bytes(conv.bytes).unwrap()), &toks, MlaPath::Auto);
    let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-4 * scale.max(1.0), "max |Δlogit| {err} (logit scale {scale}); calibration {:?}", conv_errs);
}
