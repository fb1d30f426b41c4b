//! Llama (`general.architecture = llama`): RMSNorm → GQA attention with RoPE → residual →
//! RMSNorm → SwiGLU FFN → residual; tied output embedding when `output.weight` is absent.
//! Tested: SmolLM2 against llama.cpp (goldens), and every configuration branch below against
//! the float64 twin (`reference::llama_forward`). RoPE pairs dims (2i, 2i+1) (llama.cpp's
//! "normal" mode; the GGUF converter permutes Q/K rows to match); `linear` RoPE scaling is
//! supported. Refused at load, naming the key: other RoPE scaling types (e.g. YaRN),
//! `rope_freqs` frequency factors (Llama 3.1), value heads of another size than the keys.
//! SentencePiece vocabularies (Llama 2, Mistral) are refused by the tokenizer.

use crate::blocks::{add_into, batch_inputs, embed, logits_batch, rms_norm, swiglu_ffn, Cx};
use crate::weights::{linear, vector, Linear, Meta, META_MAX};
use crate::{BatchCache, CacheSpec, Exec, Model, ModelError, ModelInfo, Pass};
use latent_attention::{AttnShape, GqaLayer, Positions, Rope, RopeStyle, Yarn};
use latent_formats::gguf::GgufFile;
use std::sync::Arc;

/// Hyper-parameters from the GGUF metadata, validated.
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
        let m = Meta { f, prefix: "llama." };
        let bad = |s: &str, msg: String| ModelError::Metadata { key: m.key(s), msg };
        let hidden = m.usize("embedding_length", 1, META_MAX)?;
        let heads = m.usize("attention.head_count", 1, META_MAX)?;
        let kv_heads = m.opt_usize("attention.head_count_kv", 1, heads)?.unwrap_or(heads);
        if heads % kv_heads != 0 {
            return Err(bad("attention.head_count_kv", format!("{kv_heads} does not divide {heads} heads")));
        }
        let head_dim = match m.opt_usize("attention.key_length", 1, META_MAX)? {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => return Err(bad("attention.head_count", format!("{heads} heads do not divide hidden {hidden}"))),
        };
        if let Some(v) = m.opt_usize("attention.value_length", 1, META_MAX)? {
            if v != head_dim {
                return Err(bad(
                    "attention.value_length",
                    format!("value heads of {v} ≠ key heads of {head_dim}: not supported"),
                ));
            }
        }
        let rope_dims = m.opt_usize("rope.dimension_count", 2, head_dim)?.unwrap_or(head_dim);
        if rope_dims % 2 != 0 {
            return Err(bad("rope.dimension_count", format!("{rope_dims} is odd")));
        }
        let base = m.opt_f32("rope.freq_base", "> 0", |x| x > 0.0)?.unwrap_or(10000.0);
        let yarn = match m.opt_str("rope.scaling.type")? {
            None | Some("none") => None,
            Some("linear") => {
                let factor = m.f32("rope.scaling.factor", "≥ 1", |x| x >= 1.0)?;
                Some(Yarn {
                    freq_scale: 1.0 / factor,
                    orig_ctx: 0,
                    ext_factor: 0.0,
                    attn_factor: 1.0,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                })
            }
            Some(other) => {
                return Err(bad("rope.scaling.type", format!("{other:?} RoPE scaling is not supported for llama")))
            }
        };
        if f.tensor("rope_freqs.weight").is_some() {
            return Err(ModelError::Metadata {
                key: "rope_freqs.weight".into(),
                msg: "RoPE frequency factors (Llama 3.1 style) are not supported".into(),
            });
        }
        let vocab = m.vocab()?;
        let context = m.usize("context_length", 1, META_MAX)?;
        Ok(LlamaConfig {
            vocab,
            hidden,
            layers: m.usize("block_count", 1, 65536)?,
            heads,
            kv_heads,
            head_dim,
            ffn: m.usize("feed_forward_length", 1, META_MAX)?,
            context,
            eps: m.f32("attention.layer_norm_rms_epsilon", "in (0, 1)", |x| x > 0.0 && x < 1.0)?,
            rope: Rope { dims: rope_dims, base, style: RopeStyle::Interleaved, yarn },
        })
    }
}

struct Layer {
    attn_norm: Vec<f32>, // [C]
    attn: GqaLayer<Linear>,
    ffn_norm: Vec<f32>, // [C]
    gate: Linear,       // [F, C]
    up: Linear,         // [F, C]
    down: Linear,       // [C, F]
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
        let shape = AttnShape { heads: cfg.heads, kv_heads: cfg.kv_heads, dk: cfg.head_dim, dv: cfg.head_dim };
        let mut layers = Vec::new();
        for l in 0..cfg.layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            let attn = GqaLayer::new(
                linear(f, &n("attn_q"), hq, c)?,
                linear(f, &n("attn_k"), hkv, c)?,
                linear(f, &n("attn_v"), hkv, c)?,
                linear(f, &n("attn_output"), c, hq)?,
                shape,
                cfg.rope,
            )?;
            layers.push(Layer {
                attn_norm: vector(f, &n("attn_norm"), c)?,
                attn,
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

    fn forward_batch(
        &self,
        ex: &Exec,
        passes: &[Pass],
        cache: &mut dyn BatchCache,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let cfg = &self.cfg;
        let f = &*self.file;
        let (tokens, pos) = batch_inputs(ex, passes, &cfg.rope, cfg.context)?;
        let segs: Vec<&Positions> = pos.iter().collect();
        let t = tokens.len();
        let cx = Cx { ex, file: f };
        let mut x = embed(f, &self.embd, &tokens)?; // [ΣT, C]
        for (l, ly) in self.layers.iter().enumerate() {
            let xn = rms_norm(&x, &ly.attn_norm, cfg.eps);
            if let Some(tap) = ex.tap {
                tap.attn_input(l, &xn);
            }
            add_into(&mut x, &ly.attn.forward_batch(&cx, &xn, &segs, l, cache, ex.window)?);
            let xn = rms_norm(&x, &ly.ffn_norm, cfg.eps);
            add_into(&mut x, &swiglu_ffn(ex, f, (&ly.gate, &ly.up, &ly.down), &xn, t)?);
        }
        logits_batch(ex, f, &x, cfg.hidden, &self.out_norm, cfg.eps, &self.output, passes)
    }
}
