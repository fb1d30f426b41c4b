//! Commands that run a model: generate, chat, tokenize, perplexity, logits, bench generate.

use crate::model_path;
use anyhow::{bail, Context, Result};
use latent_engine::sampling::SamplingError;
use latent_engine::{
    Engine, EngineOptions, KvDtype, Logits, MatmulPrecision, MlaPath, Request, Sampler, SamplingParams, Scheduler,
    StreamWindow,
};
use latent_tokenizer::ChatMessage;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// GGUF model (default: $LATENT_MODEL, else the cached SmolLM2-135M-Instruct, fetched once).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Worker threads (0 = all cores; at most 4× the cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// f32 activations with weights dequantized on the fly (no 8-bit activation rounding).
    #[arg(long)]
    pub exact: bool,
    /// KV-cache element type: f32 (default), f16, bf16, fp8, int8.
    #[arg(long)]
    pub kv_dtype: Option<String>,
    /// StreamingLLM: attend to the last W tokens only (plus --sinks); the cache frees what
    /// falls out, and generation may run past the model's context.
    #[arg(long, value_name = "W")]
    pub window: Option<usize>,
    /// With --window: the first S tokens stay visible (attention sinks).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub sinks: usize,
    /// MLA execution path: auto (per pass), absorbed or naive.
    #[arg(long, default_value = "auto", value_parser = ["auto", "absorbed", "naive"])]
    pub mla_path: String,
    /// Prompt tokens per prefill pass (its activation buffers scale with it).
    #[arg(long, default_value_t = EngineOptions::default().prefill_chunk)]
    pub prefill_chunk: usize,
}

impl ModelArgs {
    pub fn engine(&self) -> Result<Engine> {
        let threads = crate::util::check_threads(self.threads)?;
        let path = model_path::resolve(self.model.as_deref())?;
        let kv_dtype = match &self.kv_dtype {
            None => None,
            Some(s) => Some(
                KvDtype::parse(s).with_context(|| format!("unknown --kv-dtype {s:?} (f32, f16, bf16, fp8, int8)"))?,
            ),
        };
        let window = match (self.window, self.sinks) {
            (None, 0) => None,
            (None, _) => bail!("--sinks needs --window"),
            (Some(w), s) => Some(StreamWindow::new(w, s).map_err(|_| anyhow::anyhow!("--window must be ≥ 1"))?),
        };
        let mla_path = match self.mla_path.as_str() {
            "absorbed" => MlaPath::Absorbed,
            "naive" => MlaPath::Naive,
            _ => MlaPath::Auto,
        };
        let opts = EngineOptions {
            threads,
            precision: if self.exact { MatmulPrecision::Exact } else { MatmulPrecision::Fast },
            kv_dtype,
            window,
            mla_path,
            prefill_chunk: self.prefill_chunk,
        };
        Engine::load(&path, opts).with_context(|| format!("loading {}", path.display()))
    }
}

