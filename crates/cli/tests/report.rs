//! `latent report --quick` writes every promised file: REPORT.md, and for each figure an SVG,
//! a PNG and a CSV whose rows are the ones the figure draws. With the real model
//! (`LATENT_MODEL`, else `shared/models/` beside the checkout) every figure is measured; without
//! it the model figures say why they are empty (printed here), and the rest are still checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_latent");
const MODEL_FILE: &str = "smollm2-135m-instruct-q4_1.gguf";

fn shared(rel: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["../../../shared", "../../shared"].iter().map(|d| root.join(d).join(rel)).find(|p| p.is_file())
}

/// Rows of a CSV file as header → cell maps (quoted cells may hold commas).
fn csv(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let split = |line: &str| {
        let mut cells = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                '"' => quoted = !quoted,
                ',' if !quoted => cells.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        cells.push(cur);
        cells
    };
    let mut lines = text.lines();
    let header = split(lines.next().expect("a header line"));
    lines
        .map(|l| {
            let cells = split(l);
            assert_eq!(cells.len(), header.len(), "{}: {l}", path.display());
            header.iter().cloned().zip(cells).collect()
        })
        .collect()
}

fn f(row: &HashMap<String, String>, k: &str) -> f64 {
    row[k].parse().unwrap_or_else(|_| panic!("{k} = {:?} is not a number", row[k]))
}

