//! `latent bench attention --mechanisms mla-layer`: the attention of one whole MLA layer
//! (DeepSeek-V2-Lite shapes) on both execution paths — absorbed (queries absorbed into the
//! latent space, MQA over the latent cache, outputs expanded) and naive (the cache
//! decompressed into per-head K/V, then MHA) — for a fresh prefill, a chunk over a cached
//! prefix and a decode step, with the path `Mla::choose_path` picks. This is the measurement
//! the rule is fitted to.

use anyhow::Result;
use latent_attention::testing::Rng;
use latent_attention::{DenseLatent, KvDtype, Local, Mla, MlaConfig, MlaPath, Positions, Rope, RopeStyle, RowFormat};
use std::time::Instant;

/// DeepSeek-V2-Lite: 16 heads, R = 512, P = 64, N = 128, V = 128, hidden 2048, no q_lora.
fn lite() -> MlaConfig {
    MlaConfig {
        hidden: 2048,
        heads: 16,
        q_lora_rank: None,
        kv_lora_rank: 512,
        nope: 128,
        rope_dim: 64,
        v_dim: 128,
        eps: 1e-6,
        rope: Rope::plain(64, 10000.0, RopeStyle::Interleaved),
        scale_mult: 1.0,
    }
}

/// One measured case: `t` new tokens over `s` keys (their own included).
pub struct MlaRow {
    pub phase: &'static str,
    pub tokens: usize,
    pub keys: usize,
    pub absorbed_ms: f64,
    /// `None` past the naive path's memory cap.
    pub naive_ms: Option<f64>,
    pub auto: MlaPath,
}

fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut ts: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(|a, b| a.total_cmp(b));
    ts[ts.len() / 2]
}

/// Times both paths for each (phase, T, S) case on the current rayon pool.
pub fn measure(
    prefills: &[usize],
    contexts: &[usize],
    chunk: usize,
    reps: usize,
    dtype: KvDtype,
) -> Result<Vec<MlaRow>> {
    let mut rng = Rng(7);
    let m = Mla::random(lite(), &mut rng);
    let cfg = m.cfg;
    let mut cases: Vec<(&'static str, usize, usize)> = prefills.iter().map(|&t| ("prefill", t, t)).collect();
    for &c in contexts {
        cases.push(("chunk", chunk, c + chunk));
        cases.push(("decode", 1, c + 1));
    }
    let fmt = RowFormat::latent(dtype, cfg.rope_dim);
    let mut rows = Vec::new();
    for (phase, t, s) in cases {
        let lat = rng.normals(s * cfg.latent_dim(), 1.0);
        let cache = DenseLatent::new(fmt, cfg.latent_dim(), cfg.kv_lora_rank, &lat);
        let pos = Positions::new(&cfg.rope, s - t, t);
        let q = rng.normals(t * cfg.heads * cfg.qk_dim(), 1.0);
        let run = |path: MlaPath| -> Result<f64> {
            let mut err = None;
            let reps = if t * s > (1 << 22) { 1 } else { reps };
            let secs = median(reps, || {
                if let Err(e) = m.attend(&Local(None), &q, &pos, cache.view(), None, path) {
                    err = Some(e);
                }
            });
            match err {
                Some(e) => Err(e.into()),
                None => Ok(secs * 1e3),
            }
        };
        let absorbed_ms = run(MlaPath::Absorbed)?;
        let naive_ms =
            if m.choose_path(MlaPath::Naive, t, s, None) == MlaPath::Naive { Some(run(MlaPath::Naive)?) } else { None };
        rows.push(MlaRow {
            phase,
            tokens: t,
            keys: s,
            absorbed_ms,
            naive_ms,
            auto: m.choose_path(MlaPath::Auto, t, s, None),
        });
    }
    Ok(rows)
}

/// Prints the table (or JSON lines) and whether the rule picked the faster path.
pub fn report(rows: &[MlaRow], json: bool) {
    if !json {
        outln!(
            "mla-layer (DeepSeek-V2-Lite: H 16, R 512, P 64, N 128, V 128; attention incl. absorb/decompress/expand)"
        );
        outln!(
            "{:<8} {:>6} {:>7} {:>12} {:>12} {:>9} {:>8}",
            "phase",
            "T",
            "S",
            "absorbed ms",
            "naive ms",
            "auto",
            "faster?"
        );
    }
    for r in rows {
        let faster = match r.naive_ms {
            Some(n) if n < r.absorbed_ms => MlaPath::Naive,
            _ => MlaPath::Absorbed,
        };
        if json {
            outln!(
                "{}",
                serde_json::json!({
                    "mechanism": "mla-layer", "phase": r.phase, "tokens": r.tokens, "keys": r.keys,
                    "absorbed_ms": r.absorbed_ms, "naive_ms": r.naive_ms,
                    "auto": format!("{:?}", r.auto).to_lowercase(), "auto_is_faster": r.auto == faster,
                })
            );
        } else {
            let naive = r.naive_ms.map_or("over cap".to_string(), |n| format!("{n:.2}"));
            outln!(
                "{:<8} {:>6} {:>7} {:>12.2} {:>12} {:>9} {:>8}",
                r.phase,
                r.tokens,
                r.keys,
                r.absorbed_ms,
                naive,
                format!("{:?}", r.auto).to_lowercase(),
                if r.auto == faster { "yes" } else { "no" }
            );
        }
    }
}
