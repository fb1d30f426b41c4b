//! `latent bench generate --json` reports the decode roofline measured in the same run: the
//! bytes a decode step reads (weights once, plus the cached K/V), the read bandwidth, and
//! the fraction of it the decode achieves. Needs the real model (`LATENT_MODEL`, else
//! `shared/models/` beside the checkout); skipped with a printed reason when it is absent.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_latent");
const MODEL_FILE: &str = "smollm2-135m-instruct-q4_1.gguf";

fn model() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LATENT_MODEL").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["../../../shared/models", "../../shared/models"]
        .iter()
        .map(|d| root.join(d).join(MODEL_FILE))
        .find(|p| p.is_file())
}

#[test]
fn json_reports_the_decode_roofline() {
    let Some(m) = model() else {
        eprintln!("skipped: no model (set LATENT_MODEL or put {MODEL_FILE} in shared/models/)");
        return;
    };
    let out = Command::new(BIN)
        .args(["bench", "generate", "--prompt-tokens", "100", "--gen-tokens", "4", "--runs", "1", "--threads", "2"])
        .arg("--json")
        .arg("--model")
        .arg(&m)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let f = |k: &str| j[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {j}"));
    let file = std::fs::metadata(&m).unwrap().len() as f64;
    // SmolLM2's output matrix is its token embedding: every tensor is read, i.e. nearly the
    // whole file (the header and metadata aside).
    let w = f("weight_bytes_per_token");
    assert!(w > 0.9 * file && w < file, "weights {w} of a {file}-byte file");
    // f32 K/V of 30 layers × 3 heads × 64 dims × 2, at 100 + 4/2 cached tokens on average.
    let kv = f("decode_bytes_per_token") - w;
    assert!((kv - 30.0 * 3.0 * 64.0 * 2.0 * 4.0 * 102.0).abs() < 1.0, "KV bytes {kv}");
    assert!(f("read_gbps") > 0.1);
    let frac = f("roofline_fraction");
    assert!((frac - f("decode_tok_s") / f("roofline_tok_s")).abs() < 1e-9);
    assert!(frac > 0.0 && frac < 1.5, "roofline fraction {frac}");
    // Measured before the bandwidth probe's 512 MiB buffer.
    assert!(f("peak_rss_bytes") < 400.0 * (1 << 20) as f64, "peak RSS {}", f("peak_rss_bytes"));
}
