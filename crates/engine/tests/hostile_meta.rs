//! Hostile hyper-parameters: every value a file gives is checked where it enters (range,
//! finiteness, value type, consistency with the tensors), and refused with the key's name —
//! never a panic, an allocation abort or NaN logits with success. Non-finite logits at run
//! time are an error.

use latent_attention::RowFormat;
use latent_engine::{KvDtype, SeqCache};
use latent_formats::gguf::{GgufFile, MetaValue};
use latent_models::testing::{TinyDeepseek2, TinyLlama};
use latent_models::{Exec, Logits, MatmulPrecision, MlaPath, ModelError};
use std::sync::Arc;

fn load(bytes: Vec<u8>) -> Result<Arc<dyn latent_models::Model>, ModelError> {
    latent_models::load_from(Arc::new(GgufFile::from_bytes(bytes).expect("parses")))
}

fn refused_naming(bytes: Vec<u8>, key: &str) {
    match load(bytes) {
        Ok(_) => panic!("{key}: accepted"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(key), "{key}: error does not name it: {msg}");
        }
    }
}

fn u32v(v: u32) -> MetaValue {
    MetaValue::U32(v)
}
fn f32v(v: f32) -> MetaValue {
    MetaValue::F32(v)
}

#[test]
fn llama_hyper_parameters_are_validated() {
    let cases: Vec<(&str, MetaValue)> = vec![
        ("llama.rope.dimension_count", u32v(17)), // > head dim 16
        ("llama.rope.dimension_count", u32v(1 << 31)),
        ("llama.rope.dimension_count", u32v(7)), // odd
        ("llama.block_count", u32v(u32::MAX)),
        ("llama.block_count", u32v(0)),
        ("llama.attention.layer_norm_rms_epsilon", f32v(f32::NAN)),
        ("llama.attention.layer_norm_rms_epsilon", f32v(-1.0)),
        ("llama.attention.layer_norm_rms_epsilon", f32v(f32::INFINITY)),
        ("llama.rope.freq_base", f32v(f32::NAN)),
        ("llama.rope.freq_base", f32v(0.0)),
        ("llama.rope.freq_base", f32v(-1.0)),
        ("llama.rope.freq_base", MetaValue::String("10000".into())), // wrong type, not a default
        ("llama.rope.scaling.type", MetaValue::String("yarn".into())),
        ("llama.rope.scaling.type", MetaValue::String("bogus".into())),
        ("llama.attention.head_count", u32v(0)),
        ("llama.attention.head_count_kv", u32v(3)), // does not divide 4
        ("llama.attention.head_count_kv", u32v(8)), // more than heads
        ("llama.attention.value_length", u32v(8)),
        ("llama.context_length", u32v(0)),
        ("llama.embedding_length", u32v(u32::MAX)),
        ("llama.feed_forward_length", MetaValue::F32(96.0)),
    ];
    for (key, v) in cases {
        let cfg = TinyLlama { extra: vec![(key.to_string(), v.clone())], ..TinyLlama::default() };
        refused_naming(cfg.gguf(), key);
    }
    let cfg = TinyLlama {
        linear_scaling: Some(4.0),
        extra: vec![("llama.rope.scaling.factor".into(), f32v(f32::INFINITY))],
        ..TinyLlama::default()
    };
    refused_naming(cfg.gguf(), "llama.rope.scaling.factor");
    // Shapes inconsistent with the metadata name the tensor.
    let cfg = TinyLlama { extra: vec![("llama.feed_forward_length".into(), u32v(97))], ..TinyLlama::default() };
    refused_naming(cfg.gguf(), "ffn_gate");
    // The untouched model loads.
    assert!(load(TinyLlama::default().gguf()).is_ok());
}

