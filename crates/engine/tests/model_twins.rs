//! The runtime's logits against the float64 twins (`latent_models::reference`) on tiny
//! random-weight GGUFs built here (`latent_models::testing`), one per configuration branch:
//! GQA groups 1 / 3 / full, partial RoPE, linear RoPE scaling, tied embeddings, F32 / F16 /
//! Q8_0 / Q4_1 weights; MLA with and without q_lora, split and fused kv_b, YaRN, softmax and
//! sigmoid gating with bias, group routing, shared experts; every MLA path; chunked passes;
//! StreamingLLM windows with sinks, past the model's context, with released blocks; decode on a
//! team of two threads (the grouped matmuls).
//! Needs nothing outside the repository.

use latent_attention::RowFormat;
use latent_engine::{KvDtype, SeqCache};
use latent_formats::gguf::GgufFile;
use latent_models::testing::{TinyDeepseek2, TinyLlama};
use latent_models::{reference, CacheSpec, Exec, Logits, MatmulPrecision, MlaPath, Model, StreamWindow};
use latent_quant::WeightType;
use std::sync::Arc;

/// Max |Δ logit| allowed between the f32 runtime and the f64 twin (measured ≤ 1.2e-5).
const TOL: f64 = 3e-5;

fn load(bytes: Vec<u8>) -> (Arc<GgufFile>, Arc<dyn Model>) {
    let f = Arc::new(GgufFile::from_bytes(bytes).expect("tiny GGUF parses"));
    let m = latent_models::load_from(f.clone()).expect("tiny model loads");
    (f, m)
}

/// Runtime logits `[T, V]` of `tokens` fed in passes of `chunks` (the last repeats).
fn run(m: &dyn Model, tokens: &[u32], chunks: &[usize], window: Option<StreamWindow>, path: MlaPath) -> Vec<f32> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let ex = Exec { pool: &pool, team: None, precision: MatmulPrecision::Exact, window, mla_path: path, tap: None };
    let fmt = match m.info().cache {
        CacheSpec::Gqa { .. } => RowFormat::plain(KvDtype::F32),
        CacheSpec::Latent { rope, .. } => RowFormat::latent(KvDtype::F32, rope),
    };
    let biggest = chunks.iter().copied().max().unwrap_or(1);
    let mut cache = SeqCache::with_window(m.info().cache, fmt, tokens.len(), window, biggest).unwrap();
    let (mut pos, mut i, mut out) = (0, 0, Vec::new());
    while pos < tokens.len() {
        let n = chunks[i.min(chunks.len() - 1)].min(tokens.len() - pos);
        out.extend(m.forward(&ex, &tokens[pos..pos + n], pos, &mut cache, Logits::All).unwrap());
        cache.release_dead().unwrap();
        pos += n;
        i += 1;
    }
    out
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = latent_attention::testing::Rng(seed);
    (0..n).map(|_| r.below(vocab) as u32).collect()
}

const CHUNKINGS: [&[usize]; 3] = [&[1000], &[1], &[5, 17, 3]];

#[test]
fn llama_matches_its_f64_twin_on_every_branch() {
    let base = TinyLlama::default();
    let cases = [
        ("gqa 2:1", base.clone()),
        ("mha (group 1)", TinyLlama { kv_heads: 4, ..base.clone() }),
        ("gqa 3:1", TinyLlama { hidden: 96, heads: 6, kv_heads: 2, ..base.clone() }),
        ("mqa (full group)", TinyLlama { kv_heads: 1, ..base.clone() }),
        ("partial rope", TinyLlama { rope_dims: Some(8), ..base.clone() }),
        ("linear scaling", TinyLlama { linear_scaling: Some(4.0), freq_base: 500.0, ..base.clone() }),
        ("head dim 32", TinyLlama { head_dim: Some(32), heads: 2, kv_heads: 1, ..base.clone() }),
        ("tied", TinyLlama { tied: true, ..base.clone() }),
        ("f16", TinyLlama { wtype: WeightType::F16, ..base.clone() }),
        ("q8_0", TinyLlama { wtype: WeightType::Q8_0, ..base.clone() }),
        ("q4_1", TinyLlama { wtype: WeightType::Q4_1, ..base.clone() }),
    ];
    let toks = tokens(40, base.vocab, 7);
    for (name, cfg) in cases {
        let (f, m) = load(cfg.gguf());
        let want = reference::llama_forward(&f, &toks, None).unwrap();
        for ch in CHUNKINGS {
            let got = run(&*m, &toks, ch, None, MlaPath::Auto);
            let d = max_diff(&got, &want);
            eprintln!("llama {name} chunks {ch:?}: max |Δ| {d:.2e}");
            assert!(d <= TOL, "llama {name} chunks {ch:?}: max |Δ| {d}");
        }
    }
}

