//! Llama (`general.architecture = llama`): RMSNorm → GQA attention with RoPE → residual →
//! RMSNorm → SwiGLU FFN → residual; tied output embedding when `output.weight` is absent.
//! Covers SmolLM2, Llama 2/3 and most Llama-family GGUFs. RoPE pairs dims (2i, 2i+1)
//! (llama.cpp's "normal" mode; the GGUF converter permutes Q/K rows to match).

use crate::blocks::{
    add_into, check_context, embed, gqa_attention, logits_head, matmul, matmuls, rms_norm, rope_heads, swiglu,
};
use crate::weights::{linear, meta_f32, meta_u32, vector, Linear};
use crate::{CacheAccess, CacheSpec, Exec, Logits, Model, ModelError, ModelInfo};
use latent_attention::{AttnShape, Rope, RopeStyle};
use latent_formats::gguf::GgufFile;
use std::sync::Arc;

/// Hyper-parameters from the GGUF metadata.
#[derive(Clone, Debug)]
pub struct LlamaConfig {
    pub vocab: usize,
    pub hidden: usize, // C
    pub layers: usize,
    pub heads: usize,    // H
    pub kv_heads: usize, // Hkv
    pub head_dim: usize, // D
    pub ffn: usize,      // F
    pub context: usize,
    pub eps: f32,
    pub rope: Rope,
}

impl LlamaConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<LlamaConfig, ModelError> {
        let k = |s: &str| format!("llama.{s}");
        let hidden = meta_u32(f, &k("embedding_length"))?;
        let heads = meta_u32(f, &k("attention.head_count"))?;
        let kv_heads = f.get_u32(&k("attention.head_count_kv")).map(|v| v as usize).unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || hidden % heads != 0 {
            return Err(ModelError::Metadata {
                key: k("attention.head_count"),
                msg: format!("{heads} heads / {kv_heads} KV heads / hidden {hidden}"),
            });
        }
        let head_dim = f.get_u32(&k("attention.key_length")).map(|v| v as usize).unwrap_or(hidden / heads);
        let rope_dims = f.get_u32(&k("rope.dimension_count")).map(|v| v as usize).unwrap_or(head_dim);
        let vocab = match f.get_u32(&k("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => f
                .get_str_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .map_err(|e| ModelError::Metadata { key: "tokenizer.ggml.tokens".into(), msg: e.to_string() })?,
        };
        Ok(LlamaConfig {
            vocab,
            hidden,
            layers: meta_u32(f, &k("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            ffn: meta_u32(f, &k("feed_forward_length"))?,
            context: meta_u32(f, &k("context_length"))?,
            eps: meta_f32(f, &k("attention.layer_norm_rms_epsilon"))?,
            rope: Rope::plain(rope_dims, f.get_f32(&k("rope.freq_base")).unwrap_or(10000.0), RopeStyle::Interleaved),
        })
    }
}

struct Layer {
    attn_norm: Vec<f32>, // [C]
    wq: Linear,          // [H·D, C]
    wk: Linear,          // [Hkv·D, C]
    wv: Linear,          // [Hkv·D, C]
    wo: Linear,          // [C, H·D]
    ffn_norm: Vec<f32>,  // [C]
    gate: Linear,        // [F, C]
    up: Linear,          // [F, C]
    down: Linear,        // [C, F]
}

/// A loaded Llama model over its memory-mapped file.
pub struct Llama {
    file: Arc<GgufFile>,
    pub cfg: LlamaConfig,
    info: ModelInfo,
    embd: Linear, // [V, C]
    out_norm: Vec<f32>,
    output: Linear, // [V, C] (the embedding when tied)
    layers: Vec<Layer>,
}

impl Llama {
    pub fn load(file: Arc<GgufFile>) -> Result<Llama, ModelError> {
        let f = &*file;
        let cfg = LlamaConfig::from_gguf(f)?;
        let (c, hq, hkv, ffn) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn);
        let embd = linear(f, "token_embd.weight", cfg.vocab, c)?;
        let output =
            if f.tensor("output.weight").is_some() { linear(f, "output.weight", cfg.vocab, c)? } else { embd.clone() };
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(Layer {
                attn_norm: vector(f, &n("attn_norm"), c)?,
                wq: linear(f, &n("attn_q"), hq, c)?,
                wk: linear(f, &n("attn_k"), hkv, c)?,
                wv: linear(f, &n("attn_v"), hkv, c)?,
                wo: linear(f, &n("attn_output"), c, hq)?,
                ffn_norm: vector(f, &n("ffn_norm"), c)?,
                gate: linear(f, &n("ffn_gate"), ffn, c)?,
                up: linear(f, &n("ffn_up"), ffn, c)?,
                down: linear(f, &n("ffn_down"), c, ffn)?,
            });
        }
        let info = ModelInfo {
            architecture: "llama".into(),
            name: f.get_str("general.name").unwrap_or("llama").to_string(),
            vocab: cfg.vocab,
            context: cfg.context,
            hidden: c,
            layers: cfg.layers,
            cache: CacheSpec::Gqa { layers: cfg.layers, kv_heads: cfg.kv_heads, head_dim: cfg.head_dim },
        };
        Ok(Llama { out_norm: vector(f, "output_norm.weight", c)?, file, cfg, info, embd, output, layers })
    }
}

impl Model for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(
        &self,
        ex: &Exec,
        tokens: &[u32],
        pos0: usize,
        cache: &mut dyn CacheAccess,
        logits: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        let cfg = &self.cfg;
        let f = &*self.file;
        let t = tokens.len();
        if t == 0 {
            return Ok(Vec::new());
        }
        check_context(t, pos0, cfg.context)?;
        let (d, h, hk) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
        let shape = AttnShape { heads: h, kv_heads: hk, dk: d, dv: d };
        let angles: Vec<_> = (0..t).map(|i| cfg.rope.angles(pos0 + i)).collect();
        let mut x = embed(f, &self.embd, tokens)?; // [T, C]
        for (l, ly) in self.layers.iter().enumerate() {
            // Attention block.
            let xn = rms_norm(&x, &ly.attn_norm, cfg.eps);
            let mut qkv = matmuls(ex, f, &[&ly.wq, &ly.wk, &ly.wv], &xn, t)?.into_iter();
            let (mut q, mut k, v) =
                (qkv.next().unwrap_or_default(), qkv.next().unwrap_or_default(), qkv.next().unwrap_or_default());
            // q [T, H, D], k [T, Hkv, D], v [T, Hkv, D]
            rope_heads(&mut q, h, d, &angles);
            rope_heads(&mut k, hk, d, &angles);
            let o = gqa_attention(ex, cache, l, shape, &q, &k, &v, pos0, t)?; // [T, H, D]
            add_into(&mut x, &matmul(ex, f, &ly.wo, &o, t)?);
            // FFN block.
            let xn = rms_norm(&x, &ly.ffn_norm, cfg.eps);
            let mut gu = matmuls(ex, f, &[&ly.gate, &ly.up], &xn, t)?.into_iter();
            let (mut g, u) = (gu.next().unwrap_or_default(), gu.next().unwrap_or_default()); // [T, F] each
            swiglu(&mut g, &u);
            add_into(&mut x, &matmul(ex, f, &ly.down, &g, t)?);
        }
        logits_head(ex, f, &x, cfg.hidden, &self.out_norm, cfg.eps, &self.output, logits)
    }
}