#[derive(clap::Args, Clone)]
pub struct SampleArgs {
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens below this fraction of the top probability (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for tokens among the last 64 (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (same seed, same output); default: from the clock.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SampleArgs {
    pub fn params(&self) -> Result<SamplingParams> {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        });
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: 64,
            seed,
        };
        // Named as the flags are: "--repeat-penalty must be a finite number > 0, got NaN".
        p.validate().map_err(|SamplingError::OutOfRange { setting, rule, value }| {
            anyhow::anyhow!("--{} must be {rule}, got {value}", setting.replace(' ', "-"))
        })?;
        Ok(p)
    }
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    #[command(flatten)]
    pub s: SampleArgs,
    /// The prompt (used raw unless --chat).
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long)]
    pub system: Option<String>,
    /// One JSON object on stdout instead of streamed text.
    #[arg(long)]
    pub json: bool,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    if a.system.is_some() && !a.chat {
        bail!("--system is only used with --chat (it is the chat template's system message)");
    }
    let params = a.s.params()?;
    let e = a.m.engine()?;
    let prompt = if a.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::system(s.clone()));
        }
        msgs.push(ChatMessage::user(a.prompt.clone()));
        let text = e.tokenizer.render_chat(&msgs, true)?;
        e.tokenizer.encode(&text, true)
    } else {
        e.tokenizer.encode_with_bos(&a.prompt, false)
    };
    let mut sampler = Sampler::new(params.clone());
    let json = a.json;
    // A closed stdout ends the process quietly (status 141) at the first piece.
    let out = e.generate(&prompt, a.max_tokens, &mut sampler, |piece| {
        if !json {
            out!("{piece}");
        }
    })?;
    if json {
        let j = serde_json::json!({
            "prompt_tokens": out.prompt_tokens, "tokens": out.tokens, "text": out.text,
            "prefill_tok_s": out.prefill_tok_s(), "decode_tok_s": out.decode_tok_s(),
            "stop": out.stop, "seed": params.seed, "threads": e.threads(),
        });
        outln!("{j}");
    } else {
        outln!();
        noteln!(
            "[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s, stop: {}, seed {}]",
            out.prompt_tokens.len(),
            out.prefill_tok_s(),
            out.tokens.len(),
            out.decode_tok_s(),
            out.stop,
            params.seed
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    #[command(flatten)]
    pub s: SampleArgs,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    /// Tokens per reply at most.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
}

pub fn chat(a: ChatArgs) -> Result<()> {
    let params = a.s.params()?;
    let e = a.m.engine()?;
    // One sequence kept cached between turns (a session of the scheduler): each turn computes
    // only what its rendered conversation adds to the tokens already cached.
    let mut sched = e.single_scheduler(e.max_sequence().min(e.model.info().context.max(1) * 64))?;
    let mut turn = 0u64;
    let mut history = Vec::new();
    if let Some(s) = &a.system {
        history.push(ChatMessage::system(s.clone()));
    }
    noteln!("chatting with {} (empty line or Ctrl-D to quit, /reset to clear history)", e.model.info().name);
    let stdin = std::io::stdin();
    let mut bytes = Vec::new();
    loop {
        note!("> ");
        bytes.clear();
        if stdin.lock().read_until(b'\n', &mut bytes).context("reading stdin")? == 0 {
            break;
        }
        // A line that is not UTF-8 is refused, and the session goes on.
        let line = match std::str::from_utf8(&bytes) {
            Ok(l) => l,
            Err(err) => {
                noteln!(
                    "[that line is not valid UTF-8 (bad byte at {}); it was not sent — type it again]",
                    err.valid_up_to()
                );
                continue;
            }
        };
        if line.trim().is_empty() {
            break;
        }
        if line.trim() == "/reset" {
            history.retain(|m: &ChatMessage| m.role == "system");
            continue;
        }
        history.push(ChatMessage::user(line.trim_end().to_string()));
        // A turn that cannot run (too long for the context, a template or engine error) is
        // dropped from the history with a message; the session goes on.
        turn += 1;
        let params = SamplingParams { seed: params.seed.wrapping_add(turn - 1), ..params.clone() };
        match chat_turn(&e, &mut sched, &history, a.max_tokens, params) {
            Ok(reply) => history.push(ChatMessage::assistant(reply)),
            Err(err) => {
                history.pop();
                noteln!("[{}]", crate::util::error_chain(&err));
            }
        }
    }
    Ok(())
}

/// One chat reply to `history`, streamed to stdout; the reply's text.
fn chat_turn(
    e: &Engine,
    sched: &mut Scheduler<'_>,
    history: &[ChatMessage],
    max_tokens: usize,
    params: SamplingParams,
) -> Result<String> {
    let text = e.tokenizer.render_chat(history, true)?;
    let prompt = e.tokenizer.encode(&text, true);
    let room = e.max_sequence().saturating_sub(prompt.len());
    if room == 0 {
        bail!(
            "that message makes the conversation {} tokens, more than the context of {} holds; it was not sent \
             (send something shorter, or /reset to start over)",
            prompt.len(),
            e.max_sequence()
        );
    }
    let req = Request { session: Some(1), ..Request::new(prompt, max_tokens.min(room), params) };
    let out = e.run_request(sched, req, |p| out!("{p}"))?;
    outln!();
    Ok(out.text)
}

#[derive(clap::Args)]
pub struct TokenizeArgs {
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, conflicts_with = "file")]
    pub text: Option<String>,
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Print {"tokens": [ids], "pieces": [texts]} (default: one "id<TAB>piece" line per token).
    #[arg(long)]
    pub json: bool,
}

