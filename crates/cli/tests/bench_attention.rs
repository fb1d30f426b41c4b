//! `latent bench attention --paged --vs-contiguous --json` times the same case through the
//! paged pool and contiguous, alternating, and reports both rows and their ratio.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_latent");

#[test]
fn paged_against_contiguous_reports_both_layouts_and_their_ratio() {
    let out = Command::new(BIN)
        .args(["bench", "attention", "--mechanisms", "gqa", "--contexts", "300", "--prefill", ""])
        .args(["--paged", "--block-size", "64", "--vs-contiguous", "--reps", "2", "--threads", "1", "--json"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!((rows[0]["paged"].as_bool(), rows[0]["block_size"].as_u64()), (Some(false), Some(300)));
    assert_eq!((rows[1]["paged"].as_bool(), rows[1]["block_size"].as_u64()), (Some(true), Some(64)));
    // Both read the same 300 tokens × 8 heads × (128 + 128) bf16 elements.
    for r in &rows[..2] {
        assert_eq!(r["kv_bytes"].as_f64(), Some(300.0 * 8.0 * 256.0 * 2.0), "{r}");
        assert!(r["seconds"].as_f64().is_some_and(|s| s > 0.0), "{r}");
    }
    let ratio = rows[2]["paged_over_contiguous"].as_f64().expect("ratio");
    assert!(ratio.is_finite() && ratio > 0.0, "{ratio}");
    // Without --paged the flag is refused.
    let out = Command::new(BIN).args(["bench", "attention", "--vs-contiguous"]).output().expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("required"), "{}", String::from_utf8_lossy(&out.stderr));
}