#[test]
fn deepseek2_matches_its_f64_twin_on_every_branch_and_path() {
    let base = TinyDeepseek2::default();
    let cases = [
        ("q_lora, split kv_b", base.clone()),
        ("no q_lora, fused kv_b", TinyDeepseek2 { q_lora: None, fused_kv_b: true, ..base.clone() }),
        ("bf16 up-projections", TinyDeepseek2 { up_type: WeightType::BF16, ..base.clone() }),
        ("yarn", TinyDeepseek2 { yarn: Some((4.0, 32, 0.0707)), ..base.clone() }),
        (
            "sigmoid gating, bias, norm, scale",
            TinyDeepseek2 { sigmoid: true, bias: true, norm_weights: true, weights_scale: 2.5, ..base.clone() },
        ),
        (
            "group routing, no shared experts",
            TinyDeepseek2 {
                experts: 8,
                used: 2,
                groups: Some((4, 2)),
                shared: 0,
                sigmoid: true,
                bias: true,
                ..base.clone()
            },
        ),
        ("all moe, tied", TinyDeepseek2 { dense_layers: 0, tied: true, ..base.clone() }),
        ("q8_0", TinyDeepseek2 { wtype: WeightType::Q8_0, ..base.clone() }),
        ("q4_1", TinyDeepseek2 { wtype: WeightType::Q4_1, ..base.clone() }),
    ];
    let toks = tokens(36, base.vocab, 8);
    for (name, cfg) in cases {
        let (f, m) = load(cfg.gguf());
        let want = reference::deepseek2_forward(&f, &toks, None).unwrap();
        for path in [MlaPath::Auto, MlaPath::Absorbed, MlaPath::Naive] {
            for ch in CHUNKINGS {
                let got = run(&*m, &toks, ch, None, path);
                let d = max_diff(&got, &want);
                eprintln!("deepseek2 {name} {path:?} chunks {ch:?}: max |Δ| {d:.2e}");
                assert!(d <= TOL, "deepseek2 {name} {path:?} chunks {ch:?}: max |Δ| {d}");
            }
        }
    }
}

#[test]
fn a_team_of_two_matches_the_twin_through_the_grouped_matmuls() {
    // Decode steps on a worker team run products of the same input as one group of row tasks
    // (Q/K/V, gate/up, MLA's query and latent down-projections) once their matrices pass
    // 128 KiB: sizes here are chosen to take that path (the tiny defaults never do).
    let team = latent_kernels::team::Team::new(2).expect("team");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let ll = TinyLlama { hidden: 256, heads: 8, kv_heads: 2, ffn: 512, layers: 2, ..TinyLlama::default() };
    let ds = TinyDeepseek2 {
        hidden: 256,
        heads: 8,
        q_lora: None,
        kv_lora: 64,
        nope: 32,
        rope: 16,
        v_dim: 32,
        ffn: 512,
        layers: 2,
        dense_layers: 1,
        ..TinyDeepseek2::default()
    };
    let toks = tokens(12, 300, 12);
    for (arch, bytes) in [("llama", ll.gguf()), ("deepseek2", ds.gguf())] {
        let (f, m) = load(bytes);
        let want = match arch {
            "llama" => reference::llama_forward(&f, &toks, None).unwrap(),
            _ => reference::deepseek2_forward(&f, &toks, None).unwrap(),
        };
        let ex = Exec {
            pool: &pool,
            team: Some(&team),
            precision: MatmulPrecision::Exact,
            window: None,
            mla_path: MlaPath::Auto,
            tap: None,
        };
        let fmt = match m.info().cache {
            CacheSpec::Gqa { .. } => RowFormat::plain(KvDtype::F32),
            CacheSpec::Latent { rope, .. } => RowFormat::latent(KvDtype::F32, rope),
        };
        let mut cache = SeqCache::new(m.info().cache, fmt, toks.len()).unwrap();
        let mut got = Vec::new();
        for (p, t) in toks.iter().enumerate() {
            got.extend(m.forward(&ex, &[*t], p, &mut cache, Logits::All).unwrap());
        }
        let d = max_diff(&got, &want);
        eprintln!("{arch} on a team of 2, token by token: max |Δ| {d:.2e}");
        assert!(d <= TOL, "{arch} on a team of 2: max |Δ| {d}");
    }
}

#[test]
fn stream_window_with_sinks_matches_the_twin_past_the_context() {
    // Context 64, 100 tokens: the window lets the sequence run past the trained context.
    let ll = TinyLlama { context: 64, ..TinyLlama::default() };
    let ds = TinyDeepseek2 { context: 64, ..TinyDeepseek2::default() };
    let toks = tokens(100, 300, 9);
    for (w, s) in [(16, 0), (16, 4), (7, 3), (40, 1)] {
        let win = StreamWindow::new(w, s).unwrap();
        for (arch, bytes) in [("llama", ll.gguf()), ("deepseek2", ds.gguf())] {
            let (f, m) = load(bytes);
            let want = match arch {
                "llama" => reference::llama_forward(&f, &toks, Some(win)).unwrap(),
                _ => reference::deepseek2_forward(&f, &toks, Some(win)).unwrap(),
            };
            for ch in CHUNKINGS {
                let got = run(&*m, &toks, ch, Some(win), MlaPath::Auto);
                let d = max_diff(&got, &want);
                eprintln!("{arch} W={w} S={s} chunks {ch:?}: max |Δ| {d:.2e}");
                assert!(d <= TOL, "{arch} W={w} S={s} chunks {ch:?}: max |Δ| {d}");
            }
        }
    }
}

