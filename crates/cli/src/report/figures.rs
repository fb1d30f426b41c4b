//! The figures of `latent report`: each gathers its numbers (through `latent` subcommands or
//! the library), fills its CSV rows and panels, and writes a short summary with the numbers.

use super::plot::{Legend, Panel, Series, Style};
use super::{Ctx, Out};
use anyhow::{anyhow, bail, Context, Result};
use latent_attention::accounting::{kv_table, KvRow, KvTableOpts, ModelDims};
use latent_attention::KvDtype;
use serde_json::Value;
use std::path::Path;

/// Builds figure `name`; a failed measurement is recorded in the result, never returned.
pub fn make(cx: &Ctx, name: &str) -> Out {
    let mut out = match name {
        "kv" => Out::new(
            "kv_cache",
            "KV-cache size per mechanism",
            vec![
                "model",
                "mechanism",
                "detail",
                "kv_dtype",
                "elements_per_token",
                "bytes_per_token",
                "bytes_at_4k",
                "bytes_at_32k",
                "bytes_at_128k",
            ],
        ),
        "attention" => Out::new(
            "attention",
            "Attention time per mechanism: decode against context, prefill against length, and the roofline",
            vec![
                "mechanism",
                "phase",
                "context",
                "seconds",
                "kv_bytes",
                "flops",
                "gbps",
                "gflops",
                "read_gbps",
                "gemm_gflops",
                "bound",
            ],
        ),
        "conversion" => Out::new(
            "conversion",
            "GQA → MLA conversion (latent convert): perplexity against KV kept",
            vec![
                "model",
                "method",
                "kv_kept",
                "kv_dtype",
                "kv_bytes_per_token",
                "kv_rank",
                "rope_dim",
                "ppl",
                "ppl_change_pct",
            ],
        ),
        "window" => Out::new(
            "window",
            "Sliding-window attention with and without sink tokens: perplexity against the window",
            vec!["window", "sinks", "ctx", "scored_tokens", "ppl", "kv_peak_tokens"],
        ),
        "generation" => Out::new(
            "generation",
            "Generation: the GQA model against its MLA conversion",
            vec!["part", "model", "x", "value", "unit", "detail"],
        ),
        _ => Out::new(
            "llama_cpp",
            "latent against llama.cpp on the same GGUF",
            vec!["threads", "pair", "engine", "prompt_tokens", "gen_tokens", "prefill_tok_s", "decode_tok_s", "status"],
        ),
    };
    let r = match name {
        "kv" => kv(cx, &mut out),
        "attention" => attention(cx, &mut out),
        "conversion" => conversion(cx, &mut out),
        "window" => window(cx, &mut out),
        "generation" => generation(cx, &mut out),
        _ => llama(cx, &mut out),
    };
    if let Err(e) = r {
        noteln!("latent report: {name} failed: {e:#}");
        out.failed = Some(format!("{e:#}"));
    }
    out
}

/// Marks a figure that cannot be made here (no model, no text, no reference bindings): the
/// panels say why, and so does the report. Not a failure.
fn skipped(out: &mut Out, why: &str) {
    out.panels = vec![Panel {
        title: out.title.clone(),
        note: Some(super::wrap(&format!("not measured: {why}"), 70).join("\n")),
        ..Default::default()
    }];
    out.summary = format!("Not measured in this run: {why}.");
}

/// The model and the evaluation text, or `None` after marking the figure as not measured.
fn model_and_text(cx: &Ctx, out: &mut Out) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    match (cx.need_model(), cx.need_text()) {
        (Ok(m), Ok(t)) => Some((m.clone(), t.clone())),
        (Err(e), _) | (_, Err(e)) => {
            skipped(out, &e);
            None
        }
    }
}

fn num(v: &Value, k: &str) -> Result<f64> {
    v.get(k).and_then(Value::as_f64).ok_or_else(|| anyhow!("missing number {k:?} in {v}"))
}

fn text(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(x) => x.to_string(),
    }
}

/// Every JSON object line of a command's stdout.
fn json_lines(s: &str) -> Result<Vec<Value>> {
    s.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("parsing {l:?}")))
        .collect()
}

