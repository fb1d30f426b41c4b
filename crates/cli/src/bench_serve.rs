//! `latent bench serve`: streaming completions at several concurrency levels against the
//! server (started in-process on a free port, or a running one with `--url`); aggregate
//! generated tokens/s, time to first token and inter-token latency.

use crate::run_cmds::ModelArgs;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchServeArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// A running server (`http://HOST:PORT`) instead of one started in-process.
    #[arg(long)]
    pub url: Option<String>,
    /// API key for --url (default: $LATENT_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Concurrency levels: streams in flight at once.
    #[arg(long, default_value = "1,4,16,32")]
    pub concurrency: String,
    /// Prompt tokens per request (token ids, distinct per request: no prefix reuse).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to generate per request (greedy; a request may end earlier at an end token).
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Requests per level (default: 2 × the concurrency, at least 4).
    #[arg(long)]
    pub requests: Option<usize>,
    /// In-process server: sequences running at once (default: the largest level).
    #[arg(long)]
    pub max_seqs: Option<usize>,
    /// One JSON object per level.
    #[arg(long)]
    pub json: bool,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// What one streamed request measured.
struct Sample {
    ttft: Duration,
    /// Gaps between consecutive chunks with text.
    gaps: Vec<Duration>,
    tokens: usize,
}

struct Level {
    concurrency: usize,
    requests: usize,
    seconds: f64,
    samples: Vec<Sample>,
    errors: usize,
    first_error: Option<String>,
}

impl Level {
    fn tokens(&self) -> usize {
        self.samples.iter().map(|s| s.tokens).sum()
    }
    fn json(&self) -> Value {
        let (ttft, itl) = self.latencies();
        json!({
            "concurrency": self.concurrency,
            "requests": self.requests,
            "gen_tok_s": self.tokens() as f64 / self.seconds.max(1e-9),
            "ttft_p50_ms": pct(&ttft, 50.0),
            "ttft_p99_ms": pct(&ttft, 99.0),
            "itl_p50_ms": pct(&itl, 50.0),
            "itl_p99_ms": pct(&itl, 99.0),
            "errors": self.errors,
            "gen_tokens": self.tokens(),
            "seconds": self.seconds,
        })
    }
    /// TTFTs and inter-token gaps in ms, sorted.
    fn latencies(&self) -> (Vec<f64>, Vec<f64>) {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let mut ttft: Vec<f64> = self.samples.iter().map(|s| ms(&s.ttft)).collect();
        let mut itl: Vec<f64> = self.samples.iter().flat_map(|s| s.gaps.iter().map(ms)).collect();
        ttft.sort_by(f64::total_cmp);
        itl.sort_by(f64::total_cmp);
        (ttft, itl)
    }
}

