//! `latent kv`: KV-cache size per token and at a context, per mechanism.

use crate::util::human_bytes;
use anyhow::{bail, Context, Result};
use latent_attention::accounting::{kv_table, KvTableOpts, ModelDims};
use latent_attention::KvDtype;
use latent_formats::gguf::GgufFile;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct KvArgs {
    /// A preset: deepseek-v2, deepseek-v2-lite, deepseek-v3, smollm2-135m, llama-2-7b, llama-3-8b.
    #[arg(long, default_value = "deepseek-v2", conflicts_with = "model")]
    preset: String,
    /// Any GGUF model file (its attention dims are read from the metadata).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Cache element type: f32, f16, bf16, fp8, int8 (8-bit bytes include per-128 scales;
    /// MLA keeps its RoPE key in bf16).
    #[arg(long = "kv-dtype", visible_alias = "dtype", default_value = "bf16")]
    dtype: String,
    /// Context length for the "at context" column.
    #[arg(long, default_value_t = 32768)]
    context: usize,
    /// Group count of the GQA row for models that are not GQA themselves.
    #[arg(long, default_value_t = 8)]
    groups: usize,
    /// Sliding-window size of the sliding-window row.
    #[arg(long, default_value_t = 4096)]
    window: usize,
    /// Sink tokens kept beside the window in the sliding-window row.
    #[arg(long, default_value_t = 0)]
    sinks: usize,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_dtype(dtype: &str) -> Result<KvDtype> {
    match KvDtype::parse(dtype) {
        Some(d) => Ok(d),
        None => bail!("unknown --kv-dtype {dtype:?} (f32, f16, bf16, fp8, int8)"),
    }
}

/// Attention dims of a GGUF model from its metadata. The file must pass the model loader
/// first (its checks of the hyper-parameters and tensors), so a file `latent generate` would
/// refuse gets the loader's error here too, not a table of zeros and NaN percentages.
pub fn dims_from_gguf(path: &PathBuf) -> Result<ModelDims> {
    let f = std::sync::Arc::new(GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?);
    latent_models::load_from(f.clone())
        .with_context(|| format!("{} is not a model latent can load", path.display()))?;
    let arch = f.architecture()?.to_string();
    let key = |k: &str| format!("{arch}.{k}");
    let layers = f.get_u32(&key("block_count"))? as usize;
    let heads = f.get_u32(&key("attention.head_count"))? as usize;
    let kv_heads = f.get_u32(&key("attention.head_count_kv")).map(|v| v as usize).unwrap_or(heads);
    let embd = f.get_u32(&key("embedding_length"))? as usize;
    let mla = f.get_u32(&key("attention.kv_lora_rank")).ok().map(|r| r as usize);
    let rope = f.get_u32(&key("rope.dimension_count")).ok().map(|r| r as usize);
    let head_dim = if mla.is_some() {
        // deepseek2: per-head value dim (decompressed K/V dims for the comparison rows).
        f.get_u32(&key("attention.value_length_mla"))
            .or_else(|_| f.get_u32(&key("attention.value_length")))
            .map(|v| v as usize)
            .unwrap_or(embd / heads.max(1))
    } else {
        f.get_u32(&key("attention.key_length")).map(|v| v as usize).unwrap_or(embd / heads.max(1))
    };
    let name = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    Ok(ModelDims {
        name,
        layers,
        heads,
        kv_heads: if mla.is_some() { heads } else { kv_heads },
        head_dim,
        mla: mla.map(|r| (r, rope.unwrap_or(64))),
    })
}

pub fn run(a: KvArgs) -> Result<()> {
    if a.groups == 0 {
        bail!("--groups must be ≥ 1");
    }
    if a.window == 0 {
        bail!("--window must be ≥ 1");
    }
    let dims = match &a.model {
        Some(p) => dims_from_gguf(p)?,
        None => ModelDims::preset(&a.preset).with_context(|| {
            format!("unknown preset {:?}; choose one of {}", a.preset, ModelDims::PRESETS.join(", "))
        })?,
    };
    let opts = KvTableOpts {
        dtype: parse_dtype(&a.dtype)?,
        context: a.context,
        gqa_groups: a.groups,
        window: Some(a.window),
        sinks: a.sinks,
    };
    let rows = kv_table(&dims, &opts);
    if a.json {
        let rows_j: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "mechanism": r.mechanism, "detail": r.detail,
                    "elements_per_token": r.elements_per_token, "bytes_per_token": r.bytes_per_token,
                    "bytes_at_context": r.bytes_at_context, "pct_of_mha": r.pct_of_mha,
                })
            })
            .collect();
        let key = if a.model.is_some() { "model" } else { "preset" };
        let j = serde_json::json!({
            key: dims.name, "layers": dims.layers, "heads": dims.heads, "kv_heads": dims.kv_heads,
            "head_dim": dims.head_dim, "dtype": a.dtype, "context": a.context, "rows": rows_j,
        });
        outln!("{j}");
        return Ok(());
    }
    outln!(
        "{}: {} layers, {} heads × {} dims, native {} — KV cache in {} at context {}",
        dims.name,
        dims.layers,
        dims.heads,
        dims.head_dim,
        dims.native(),
        a.dtype,
        a.context
    );
    outln!(
        "{:<15} {:>16} {:>14} {:>14} {:>9}  detail",
        "mechanism",
        "elements/token",
        "bytes/token",
        "at context",
        "% of MHA"
    );
    for r in &rows {
        outln!(
            "{:<15} {:>16} {:>14} {:>14} {:>8.2}%  {}",
            r.mechanism,
            r.elements_per_token,
            human_bytes(r.bytes_per_token),
            human_bytes(r.bytes_at_context),
            r.pct_of_mha,
            r.detail
        );
    }
    Ok(())
}
