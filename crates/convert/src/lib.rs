//! `latent convert`: a trained Llama-architecture GQA/MHA model becomes a DeepSeek-V2-style
//! MLA model (`deepseek2` GGUF) without end-to-end training: RoRoPE, a shared RoPE key, a
//! joint K/V latent, and calibration refits (see [`layer`] for the recipe and its maths).
//!
//! Flow: [`Source::open`] checks the input; [`Calibration::collect`] runs the source model
//! (exact f32 matmuls) over calibration text and keeps every layer's normalized attention
//! input; [`convert`] converts layer by layer and builds the GGUF bytes; [`report`] measures
//! perplexity across KV budgets and method steps.
//!
//! Dimension legend: T calibration tokens, C hidden, H query heads, G KV heads, D head dim,
//! R latent rank, P RoPE dim of the shared key, N nope dim per head.

pub mod layer;
pub mod linalg;
pub mod report;
mod write;

use latent_engine::{Engine, EngineError, EngineOptions, MatmulPrecision};
use latent_formats::gguf::{GgufError, GgufFile};
use latent_models::llama::{Llama, LlamaConfig};
use latent_models::{ModelError, Tap};
use latent_tokenizer::{Tokenizer, TokenizerError};
use std::sync::{Arc, Mutex};

pub use latent_quant::WeightType;
pub use layer::Method;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Bad arguments or an input the conversion cannot take, said plainly.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Quant(#[from] latent_quant::QuantError),
}

/// A Llama-architecture source model.
pub struct Source {
    pub file: Arc<GgufFile>,
    pub cfg: LlamaConfig,
    pub path: String,
}

impl Source {
    pub fn open(path: &str) -> Result<Source, ConvertError> {
        let file = Arc::new(GgufFile::open(path).map_err(|e| ModelError::Gguf { path: path.into(), source: e })?);
        Source::from_file(file, path)
    }

    pub fn from_file(file: Arc<GgufFile>, path: &str) -> Result<Source, ConvertError> {
        let arch = file.architecture()?.to_string();
        if arch != "llama" {
            return Err(ConvertError::Invalid(format!(
                "{path} is a {arch:?} model; latent convert --to mla takes llama-architecture (MHA/GQA) models"
            )));
        }
        let cfg = LlamaConfig::from_gguf(&file)?;
        if cfg.rope.dims != cfg.head_dim {
            return Err(ConvertError::Invalid(format!(
                "{path}: RoPE on {} of {} head dims (partial RoPE) is not supported by the converter",
                cfg.rope.dims, cfg.head_dim
            )));
        }
        if cfg.rope.yarn.is_some() {
            return Err(ConvertError::Invalid(format!(
                "{path}: RoPE scaling cannot be expressed in the deepseek2 file the converter writes"
            )));
        }
        Ok(Source { file, cfg, path: path.into() })
    }

    /// KV elements per token and layer of the source (K and V of every KV head).
    pub fn kv_elems(&self) -> usize {
        2 * self.cfg.kv_heads * self.cfg.head_dim
    }
}

/// What a conversion keeps and how it fits.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Latent rank R (`kv_lora_rank`).
    pub kv_rank: usize,
    /// RoPE dims P of the shared key: D (every frequency of one mixed head), D/2, D/4, ….
    pub rope_dim: usize,
    pub method: Method,
    /// Type of the query matrices (`attn_q`). `None`: the source's rows in the source's type
    /// (the RoPE rows' block scales scaled; no re-quantization).
    pub q_type: Option<WeightType>,
    /// Type of the latent down-projection and the up-projections (`attn_kv_a_mqa`,
    /// `attn_k_b`, `attn_v_b`): F32 or BF16 (the latent rows are scaled far below what an
    /// f16 scale holds, so F16 and the block types are refused).
    pub latent_type: WeightType,
}

