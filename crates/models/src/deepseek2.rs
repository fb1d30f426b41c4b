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
//! Decode (and prefill, by default) run the absorbed path: per-head queries absorbed into the
//! latent space, one MQA pass over the cache (key dim R+P, value = c_KV), per-head outputs
//! expanded by W_UV. [`MlaPath::Naive`] decompresses the cache into per-head K/V instead.

use crate::blocks::{add_into, attention, check_context, embed, logits_head, matmul, rms_norm, swiglu};
use crate::moe::{moe_ffn, Gating, MoeConfig, MoeLayer};
use crate::weights::{linear, meta_f32, meta_u32, vector, Linear};
use crate::{CacheAccess, CacheSpec, Exec, Logits, Model, ModelError, ModelInfo};
use latent_attention::linear::{absorb_heads, decompress_heads, expand_heads};
use latent_attention::{AttnParams, AttnShape, DenseKv, KvDtype, MaskSpec, Rope, RopeStyle, SeqSpec, Yarn};
use latent_formats::gguf::GgufFile;
use std::sync::Arc;

/// Which MLA execution path a forward pass uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlaPath {
    Absorbed,
    Naive,
}

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
    /// Softmax scale: mscale² / √(N + P).
    pub kq_scale: f32,
    pub moe: MoeConfig,
}

impl Deepseek2Config {
    pub fn from_gguf(f: &GgufFile) -> Result<Deepseek2Config, ModelError> {
        let k = |s: &str| format!("deepseek2.{s}");
        let opt = |s: &str| f.get_u32(&k(s)).ok().map(|v| v as usize);
        let hidden = meta_u32(f, &k("embedding_length"))?;
        let heads = meta_u32(f, &k("attention.head_count"))?;
        let kv_lora = meta_u32(f, &k("attention.kv_lora_rank"))?;
        let rope_dim = meta_u32(f, &k("rope.dimension_count"))?;
        let qk = opt("attention.key_length_mla")
            .or(opt("attention.key_length"))
            .ok_or_else(|| ModelError::Metadata { key: k("attention.key_length"), msg: "missing".into() })?;
        let v_dim = opt("attention.value_length_mla")
            .or(opt("attention.value_length"))
            .ok_or_else(|| ModelError::Metadata { key: k("attention.value_length"), msg: "missing".into() })?;
        if qk <= rope_dim || rope_dim % 2 != 0 || heads == 0 || kv_lora == 0 {
            return Err(ModelError::Metadata {
                key: k("attention.key_length"),
                msg: format!("qk {qk}, rope {rope_dim}, heads {heads}, kv_lora {kv_lora}"),
            });
        }
        let vocab = match opt("vocab_size") {
            Some(v) => v,
            None => f
                .get_str_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .map_err(|e| ModelError::Metadata { key: "tokenizer.ggml.tokens".into(), msg: e.to_string() })?,
        };
        let base = f.get_f32(&k("rope.freq_base")).unwrap_or(10000.0);
        let scaling = f.get_str(&k("rope.scaling.type")).unwrap_or("none");
        let (yarn, mscale) = if scaling == "yarn" {
            let factor = meta_f32(f, &k("rope.scaling.factor"))?;
            if factor.is_nan() || factor <= 0.0 {
                return Err(ModelError::Metadata { key: k("rope.scaling.factor"), msg: format!("{factor}") });
            }
            let fs = 1.0 / factor;
            let orig = meta_u32(f, &k("rope.scaling.original_context_length"))?;
            let log_mul = f.get_f32(&k("rope.scaling.yarn_log_multiplier")).unwrap_or(0.0);
            // RoPE's own magnitude correction (1 + 0.1·ln(1/s)) is cancelled through the attention
            // factor, and the softmax scale carries mscale² instead, as llama.cpp does.
            let attn_factor = 1.0 / (1.0 + 0.1 * (1.0 / fs).ln());
            let mscale = 1.0 + log_mul * (1.0 / fs).ln();
            (
                Some(Yarn {
                    freq_scale: fs,
                    orig_ctx: orig,
                    ext_factor: 1.0,
                    attn_factor,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                }),
                mscale,
            )
        } else {
            (None, 1.0)
        };
        let q_lora = opt("attention.q_lora_rank").filter(|&r| r > 0);
        let gating = match opt("expert_gating_func").unwrap_or(1) {
            2 => Gating::Sigmoid,
            _ => Gating::Softmax,
        };
        let moe = MoeConfig {
            experts: opt("expert_count").unwrap_or(0),
            used: opt("expert_used_count").unwrap_or(0),
            shared: opt("expert_shared_count").unwrap_or(0),
            ffn: opt("expert_feed_forward_length").unwrap_or(0),
            gating,
            norm_weights: f.get_bool(&k("expert_weights_norm")).unwrap_or(false),
            weights_scale: f.get_f32(&k("expert_weights_scale")).unwrap_or(1.0),
            groups: opt("expert_group_count").unwrap_or(0),
            groups_used: opt("expert_group_used_count").unwrap_or(0),
        };
        Ok(Deepseek2Config {
            vocab,
            hidden,
            layers: meta_u32(f, &k("block_count"))?,
            heads,
            q_lora,
            kv_lora,
            nope: qk - rope_dim,
            rope_dim,
            v_dim,
            ffn: opt("feed_forward_length").unwrap_or(0),
            dense_layers: opt("leading_dense_block_count").unwrap_or(0),
            context: meta_u32(f, &k("context_length"))?,
            eps: meta_f32(f, &k("attention.layer_norm_rms_epsilon"))?,
            rope: Rope { dims: rope_dim, base, style: RopeStyle::Interleaved, yarn },
            kq_scale: mscale * mscale / (qk as f32).sqrt(),
            moe,
        })
    }
}

