use latent_attention::accounting::{kv_table, KvTableOpts, ModelDims};

fn opts() -> KvTableOpts {
    KvTableOpts { dtype: latent_attention::KvDtype::Bf16, context: 32768, gqa_groups: 8, window: Some(4096), sinks: 0 }
}

#[test]
fn deepseek_v2_reproduces_table_1() {
    let m = ModelDims::preset("deepseek-v2").unwrap();
    let rows = kv_table(&m, &opts());
    let get = |name: &str| rows.iter().find(|r| r.mechanism == name).unwrap().elements_per_token;
    assert_eq!(get("mha"), 2 * 128 * 128 * 60);
    assert_eq!(get("mha"), 1_966_080);
    assert_eq!(get("gqa"), 2 * 8 * 128 * 60);
    assert_eq!(get("mqa"), 2 * 128 * 60);
    assert_eq!(get("mla"), (512 + 64) * 60);
    assert_eq!(get("mla"), 34_560);
    // Low-rank: the latent without the decoupled RoPE key.
    assert_eq!(get("low-rank"), 512 * 60);
    let mla = rows.iter().find(|r| r.mechanism == "mla").unwrap();
    assert_eq!(mla.bytes_per_token, 69_120.0);
    assert_eq!(mla.bytes_at_context, 69_120.0 * 32768.0);
    assert!((mla.pct_of_mha - 100.0 * 34_560.0 / 1_966_080.0).abs() < 1e-9);
}

#[test]
fn gqa_model_uses_its_own_groups_and_window_caps_context() {
    let m = ModelDims::preset("smollm2-135m").unwrap();
    let rows = kv_table(&m, &opts());
    let gqa = rows.iter().find(|r| r.mechanism == "gqa").unwrap();
    assert_eq!(gqa.elements_per_token, 2 * 3 * 64 * 30);
    assert!(gqa.detail.contains("native"));
    let swa = rows.iter().find(|r| r.mechanism == "sliding-window").unwrap();
    assert_eq!(swa.elements_per_token, gqa.elements_per_token);
    assert_eq!(swa.bytes_at_context, gqa.bytes_per_token * 4096.0);
    // Sinks stay beside the window; a context shorter than W + S holds every token.
    let sinks = kv_table(&m, &KvTableOpts { sinks: 4, ..opts() });
    let swa = sinks.iter().find(|r| r.mechanism == "sliding-window").unwrap();
    assert_eq!(swa.bytes_at_context, gqa.bytes_per_token * 4100.0);
    assert!(swa.detail.contains("4 sink"));
    let short = kv_table(&m, &KvTableOpts { sinks: 4, context: 100, ..opts() });
    let swa = short.iter().find(|r| r.mechanism == "sliding-window").unwrap();
    assert_eq!(swa.bytes_at_context, gqa.bytes_per_token * 100.0);
    for p in ModelDims::PRESETS {
        assert!(ModelDims::preset(p).is_some());
    }
    assert!(ModelDims::preset("nope").is_none());
}

#[test]
fn eight_bit_bytes_include_scales_and_the_bf16_rope_key() {
    let m = ModelDims::preset("deepseek-v2").unwrap();
    let o = KvTableOpts { dtype: latent_attention::KvDtype::Fp8, ..opts() };
    let rows = kv_table(&m, &o);
    let mla = rows.iter().find(|r| r.mechanism == "mla").unwrap();
    // 512 fp8 + 4 f32 scales + 64 bf16 = 656 bytes per layer (FlashMLA's FP8 layout).
    assert_eq!(mla.bytes_per_token, 656.0 * 60.0);
    let mha = rows.iter().find(|r| r.mechanism == "mha").unwrap();
    // Each 128-element head row: 128 bytes + one f32 scale.
    assert_eq!(mha.bytes_per_token, (2 * 128 * 60) as f64 * 132.0);
    assert_eq!(mla.elements_per_token, 34_560);
}
