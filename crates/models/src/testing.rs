//! Tiny random-weight GGUF files for tests, built in memory with [`GgufBuilder`]: one
//! options struct per architecture, each field a configuration branch of the loader and the
//! forward pass. Weights are drawn with activation-like scales (std 1/√fan-in) so logits stay
//! in a realistic range; norm gains are drawn around 1.

use latent_attention::testing::Rng;
use latent_formats::gguf::{GgmlType, GgufBuilder, MetaValue};
use latent_quant::WeightType;

/// Stored type of the large matrices.
fn ggml(w: WeightType) -> GgmlType {
    match w {
        WeightType::F32 => GgmlType::F32,
        WeightType::F16 => GgmlType::F16,
        WeightType::BF16 => GgmlType::BF16,
        WeightType::Q8_0 => GgmlType::Q8_0,
        WeightType::Q4_0 => GgmlType::Q4_0,
        WeightType::Q4_1 => GgmlType::Q4_1,
        WeightType::Q4_K => GgmlType::Q4_K,
        WeightType::Q5_K => GgmlType::Q5_K,
        WeightType::Q6_K => GgmlType::Q6_K,
    }
}

struct Writer {
    b: GgufBuilder<'static>,
    rng: Rng,
    wtype: WeightType,
}

impl Writer {
    fn new(seed: u64, wtype: WeightType) -> Writer {
        Writer { b: GgufBuilder::new(), rng: Rng(seed), wtype }
    }
    /// A `[rows, cols]` matrix (GGUF dims `[cols, rows]`) in the model's weight type.
    fn mat(&mut self, name: &str, rows: usize, cols: usize) {
        let v = self.rng.normals(rows * cols, 1.0 / (cols as f32).sqrt());
        self.typed(name, &[cols as u64, rows as u64], &v, self.wtype);
    }
    /// A tensor of any dims, in `t`.
    fn typed(&mut self, name: &str, dims: &[u64], v: &[f32], t: WeightType) {
        let cols = dims[0] as usize;
        let rb = t.row_bytes(cols).expect("row length fits the block size");
        let mut bytes = vec![0u8; rb * (v.len() / cols)];
        for (src, dst) in v.chunks_exact(cols).zip(bytes.chunks_exact_mut(rb)) {
            latent_quant::quantize_row(t, src, dst).expect("quantizable row");
        }
        self.b.tensor(name.to_string(), dims, ggml(t), bytes);
    }
    /// A `[n]` gain vector around 1 (f32).
    fn norm(&mut self, name: &str, n: usize) {
        let v: Vec<f32> = (0..n).map(|_| 1.0 + 0.2 * self.rng.normal()).collect();
        self.b.tensor_f32(name.to_string(), &[n as u64], &v);
    }
    fn f32s(&mut self, name: &str, dims: &[u64], std: f32) {
        let n = dims.iter().product::<u64>() as usize;
        let v = self.rng.normals(n, std);
        self.b.tensor_f32(name.to_string(), dims, &v);
    }
    fn embeddings(&mut self, vocab: usize, c: usize, tied: bool) {
        let v = self.rng.normals(vocab * c, 1.0);
        self.typed("token_embd.weight", &[c as u64, vocab as u64], &v, self.wtype);
        self.norm("output_norm.weight", c);
        if !tied {
            self.mat("output.weight", vocab, c);
        }
    }
    fn bytes(&mut self, extra: &[(String, MetaValue)]) -> Vec<u8> {
        for (k, v) in extra {
            self.b.meta(k.clone(), v.clone());
        }
        self.b.build().expect("valid tiny GGUF")
    }
}

/// A tiny Llama-architecture model.
#[derive(Clone, Debug)]
pub struct TinyLlama {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// `attention.key_length` (None: hidden / heads).
    pub head_dim: Option<usize>,
    /// `rope.dimension_count` (None: the head dim).
    pub rope_dims: Option<usize>,
    pub freq_base: f32,
    /// `rope.scaling.type = linear` with this factor.
    pub linear_scaling: Option<f32>,
    pub ffn: usize,
    pub context: usize,
    pub tied: bool,
    pub wtype: WeightType,
    pub seed: u64,
    /// Metadata written last, replacing or adding keys (hostile-input tests).
    pub extra: Vec<(String, MetaValue)>,
}

impl Default for TinyLlama {
    fn default() -> TinyLlama {
        TinyLlama {
            vocab: 300,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: None,
            rope_dims: None,
            freq_base: 10000.0,
            linear_scaling: None,
            ffn: 96,
            context: 256,
            tied: false,
            wtype: WeightType::F32,
            seed: 1,
            extra: Vec::new(),
        }
    }
}