fn s<T: ToString>(v: T) -> String {
    v.to_string()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------------------
// 1. KV cache

const KV_CONTEXTS: [usize; 3] = [4096, 32768, 131072];
const KV_MECHS: [(&str, &str); 7] = [
    ("mha", "MHA"),
    ("gqa", "GQA"),
    ("mqa", "MQA"),
    ("sliding-window", "SWA 4k+4 sinks"),
    ("low-rank", "low-rank"),
    ("mla", "MLA bf16"),
    ("mla-fp8", "MLA fp8"),
];

/// The rows of `dims` at each of [`KV_CONTEXTS`] in `dtype` (W = 4096, 4 sinks, GQA 8 groups).
fn kv_rows(dims: &ModelDims, dtype: KvDtype) -> Vec<Vec<KvRow>> {
    KV_CONTEXTS
        .iter()
        .map(|&context| kv_table(dims, &KvTableOpts { dtype, context, gqa_groups: 8, window: Some(4096), sinks: 4 }))
        .collect()
}

fn kv(_cx: &Ctx, out: &mut Out) -> Result<()> {
    // (label, preset, MLA dims that replace the DeepSeek-like default: SmolLM2's conversion).
    type Shape = (&'static str, &'static str, Option<(usize, usize)>);
    let models: [Shape; 3] = [
        ("DeepSeek-V2", "deepseek-v2", None),
        ("Llama-3-8B-like", "llama-3-8b", None),
        ("SmolLM2-135M", "smollm2-135m", Some((128, 64))),
    ];
    let mut bars: Vec<Series> = Vec::new();
    let mut per_context: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut table1 = String::new();
    for (mi, (label, preset, conv)) in models.iter().enumerate() {
        let dims = ModelDims::preset(preset).ok_or_else(|| anyhow!("no preset {preset}"))?;
        let mla_dims = conv.map(|(r, p)| ModelDims { mla: Some((r, p)), kv_heads: dims.heads, ..dims.clone() });
        let bf16 = kv_rows(&dims, KvDtype::Bf16);
        let fp8 = kv_rows(mla_dims.as_ref().unwrap_or(&dims), KvDtype::Fp8);
        let mla_bf16 = mla_dims.as_ref().map(|d| kv_rows(d, KvDtype::Bf16));
        let mut points = Vec::new();
        for (ci, (mech, mech_label)) in KV_MECHS.iter().enumerate() {
            let (rows, key, dtype) = match *mech {
                "mla-fp8" => (&fp8, "mla", "fp8"),
                "mla" => (mla_bf16.as_ref().unwrap_or(&bf16), "mla", "bf16"),
                m => (&bf16, m, "bf16"),
            };
            let at: Vec<&KvRow> = rows
                .iter()
                .map(|r| r.iter().find(|x| x.mechanism == key).ok_or_else(|| anyhow!("no {key} row")))
                .collect::<Result<_>>()?;
            let detail = if conv.is_some() && key == "mla" {
                format!("{} (latent convert --kv-rank 128 --rope-dim 64)", at[0].detail)
            } else {
                at[0].detail.clone()
            };
            out.row(vec![
                s(label),
                s(mech_label),
                detail,
                s(dtype),
                s(at[0].elements_per_token),
                s(at[0].bytes_per_token),
                s(at[0].bytes_at_context),
                s(at[1].bytes_at_context),
                s(at[2].bytes_at_context),
            ]);
            points.push((ci as f64, at[0].bytes_per_token));
            if *preset == "llama-3-8b" {
                let line: Vec<(f64, f64)> = KV_CONTEXTS
                    .iter()
                    .zip(&at)
                    .map(|(&c, r)| (c as f64, r.bytes_at_context / (1u64 << 30) as f64))
                    .collect();
                per_context.push((s(mech_label), line));
            }
            if *preset == "deepseek-v2" && dtype == "bf16" {
                let dh_l = (dims.head_dim * dims.layers) as f64;
                table1.push_str(&format!(
                    "| {mech_label} | {} | {:.2} | {} | {:.2} GiB |\n",
                    at[0].elements_per_token,
                    at[0].elements_per_token as f64 / dh_l,
                    crate::util::human_bytes(at[0].bytes_per_token),
                    at[2].bytes_at_context / (1u64 << 30) as f64
                ));
            }
        }
        bars.push(Series::new(*label, points, Style::Bars, mi));
    }
    let categories: Vec<String> = KV_MECHS.iter().map(|(_, l)| l.to_string()).collect();
    out.panels.push(Panel {
        title: "KV bytes per token (all layers; bf16 unless named)".into(),
        x_label: String::new(),
        y_label: "bytes per token".into(),
        y_log: true,
        categories,
        series: bars,
        legend: Legend::UpperRight,
        ..Default::default()
    });
    out.panels.push(Panel {
        title: "Llama-3-8B-like: KV cache against context".into(),
        x_label: "context (tokens)".into(),
        y_label: "KV cache (GiB)".into(),
        x_log: true,
        y_log: true,
        series: per_context
            .into_iter()
            .enumerate()
            .map(|(i, (n, pts))| Series::new(n, pts, Style::LinePoints, i))
            .collect(),
        ..Default::default()
    });
    out.summary = format!(
        "Per-token KV bytes of each mechanism for three shapes (`latent kv --preset …` computes the same rows). \
         For SmolLM2 the MLA rows are its `latent convert` shape (R = 128, P = 64: half its GQA elements); for \
         the other two the MLA rows are DeepSeek-V2's. The sliding window keeps 4096 + 4 sink tokens, so its \
         line flattens past 4k. DeepSeek-V2's Table 1, reproduced (l = 60 layers, d_h = 128, n_h = 128, GQA \
         with n_g = 8; MLA d_c = 512, d_h^R = 64):\n\n\
         | mechanism | elements per token | in d_h·l | bf16 bytes per token | at 128k |\n|---|---|---|---|---|\n{table1}\n\
         MLA's (d_c + d_h^R)·l = 4.5·d_h·l matches the paper's \"equivalent to GQA with 2.25 groups\"."
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. Attention kernels

fn attention(cx: &Ctx, out: &mut Out) -> Result<()> {
    let (contexts, prefill, window, reps) = if cx.quick {
        ("256,1k,4k", "128,256,512", "1024", "2")
    } else {
        ("1k,4k,16k,32k", "256,512,1k,2k", "4096", "5")
    };
    let stdout = cx.latent(
        out,
        &args(&[
            "bench",
            "attention",
            "--mechanisms",
            "mha,gqa,mqa,swa,mla",
            "--contexts",
            contexts,
            "--prefill",
            prefill,
            "--window",
            window,
            "--sinks",
            "4",
            "--reps",
            reps,
            "--kv-dtype",
            "bf16",
            "--json",
        ]),
    )?;
    let rows = json_lines(&stdout)?;
    if rows.is_empty() {
        bail!("latent bench attention printed no rows");
    }
    let mechs = ["mha", "gqa", "mqa", "swa", "mla"];
    let mut decode = Vec::new();
    let mut prefill_s = Vec::new();
    let mut roof_pts = Vec::new();
    let (mut read_gbps, mut peak) = (0.0, 0.0);
    let mut ai_range = (f64::INFINITY, 0.0f64);
    for r in &rows {
        read_gbps = num(r, "read_gbps")?;
        peak = num(r, "gemm_gflops")?;
        out.row(vec![
            text(r, "mechanism"),
            text(r, "phase"),
            text(r, "context"),
            s(num(r, "seconds")?),
            s(num(r, "kv_bytes")?),
            s(num(r, "flops")?),
            s(num(r, "gbps")?),
            s(num(r, "gflops")?),
            s(read_gbps),
            s(peak),
            text(r, "bound"),
        ]);
    }
    let mut summary_rows = String::new();
    for (mi, m) in mechs.iter().enumerate() {
        let of = |phase: &str| -> Vec<&Value> {
            rows.iter().filter(|r| text(r, "mechanism") == *m && text(r, "phase") == phase).collect()
        };
        let d: Vec<(f64, f64, f64, f64)> = of("decode")
            .iter()
            .map(|r| Ok((num(r, "context")?, num(r, "seconds")? * 1e3, num(r, "kv_bytes")?, num(r, "flops")?)))
            .collect::<Result<_>>()?;
        let p: Vec<(f64, f64, f64, f64)> = of("prefill")
            .iter()
            .map(|r| Ok((num(r, "context")?, num(r, "seconds")? * 1e3, num(r, "kv_bytes")?, num(r, "flops")?)))
            .collect::<Result<_>>()?;
        let label = if *m == "swa" { format!("swa (W={window}+4)") } else { m.to_string() };
        decode.push(Series::new(label.clone(), d.iter().map(|q| (q.0, q.1)).collect(), Style::LinePoints, mi));
        decode.push(Series::new(
            "",
            d.iter().map(|q| (q.0, q.2 / (read_gbps * 1e9) * 1e3)).collect(),
            Style::Dashed,
            mi,
        ));
        prefill_s.push(Series::new(label.clone(), p.iter().map(|q| (q.0, q.1)).collect(), Style::LinePoints, mi));
        let mut pts = Vec::new();
        for q in d.iter().chain(&p) {
            if q.2 > 0.0 && q.1 > 0.0 {
                let ai = q.3 / q.2;
                ai_range = (ai_range.0.min(ai), ai_range.1.max(ai));
                pts.push((ai, q.3 / (q.1 * 1e-3) / 1e9));
            }
        }
        roof_pts.push(Series::new(label.clone(), pts, Style::Points, mi));
        if let (Some(first), Some(last)) = (d.first(), d.last()) {
            let bound = of("decode").last().map(|r| text(r, "bound")).unwrap_or_default();
            summary_rows.push_str(&format!(
                "| {label} | {:.3} ms at {} | {:.3} ms at {} | {:.1} GB/s, {:.0} GFLOP/s | {bound} |\n",
                first.1,
                first.0,
                last.1,
                last.0,
                last.2 / (last.1 * 1e-3) / 1e9,
                last.3 / (last.1 * 1e-3) / 1e9,
            ));
        }
    }
    // Quadratic reference through MHA's shortest prefill.
    if let Some(first) = prefill_s.first().and_then(|s| s.points.first().copied()) {
        let xs: Vec<f64> = prefill_s[0].points.iter().map(|q| q.0).collect();
        let pts = xs.iter().map(|&x| (x, first.1 * (x / first.0).powi(2))).collect();
        prefill_s.push(Series::new("∝ T² (slope 2)", pts, Style::Dashed, 7));
    }
    decode.push(Series::new("dashed: KV bytes / read bandwidth", Vec::new(), Style::Dashed, 7));
    if ai_range.0.is_finite() {
        let (lo, hi) = (ai_range.0 / 2.0, ai_range.1 * 2.0);
        let roof: Vec<(f64, f64)> = (0..=60)
            .map(|i| {
                let ai = lo * (hi / lo).powf(i as f64 / 60.0);
                (ai, (ai * read_gbps).min(peak))
            })
            .collect();
        roof_pts.push(Series::new(
            format!("roof: min({read_gbps:.0} GB/s × AI, {peak:.0} GFLOP/s)"),
            roof,
            Style::Dashed,
            7,
        ));
    }
    out.panels.push(Panel {
        title: "Decode step (1 query token), bf16 cache".into(),
        x_label: "context (tokens)".into(),
        y_label: "ms per step".into(),
        x_log: true,
        y_log: true,
        series: decode,
        ..Default::default()
    });
    out.panels.push(Panel {
        title: "Causal prefill".into(),
        x_label: "prompt length T (tokens)".into(),
        y_label: "ms".into(),
        x_log: true,
        y_log: true,
        series: prefill_s,
        ..Default::default()
    });
    out.panels.push(Panel {
        title: "Roofline: decode (left, memory-bound), prefill (right)".into(),
        x_label: "arithmetic intensity (FLOP per KV byte)".into(),
        y_label: "GFLOP/s".into(),
        x_log: true,
        y_log: true,
        series: roof_pts,
        legend: Legend::LowerRight,
        ..Default::default()
    });
    out.summary = format!(
        "`latent bench attention` on synthetic caches with the shapes of a Llama-3-8B-like layer (32 query \
         heads × 128; MHA 32, GQA 8, MQA 1 KV heads; SWA = GQA with a {window}-token window and 4 sinks) and of \
         DeepSeek-V2's absorbed MLA (128 heads over one 576-dim latent row). Decode time grows linearly with \
         the context; the window caps it. MHA and GQA decode read each cached byte for few FLOPs and sit near \
         the memory floor (dashed: KV bytes over the read bandwidth measured in the same run); MQA and absorbed \
         MLA share one cached row among all heads, so they are bound by arithmetic instead (the roofline's flat \
         part), which is what makes MLA's small cache cheap to read but not free to use. Prefill grows as T² \
         (dashed slope-2 line) and runs under the compute roof.\n\n\
         | mechanism | decode, shortest context | decode, longest context | achieved at the longest | bound |\n|---|---|---|---|---|\n{summary_rows}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. Conversion quality

fn conversion(cx: &Ctx, out: &mut Out) -> Result<()> {
    let Some((model, txt)) = model_and_text(cx, out) else { return Ok(()) };
    let mut a = args(&["convert", "--report", "--json", "--model"]);
    a.extend([path(&model), "--calib".into(), path(&txt)]);
    if cx.quick {
        a.extend(args(&[
            "--quick",
            "--calib-tokens",
            "256",
            "--calib-len",
            "128",
            "--skip",
            "1024",
            "--windows",
            "1",
            "--ctx",
            "256",
        ]));
    }
    let stdout = cx.latent(out, &a)?;
    let rows: Vec<Value> = serde_json::from_str(stdout.trim()).context("parsing latent convert --report --json")?;
    let base = rows
        .iter()
        .find(|r| text(r, "model") == "source" && text(r, "kv_dtype") == "f32")
        .ok_or_else(|| anyhow!("the conversion report has no source row"))?;
    let base_ppl = num(base, "ppl")?;
    let mut methods: Vec<String> = Vec::new();
    let mut table = String::from(
        "| model | method | KV kept | cache | bytes/token | perplexity | change |\n|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        out.row(vec![
            text(r, "model"),
            text(r, "method"),
            s(num(r, "kv_kept")?),
            text(r, "kv_dtype"),
            text(r, "kv_bytes_per_token"),
            text(r, "kv_rank"),
            text(r, "rope_dim"),
            s(num(r, "ppl")?),
            s(num(r, "ppl_change_pct")?),
        ]);
        table.push_str(&format!(
            "| {} | {} | {:.1} % | {} | {} | {:.3} | {:+.1} % |\n",
            text(r, "model"),
            text(r, "method"),
            100.0 * num(r, "kv_kept")?,
            text(r, "kv_dtype"),
            text(r, "kv_bytes_per_token"),
            num(r, "ppl")?,
            num(r, "ppl_change_pct")?
        ));
        let m = text(r, "method");
        if text(r, "model") == "MLA" && !methods.contains(&m) {
            methods.push(m);
        }
    }
    let mut lines = Vec::new();
    let mut pareto = vec![Series::new(
        "GQA source (f32, int8, fp8 cache)",
        rows.iter()
            .filter(|r| text(r, "model") == "source")
            .filter_map(|r| Some((num(r, "kv_bytes_per_token").ok()?, num(r, "ppl").ok()?)))
            .collect(),
        Style::Points,
        0,
    )];
    for (i, m) in methods.iter().enumerate() {
        let mut pts = vec![(100.0, base_ppl)];
        for r in rows.iter().filter(|r| text(r, "model") == "MLA" && &text(r, "method") == m) {
            if text(r, "kv_dtype") == "f32" {
                pts.push((100.0 * num(r, "kv_kept")?, num(r, "ppl")?));
            }
        }
        pts.sort_by(|a, b| b.0.total_cmp(&a.0));
        lines.push(Series::new(m.clone(), pts, Style::LinePoints, i + 1));
        let p: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| text(r, "model") == "MLA" && &text(r, "method") == m)
            .filter_map(|r| Some((num(r, "kv_bytes_per_token").ok()?, num(r, "ppl").ok()?)))
            .collect();
        pareto.push(Series::new(format!("MLA, {m} (f32 / fp8 latent)"), p, Style::Points, i + 1));
    }
    lines.push(Series::new(
        format!("source, f32 cache: {base_ppl:.2}"),
        vec![(10.0, base_ppl), (100.0, base_ppl)],
        Style::Dashed,
        0,
    ));
    out.panels.push(Panel {
        title: "Perplexity against KV elements kept".into(),
        x_label: "KV elements kept (% of the GQA source)".into(),
        y_label: "perplexity (held-out text)".into(),
        y_log: true,
        series: lines,
        ..Default::default()
    });
    out.panels.push(Panel {
        title: "Bytes per token against perplexity".into(),
        x_label: "KV bytes per token (all layers)".into(),
        y_label: "perplexity".into(),
        x_log: true,
        y_log: true,
        series: pareto,
        ..Default::default()
    });
    out.summary = format!(
        "`latent convert --report`: the model converted to MLA (RoRoPE, shared RoPE key, joint K/V latent) at \
         each KV budget, one line per method step: the baseline recipe (balanced joint PCA), + the score/output \
         metric latent, + the per-head least-squares value refit, + the joint value refit in the layer-output metric \
         (the default), and one tried refit (expected-rotation keys); calibration \
         text is never scored. Right: every cache variant on one axis of bytes per token, with the source's 8-bit \
         caches.\n\n{table}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 4. Sliding window with sinks

fn window(cx: &Ctx, out: &mut Out) -> Result<()> {
    let Some((model, txt)) = model_and_text(cx, out) else { return Ok(()) };
    let (ctx, windows, skip, ws): (usize, usize, usize, Vec<usize>) =
        if cx.quick { (256, 1, 1024, vec![32, 128]) } else { (1024, 3, 4096, vec![16, 32, 64, 128, 256]) };
    let run = |out: &mut Out, w: Option<(usize, usize)>| -> Result<Value> {
        let mut a = args(&["perplexity", "--json", "--model"]);
        a.extend([path(&model), "--file".into(), path(&txt)]);
        a.extend(["--ctx".into(), s(ctx), "--skip".into(), s(skip), "--windows".into(), s(windows)]);
        if let Some((w, sinks)) = w {
            a.extend(["--window".into(), s(w), "--sinks".into(), s(sinks)]);
        }
        let o = cx.latent(out, &a)?;
        json_lines(&o)?.pop().ok_or_else(|| anyhow!("latent perplexity printed no JSON"))
    };
    let full = run(out, None)?;
    let full_ppl = num(&full, "ppl")?;
    out.row(vec![s("full"), s(0), s(ctx), s(num(&full, "scored")?), s(full_ppl), s(num(&full, "kv_peak_tokens")?)]);
    let mut series = Vec::new();
    let mut table = String::from("| window W | no sinks | 4 sinks |\n|---|---|---|\n");
    let mut cols: Vec<Vec<f64>> = Vec::new();
    for (i, sinks) in [0usize, 4].into_iter().enumerate() {
        let mut pts = Vec::new();
        let mut col = Vec::new();
        for &w in &ws {
            let r = run(out, Some((w, sinks)))?;
            let ppl = num(&r, "ppl")?;
            out.row(vec![s(w), s(sinks), s(ctx), s(num(&r, "scored")?), s(ppl), s(num(&r, "kv_peak_tokens")?)]);
            pts.push((w as f64, ppl));
            col.push(ppl);
        }
        cols.push(col);
        let name = if sinks == 0 { "window only".to_string() } else { format!("window + {sinks} sink tokens") };
        series.push(Series::new(name, pts, Style::LinePoints, i + 1));
    }
    for (k, &w) in ws.iter().enumerate() {
        table.push_str(&format!("| {w} | {:.2} | {:.2} |\n", cols[0][k], cols[1][k]));
    }
    series.push(Series::new(
        format!("full causal attention: {full_ppl:.2}"),
        vec![(ws[0] as f64, full_ppl), (*ws.last().unwrap_or(&ws[0]) as f64, full_ppl)],
        Style::Dashed,
        0,
    ));
    out.panels.push(Panel {
        title: format!("Perplexity with a sliding window ({ctx}-token sequences)"),
        x_label: "window W (tokens)".into(),
        y_label: "perplexity".into(),
        x_log: true,
        y_log: true,
        series,
        ..Default::default()
    });
    out.summary = format!(
        "`latent perplexity --window W [--sinks 4]`: StreamingLLM-style attention over the last W tokens, with \
         the first 4 tokens kept visible or not, on {windows} held-out sequence(s) of {ctx} tokens (after the \
         first {skip}); full causal attention scores {full_ppl:.3}.\n\n{table}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 5. Generation: GQA against its MLA conversion

fn generation(cx: &Ctx, out: &mut Out) -> Result<()> {
    let Some((model, _)) = model_and_text(cx, out) else { return Ok(()) };
    let mla = cx.converted(out)?;
    let models = [("GQA (source)", model.clone()), ("MLA (latent convert, 50 % KV)", mla.clone())];
    let (contexts, gen, conc, serve_gen, requests): (Vec<usize>, usize, &str, &str, Option<&str>) = if cx.quick {
        (vec![64, 512], 8, "1,4", "8", Some("4"))
    } else {
        (vec![128, 1024, 4096, 8000], 32, "1,4,16", "64", None)
    };
    let mut decode = Vec::new();
    let mut serve = Vec::new();
    let mut cap = Vec::new();
    let mut table = String::from("| context | GQA decode tok/s | MLA decode tok/s | MLA / GQA |\n|---|---|---|---|\n");
    let mut rates: Vec<Vec<f64>> = Vec::new();
    for (mi, (label, file)) in models.iter().enumerate() {
        let mut pts = Vec::new();
        let mut col = Vec::new();
        for &c in &contexts {
            let mut a = args(&["bench", "generate", "--json", "--runs", "1", "--model"]);
            a.extend([path(file), "--prompt-tokens".into(), s(c), "--gen-tokens".into(), s(gen)]);
            let o = cx.latent(out, &a)?;
            let j = json_lines(&o)?.pop().ok_or_else(|| anyhow!("latent bench generate printed no JSON"))?;
            let tps = num(&j, "decode_tok_s")?;
            out.row(vec![
                s("decode"),
                s(label),
                s(c),
                s(tps),
                s("tok/s"),
                format!("gen {gen}, prefill {:.1} tok/s", num(&j, "prefill_tok_s")?),
            ]);
            pts.push((c as f64, tps));
            col.push(tps);
        }
        rates.push(col);
        decode.push(Series::new(*label, pts, Style::LinePoints, mi));
        let mut a = args(&["bench", "serve", "--json", "--prompt-tokens", "16", "--model"]);
        a.extend([path(file), "--concurrency".into(), s(conc), "--gen-tokens".into(), s(serve_gen)]);
        if let Some(r) = requests {
            a.extend(["--requests".into(), s(r)]);
        }
        let o = cx.latent(out, &a)?;
        let mut pts = Vec::new();
        for l in json_lines(&o)? {
            let (c, tps) = (num(&l, "concurrency")?, num(&l, "gen_tok_s")?);
            out.row(vec![s("serve"), s(label), s(c), s(tps), s("tok/s"), format!("errors {}", text(&l, "errors"))]);
            pts.push((c, tps));
        }
        serve.push(Series::new(*label, pts, Style::LinePoints, mi));
    }
    for (k, &c) in contexts.iter().enumerate() {
        table.push_str(&format!(
            "| {c} | {:.1} | {:.1} | {:.2}× |\n",
            rates[0][k],
            rates[1][k],
            rates[1][k] / rates[0][k].max(1e-9)
        ));
    }
    // How many 2048-token sequences the server's block pool holds in a fixed --kv-memory.
    let seq_len = 2048usize;
    let mems: [usize; 3] = [128 << 20, 512 << 20, 2048 << 20];
    let mut cap_table = String::from("| --kv-memory | cache | GQA sequences | MLA sequences |\n|---|---|---|---|\n");
    let mut caps: Vec<Vec<(usize, usize)>> = Vec::new();
    for (mi, (label, file)) in models.iter().enumerate() {
        let mut per = Vec::new();
        for (di, dtype) in [KvDtype::F32, KvDtype::Fp8].into_iter().enumerate() {
            let opts = latent_engine::EngineOptions {
                threads: 1,
                kv_dtype: if dtype == KvDtype::F32 { None } else { Some(dtype) },
                ..Default::default()
            };
            let engine =
                latent_engine::Engine::load(file, opts).with_context(|| format!("loading {}", file.display()))?;
            let mut pts = Vec::new();
            for &m in &mems {
                let so = latent_engine::scheduler::SchedulerOptions { kv_memory: Some(m), ..Default::default() };
                let sched = latent_engine::Scheduler::new(&engine, so)?;
                let (blocks, _) = sched.kv_blocks();
                let fit = blocks / seq_len.div_ceil(latent_kv::DEFAULT_BLOCK_SIZE);
                out.row(vec![
                    s("capacity"),
                    s(label),
                    s(m),
                    s(fit),
                    s("sequences"),
                    format!("{} cache, {seq_len}-token sequences, {blocks} blocks", dtype.name()),
                ]);
                pts.push((m as f64 / (1 << 20) as f64, fit as f64));
                per.push((m, fit));
            }
            cap.push(Series::new(
                format!("{label}, {}", dtype.name()),
                pts,
                if di == 0 { Style::LinePoints } else { Style::Dashed },
                mi,
            ));
        }
        caps.push(per);
    }
    out.commands.push(format!(
        "(capacity: the scheduler's block pool for --kv-memory 128/512/2048 MiB, as `latent serve --kv-memory` builds it, f32 and fp8 caches, {seq_len}-token sequences)"
    ));
    for (k, &m) in mems.iter().enumerate() {
        for (di, d) in ["f32", "fp8"].iter().enumerate() {
            let idx = di * mems.len() + k;
            cap_table.push_str(&format!("| {} MiB | {d} | {} | {} |\n", m >> 20, caps[0][idx].1, caps[1][idx].1));
        }
    }
    out.panels.push(Panel {
        title: "Single-stream decode against context".into(),
        x_label: "context (prompt tokens before decoding)".into(),
        y_label: "decode tok/s".into(),
        x_log: true,
        series: decode,
        ..Default::default()
    });
    out.panels.push(Panel {
        title: "latent serve: throughput against concurrency".into(),
        x_label: "streams in flight".into(),
        y_label: "generated tok/s (all streams)".into(),
        x_log: true,
        series: serve,
        ..Default::default()
    });
    out.panels.push(Panel {
        title: format!("Sequences of {seq_len} tokens that fit"),
        x_label: "--kv-memory (MiB)".into(),
        y_label: "sequences".into(),
        x_log: true,
        series: cap,
        ..Default::default()
    });
    out.summary = format!(
        "The model and its MLA conversion (half the KV elements: R = 128, P = 64 for SmolLM2) in the same run: decode speed \
         after a prompt of each length (`latent bench generate`), aggregate throughput of `latent serve` (in-process, \
         streamed, `latent bench serve`), and how many {seq_len}-token sequences the server's block pool holds in a \
         fixed `--kv-memory`.\n\n{table}\n{cap_table}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 6. llama.cpp

fn llama(cx: &Ctx, out: &mut Out) -> Result<()> {
    let model = match cx.need_model() {
        Ok(m) => m.clone(),
        Err(e) => {
            skipped(out, &e);
            out.row(vec![s(""), s(""), s(""), s(""), s(""), s(""), s(""), format!("not measured: {e}")]);
            return Ok(());
        }
    };
    let (py, script) = match &cx.llama {
        Ok(x) => x.clone(),
        Err(e) => {
            skipped(out, e);
            out.row(vec![s(""), s(""), s(""), s(""), s(""), s(""), s(""), format!("not measured: {e}")]);
            return Ok(());
        }
    };
    let (pairs, prompt, gen) = if cx.quick { (1, 64, 16) } else { (3, 512, 128) };
    let mut cats = Vec::new();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut table = String::from("| threads | latent decode | llama.cpp decode | ratio | latent prefill | llama.cpp prefill | ratio |\n|---|---|---|---|---|---|---|\n");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    for th in [1usize, 2] {
        let (mut ld, mut lp, mut rd, mut rp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for pair in 0..pairs {
            let mut a = args(&["bench", "generate", "--json", "--model"]);
            a.extend([path(&model), "--prompt-tokens".into(), s(prompt), "--gen-tokens".into(), s(gen)]);
            a.extend(["--threads".into(), s(th)]);
            let o = cx.latent(out, &a)?;
            let j = json_lines(&o)?.pop().ok_or_else(|| anyhow!("latent bench generate printed no JSON"))?;
            let ra = vec![path(&script), s("bench"), path(&model), s(prompt), s(gen), s(th)];
            let shown = format!("{} ", py.display());
            let r = cx
                .run_recorded(out, &py, shown.trim(), &ra)
                .and_then(|o| json_lines(&o)?.pop().ok_or_else(|| anyhow!("llama_ref.py bench printed no JSON")));
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    // The reference crashing (e.g. its AMX path) is a fact about it, not a failure here.
                    let why = format!("llama.cpp did not run: {e:#}");
                    skipped(out, &why);
                    out.row(vec![s(th), s(pair), s("llama.cpp"), s(prompt), s(gen), s(""), s(""), why]);
                    return Ok(());
                }
            };
            for (engine, v, d, p) in [("latent", &j, &mut ld, &mut lp), ("llama.cpp", &r, &mut rd, &mut rp)] {
                let (pt, dt) = (num(v, "prefill_tok_s")?, num(v, "decode_tok_s")?);
                out.row(vec![s(th), s(pair), s(engine), s(prompt), s(gen), s(pt), s(dt), s("ok")]);
                d.push(dt);
                p.push(pt);
            }
        }
        let (ld, lp, rd, rp) = (median(ld), median(lp), median(rd), median(rp));
        let k = cats.len() as f64;
        cats.push(format!("decode, {th} thr"));
        cats.push(format!("prefill, {th} thr"));
        ours.extend([(k, ld), (k + 1.0, lp)]);
        theirs.extend([(k, rd), (k + 1.0, rp)]);
        table.push_str(&format!(
            "| {th} | {ld:.1} | {rd:.1} | {:.2}× | {lp:.1} | {rp:.1} | {:.2}× |\n",
            ld / rd,
            lp / rp
        ));
    }
    out.panels.push(Panel {
        title: format!("Same GGUF, {prompt}-token prompt, {gen} generated (median of {pairs})"),
        y_label: "tok/s".into(),
        y_log: true,
        categories: cats,
        series: vec![Series::new("latent", ours, Style::Bars, 0), Series::new("llama.cpp", theirs, Style::Bars, 1)],
        ..Default::default()
    });
    out.summary = format!(
        "Interleaved pairs of `latent bench generate` and llama.cpp's Python bindings (`llama_ref.py bench`) on \
         the same file, f32 KV for both, at 1 and 2 threads; medians of {pairs} pair(s).\n\n{table}"
    );
    Ok(())
}