#[test]
fn stream_window_releases_blocks_and_holds_flat_memory() {
    let (_, m) = load(TinyLlama { context: 128, ..TinyLlama::default() }.gguf());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let win = StreamWindow::new(32, 4).unwrap();
    let ex = Exec {
        pool: &pool,
        team: None,
        precision: MatmulPrecision::Exact,
        window: Some(win),
        mla_path: MlaPath::Auto,
        tap: None,
    };
    let n = 1000;
    let mut cache = SeqCache::with_window(m.info().cache, RowFormat::plain(KvDtype::F32), n, Some(win), 1).unwrap();
    let toks = tokens(n, 300, 10);
    let mut used = Vec::new();
    for (p, t) in toks.iter().enumerate() {
        m.forward(&ex, &[*t], p, &mut cache, Logits::Last).unwrap();
        cache.release_dead().unwrap();
        used.push(cache.bytes_used());
    }
    // Held after each pass: the sinks' blocks plus the blocks the window spans, whatever the
    // length (without the window, 1000 tokens would hold ⌈1000 / B⌉ blocks).
    let bs = cache.block_size();
    let bound = 4usize.div_ceil(bs) + 32usize.div_ceil(bs) + 1;
    let blocks: Vec<usize> = used.iter().map(|u| u / cache.block_bytes()).collect();
    let max_blocks = *blocks.iter().max().unwrap();
    assert!(max_blocks <= bound, "{max_blocks} blocks held, bound {bound}");
    assert!(n.div_ceil(bs) > 2 * bound, "the test must run far past the bound");
    assert_eq!(blocks[200..500].iter().max(), blocks[500..].iter().max(), "memory is flat");
    assert!(cache.peak_tokens() <= bound * bs, "peak {} tokens", cache.peak_tokens());
    // Without a window the same model refuses to pass its context.
    let ex_full = Exec { window: None, ..ex };
    let mut full = SeqCache::new(m.info().cache, RowFormat::plain(KvDtype::F32), 129).unwrap();
    let r = m.forward(&ex_full, &toks[..129], 0, &mut full, Logits::Last);
    assert!(matches!(r, Err(latent_models::ModelError::Context { .. })), "{r:?}");
}

#[test]
fn the_twins_see_every_configuration_flag() {
    // Each flag must change the reference's logits: a twin that ignored one would make the
    // comparison above vacuous for it.
    let toks = tokens(12, 300, 11);
    let l0 = TinyLlama::default();
    let base = reference::llama_forward(&load(l0.gguf()).0, &toks, None).unwrap();
    for (name, cfg) in [
        ("rope dims", TinyLlama { rope_dims: Some(8), ..l0.clone() }),
        ("linear scaling", TinyLlama { linear_scaling: Some(4.0), ..l0.clone() }),
        ("freq base", TinyLlama { freq_base: 500.0, ..l0.clone() }),
    ] {
        let d = max_diff(
            &base.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &reference::llama_forward(&load(cfg.gguf()).0, &toks, None).unwrap(),
        );
        assert!(d > 1e-3, "llama {name}: the twin ignores it ({d})");
    }
    let d0 = TinyDeepseek2::default();
    let base = reference::deepseek2_forward(&load(d0.gguf()).0, &toks, None).unwrap();
    for (name, cfg) in [
        ("yarn", TinyDeepseek2 { yarn: Some((4.0, 32, 0.0707)), ..d0.clone() }),
        ("sigmoid", TinyDeepseek2 { sigmoid: true, ..d0.clone() }),
        ("norm weights", TinyDeepseek2 { norm_weights: true, ..d0.clone() }),
        ("scale", TinyDeepseek2 { weights_scale: 2.5, ..d0.clone() }),
        ("bias", TinyDeepseek2 { bias: true, ..d0.clone() }),
        ("groups", TinyDeepseek2 { experts: 4, groups: Some((2, 1)), ..d0.clone() }),
    ] {
        let d = max_diff(
            &base.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &reference::deepseek2_forward(&load(cfg.gguf()).0, &toks, None).unwrap(),
        );
        assert!(d > 1e-3, "deepseek2 {name}: the twin ignores it ({d})");
    }
    // A window changes the logits only once a query's window excludes keys.
    let f = load(l0.gguf()).0;
    let full = reference::llama_forward(&f, &toks, None).unwrap();
    let win = reference::llama_forward(&f, &toks, Some(StreamWindow::new(4, 1).unwrap())).unwrap();
    let v = l0.vocab;
    assert_eq!(&full[..4 * v], &win[..4 * v]);
    assert!(max_diff(&full[5 * v..].iter().map(|&x| x as f32).collect::<Vec<_>>(), &win[5 * v..]) > 1e-3);
}
