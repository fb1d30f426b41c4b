//! DeepSeek-V2/V3 (`general.architecture = deepseek2`, arXiv:2405.04434): Multi-Head Latent
//! Attention on a latent cache `[c_KV (R) | k_rope (P)]` per token and layer, MoE FFN with
//! shared experts after `leading_dense_block_count` dense layers, YaRN RoPE.
//!
//! Layouts accepted (as llama.cpp): split `attn_k_b` `{N, R, H}` / `attn_v_b` `{R, V, H}` or
//! the legacy fused `attn_kv_b` `{R, H·(N+V)}` (split at load time); queries through
//! `attn_q_a` → RMSNorm → `attn_q_b` (q_lora) or `attn_q` directly. The per-head
//! up-projections are kept in f32 (`[H, N, R]`, `[H, V, R]`) for the absorbed path; all other
//! matrices stay memory-mapped in their file type.
//!
//! Attention is the attention crate's [`Mla`] layer over the file's matrices: decode runs the
//! absorbed path (per-head queries absorbed into the latent space, one MQA pass over the
//! cache with key dim R+P and value c_KV, outputs expanded by W_UV); a fresh prefill
//! decompresses instead (see [`Mla::choose_path`]).

use crate::blocks::{add_into, batch_inputs, embed, logits_batch, rms_norm, swiglu_ffn, Cx};
use crate::moe::{moe_ffn, Gating, MoeConfig, MoeLayer};
use crate::weights::{dequantize, linear, stored_bf16, transpose_heads, vector, Linear, Meta, META_MAX};
use crate::{BatchCache, CacheSpec, Exec, Model, ModelError, ModelInfo, Pass};
use latent_attention::{HeadWeights, Mla, MlaConfig, MlaWeights, Positions, QProj, Rope, RopeStyle, Yarn};
use latent_formats::gguf::GgufFile;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Deepseek2Config {
    pub vocab: usize,
    pub hidden: usize, // C
    pub layers: usize,
    pub heads: usize,          // H
    pub q_lora: Option<usize>, // Rq
    pub kv_lora: usize,        // R
    pub nope: usize,           // N
    pub rope_dim: usize,       // P
    pub v_dim: usize,          // V
    pub ffn: usize,            // F (dense layers)
    pub dense_layers: usize,
    pub context: usize,
    pub eps: f32,
    pub rope: Rope,
    /// Softmax scale multiplier: mscale² (1 without YaRN).
    pub scale_mult: f32,
    pub moe: MoeConfig,
}