#[test]
fn quick_report_writes_every_promised_file() {
    let dir = std::env::temp_dir().join(format!("latent-report-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let model = shared(&format!("models/{MODEL_FILE}"), "LATENT_MODEL");
    let text = shared("data/eval/rust-book-sample.txt", "LATENT_EVAL_TEXT");
    let mut cmd = Command::new(BIN);
    cmd.args(["report", "--quick", "--threads", "2", "--out"]).arg(&dir);
    match &model {
        Some(m) => {
            cmd.arg("--model").arg(m);
        }
        None => {
            eprintln!("model figures not measured: no model (set LATENT_MODEL or put {MODEL_FILE} in shared/models/)");
            cmd.env_remove("LATENT_MODEL").env("XDG_CACHE_HOME", &dir);
        }
    }
    if let Some(t) = &text {
        cmd.arg("--text").arg(t);
    }
    let out = cmd.output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "latent report failed: {stderr}");
    let measured = model.is_some() && text.is_some();

    let report = std::fs::read_to_string(dir.join("REPORT.md")).expect("REPORT.md");
    assert!(report.contains("GB/s") && report.contains("GFLOP/s"), "the machine line is missing");
    for name in ["kv_cache", "attention", "conversion", "window", "generation", "llama_cpp"] {
        let png = std::fs::read(dir.join(format!("{name}.png"))).expect("png");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png is not a PNG");
        assert!(png.len() > 10_000, "{name}.png is nearly empty");
        let svg = std::fs::read_to_string(dir.join(format!("{name}.svg"))).expect("svg");
        assert!(svg.contains("<svg") && svg.contains("<text"), "{name}.svg has no text");
        // Every figure states the machine in its footer.
        assert!(svg.contains("GB/s"), "{name}.svg does not state the machine");
        assert!(report.contains(&format!("({name}.png)")), "REPORT.md does not show {name}.png");
        assert!(dir.join(format!("{name}.csv")).is_file());
    }

    // 1. Three shapes × seven mechanisms; DeepSeek-V2's MLA row is the paper's 576 elements ×
    // 60 layers in bf16, and the window caps the cache at 4096 + 4 tokens.
    let kv = csv(&dir.join("kv_cache.csv"));
    assert_eq!(kv.len(), 21);
    let ds_mla = kv.iter().find(|r| r["model"] == "DeepSeek-V2" && r["mechanism"] == "MLA bf16").expect("row");
    assert_eq!(f(ds_mla, "bytes_per_token"), 69_120.0);
    assert_eq!(f(ds_mla, "bytes_at_128k"), 69_120.0 * 131_072.0);
    let swa = kv.iter().find(|r| r["model"] == "Llama-3-8B-like" && r["mechanism"] == "SWA 4k+4 sinks").expect("row");
    assert_eq!(f(swa, "bytes_at_32k"), f(swa, "bytes_per_token") * 4100.0);
    assert_eq!(f(swa, "bytes_at_128k"), f(swa, "bytes_at_32k"));

    // 2. Decode and prefill of every mechanism at three sizes, timed.
    let att = csv(&dir.join("attention.csv"));
    for m in ["mha", "gqa", "mqa", "swa", "mla"] {
        for phase in ["decode", "prefill"] {
            let rows: Vec<_> = att.iter().filter(|r| r["mechanism"] == m && r["phase"] == phase).collect();
            assert_eq!(rows.len(), 3, "{m} {phase}");
            assert!(rows.iter().all(|r| f(r, "seconds") > 0.0 && f(r, "flops") > 0.0));
        }
    }

    // Remaking one figure replaces its own section and keeps the others.
    let again =
        Command::new(BIN).args(["report", "--only", "kv", "--threads", "2", "--out"]).arg(&dir).output().expect("runs");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let remade = std::fs::read_to_string(dir.join("REPORT.md")).expect("REPORT.md");
    for name in ["kv_cache", "attention", "conversion", "window", "generation", "llama_cpp"] {
        assert!(remade.contains(&format!("({name}.png)")), "--only kv dropped {name}");
    }
    assert!(remade.contains("Made by `latent report --only kv`") && remade.contains("Made by `latent report --quick`"));
    assert!(remade.find("## 1. KV-cache").is_some() && remade.find("## 6. ").is_some());

    let conv = csv(&dir.join("conversion.csv"));
    let win = csv(&dir.join("window.csv"));
    let gen = csv(&dir.join("generation.csv"));
    let llama = csv(&dir.join("llama_cpp.csv"));
    assert!(!llama.is_empty(), "the llama.cpp figure says what it measured or why not");
    if !measured {
        eprintln!("conversion, window and generation figures: not measured here (no model or text)");
        assert!(report.contains("Not measured in this run"));
        return;
    }
    // 3. The source with three caches, and each quick method at 50 % (f32; the full method
    // with an fp8 latent too).
    assert_eq!(conv.iter().filter(|r| r["model"] == "source").count(), 3);
    let mla: Vec<_> = conv.iter().filter(|r| r["model"] == "MLA").collect();
    assert_eq!(mla.len(), 3, "{mla:?}");
    assert!(mla.iter().all(|r| f(r, "kv_kept") == 0.5 && f(r, "ppl") > 1.0 && f(r, "ppl").is_finite()));

    // 4. Full attention, and two windows with and without sinks; the sinks matter where the
    // window is short (measured here: 173 without, 17 with, full 13).
    assert_eq!(win.len(), 5);
    let ppl = |w: &str, s: &str| f(win.iter().find(|r| r["window"] == w && r["sinks"] == s).expect("row"), "ppl");
    assert!(ppl("32", "4") < ppl("32", "0"), "sink tokens should help a 32-token window");
    assert!(ppl("full", "0") <= ppl("128", "4") * 1.05);

    // 5. Decode at two contexts and the server at two concurrencies for both models, and the
    // capacity at three --kv-memory sizes and two caches: the MLA conversion holds more.
    for part in ["decode", "serve"] {
        for m in ["GQA (source)", "MLA (latent convert, 50 % KV)"] {
            let n = gen.iter().filter(|r| r["part"] == part && r["model"] == m).count();
            assert_eq!(n, 2, "{part} {m}");
        }
    }
    let cap: Vec<_> = gen.iter().filter(|r| r["part"] == "capacity").collect();
    assert_eq!(cap.len(), 12);
    for (g, m) in cap[..6].iter().zip(&cap[6..]) {
        assert_eq!(g["x"], m["x"]);
        assert!(f(m, "value") > f(g, "value"), "MLA should fit more sequences: {g:?} vs {m:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