impl TinyLlama {
    pub fn gguf(&self) -> Vec<u8> {
        let mut w = Writer::new(self.seed, self.wtype);
        let k = |s: &str| format!("llama.{s}");
        let d = self.head_dim.unwrap_or(self.hidden / self.heads);
        w.b.meta("general.architecture", "llama");
        w.b.meta("general.name", "tiny-llama");
        w.b.meta(k("vocab_size"), self.vocab as u32);
        w.b.meta(k("embedding_length"), self.hidden as u32);
        w.b.meta(k("block_count"), self.layers as u32);
        w.b.meta(k("attention.head_count"), self.heads as u32);
        w.b.meta(k("attention.head_count_kv"), self.kv_heads as u32);
        if let Some(d) = self.head_dim {
            w.b.meta(k("attention.key_length"), d as u32);
            w.b.meta(k("attention.value_length"), d as u32);
        }
        if let Some(r) = self.rope_dims {
            w.b.meta(k("rope.dimension_count"), r as u32);
        }
        w.b.meta(k("rope.freq_base"), self.freq_base);
        if let Some(f) = self.linear_scaling {
            w.b.meta(k("rope.scaling.type"), "linear");
            w.b.meta(k("rope.scaling.factor"), f);
        }
        w.b.meta(k("feed_forward_length"), self.ffn as u32);
        w.b.meta(k("context_length"), self.context as u32);
        w.b.meta(k("attention.layer_norm_rms_epsilon"), 1e-5f32);
        w.embeddings(self.vocab, self.hidden, self.tied);
        let (c, hq, hk) = (self.hidden, self.heads * d, self.kv_heads * d);
        for l in 0..self.layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            w.norm(&n("attn_norm"), c);
            w.mat(&n("attn_q"), hq, c);
            w.mat(&n("attn_k"), hk, c);
            w.mat(&n("attn_v"), hk, c);
            w.mat(&n("attn_output"), c, hq);
            w.norm(&n("ffn_norm"), c);
            w.mat(&n("ffn_gate"), self.ffn, c);
            w.mat(&n("ffn_up"), self.ffn, c);
            w.mat(&n("ffn_down"), c, self.ffn);
        }
        w.bytes(&self.extra)
    }
}

/// A tiny DeepSeek-V2/V3-architecture model (MLA + MoE).
#[derive(Clone, Debug)]
pub struct TinyDeepseek2 {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    /// `attention.q_lora_rank` (None: direct `attn_q`).
    pub q_lora: Option<usize>,
    pub kv_lora: usize,
    pub nope: usize,
    pub rope: usize,
    pub v_dim: usize,
    /// Legacy fused `attn_kv_b` instead of split `attn_k_b` / `attn_v_b`.
    pub fused_kv_b: bool,
    /// Type of `attn_k_b` / `attn_v_b` (F32, or BF16 as `latent convert --latent-type bf16`
    /// writes them; the runtime keeps BF16 as stored).
    pub up_type: WeightType,
    /// YaRN (factor, original context, log multiplier).
    pub yarn: Option<(f32, usize, f32)>,
    pub dense_layers: usize,
    pub ffn: usize,
    pub experts: usize,
    pub used: usize,
    pub shared: usize,
    pub expert_ffn: usize,
    pub sigmoid: bool,
    /// `exp_probs_b` selection bias.
    pub bias: bool,
    pub norm_weights: bool,
    pub weights_scale: f32,
    /// Group-limited routing (groups, groups used).
    pub groups: Option<(usize, usize)>,
    pub context: usize,
    pub tied: bool,
    pub wtype: WeightType,
    pub seed: u64,
    /// Metadata written last, replacing or adding keys (hostile-input tests).
    pub extra: Vec<(String, MetaValue)>,
}

impl Default for TinyDeepseek2 {
    fn default() -> TinyDeepseek2 {
        TinyDeepseek2 {
            vocab: 300,
            hidden: 64,
            layers: 3,
            heads: 4,
            q_lora: Some(32),
            kv_lora: 32,
            nope: 16,
            rope: 8,
            v_dim: 16,
            fused_kv_b: false,
            up_type: WeightType::F32,
            yarn: None,
            dense_layers: 1,
            ffn: 96,
            experts: 4,
            used: 2,
            shared: 1,
            expert_ffn: 32,
            sigmoid: false,
            bias: false,
            norm_weights: false,
            weights_scale: 1.0,
            groups: None,
            context: 256,
            tied: false,
            wtype: WeightType::F32,
            seed: 2,
            extra: Vec::new(),
        }
    }
}