impl Deepseek2Config {
    pub fn from_gguf(f: &GgufFile) -> Result<Deepseek2Config, ModelError> {
        let m = Meta { f, prefix: "deepseek2." };
        let bad = |s: &str, msg: String| ModelError::Metadata { key: m.key(s), msg };
        let hidden = m.usize("embedding_length", 1, META_MAX)?;
        let heads = m.usize("attention.head_count", 1, META_MAX)?;
        let kv_lora = m.usize("attention.kv_lora_rank", 1, META_MAX)?;
        let qk = match m.opt_usize("attention.key_length_mla", 1, META_MAX)? {
            Some(v) => v,
            None => m.usize("attention.key_length", 1, META_MAX)?,
        };
        let v_dim = match m.opt_usize("attention.value_length_mla", 1, META_MAX)? {
            Some(v) => v,
            None => m.usize("attention.value_length", 1, META_MAX)?,
        };
        let rope_dim = m.usize("rope.dimension_count", 2, META_MAX)?;
        if rope_dim % 2 != 0 || rope_dim >= qk {
            return Err(bad("rope.dimension_count", format!("{rope_dim} must be even and below the key length {qk}")));
        }
        let vocab = m.vocab()?;
        let context = m.usize("context_length", 1, META_MAX)?;
        let base = m.opt_f32("rope.freq_base", "> 0", |x| x > 0.0)?.unwrap_or(10000.0);
        let (yarn, mscale) = match m.opt_str("rope.scaling.type")? {
            None | Some("none") => (None, 1.0),
            Some("yarn") => {
                let factor = m.f32("rope.scaling.factor", "≥ 1", |x| x >= 1.0)?;
                let fs = 1.0 / factor;
                let orig = m.usize("rope.scaling.original_context_length", 1, META_MAX)?;
                let log_mul = m
                    .opt_f32("rope.scaling.yarn_log_multiplier", "in [0, 10]", |x| (0.0..=10.0).contains(&x))?
                    .unwrap_or(0.0);
                // RoPE's own magnitude correction (1 + 0.1·ln(1/s)) is cancelled through the attention
                // factor, and the softmax scale carries mscale² instead, as llama.cpp does.
                let attn_factor = 1.0 / (1.0 + 0.1 * (1.0 / fs).ln());
                let mscale = 1.0 + log_mul * (1.0 / fs).ln();
                let yarn = Yarn {
                    freq_scale: fs,
                    orig_ctx: orig,
                    ext_factor: 1.0,
                    attn_factor,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                };
                (Some(yarn), mscale)
            }
            Some(other) => {
                return Err(bad("rope.scaling.type", format!("{other:?} RoPE scaling is not supported for deepseek2")))
            }
        };
        let q_lora = m.opt_usize("attention.q_lora_rank", 0, META_MAX)?.filter(|&r| r > 0);
        let gating = match m.opt_usize("expert_gating_func", 0, u32::MAX as usize)? {
            None | Some(1) => Gating::Softmax,
            Some(2) => Gating::Sigmoid,
            Some(g) => return Err(bad("expert_gating_func", format!("{g} is not softmax (1) or sigmoid (2)"))),
        };
        let layers = m.usize("block_count", 1, 65536)?;
        let experts = m.opt_usize("expert_count", 0, 65536)?.unwrap_or(0);
        let used = m.opt_usize("expert_used_count", 0, experts)?.unwrap_or(0);
        let dense_layers = m.opt_usize("leading_dense_block_count", 0, layers)?.unwrap_or(0);
        if dense_layers < layers && (experts == 0 || used == 0) {
            return Err(bad(
                "expert_count",
                format!("{experts} experts, {used} used, but layers {dense_layers}.. are MoE"),
            ));
        }
        let groups = m.opt_usize("expert_group_count", 0, experts)?.unwrap_or(0);
        let groups_used = m.opt_usize("expert_group_used_count", 0, groups)?.unwrap_or(0);
        if groups > 1 && (experts % groups != 0 || groups_used == 0) {
            return Err(bad(
                "expert_group_count",
                format!("{groups} groups ({groups_used} used) over {experts} experts"),
            ));
        }
        let moe = MoeConfig {
            experts,
            used,
            shared: m.opt_usize("expert_shared_count", 0, 65536)?.unwrap_or(0),
            ffn: m.opt_usize("expert_feed_forward_length", 0, META_MAX)?.unwrap_or(0),
            gating,
            norm_weights: m.opt_bool("expert_weights_norm")?.unwrap_or(false),
            weights_scale: m.opt_f32("expert_weights_scale", "> 0", |x| x > 0.0)?.unwrap_or(1.0),
            groups,
            groups_used,
        };
        Ok(Deepseek2Config {
            vocab,
            hidden,
            layers,
            heads,
            q_lora,
            kv_lora,
            nope: qk - rope_dim,
            rope_dim,
            v_dim,
            ffn: if dense_layers > 0 { m.usize("feed_forward_length", 1, META_MAX)? } else { 0 },
            dense_layers,
            context,
            eps: m.f32("attention.layer_norm_rms_epsilon", "in (0, 1)", |x| x > 0.0 && x < 1.0)?,
            rope: Rope { dims: rope_dim, base, style: RopeStyle::Interleaved, yarn },
            scale_mult: mscale * mscale,
            moe,
        })
    }

    /// The attention crate's configuration of one MLA layer.
    pub fn mla(&self) -> MlaConfig {
        MlaConfig {
            hidden: self.hidden,
            heads: self.heads,
            q_lora_rank: self.q_lora,
            kv_lora_rank: self.kv_lora,
            nope: self.nope,
            rope_dim: self.rope_dim,
            v_dim: self.v_dim,
            eps: self.eps,
            rope: self.rope,
            scale_mult: self.scale_mult,
        }
    }
}

// One Ffn per layer: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Ffn {
    Dense { gate: Linear, up: Linear, down: Linear },
    Moe(Box<MoeLayer>),
}

struct Layer {
    attn_norm: Vec<f32>, // [C]
    attn: Mla<Linear>,
    ffn_norm: Vec<f32>, // [C]
    ffn: Ffn,
}

pub struct Deepseek2 {
    file: Arc<GgufFile>,
    pub cfg: Deepseek2Config,
    info: ModelInfo,
    embd: Linear,
    out_norm: Vec<f32>,
    output: Linear,
    layers: Vec<Layer>,
}