/// The `p`-th percentile (nearest rank) of sorted `v`; NaN when empty.
fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn run(a: BenchServeArgs) -> Result<()> {
    let levels = crate::util::parse_sizes("--concurrency", &a.concurrency)?;
    if levels.is_empty() {
        bail!("--concurrency: give at least one level");
    }
    if a.prompt_tokens == 0 || a.gen_tokens == 0 {
        bail!("--prompt-tokens and --gen-tokens must be ≥ 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let r = rt.block_on(bench(&a, &levels));
    rt.shutdown_background();
    r
}

async fn bench(a: &BenchServeArgs, levels: &[usize]) -> Result<()> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    // The server: given, or in-process on a free port.
    let (base, stop, server, api_key) = match &a.url {
        Some(u) => {
            let key = a.api_key.clone().or_else(|| std::env::var("LATENT_API_KEY").ok()).filter(|k| !k.is_empty());
            (u.trim_end_matches('/').to_string(), None, None, key)
        }
        None => {
            let path = crate::model_path::resolve(a.m.model.as_deref())?;
            let m = ModelArgs { model: Some(path.clone()), ..a.m.clone() };
            let engine = m.engine()?;
            let max_seqs = a.max_seqs.unwrap_or_else(|| levels.iter().copied().max().unwrap_or(1));
            let opts = latent_server::ServeOptions {
                port: 0,
                max_seqs,
                max_queue: 1 << 16,
                ..latent_server::ServeOptions::new(path)
            };
            let server = latent_server::Server::bind(opts).await?;
            let addr = server.local_addr()?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(server.serve(Some(Box::new(move || Ok(engine))), async move {
                let _ = rx.await;
            }));
            noteln!("bench serve: in-process server on http://{addr}, --max-seqs {max_seqs}");
            (format!("http://{addr}"), Some(tx), Some(task), None)
        }
    };
    let model = wait_ready(&client, &base, api_key.as_deref()).await?;
    noteln!(
        "bench serve: model {model}, {} prompt tokens, {} generated per request (greedy, streamed)",
        a.prompt_tokens,
        a.gen_tokens
    );
    let mut results = Vec::new();
    for (li, &c) in levels.iter().enumerate() {
        let n = a.requests.unwrap_or((2 * c).max(4));
        let level = run_level(&client, &base, api_key.as_deref(), &model, a, c, n, li as u64).await;
        if a.json {
            outln!("{}", level.json());
        }
        if let Some(e) = &level.first_error {
            noteln!("bench serve: concurrency {c}: {} errors, the first: {e}", level.errors);
        }
        results.push(level);
    }
    if !a.json {
        outln!(
            "{:>11} {:>8} {:>6} {:>10} {:>10} {:>10} {:>9} {:>9}",
            "concurrency",
            "requests",
            "errors",
            "gen tok/s",
            "TTFT p50",
            "TTFT p99",
            "ITL p50",
            "ITL p99"
        );
        for l in &results {
            let (ttft, itl) = l.latencies();
            outln!(
                "{:>11} {:>8} {:>6} {:>10.1} {:>8.1}ms {:>8.1}ms {:>7.1}ms {:>7.1}ms",
                l.concurrency,
                l.requests,
                l.errors,
                l.tokens() as f64 / l.seconds.max(1e-9),
                pct(&ttft, 50.0),
                pct(&ttft, 99.0),
                pct(&itl, 50.0),
                pct(&itl, 99.0)
            );
        }
    }
    if let (Some(tx), Some(task)) = (stop, server) {
        let _ = tx.send(());
        task.await.context("the in-process server")??;
    }
    Ok(())
}

fn request(method: &str, url: &str, key: Option<&str>, body: Option<String>) -> Result<hyper::Request<Full<Bytes>>> {
    let mut b = hyper::Request::builder().method(method).uri(url).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    Ok(b.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
}

/// Waits (up to 10 minutes) for `/health` to answer 200; returns the served model's id.
async fn wait_ready(client: &HttpClient, base: &str, key: Option<&str>) -> Result<String> {
    let t0 = Instant::now();
    loop {
        let ok = match client.request(request("GET", &format!("{base}/health"), key, None)?).await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        };
        if ok {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("{base}/health did not answer 200 within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client.request(request("GET", &format!("{base}/v1/models"), key, None)?).await?;
    let status = r.status();
    let body = r.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{base}/v1/models: {status}: {}", String::from_utf8_lossy(&body));
    }
    let v: Value = serde_json::from_slice(&body).context("/v1/models is not JSON")?;
    v["data"][0]["id"].as_str().map(str::to_string).context("/v1/models lists no model")
}

/// Distinct token ids in 200..1200 (every supported vocabulary is larger).
fn prompt_ids(n: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            200 + (s % 1000) as u32
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn run_level(
    client: &HttpClient,
    base: &str,
    key: Option<&str>,
    model: &str,
    a: &BenchServeArgs,
    concurrency: usize,
    requests: usize,
    level: u64,
) -> Level {
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{base}/v1/completions");
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.min(requests) {
        let (client, next, url) = (client.clone(), next.clone(), url.clone());
        let (key, model) = (key.map(str::to_string), model.to_string());
        let (pt, gt) = (a.prompt_tokens, a.gen_tokens);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= requests {
                    break;
                }
                let body = json!({
                    "model": model,
                    "prompt": prompt_ids(pt, (level << 32) | i as u64),
                    "max_tokens": gt,
                    "temperature": 0,
                    "stream": true,
                    "stream_options": {"include_usage": true},
                });
                out.push(one(&client, &url, key.as_deref(), body.to_string()).await);
            }
            out
        }));
    }
    let mut samples = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for t in tasks {
        let results = t.await.unwrap_or_else(|e| vec![Err(anyhow::anyhow!("worker failed: {e}"))]);
        for r in results {
            match r {
                Ok(s) => samples.push(s),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
    }
    Level { concurrency, requests, seconds: t0.elapsed().as_secs_f64(), samples, errors, first_error }
}

/// One streamed completion: the time of each chunk with text, and the usage's token count.
async fn one(client: &HttpClient, url: &str, key: Option<&str>, body: String) -> Result<Sample> {
    let t0 = Instant::now();
    let resp = client.request(request("POST", url, key, Some(body))?).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let b = body.collect().await?.to_bytes();
        bail!("{status}: {}", String::from_utf8_lossy(&b));
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut times = Vec::new();
    let mut tokens = None;
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        let now = Instant::now();
        buf.extend_from_slice(&data);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = std::str::from_utf8(&event[..end]).context("an SSE event is not UTF-8")?;
            let Some(payload) = text.strip_prefix("data: ") else { continue };
            if payload == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(payload).context("an SSE chunk is not JSON")?;
            if let Some(e) = v.get("error") {
                bail!("error event: {e}");
            }
            if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
                times.push(now);
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = Some(n as usize);
            }
        }
    }
    if !done {
        bail!("the stream ended without [DONE]");
    }
    let first = *times.first().context("no text was generated")?;
    Ok(Sample {
        ttft: first - t0,
        gaps: times.windows(2).map(|w| w[1] - w[0]).collect(),
        tokens: tokens.context("no usage chunk")?,
    })
}
