//! `latent convert`: a Llama-architecture GQA/MHA model → a DeepSeek-V2-style MLA model
//! (`deepseek2` GGUF), and `--report`: perplexity against KV bytes across budgets and method
//! steps.

use crate::model_path;
use anyhow::{bail, Context, Result};
use latent_convert::report::{self, ReportOptions};
use latent_convert::{convert, Calibration, ConvertOptions, Method, Source, WeightType};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Source GGUF (llama architecture; default: $LATENT_MODEL, else the cached SmolLM2).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Target attention (only `mla`).
    #[arg(long, default_value = "mla", value_parser = ["mla"])]
    to: String,
    /// Latent rank R (kv_lora_rank). Cached per token and layer: R + P elements.
    #[arg(long, default_value_t = 128)]
    kv_rank: usize,
    /// RoPE dims P of the shared key: the head dim (default) or the head dim / 2, / 4, ….
    #[arg(long)]
    rope_dim: Option<usize>,
    /// Calibration text (default: $LATENT_EVAL_TEXT, else ../shared/data/eval/rust-book-sample.txt).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration tokens, from the start of the text (with --report: at most --skip).
    #[arg(long, default_value_t = 4096)]
    calib_tokens: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 512)]
    calib_len: usize,
    /// Fitting method (cumulative): baseline, metric (score/output-metric latent), value
    /// (+ per-head value refit), joint (+ joint value refit in the layer-output metric), full
    /// (+ each head's key map refitted by gradient descent on its output error, steps chosen
    /// on held-out calibration sequences) or full+rope-avg (+ expected-rotation position-free
    /// keys in the layers where held-out calibration sequences say they help).
    #[arg(long, default_value = "full", value_parser = ["baseline", "metric", "value", "joint", "full", "full+rope-avg"])]
    method: String,
    /// Type of the query matrices: source (default: the source's rows in its own type, not
    /// re-quantized), q8_0, f16 or f32.
    #[arg(long, default_value = "source", value_parser = ["source", "q8_0", "f16", "f32"])]
    q_type: String,
    /// Type of the latent projections (attn_kv_a_mqa, attn_k_b, attn_v_b): f32 (default) or
    /// bf16 (half their bytes and read time per decode step; see docs/BENCHMARKS.md).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    latent_type: String,
    /// Output GGUF.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Instead of converting once: perplexity of the source and of conversions at KV kept
    /// 50 / 37.5 / 25 / 12.5 %, one row per method step, with 8-bit caches.
    #[arg(long)]
    report: bool,
    /// With --report: only the 50 % budget, the baseline and --method.
    #[arg(long)]
    quick: bool,
    /// With --report: tokens skipped before the scored windows (calibration stays before them).
    #[arg(long, default_value_t = 4096)]
    skip: usize,
    /// With --report: scored windows of --ctx tokens.
    #[arg(long, default_value_t = 6)]
    windows: usize,
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long)]
    json: bool,
}

/// The evaluation text: `explicit`, else `$LATENT_EVAL_TEXT`, else the shared sample beside the
/// checkout when it exists.
pub fn eval_text_path(explicit: &Option<PathBuf>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.clone());
    }
    if let Some(e) = std::env::var_os("LATENT_EVAL_TEXT") {
        return Some(PathBuf::from(e));
    }
    let fallback = PathBuf::from("../shared/data/eval/rust-book-sample.txt");
    fallback.exists().then_some(fallback)
}