impl Deepseek2 {
    pub fn load(file: Arc<GgufFile>) -> Result<Deepseek2, ModelError> {
        let f = &*file;
        let cfg = Deepseek2Config::from_gguf(f)?;
        let (c, h, r, n, p, v) = (cfg.hidden, cfg.heads, cfg.kv_lora, cfg.nope, cfg.rope_dim, cfg.v_dim);
        let embd = linear(f, "token_embd.weight", cfg.vocab, c)?;
        let output =
            if f.tensor("output.weight").is_some() { linear(f, "output.weight", cfg.vocab, c)? } else { embd.clone() };
        let mut layers = Vec::new();
        for l in 0..cfg.layers {
            let nm = |s: &str| format!("blk.{l}.{s}.weight");
            let q = match cfg.q_lora {
                Some(rq) => QProj::Lora {
                    w_dq: linear(f, &nm("attn_q_a"), rq, c)?,
                    q_norm: vector(f, &nm("attn_q_a_norm"), rq)?,
                    w_uq: linear(f, &nm("attn_q_b"), h * (n + p), rq)?,
                },
                None => QProj::Direct { w_q: linear(f, &nm("attn_q"), h * (n + p), c)? },
            };
            let (w_uk, w_uv) = if f.tensor(&nm("attn_k_b")).is_some() {
                // attn_k_b {N, R, H}: per head [R, N] → transpose to [N, R]. Both in BF16 stay
                // BF16 (read as stored); any other type becomes f32.
                let (kd, vd) = ([n as u64, r as u64, h as u64], [r as u64, v as u64, h as u64]);
                match (stored_bf16(f, &nm("attn_k_b"), &kd)?, stored_bf16(f, &nm("attn_v_b"), &vd)?) {
                    (Some(kb), Some(vb)) => {
                        let kb: Vec<[u8; 2]> = kb.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
                        let w_uk = transpose_heads(&kb, h, r, n).into_iter().flatten().collect();
                        (HeadWeights::Bf16(w_uk), HeadWeights::Bf16(vb))
                    }
                    _ => {
                        let kb = dequantize(f, &nm("attn_k_b"), &kd)?;
                        (
                            HeadWeights::F32(transpose_heads(&kb, h, r, n)),
                            HeadWeights::F32(dequantize(f, &nm("attn_v_b"), &vd)?),
                        )
                    }
                }
            } else {
                // Legacy attn_kv_b {R, H·(N+V)}: per head rows [k_nope (N); v (V)].
                let kvb = dequantize(f, &nm("attn_kv_b"), &[r as u64, (h * (n + v)) as u64])?;
                let (mut w_uk, mut w_uv) = (Vec::with_capacity(h * n * r), Vec::with_capacity(h * v * r));
                for hi in 0..h {
                    let base = hi * (n + v) * r;
                    w_uk.extend_from_slice(&kvb[base..base + n * r]);
                    w_uv.extend_from_slice(&kvb[base + n * r..base + (n + v) * r]);
                }
                (HeadWeights::F32(w_uk), HeadWeights::F32(w_uv))
            };
            let attn = Mla::new(
                cfg.mla(),
                MlaWeights {
                    q,
                    w_dkv: linear(f, &nm("attn_kv_a_mqa"), r + p, c)?,
                    kv_norm: vector(f, &nm("attn_kv_a_norm"), r)?,
                    w_uk,
                    w_uv,
                    w_o: linear(f, &nm("attn_output"), c, h * v)?,
                },
            )?;
            let ffn = if l < cfg.dense_layers {
                Ffn::Dense {
                    gate: linear(f, &nm("ffn_gate"), cfg.ffn, c)?,
                    up: linear(f, &nm("ffn_up"), cfg.ffn, c)?,
                    down: linear(f, &nm("ffn_down"), c, cfg.ffn)?,
                }
            } else {
                Ffn::Moe(Box::new(MoeLayer::load(f, l, c, &cfg.moe)?))
            };
            layers.push(Layer {
                attn_norm: vector(f, &nm("attn_norm"), c)?,
                attn,
                ffn_norm: vector(f, &nm("ffn_norm"), c)?,
                ffn,
            });
        }
        let info = ModelInfo {
            architecture: "deepseek2".into(),
            name: f.get_str("general.name").unwrap_or("deepseek2").to_string(),
            vocab: cfg.vocab,
            context: cfg.context,
            hidden: c,
            layers: cfg.layers,
            cache: CacheSpec::Latent { layers: cfg.layers, rank: r, rope: p },
        };
        Ok(Deepseek2 { out_norm: vector(f, "output_norm.weight", c)?, file, cfg, info, embd, output, layers })
    }
}

impl Model for Deepseek2 {
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
            add_into(&mut x, &ly.attn.forward_batch(&cx, &xn, &segs, l, cache, ex.window, ex.mla_path)?);
            let xn = rms_norm(&x, &ly.ffn_norm, cfg.eps);
            let y = match &ly.ffn {
                Ffn::Dense { gate, up, down } => swiglu_ffn(ex, f, (gate, up, down), &xn, t)?,
                Ffn::Moe(m) => moe_ffn(ex, f, m, &cfg.moe, &xn, t)?,
            };
            add_into(&mut x, &y);
        }
        logits_batch(ex, f, &x, cfg.hidden, &self.out_norm, cfg.eps, &self.output, passes)
    }
}
