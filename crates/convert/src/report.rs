//! Quality against KV size: perplexity of the source and of conversions at several KV
//! budgets, one row per method step, beside the source's 8-bit caches and MLA with an 8-bit
//! latent (the Pareto frontier of bytes per token against perplexity).
//!
//! Protocol (as `latent perplexity`): windows of `ctx` tokens, each from an empty cache,
//! scoring positions 1..ctx−1; the scored windows start after `skip` tokens of the text, and
//! calibration uses only tokens before `skip` (never scored text).

use crate::{convert, Calibration, ConvertError, ConvertOptions, Method, Source};
use latent_attention::{KvDtype, RowFormat};
use latent_formats::gguf::GgufFile;
use latent_kv::CacheLayout;
use latent_tokenizer::Tokenizer;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// Fractions of the source's KV elements to keep, with the RoPE dim for each.
    pub budgets: Vec<(f64, usize)>,
    /// Method steps to run at every budget (name, method).
    pub methods: Vec<(String, Method)>,
    pub calib_tokens: usize,
    pub calib_len: usize,
    pub ctx: usize,
    pub skip: usize,
    pub windows: usize,
    pub threads: usize,
    pub q_type: Option<latent_quant::WeightType>,
    pub latent_type: latent_quant::WeightType,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub model: String,
    pub method: String,
    /// Cached elements per token and layer.
    pub kv_elems: usize,
    pub kv_kept: f64,
    pub kv_dtype: String,
    pub kv_bytes_per_token: usize,
    pub kv_rank: Option<usize>,
    pub rope_dim: Option<usize>,
    pub ppl: f64,
    /// Perplexity change against the source with an f32 cache, in percent.
    pub ppl_change_pct: f64,
    /// Mean relative error of the attention outputs on the calibration set.
    pub calib_attn_err: Option<f64>,
}

/// Perplexity of a model file (bytes) over `tokens` with an f32 or 8-bit cache.
pub fn perplexity(
    file: Arc<GgufFile>,
    tokens: &[u32],
    ctx: usize,
    threads: usize,
    kv: KvDtype,
) -> Result<f64, ConvertError> {
    let model = latent_models::load_from(file)?;
    let kv_dtype = if kv == KvDtype::F32 { None } else { Some(kv) };
    let eng = crate::ids_engine(model, threads, kv_dtype, ctx)?;
    Ok(eng.perplexity(tokens, ctx, |_, _| {})?.ppl)
}

/// Runs the report. `progress` gets one line per finished row.
pub fn run(
    src: &Source,
    text: &str,
    o: &ReportOptions,
    mut progress: impl FnMut(&Row),
) -> Result<Vec<Row>, ConvertError> {
    let tok = Tokenizer::from_gguf(&src.file)?;
    let ids = tok.encode(text, false);
    let need = o.skip + o.windows * o.ctx;
    if ids.len() < need || o.calib_tokens > o.skip {
        return Err(ConvertError::Invalid(format!(
            "the text has {} tokens; the report needs {need} ({} skipped, calibration within the first {} only) \
             and --calib-tokens {} ≤ the skip",
            ids.len(),
            o.skip,
            o.skip,
            o.calib_tokens
        )));
    }
    let eval = &ids[o.skip..need];
    let cal = Calibration::collect_ids(src, &ids[..o.calib_tokens], o.calib_len, o.threads)?;
    let cfg = &src.cfg;
    let full = src.kv_elems();
    let layers = cfg.layers;
    let gqa_bytes = |d: KvDtype| {
        CacheLayout::gqa(layers, cfg.kv_heads, cfg.head_dim, RowFormat::plain(d)).bytes_per_token_layer() * layers
    };
    let lat_bytes =
        |r: usize, p: usize, d: KvDtype| CacheLayout::latent(layers, r, p, d).bytes_per_token_layer() * layers;
    let mut rows = Vec::new();
    let base = perplexity(src.file.clone(), eval, o.ctx, o.threads, KvDtype::F32)?;
    let mut push = |rows: &mut Vec<Row>, row: Row| {
        progress(&row);
        rows.push(row);
    };
    for d in [KvDtype::F32, KvDtype::Int8, KvDtype::Fp8] {
        let ppl = if d == KvDtype::F32 { base } else { perplexity(src.file.clone(), eval, o.ctx, o.threads, d)? };
        push(
            &mut rows,
            Row {
                model: "source".into(),
                method: "GQA".into(),
                kv_elems: full,
                kv_kept: 1.0,
                kv_dtype: d.name().into(),
                kv_bytes_per_token: gqa_bytes(d),
                kv_rank: None,
                rope_dim: None,
                ppl,
                ppl_change_pct: 100.0 * (ppl / base - 1.0),
                calib_attn_err: None,
            },
        );
    }
    for &(frac, p) in &o.budgets {
        let elems = (frac * full as f64).round() as usize;
        if elems <= p {
            return Err(ConvertError::Invalid(format!("budget {frac} keeps {elems} elements, not more than P = {p}")));
        }
        let r = elems - p;
        for (name, m) in &o.methods {
            let opts =
                ConvertOptions { kv_rank: r, rope_dim: p, method: *m, q_type: o.q_type, latent_type: o.latent_type };
            let conv = convert(src, &cal, &opts)?;
            let err = conv.layers.iter().map(|l| l.rel_err).sum::<f64>() / conv.layers.len().max(1) as f64;
            let file = Arc::new(GgufFile::from_bytes(conv.bytes)?);
            let dtypes: &[KvDtype] = if m == &Method::FULL { &[KvDtype::F32, KvDtype::Fp8] } else { &[KvDtype::F32] };
            for &d in dtypes {
                let ppl = perplexity(file.clone(), eval, o.ctx, o.threads, d)?;
                push(
                    &mut rows,
                    Row {
                        model: "MLA".into(),
                        method: name.clone(),
                        kv_elems: elems,
                        kv_kept: elems as f64 / full as f64,
                        kv_dtype: d.name().into(),
                        kv_bytes_per_token: lat_bytes(r, p, d),
                        kv_rank: Some(r),
                        rope_dim: Some(p),
                        ppl,
                        ppl_change_pct: 100.0 * (ppl / base - 1.0),
                        calib_attn_err: Some(err),
                    },
                );
            }
        }
    }
    Ok(rows)
}