enum QProj {
    Direct(Linear),                 // [H·(N+P), C]
    Lora(Linear, Vec<f32>, Linear), // [Rq, C], [Rq], [H·(N+P), Rq]
}

enum Ffn {
    Dense { gate: Linear, up: Linear, down: Linear },
    Moe(Box<MoeLayer>),
}

struct Layer {
    attn_norm: Vec<f32>, // [C]
    q: QProj,
    kv_a: Linear,       // [R+P, C]
    kv_norm: Vec<f32>,  // [R]
    w_uk: Vec<f32>,     // [H, N, R]
    w_uv: Vec<f32>,     // [H, V, R]
    wo: Linear,         // [C, H·V]
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
    pub path: MlaPath,
}

/// Dequantizes a whole tensor to f32 (small per-head up-projections only).
fn dequant(f: &GgufFile, name: &str, dims: &[u64]) -> Result<Vec<f32>, ModelError> {
    let t = f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    if t.dims != dims {
        return Err(ModelError::Shape { name: name.into(), expected: dims.to_vec(), found: t.dims.clone() });
    }
    let wtype = latent_quant::WeightType::from_ggml_id(t.ggml_type.id())
        .ok_or_else(|| ModelError::TensorType { name: name.into(), ty: t.ggml_type.name().to_string() })?;
    let row = dims[0] as usize;
    let rows = (t.n_elements() as usize) / row;
    let rb = wtype.row_bytes(row)?;
    let data = f.tensor_data(t);
    let mut out = vec![0f32; rows * row];
    for r in 0..rows {
        latent_quant::dequantize_row(wtype, &data[r * rb..(r + 1) * rb], &mut out[r * row..(r + 1) * row])?;
    }
    Ok(out)
}