fn read_text(text: &Option<String>, file: &Option<PathBuf>) -> Result<String> {
    match (text, file) {
        (Some(t), _) => Ok(t.clone()),
        (None, Some(f)) => {
            let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!("{} is not valid UTF-8 (byte {})", f.display(), e.utf8_error().valid_up_to())
            })
        }
        (None, None) => bail!("give --text or --file"),
    }
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let path = model_path::resolve(a.model.as_deref())?;
    let f = latent_formats::gguf::GgufFile::open(&path)?;
    let tok = latent_tokenizer::Tokenizer::from_gguf(&f)?;
    let text = read_text(&a.text, &a.file)?;
    let ids = tok.encode_with_bos(&text, false);
    // Each token's text (bytes that are not UTF-8 on their own, as U+FFFD).
    let pieces: Vec<String> =
        ids.iter().map(|&id| String::from_utf8_lossy(tok.token_bytes(id).unwrap_or_default()).into_owned()).collect();
    if a.json {
        outln!("{}", serde_json::json!({ "tokens": ids, "pieces": pieces }));
    } else {
        for (id, p) in ids.iter().zip(&pieces) {
            outln!("{id}\t{p:?}");
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    #[arg(long)]
    pub file: PathBuf,
    /// Window length.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Tokens of the text skipped before the first window (e.g. text used for calibration).
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// Score at most this many windows (default: every whole window).
    #[arg(long)]
    pub windows: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    let e = a.m.engine()?;
    let text = read_text(&None, &Some(a.file.clone()))?;
    let all = e.tokenizer.encode(&text, false);
    if a.skip >= all.len() {
        anyhow::bail!("--skip {} leaves nothing of the {} tokens of {}", a.skip, all.len(), a.file.display());
    }
    let mut toks = all[a.skip..].to_vec();
    if let Some(w) = a.windows {
        toks.truncate(w.saturating_mul(a.ctx));
    }
    let t0 = Instant::now();
    let p = e.perplexity(&toks, a.ctx, |done, total| {
        let w = 30;
        let fill = done * w / total.max(1);
        note!(
            "\r[{}{}] {done}/{total} windows, {:.1} s",
            "#".repeat(fill),
            " ".repeat(w - fill),
            t0.elapsed().as_secs_f64()
        );
        if done == total {
            noteln!();
        }
    })?;
    if a.json {
        let window = e.opts.window.map(|w| serde_json::json!({"window": w.window, "sinks": w.sinks}));
        outln!(
            "{}",
            serde_json::json!({
                "tokens": p.tokens, "scored": p.scored, "nll": p.nll, "ppl": p.ppl,
                "ctx": a.ctx, "skip": a.skip, "kv_peak_tokens": p.kv_peak_tokens, "stream_window": window,
            })
        );
    } else {
        outln!(
            "perplexity {:.4} (mean NLL {:.5} over {} scored of {} tokens, ctx {}, KV peak {} tokens)",
            p.ppl,
            p.nll,
            p.scored,
            p.tokens,
            a.ctx,
            p.kv_peak_tokens
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    #[arg(long)]
    pub file: PathBuf,
    /// Teacher-force the first N tokens.
    #[arg(long, default_value_t = 128)]
    pub n: usize,
    /// Top K logits per position.
    #[arg(long, default_value_t = 16)]
    pub top: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    let e = a.m.engine()?;
    let text = read_text(&None, &Some(a.file.clone()))?;
    let mut toks = e.tokenizer.encode(&text, false);
    toks.truncate(a.n);
    if toks.is_empty() {
        bail!("{} has no tokens", a.file.display());
    }
    let l = e.forced_logits(&toks)?;
    let v = e.model.info().vocab;
    let positions: Vec<_> = (0..toks.len())
        .map(|i| {
            let row = &l[i * v..(i + 1) * v];
            let mut idx: Vec<usize> = (0..v).collect();
            let k = a.top.min(v);
            idx.select_nth_unstable_by(k.saturating_sub(1), |&x, &y| row[y].total_cmp(&row[x]));
            idx.truncate(k);
            idx.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
            serde_json::json!({
                "logsumexp": latent_engine::logsumexp(row),
                "top_ids": idx, "top_logits": idx.iter().map(|&j| row[j]).collect::<Vec<_>>(),
            })
        })
        .collect();
    outln!("{}", serde_json::json!({ "tokens": toks, "positions": positions }));
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchGenArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Timed runs (the best is reported); with more than one, an untimed warm-up runs first.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long)]
    pub json: bool,
}

/// Peak resident set size of this process (VmHWM), bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

pub fn bench_generate(a: BenchGenArgs) -> Result<()> {
    let e = a.m.engine()?;
    if a.prompt_tokens == 0 || a.gen_tokens == 0 || a.runs == 0 {
        bail!("--prompt-tokens, --gen-tokens and --runs must be ≥ 1");
    }
    // Checked before the prompt is allocated.
    let max = e.max_sequence();
    if a.prompt_tokens.checked_add(a.gen_tokens).is_none_or(|n| n > max) {
        let limit = match e.opts.window {
            None => format!("the model's context of {max} tokens"),
            Some(_) => format!("the longest sequence of {max} tokens"),
        };
        bail!("--prompt-tokens {} + --gen-tokens {} exceed {limit}", a.prompt_tokens, a.gen_tokens);
    }
    crate::util::check_memory(
        &format!("a prompt of {} tokens", a.prompt_tokens),
        crate::util::checked_product(&[a.prompt_tokens, 4]),
    )?;
    let v = e.model.info().vocab as u64;
    // Random prompt tokens (fixed seed), skipping nothing: ids are drawn over the vocabulary.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let prompt: Vec<u32> = (0..a.prompt_tokens)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % v) as u32
        })
        .collect();
    let kv_peak = std::cell::Cell::new(0usize);
    let run = || -> Result<(f64, f64)> {
        let mut s = e.session(a.prompt_tokens + a.gen_tokens)?;
        let t0 = Instant::now();
        let mut logits = s.feed(&prompt, Logits::Last)?;
        let prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..a.gen_tokens {
            let tok = latent_engine::sampling::argmax(&logits);
            logits = s.feed(&[tok], Logits::Last)?;
        }
        kv_peak.set(kv_peak.get().max(s.cache.peak_tokens()));
        Ok((prefill, t1.elapsed().as_secs_f64()))
    };
    if a.runs > 1 {
        noteln!("warm-up…");
        run()?;
    }
    let (mut best_p, mut best_d) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..a.runs {
        let (p, d) = run()?;
        best_p = best_p.min(p);
        best_d = best_d.min(d);
    }
    // Peak RSS of the runs, before the bandwidth probe below allocates its buffer.
    let rss = peak_rss();
    // The weight-streaming roofline of a decode step: every weight tensor is read once per
    // token (the token embedding only where it is also the output matrix; else one row),
    // plus the K/V of the cached context (on average prompt + gen/2 tokens), against the
    // read bandwidth measured now with the engine's thread count.
    let path = model_path::resolve(a.m.model.as_deref())?;
    let file = latent_formats::gguf::GgufFile::open(&path).with_context(|| path.display().to_string())?;
    let tied = file.tensor("output.weight").is_none();
    let weight_bytes: u64 =
        file.tensors().iter().filter(|t| tied || t.name != "token_embd.weight").map(|t| t.n_bytes).sum();
    let kv_bytes =
        (e.session(1)?.cache.bytes_per_token() as f64) * (a.prompt_tokens as f64 + a.gen_tokens as f64 / 2.0);
    let pool = crate::util::thread_pool(e.threads())?;
    let read_gbps = latent_kernels::machine::read_bandwidth(&pool, 512 << 20);
    let decode_tok_s = a.gen_tokens as f64 / best_d;
    let bytes_per_token = weight_bytes as f64 + kv_bytes;
    let roofline_tok_s = read_gbps * 1e9 / bytes_per_token;
    let j = serde_json::json!({
        "model": e.model.info().name, "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens,
        "prefill_tok_s": a.prompt_tokens as f64 / best_p, "decode_tok_s": decode_tok_s,
        "decode_bytes_per_token": bytes_per_token, "weight_bytes_per_token": weight_bytes,
        "read_gbps": read_gbps, "decode_gbps": decode_tok_s * bytes_per_token / 1e9,
        "roofline_tok_s": roofline_tok_s, "roofline_fraction": decode_tok_s / roofline_tok_s,
        "peak_rss_bytes": rss, "threads": e.threads(), "exact": a.m.exact,
        "kv_dtype": e.kv_format().dtype.name(), "kv_peak_tokens": kv_peak.get(),
        "stream_window": e.opts.window.map(|w| serde_json::json!({"window": w.window, "sinks": w.sinks})),
    });
    if a.json {
        outln!("{j}");
    } else {
        outln!(
            "{}: prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens; {:.1} GB/s, {:.0}% of the \
             {:.1} GB/s read roofline), peak RSS {:.1} MiB, {} threads{}",
            e.model.info().name,
            a.prompt_tokens as f64 / best_p,
            a.prompt_tokens,
            decode_tok_s,
            a.gen_tokens,
            decode_tok_s * bytes_per_token / 1e9,
            100.0 * decode_tok_s / roofline_tok_s,
            read_gbps,
            rss.unwrap_or(0) as f64 / (1 << 20) as f64,
            e.threads(),
            if a.m.exact { ", exact" } else { "" }
        );
    }
    Ok(())
}