impl ConvertOptions {
    /// Checks R and P against the source's shapes.
    pub fn check(&self, src: &Source) -> Result<(), ConvertError> {
        let (g, d) = (src.cfg.kv_heads, src.cfg.head_dim);
        let p = self.rope_dim;
        if p < 2 || !p.is_multiple_of(2) || p > d || !d.is_multiple_of(p) || !(d / p).is_power_of_two() {
            return Err(ConvertError::Invalid(format!(
                "--rope-dim {p}: must be the head dim {d} or {d} divided by a power of two (≥ 2); \
                 the file's RoPE has one frequency per pair, taken from every (D/P)-th source frequency"
            )));
        }
        let ny = 3 * g * d - p; // position-free keys + values
        if self.kv_rank == 0 || self.kv_rank > ny {
            return Err(ConvertError::Invalid(format!(
                "--kv-rank {}: must be between 1 and {ny} (the {} position-free key dims and {} value dims \
                 the latent reconstructs)",
                self.kv_rank,
                g * d - p,
                g * d
            )));
        }
        let row = src.cfg.hidden;
        if !matches!(self.latent_type, WeightType::F32 | WeightType::BF16) {
            return Err(ConvertError::Invalid(format!(
                "latent projections in {:?}: only F32 or BF16 (the norm-free latent's rows are scaled below an f16 scale's range)",
                self.latent_type
            )));
        }
        if let Some(t) = self.q_type.filter(|t| t.row_bytes(row).is_err()) {
            return Err(ConvertError::Invalid(format!(
                "--q-type {t:?} cannot hold rows of {row} (its block size does not divide them)"
            )));
        }
        Ok(())
    }

    /// Cached elements per token and layer: the latent and the shared RoPE key.
    pub fn kv_elems(&self) -> usize {
        self.kv_rank + self.rope_dim
    }
}

/// Every layer's normalized attention input over the calibration tokens.
pub struct Calibration {
    pub layers: Vec<Vec<f32>>, // per layer [T, C]
    pub seqs: usize,
    pub len: usize,
}

struct Collect {
    layers: Mutex<Vec<Vec<f32>>>,
}

impl Tap for Collect {
    fn attn_input(&self, layer: usize, xn: &[f32]) {
        if let Ok(mut l) = self.layers.lock() {
            if let Some(v) = l.get_mut(layer) {
                v.extend_from_slice(xn);
            }
        }
    }
}

impl Calibration {
    /// Runs the source over the first `tokens` tokens of `text`, cut into sequences of `len`
    /// (each from position 0; a shorter tail is dropped).
    pub fn collect(
        src: &Source,
        text: &str,
        tokens: usize,
        len: usize,
        threads: usize,
    ) -> Result<Calibration, ConvertError> {
        if len < 16 || len > src.cfg.context {
            return Err(ConvertError::Invalid(format!(
                "calibration sequences of {len} tokens: must be between 16 and the model's context of {}",
                src.cfg.context
            )));
        }
        let tok = Tokenizer::from_gguf(&src.file)?;
        let ids = tok.encode(text, false);
        Calibration::collect_ids(src, &ids[..tokens.min(ids.len())], len, threads)
    }

    /// Runs the source over `ids`, cut into sequences of `len` (a shorter tail is dropped).
    pub fn collect_ids(src: &Source, ids: &[u32], len: usize, threads: usize) -> Result<Calibration, ConvertError> {
        if len < 16 || len > src.cfg.context {
            return Err(ConvertError::Invalid(format!(
                "calibration sequences of {len} tokens: must be between 16 and the model's context of {}",
                src.cfg.context
            )));
        }
        let seqs = ids.len() / len;
        if seqs == 0 {
            return Err(ConvertError::Invalid(format!(
                "{} calibration tokens; at least one sequence of {len} is needed",
                ids.len()
            )));
        }
        let model = Arc::new(Llama::load(src.file.clone())?);
        let eng = ids_engine(model, threads, None, len)?;
        let tap = Collect { layers: Mutex::new(vec![Vec::new(); src.cfg.layers]) };
        for s in 0..seqs {
            eng.observe(&ids[s * len..(s + 1) * len], &tap)?;
        }
        let layers = tap.layers.into_inner().map_err(|_| ConvertError::Invalid("calibration tap poisoned".into()))?;
        Ok(Calibration { layers, seqs, len })
    }
}