impl TinyDeepseek2 {
    pub fn gguf(&self) -> Vec<u8> {
        let mut w = Writer::new(self.seed, self.wtype);
        let k = |s: &str| format!("deepseek2.{s}");
        let (c, h, r, n, p, v) = (self.hidden, self.heads, self.kv_lora, self.nope, self.rope, self.v_dim);
        w.b.meta("general.architecture", "deepseek2");
        w.b.meta("general.name", "tiny-deepseek2");
        w.b.meta(k("vocab_size"), self.vocab as u32);
        w.b.meta(k("embedding_length"), c as u32);
        w.b.meta(k("block_count"), self.layers as u32);
        w.b.meta(k("attention.head_count"), h as u32);
        w.b.meta(k("attention.head_count_kv"), 1u32);
        w.b.meta(k("attention.q_lora_rank"), self.q_lora.unwrap_or(0) as u32);
        w.b.meta(k("attention.kv_lora_rank"), r as u32);
        w.b.meta(k("attention.key_length"), (n + p) as u32);
        w.b.meta(k("attention.value_length"), v as u32);
        w.b.meta(k("rope.dimension_count"), p as u32);
        w.b.meta(k("rope.freq_base"), 10000.0f32);
        if let Some((factor, orig, log_mul)) = self.yarn {
            w.b.meta(k("rope.scaling.type"), "yarn");
            w.b.meta(k("rope.scaling.factor"), factor);
            w.b.meta(k("rope.scaling.original_context_length"), orig as u32);
            w.b.meta(k("rope.scaling.yarn_log_multiplier"), log_mul);
        }
        w.b.meta(k("context_length"), self.context as u32);
        w.b.meta(k("attention.layer_norm_rms_epsilon"), 1e-6f32);
        w.b.meta(k("leading_dense_block_count"), self.dense_layers as u32);
        w.b.meta(k("feed_forward_length"), self.ffn as u32);
        w.b.meta(k("expert_count"), self.experts as u32);
        w.b.meta(k("expert_used_count"), self.used as u32);
        w.b.meta(k("expert_shared_count"), self.shared as u32);
        w.b.meta(k("expert_feed_forward_length"), self.expert_ffn as u32);
        w.b.meta(k("expert_gating_func"), if self.sigmoid { 2u32 } else { 1u32 });
        w.b.meta(k("expert_weights_norm"), self.norm_weights);
        w.b.meta(k("expert_weights_scale"), self.weights_scale);
        if let Some((g, u)) = self.groups {
            w.b.meta(k("expert_group_count"), g as u32);
            w.b.meta(k("expert_group_used_count"), u as u32);
        }
        w.embeddings(self.vocab, c, self.tied);
        for l in 0..self.layers {
            let nm = |s: &str| format!("blk.{l}.{s}.weight");
            w.norm(&nm("attn_norm"), c);
            match self.q_lora {
                Some(rq) => {
                    w.mat(&nm("attn_q_a"), rq, c);
                    w.norm(&nm("attn_q_a_norm"), rq);
                    w.mat(&nm("attn_q_b"), h * (n + p), rq);
                }
                None => w.mat(&nm("attn_q"), h * (n + p), c),
            }
            w.mat(&nm("attn_kv_a_mqa"), r + p, c);
            w.norm(&nm("attn_kv_a_norm"), r);
            let up = 1.0 / (r as f32).sqrt();
            if self.fused_kv_b {
                w.f32s(&nm("attn_kv_b"), &[r as u64, (h * (n + v)) as u64], up);
            } else {
                let kb = w.rng.normals(h * r * n, up);
                w.typed(&nm("attn_k_b"), &[n as u64, r as u64, h as u64], &kb, self.up_type);
                let vb = w.rng.normals(h * v * r, up);
                w.typed(&nm("attn_v_b"), &[r as u64, v as u64, h as u64], &vb, self.up_type);
            }
            w.mat(&nm("attn_output"), c, h * v);
            w.norm(&nm("ffn_norm"), c);
            if l < self.dense_layers {
                w.mat(&nm("ffn_gate"), self.ffn, c);
                w.mat(&nm("ffn_up"), self.ffn, c);
                w.mat(&nm("ffn_down"), c, self.ffn);
                continue;
            }
            let (e, ff) = (self.experts, self.expert_ffn);
            w.f32s(&nm("ffn_gate_inp"), &[c as u64, e as u64], 1.0 / (c as f32).sqrt());
            if self.bias {
                w.f32s(&format!("blk.{l}.exp_probs_b.bias"), &[e as u64], 0.5);
            }
            let stack = |w: &mut Writer, name: &str, rows: usize, cols: usize| {
                let vals = w.rng.normals(e * rows * cols, 1.0 / (cols as f32).sqrt());
                let t = w.wtype;
                w.typed(name, &[cols as u64, rows as u64, e as u64], &vals, t);
            };
            stack(&mut w, &nm("ffn_gate_exps"), ff, c);
            stack(&mut w, &nm("ffn_up_exps"), ff, c);
            stack(&mut w, &nm("ffn_down_exps"), c, ff);
            if self.shared > 0 {
                let sf = self.shared * ff;
                w.mat(&nm("ffn_gate_shexp"), sf, c);
                w.mat(&nm("ffn_up_shexp"), sf, c);
                w.mat(&nm("ffn_down_shexp"), c, sf);
            }
        }
        w.bytes(&self.extra)
    }
}