impl Deepseek2 {
    pub fn load(file: Arc<GgufFile>) -> Result<Deepseek2, ModelError> {
        let f = &*file;
        let cfg = Deepseek2Config::from_gguf(f)?;
        let (c, h, r, n, p, v) = (cfg.hidden, cfg.heads, cfg.kv_lora, cfg.nope, cfg.rope_dim, cfg.v_dim);
        let embd = linear(f, "token_embd.weight", cfg.vocab, c)?;
        let output =
            if f.tensor("output.weight").is_some() { linear(f, "output.weight", cfg.vocab, c)? } else { embd.clone() };
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let nm = |s: &str| format!("blk.{l}.{s}.weight");
            let q = match cfg.q_lora {
                Some(rq) => QProj::Lora(
                    linear(f, &nm("attn_q_a"), rq, c)?,
                    vector(f, &nm("attn_q_a_norm"), rq)?,
                    linear(f, &nm("attn_q_b"), h * (n + p), rq)?,
                ),
                None => QProj::Direct(linear(f, &nm("attn_q"), h * (n + p), c)?),
            };
            let (w_uk, w_uv) = if f.tensor(&nm("attn_k_b")).is_some() {
                // attn_k_b {N, R, H}: per head [R, N] → transpose to [N, R].
                let kb = dequant(f, &nm("attn_k_b"), &[n as u64, r as u64, h as u64])?;
                let mut w_uk = vec![0f32; h * n * r];
                for hi in 0..h {
                    for ri in 0..r {
                        for ni in 0..n {
                            w_uk[(hi * n + ni) * r + ri] = kb[(hi * r + ri) * n + ni];
                        }
                    }
                }
                (w_uk, dequant(f, &nm("attn_v_b"), &[r as u64, v as u64, h as u64])?)
            } else {
                // Legacy attn_kv_b {R, H·(N+V)}: per head rows [k_nope (N); v (V)].
                let kvb = dequant(f, &nm("attn_kv_b"), &[r as u64, (h * (n + v)) as u64])?;
                let (mut w_uk, mut w_uv) = (Vec::with_capacity(h * n * r), Vec::with_capacity(h * v * r));
                for hi in 0..h {
                    let base = hi * (n + v) * r;
                    w_uk.extend_from_slice(&kvb[base..base + n * r]);
                    w_uv.extend_from_slice(&kvb[base + n * r..base + (n + v) * r]);
                }
                (w_uk, w_uv)
            };
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
                q,
                kv_a: linear(f, &nm("attn_kv_a_mqa"), r + p, c)?,
                kv_norm: vector(f, &nm("attn_kv_a_norm"), r)?,
                w_uk,
                w_uv,
                wo: linear(f, &nm("attn_output"), c, h * v)?,
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
        Ok(Deepseek2 {
            out_norm: vector(f, "output_norm.weight", c)?,
            file,
            cfg,
            info,
            embd,
            output,
            layers,
            path: MlaPath::Absorbed,
        })
    }