/// An engine over token ids (exact f32 matmuls). Its tokenizer is a byte-level stand-in:
/// ids come in already tokenized, and models without a tokenizer (tests) convert too.
pub(crate) fn ids_engine(
    model: Arc<dyn latent_models::Model>,
    threads: usize,
    kv_dtype: Option<latent_engine::KvDtype>,
    chunk: usize,
) -> Result<Engine, ConvertError> {
    let vocab = model.info().vocab;
    let tok = Tokenizer::new(latent_tokenizer::TokenizerSpec::byte_level(vocab.max(256)))?;
    Ok(Engine::new(
        model,
        tok,
        EngineOptions {
            threads,
            precision: MatmulPrecision::Exact,
            kv_dtype,
            prefill_chunk: chunk,
            ..Default::default()
        },
    )?)
}

/// Per-layer facts of a conversion.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerFacts {
    /// Relative error of the attention output (after W_o) on the calibration set.
    pub rel_err: f64,
    /// The K/V balance chosen by the metric step (1 = equal weighted energy).
    pub balance: f64,
    /// How far the value maps were refitted, chosen on held-out calibration sequences.
    pub value_fit: layer::ValueFit,
    /// The layer-output error of that choice on the held-out sequences (fitted on the others).
    pub heldout_err: Option<f64>,
    /// Whether the position-free keys carry the expected rotation (with `rope_avg`, chosen on
    /// the held-out sequences).
    pub rope_avg: bool,
    /// Per head: descent steps of its key map (0: the latent's least-squares keys; with
    /// held-out sequences, the count that gave them the least error).
    pub key_steps: Vec<usize>,
}

/// A converted model.
pub struct Converted {
    /// The `deepseek2` GGUF file.
    pub bytes: Vec<u8>,
    pub layers: Vec<LayerFacts>,
}

/// Converts every layer and builds the file.
pub fn convert(src: &Source, cal: &Calibration, opts: &ConvertOptions) -> Result<Converted, ConvertError> {
    opts.check(src)?;
    let cfg = &src.cfg;
    let f = &*src.file;
    let dm = layer::Dims {
        c: cfg.hidden,
        h: cfg.heads,
        g: cfg.kv_heads,
        d: cfg.head_dim,
        p: opts.rope_dim,
        r: opts.kv_rank,
    };
    let (c, hd, gd) = (cfg.hidden as u64, (cfg.heads * cfg.head_dim) as u64, (cfg.kv_heads * cfg.head_dim) as u64);
    let mut out = Vec::with_capacity(cfg.layers);
    for l in 0..cfg.layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        let src_attn = layer::SrcAttn {
            wq: latent_models::weights::dequantize(f, &n("attn_q"), &[c, hd])?,
            wk: latent_models::weights::dequantize(f, &n("attn_k"), &[c, gd])?,
            wv: latent_models::weights::dequantize(f, &n("attn_v"), &[c, gd])?,
            wo: latent_models::weights::dequantize(f, &n("attn_output"), &[hd, c])?,
        };
        let x = &cal.layers[l];
        if x.len() != cal.seqs * cal.len * cfg.hidden {
            return Err(ConvertError::Invalid(format!("calibration of layer {l} has {} values", x.len())));
        }
        let calib = layer::Calib { x, seqs: cal.seqs, len: cal.len };
        out.push(layer::convert_layer(&src_attn, &calib, &dm, &cfg.rope, opts.method));
    }
    let layers = out
        .iter()
        .map(|m| LayerFacts {
            rel_err: m.rel_err,
            balance: m.balance,
            value_fit: m.value_fit,
            heldout_err: m.heldout_err,
            rope_avg: m.rope_avg,
            key_steps: m.key_steps.clone(),
        })
        .collect();
    let bytes = write::deepseek2(src, opts, &dm, &out)?;
    Ok(Converted { bytes, layers })
}