#[test]
fn llama_rope_freqs_are_refused_by_name() {
    // Llama 3.1 frequency factors would be silently ignored otherwise.
    let mut b = latent_formats::gguf::GgufBuilder::new();
    let bytes = TinyLlama::default().gguf();
    let f = GgufFile::from_bytes(bytes).unwrap();
    for (k, v) in f.metadata() {
        b.meta(k, v.clone());
    }
    for t in f.tensors() {
        b.tensor(t.name.clone(), &t.dims, t.ggml_type, f.tensor_data(t).to_vec());
    }
    b.tensor_f32("rope_freqs.weight", &[8], &[1.0; 8]);
    refused_naming(b.build().unwrap(), "rope_freqs");
}

#[test]
fn deepseek2_hyper_parameters_are_validated() {
    let yarn = TinyDeepseek2 { yarn: Some((4.0, 32, 0.0707)), ..TinyDeepseek2::default() };
    let cases: Vec<(TinyDeepseek2, &str, MetaValue)> = vec![
        (yarn.clone(), "deepseek2.rope.scaling.factor", f32v(f32::INFINITY)),
        (yarn.clone(), "deepseek2.rope.scaling.factor", f32v(0.0)),
        (yarn.clone(), "deepseek2.rope.scaling.yarn_log_multiplier", f32v(f32::NAN)),
        (yarn.clone(), "deepseek2.rope.scaling.original_context_length", u32v(0)),
        (yarn, "deepseek2.rope.scaling.type", MetaValue::String("longrope".into())),
        (TinyDeepseek2::default(), "deepseek2.expert_gating_func", u32v(7)),
        (TinyDeepseek2::default(), "deepseek2.expert_weights_scale", f32v(f32::NAN)),
        (TinyDeepseek2::default(), "deepseek2.expert_used_count", u32v(9)),
        (TinyDeepseek2::default(), "deepseek2.expert_group_count", u32v(3)),
        (TinyDeepseek2::default(), "deepseek2.rope.dimension_count", u32v(64)),
        (TinyDeepseek2::default(), "deepseek2.attention.kv_lora_rank", u32v(0)),
        (TinyDeepseek2::default(), "deepseek2.block_count", u32v(u32::MAX)),
        (TinyDeepseek2::default(), "deepseek2.leading_dense_block_count", u32v(9)),
        (TinyDeepseek2::default(), "deepseek2.attention.layer_norm_rms_epsilon", f32v(-1.0)),
        (TinyDeepseek2::default(), "deepseek2.rope.freq_base", MetaValue::U32(10000)),
    ];
    for (base, key, v) in cases {
        let cfg = TinyDeepseek2 { extra: vec![(key.to_string(), v.clone())], ..base };
        refused_naming(cfg.gguf(), key);
    }
    assert!(load(TinyDeepseek2::default().gguf()).is_ok());
}

#[test]
fn non_finite_logits_are_an_error() {
    // An output matrix that overflows f32: the forward pass must fail, not return NaN/inf.
    let mut b = latent_formats::gguf::GgufBuilder::new();
    let cfg = TinyLlama::default();
    let f = GgufFile::from_bytes(cfg.gguf()).unwrap();
    for (k, v) in f.metadata() {
        b.meta(k, v.clone());
    }
    for t in f.tensors() {
        if t.name == "output.weight" {
            let n = t.n_elements() as usize;
            b.tensor_f32("output.weight", &t.dims, &vec![3.0e38; n]);
        } else {
            b.tensor(t.name.clone(), &t.dims, t.ggml_type, f.tensor_data(t).to_vec());
        }
    }
    let m = load(b.build().unwrap()).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let ex = Exec {
        pool: &pool,
        team: None,
        precision: MatmulPrecision::Exact,
        window: None,
        mla_path: MlaPath::Auto,
        tap: None,
    };
    let mut cache = SeqCache::new(m.info().cache, RowFormat::plain(KvDtype::F32), 8).unwrap();
    let r = m.forward(&ex, &[1, 2, 3], 0, &mut cache, Logits::Last);
    assert!(matches!(r, Err(ModelError::NonFinite { .. })), "{r:?}");
}
