//! KV-cache size accounting for every mechanism, per token and at a context length.
//!
//! Elements per token count all layers (DeepSeek-V2 paper, Table 1): MHA 2·n_h·d_h·l,
//! GQA 2·n_g·d_h·l, MQA 2·d_h·l, MLA (d_c + d_h^R)·l. A sliding window of W keeps the same
//! per-token size but holds at most W tokens.

/// The attention dimensions of a model, as far as its cache is concerned.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDims {
    pub name: String,
    /// l
    pub layers: usize,
    /// n_h
    pub heads: usize,
    /// KV heads of the model's own attention (n_g for GQA, = n_h for MHA).
    pub kv_heads: usize,
    /// d_h (per-head key/value dim used for the MHA/GQA/MQA rows).
    pub head_dim: usize,
    /// Native MLA: (d_c, d_h^R).
    pub mla: Option<(usize, usize)>,
}

impl ModelDims {
    /// Built-in presets.
    pub fn preset(name: &str) -> Option<ModelDims> {
        let d = |layers, heads, kv_heads, head_dim, mla| ModelDims {
            name: name.to_string(),
            layers,
            heads,
            kv_heads,
            head_dim,
            mla,
        };
        Some(match name {
            // 60 layers, 128 heads × 128, d_c 512, d_h^R 64.
            "deepseek-v2" => d(60, 128, 128, 128, Some((512, 64))),
            // 27 layers, 16 heads × 128.
            "deepseek-v2-lite" => d(27, 16, 16, 128, Some((512, 64))),
            // 61 layers, 128 heads × 128.
            "deepseek-v3" => d(61, 128, 128, 128, Some((512, 64))),
            // 30 layers, 9 query / 3 KV heads × 64.
            "smollm2-135m" => d(30, 9, 3, 64, None),
            // 32 layers, 32 heads × 128 (MHA).
            "llama-2-7b" => d(32, 32, 32, 128, None),
            // 32 layers, 32 query / 8 KV heads × 128.
            "llama-3-8b" => d(32, 32, 8, 128, None),
            _ => return None,
        })
    }
    pub const PRESETS: [&'static str; 6] =
        ["deepseek-v2", "deepseek-v2-lite", "deepseek-v3", "smollm2-135m", "llama-2-7b", "llama-3-8b"];

    /// The model's own mechanism name.
    pub fn native(&self) -> &'static str {
        if self.mla.is_some() {
            "mla"
        } else if self.kv_heads == self.heads {
            "mha"
        } else if self.kv_heads == 1 {
            "mqa"
        } else {
            "gqa"
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct KvRow {
    pub mechanism: &'static str,
    /// How the row was sized (e.g. "n_g=8", "d_c=512, d_h^R=64 (native)").
    pub detail: String,
    pub elements_per_token: u64,
    pub bytes_per_token: f64,
    pub bytes_at_context: f64,
    /// Percent of the MHA row's per-token size.
    pub pct_of_mha: f64,
}

/// Options of the table.
#[derive(Clone, Copy, Debug)]
pub struct KvTableOpts {
    /// Cache element type; bytes per token include the per-128-element scales of the 8-bit
    /// types (and MLA keeps its RoPE key in bf16 under an 8-bit latent).
    pub dtype: crate::KvDtype,
    pub context: usize,
    /// GQA group count for models that are not GQA themselves.
    pub gqa_groups: usize,
    /// Add a sliding-window row (the native mechanism holding at most W + `sinks` tokens).
    pub window: Option<usize>,
    /// Sink tokens kept beside the window.
    pub sinks: usize,
}

/// The per-mechanism rows for `m`. Models without MLA get an MLA row sized like DeepSeek-V2
/// relative to their head dim (d_c = 4·d_h, d_h^R = d_h/2).
pub fn kv_table(m: &ModelDims, o: &KvTableOpts) -> Vec<KvRow> {
    let (l, nh, dh) = (m.layers as u64, m.heads as u64, m.head_dim as u64);
    let groups = if m.native() == "gqa" { m.kv_heads } else { o.gqa_groups.min(m.heads).max(1) } as u64;
    let (dc, dr, mla_note) = match m.mla {
        Some((dc, dr)) => (dc as u64, dr as u64, "native"),
        None => (4 * dh, dh / 2, "as DeepSeek-V2: d_c=4·d_h, d_h^R=d_h/2"),
    };
    let native = m.native();
    let mut rows: Vec<(&'static str, String, u64)> = vec![
        ("mha", format!("n_h={nh}, d_h={dh}{}", if native == "mha" { " (native)" } else { "" }), 2 * nh * dh * l),
        (
            "gqa",
            format!("n_g={groups}, d_h={dh}{}", if native == "gqa" { " (native)" } else { "" }),
            2 * groups * dh * l,
        ),
        ("mqa", format!("d_h={dh}{}", if native == "mqa" { " (native)" } else { "" }), 2 * dh * l),
        ("low-rank", format!("r=d_c={dc}, no RoPE key"), dc * l),
        ("mla", format!("d_c={dc}, d_h^R={dr} ({mla_note})"), (dc + dr) * l),
    ];
    let mha = rows[0].2 as f64;
    // Stored bytes per token: K and V rows of d_h per head (or one latent row) per layer.
    let plain = crate::RowFormat::plain(o.dtype);
    let kv_bytes = |heads: u64| (2 * heads * l) as f64 * plain.row_bytes(dh as usize) as f64;
    let mla_bytes = l as f64 * crate::RowFormat::latent(o.dtype, dr as usize).row_bytes((dc + dr) as usize) as f64;
    let low_rank_bytes = l as f64 * plain.row_bytes(dc as usize) as f64;
    let mut out: Vec<KvRow> = rows
        .drain(..)
        .map(|(mech, detail, e)| {
            let b = match mech {
                "mha" => kv_bytes(nh),
                "gqa" => kv_bytes(groups),
                "mqa" => kv_bytes(1),
                "low-rank" => low_rank_bytes,
                _ => mla_bytes,
            };
            KvRow {
                mechanism: mech,
                detail,
                elements_per_token: e,
                bytes_per_token: b,
                bytes_at_context: b * o.context as f64,
                pct_of_mha: 100.0 * e as f64 / mha,
            }
        })
        .collect();
    if let Some(w) = o.window {
        let base = out.iter().find(|r| r.mechanism == native).cloned().unwrap_or_else(|| out[0].clone());
        out.push(KvRow {
            mechanism: "sliding-window",
            detail: if o.sinks > 0 {
                format!("{native} keeping W={w} + {} sink tokens", o.sinks)
            } else {
                format!("{native} keeping W={w} tokens")
            },
            bytes_at_context: base.bytes_per_token * o.context.min(w.saturating_add(o.sinks)) as f64,
            ..base
        });
    }
    out
}