fn calib_text(p: &Option<PathBuf>) -> Result<(PathBuf, String)> {
    let Some(path) = eval_text_path(p) else {
        bail!("no calibration text: pass --calib FILE (or set LATENT_EVAL_TEXT)")
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    Ok((path, text))
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let threads = crate::util::check_threads(a.threads)?;
    let path = model_path::resolve(a.model.as_deref())?;
    let src = Source::open(&path.display().to_string())?;
    let rope_dim = a.rope_dim.unwrap_or(src.cfg.head_dim);
    let q_type = match a.q_type.as_str() {
        "f32" => Some(WeightType::F32),
        "f16" => Some(WeightType::F16),
        "q8_0" => Some(WeightType::Q8_0),
        _ => None,
    };
    let latent_type = if a.latent_type == "bf16" { WeightType::BF16 } else { WeightType::F32 };
    let method = Method::parse(&a.method).context("unknown --method")?;
    let (text_path, text) = calib_text(&a.calib)?;
    if a.report {
        return run_report(&a, &src, &text, threads, method, q_type, latent_type);
    }
    let opts = ConvertOptions { kv_rank: a.kv_rank, rope_dim, method, q_type, latent_type };
    opts.check(&src)?;
    let Some(out) = &a.out else { bail!("--out OUT.gguf is required (or --report)") };
    let t0 = Instant::now();
    note!("calibrating on {} tokens of {} …\n", a.calib_tokens, text_path.display());
    let cal = Calibration::collect(&src, &text, a.calib_tokens, a.calib_len, threads)?;
    note!("converting {} layers (R = {}, P = {rope_dim}, method {}) …\n", src.cfg.layers, a.kv_rank, a.method);
    let conv = convert(&src, &cal, &opts)?;
    std::fs::write(out, &conv.bytes).with_context(|| format!("writing {}", out.display()))?;
    let kept = opts.kv_elems() as f64 / src.kv_elems() as f64;
    let mean_err = conv.layers.iter().map(|l| l.rel_err).sum::<f64>() / conv.layers.len().max(1) as f64;
    if a.json {
        outln!(
            "{}",
            serde_json::json!({
                "out": out.display().to_string(), "bytes": conv.bytes.len(), "kv_rank": a.kv_rank, "rope_dim": rope_dim,
                "kv_elems_per_token_layer": opts.kv_elems(), "source_kv_elems_per_token_layer": src.kv_elems(),
                "kv_kept": kept, "method": a.method, "calib_tokens": cal.seqs * cal.len,
                "layers": conv.layers, "seconds": t0.elapsed().as_secs_f64(),
            })
        );
    } else {
        outln!(
            "wrote {} ({:.1} MB): deepseek2 MLA, R = {}, P = {rope_dim}: {} of {} KV elements per token and layer ({:.1} %); \
             mean attention-output error on calibration {:.3}; {:.1} s",
            out.display(),
            conv.bytes.len() as f64 / 1e6,
            a.kv_rank,
            opts.kv_elems(),
            src.kv_elems(),
            100.0 * kept,
            mean_err,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn run_report(
    a: &ConvertArgs,
    src: &Source,
    text: &str,
    threads: usize,
    method: Method,
    q_type: Option<WeightType>,
    latent_type: WeightType,
) -> Result<()> {
    let d = src.cfg.head_dim;
    let budgets = if a.quick { vec![(0.5, d)] } else { vec![(0.5, d), (0.375, d), (0.25, d), (0.125, d / 2)] };
    // Every method `--method` can name is one of the steps.
    let methods: Vec<(String, Method)> = Method::steps()
        .into_iter()
        .filter(|(_, m)| !a.quick || *m == Method::BASELINE || *m == method)
        .map(|(n, m)| (n.to_string(), m))
        .collect();
    let o = ReportOptions {
        budgets,
        methods,
        calib_tokens: a.calib_tokens,
        calib_len: a.calib_len,
        ctx: a.ctx,
        skip: a.skip,
        windows: a.windows,
        threads,
        q_type,
        latent_type,
    };
    let t0 = Instant::now();
    let rows = report::run(src, text, &o, |r| {
        note!(
            "[{:6.1} s] {:<6} {:<40} kept {:5.1} % {:>5} {:>7} B/token  ppl {:8.3} ({:+.1} %)\n",
            t0.elapsed().as_secs_f64(),
            r.model,
            r.method,
            100.0 * r.kv_kept,
            r.kv_dtype,
            r.kv_bytes_per_token,
            r.ppl,
            r.ppl_change_pct
        );
    })?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    outln!("| model | method | KV kept | cache | bytes/token | perplexity | change |");
    outln!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let shape = match (r.kv_rank, r.rope_dim) {
            (Some(rk), Some(p)) => format!(" (R={rk}, P={p})"),
            _ => String::new(),
        };
        outln!(
            "| {}{} | {} | {:.1} % | {} | {} | {:.3} | {:+.1} % |",
            r.model,
            shape,
            r.method,
            100.0 * r.kv_kept,
            r.kv_dtype,
            r.kv_bytes_per_token,
            r.ppl,
            r.ppl_change_pct
        );
    }
    Ok(())
}