    /// MLA attention of one layer for `t` tokens at `pos0..`; returns per-head outputs `[T, H, V]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        ex: &Exec,
        ly: &Layer,
        l: usize,
        xn: &[f32],
        t: usize,
        pos0: usize,
        cache: &mut dyn CacheAccess,
    ) -> Result<Vec<f32>, ModelError> {
        let cfg = &self.cfg;
        let f = &*self.file;
        let (h, r, n, p, v) = (cfg.heads, cfg.kv_lora, cfg.nope, cfg.rope_dim, cfg.v_dim);
        let (qk, lat) = (n + p, r + p);
        let mut q = match &ly.q {
            QProj::Direct(w) => matmul(ex, f, w, xn, t)?,
            QProj::Lora(a, norm, b) => {
                let cq = rms_norm(&matmul(ex, f, a, xn, t)?, norm, cfg.eps);
                matmul(ex, f, b, &cq, t)?
            }
        }; // [T, H, N+P]
        let mut kv = matmul(ex, f, &ly.kv_a, xn, t)?; // [T, R+P]
        for i in 0..t {
            let ang = cfg.rope.angles(pos0 + i);
            for hi in 0..h {
                ang.apply(&mut q[(i * h + hi) * qk + n..][..p]);
            }
            let row = &mut kv[i * lat..(i + 1) * lat];
            latent_attention::linear::rms_norm(&mut row[..r], &ly.kv_norm, cfg.eps);
            ang.apply(&mut row[r..]);
            cache.write_latent(l, pos0 + i, row)?;
        }
        let view = cache.view(l, pos0 + t)?;
        let mask = MaskSpec::CAUSAL;
        match self.path {
            MlaPath::Absorbed => {
                let mut qa = vec![0f32; t * h * lat]; // [T, H, R+P]
                absorb_heads(&q, t, h, qk, n, &ly.w_uk, 1, r, &mut qa, lat);
                for i in 0..t {
                    for hi in 0..h {
                        qa[(i * h + hi) * lat + r..][..p].copy_from_slice(&q[(i * h + hi) * qk + n..][..p]);
                    }
                }
                let shape = AttnShape { heads: h, kv_heads: 1, dk: lat, dv: r };
                let params = AttnParams { shape, scale: cfg.kq_scale, mask, sink_logits: None };
                let mut o_lat = vec![0f32; t * h * r];
                let mut lse = vec![0f32; t * h];
                let seqs = [SeqSpec { q_len: t, q_pos: pos0, kv: view }];
                attention(ex, &params, &qa, &seqs, &mut o_lat, &mut lse)?;
                Ok(expand_heads(&o_lat, t, h, r, &ly.w_uv, 1, v))
            }
            MlaPath::Naive => {
                let s = pos0 + t;
                let rows = view.read_keys(0, 0, s); // [S, R+P]
                let mut kk = decompress_heads(&rows, s, lat, r, &ly.w_uk, h, n, qk); // [S, H, N+P]
                for j in 0..s {
                    for hi in 0..h {
                        kk[(j * h + hi) * qk + n..][..p].copy_from_slice(&rows[j * lat + r..][..p]);
                    }
                }
                let vv = decompress_heads(&rows, s, lat, r, &ly.w_uv, h, v, v); // [S, H, V]
                let dense = DenseKv::new(KvDtype::F32, h, qk, v, &kk, &vv);
                let params = AttnParams {
                    shape: AttnShape { heads: h, kv_heads: h, dk: qk, dv: v },
                    scale: cfg.kq_scale,
                    mask,
                    sink_logits: None,
                };
                let mut out = vec![0f32; t * h * v];
                let mut lse = vec![0f32; t * h];
                let seqs = [SeqSpec { q_len: t, q_pos: pos0, kv: dense.view() }];
                ex.pool.install(|| latent_attention::prefill(&params, &q, &seqs, &mut out, &mut lse))?;
                Ok(out)
            }
        }
    }
}

impl Model for Deepseek2 {
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
        let mut x = embed(f, &self.embd, tokens)?; // [T, C]
        for (l, ly) in self.layers.iter().enumerate() {
            let xn = rms_norm(&x, &ly.attn_norm, cfg.eps);
            let o = self.attention(ex, ly, l, &xn, t, pos0, cache)?; // [T, H, V]
            add_into(&mut x, &matmul(ex, f, &ly.wo, &o, t)?);
            let xn = rms_norm(&x, &ly.ffn_norm, cfg.eps);
            let y = match &ly.ffn {
                Ffn::Dense { gate, up, down } => {
                    let mut g = matmul(ex, f, gate, &xn, t)?;
                    swiglu(&mut g, &matmul(ex, f, up, &xn, t)?);
                    matmul(ex, f, down, &g, t)?
                }
                Ffn::Moe(m) => moe_ffn(ex, f, m, &cfg.moe, &xn, t)?,
            };
            add_into(&mut x, &y);
        }
        logits_head(ex, f, &x, cfg.hidden, &self.out_norm, cfg.eps, &self.output, logits)
    }
}
