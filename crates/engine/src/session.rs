//! Engine and sessions.

use crate::cache::SeqCache;
use crate::sampling::{argmax, Sampler};
use crate::scheduler::{Event, Finish, Request, Scheduler, SchedulerOptions, SubmitError};
use crate::EngineError;
use latent_attention::{KvDtype, RowFormat};
use latent_models::{CacheSpec, Exec, Logits, MatmulPrecision, MlaPath, Model, StreamWindow, Tap};
use latent_tokenizer::Tokenizer;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// How an engine runs.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Worker threads (0 = all cores).
    pub threads: usize,
    /// `Exact`: f32 activations, weights dequantized on the fly. `Fast`: 8-bit activations
    /// inside quantized matmuls (as llama.cpp).
    pub precision: MatmulPrecision,
    /// KV-cache element type (`None`: f32).
    pub kv_dtype: Option<KvDtype>,
    /// Tokens per prefill chunk. Its activation buffers (hidden, FFN and QKV rows of every
    /// token of a pass) scale with it: 128 keeps them within L2-sized tiles and a few MB; at
    /// 512 they are ~11 MB more of peak memory for no speed (docs/BENCHMARKS.md).
    pub prefill_chunk: usize,
    /// StreamingLLM window with attention sinks: the cache keeps the first `sinks` tokens
    /// and the last `window`; sequences may then run past the model's context.
    pub window: Option<StreamWindow>,
    /// MLA execution path (`Auto`: chosen per pass).
    pub mla_path: MlaPath,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: 0,
            precision: MatmulPrecision::Fast,
            kv_dtype: None,
            prefill_chunk: 128,
            window: None,
            mla_path: MlaPath::Auto,
        }
    }
}

/// A loaded model with its tokenizer and thread pool.
pub struct Engine {
    pub model: Arc<dyn Model>,
    pub tokenizer: Tokenizer,
    pool: rayon::ThreadPool,
    team: latent_kernels::team::Team,
    pub opts: EngineOptions,
}

/// Result of [`Engine::generate`].
#[derive(Clone, Debug)]
pub struct GenerateOutput {
    pub prompt_tokens: Vec<u32>,
    pub tokens: Vec<u32>,
    pub text: String,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Why generation stopped: "eog" (end-of-generation token) or "length".
    pub stop: &'static str,
}

impl GenerateOutput {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens.len() as f64 / self.prefill_seconds.max(1e-12)
    }
    /// Decode rate over the tokens produced after the first (the first comes from prefill).
    pub fn decode_tok_s(&self) -> f64 {
        (self.tokens.len().saturating_sub(1)) as f64 / self.decode_seconds.max(1e-12)
    }
}

/// Result of [`Engine::perplexity`].
#[derive(Clone, Debug)]
pub struct PerplexityOutput {
    pub tokens: usize,
    pub scored: usize,
    pub nll: f64,
    pub ppl: f64,
    /// The most tokens the cache held at once.
    pub kv_peak_tokens: usize,
}

/// Hands the heap memory the loader freed (parsing and repacking buffers, on every thread's
/// arena) back to the system, so that it does not stay in the resident set.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it takes the allocator's
    // own locks and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Engine {
    pub fn load(path: impl AsRef<Path>, opts: EngineOptions) -> Result<Engine, EngineError> {
        let path = path.as_ref();
        let file = Arc::new(
            latent_formats::gguf::GgufFile::open(path)
                .map_err(|e| latent_models::ModelError::Gguf { path: path.display().to_string(), source: e })?,
        );
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let model = latent_models::load_from(file.clone())?;
        // The header and metadata were read into the tokenizer and the model's settings.
        file.release_pages(0..usize::try_from(file.data_offset()).unwrap_or(usize::MAX));
        release_free_heap();
        Engine::new(model, tokenizer, opts)
    }

    pub fn new(model: Arc<dyn Model>, tokenizer: Tokenizer, opts: EngineOptions) -> Result<Engine, EngineError> {
        if let Some(w) = opts.window {
            let ctx = model.info().context;
            if w.window == 0 || w.span() > ctx {
                return Err(EngineError::Invalid(format!(
                    "--window {} + --sinks {} must be between 1 and the model's context of {ctx}",
                    w.window, w.sinks
                )));
            }
            if opts.mla_path == MlaPath::Naive && matches!(model.info().cache, CacheSpec::Latent { .. }) {
                return Err(EngineError::Invalid("the naive MLA path cannot run under a stream window".into()));
            }
        }
        if opts.prefill_chunk == 0 {
            return Err(EngineError::Invalid("prefill chunk must be ≥ 1".into()));
        }
        let n = if opts.threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            opts.threads
        };
        let pool =
            rayon::ThreadPoolBuilder::new().num_threads(n).build().map_err(|e| EngineError::Threads(e.to_string()))?;
        Ok(Engine {
            model,
            tokenizer,
            pool,
            team: latent_kernels::team::Team::new(n).map_err(|e| EngineError::Threads(e.to_string()))?,
            opts,
        })
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The KV row format this engine caches with.
    pub fn kv_format(&self) -> RowFormat {
        // f32 by default: the cache adds no rounding of its own (as the llama.cpp references
        // are measured); bf16/f16/fp8/int8 trade accuracy for memory on request.
        let d = self.opts.kv_dtype.unwrap_or(KvDtype::F32);
        match self.model.info().cache {
            CacheSpec::Gqa { .. } => RowFormat::plain(d),
            CacheSpec::Latent { rope, .. } => RowFormat::latent(d, rope),
        }
    }

    /// The most tokens one sequence may hold: the model's context, unbounded under a stream
    /// window (its memory is the window's, whatever the length).
    pub fn max_sequence(&self) -> usize {
        match self.opts.window {
            Some(_) => usize::MAX / 2,
            None => self.model.info().context,
        }
    }

    /// A new session whose sequence may reach `capacity` tokens.
    pub fn session(&self, capacity: usize) -> Result<Session<'_>, EngineError> {
        let ctx = self.model.info().context;
        if capacity > self.max_sequence() {
            return Err(EngineError::ContextFull { prompt: capacity, gen: 0, ctx });
        }
        let chunk = self.opts.prefill_chunk.max(1);
        let cache =
            SeqCache::with_window(self.model.info().cache, self.kv_format(), capacity, self.opts.window, chunk)?;
        Ok(Session { engine: self, cache, history: Vec::new() })
    }

    pub(crate) fn exec(&self) -> Exec<'_> {
        Exec {
            pool: &self.pool,
            team: Some(&self.team),
            precision: self.opts.precision,
            window: self.opts.window,
            mla_path: self.opts.mla_path,
            tap: None,
        }
    }

    /// KV blocks one sequence of up to `tokens` tokens needs (under a stream window, what one
    /// pass can see: sinks + window + a prefill chunk, in blocks).
    pub fn sequence_blocks(&self, tokens: usize) -> usize {
        let bs = latent_kv::DEFAULT_BLOCK_SIZE;
        let all = tokens.div_ceil(bs).max(1);
        match self.opts.window {
            None => all,
            Some(w) => {
                let pass = self.opts.prefill_chunk.max(1);
                (w.sinks.div_ceil(bs) + w.window.saturating_add(pass).div_ceil(bs) + 2).min(all)
            }
        }
    }

    /// A scheduler for one sequence of up to `tokens` tokens at a time (what `generate` and
    /// `chat` run): its pool holds exactly that sequence.
    pub fn single_scheduler(&self, tokens: usize) -> Result<Scheduler<'_>, EngineError> {
        let opts = SchedulerOptions {
            max_seqs: 1,
            max_queue: 1,
            kv_blocks: Some(self.sequence_blocks(tokens)),
            ..SchedulerOptions::default()
        };
        Scheduler::new(self, opts)
    }

    /// Generates up to `max_tokens` after `prompt`, calling `on_text` with each piece of valid
    /// UTF-8 as it is produced. Stops at an end-of-generation token. Runs the scheduler's
    /// step function with this one request, so it prints exactly what `latent serve` returns
    /// for the same request.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        sampler: &mut Sampler,
        on_text: impl FnMut(&str),
    ) -> Result<GenerateOutput, EngineError> {
        let ctx = self.model.info().context;
        if prompt.is_empty() {
            return Err(EngineError::Invalid("empty prompt".into()));
        }
        if prompt.len().saturating_add(max_tokens) > self.max_sequence() {
            return Err(EngineError::ContextFull { prompt: prompt.len(), gen: max_tokens, ctx });
        }
        let mut sched = self.single_scheduler(prompt.len() + max_tokens)?;
        let req = Request::new(prompt.to_vec(), max_tokens, sampler.params.clone());
        self.run_request(&mut sched, req, on_text)
    }

    /// Runs `req` on `sched` to its end, calling `on_text` with each piece of text.
    pub fn run_request(
        &self,
        sched: &mut Scheduler<'_>,
        req: Request,
        mut on_text: impl FnMut(&str),
    ) -> Result<GenerateOutput, EngineError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let prompt_tokens = req.prompt.clone();
        let t0 = Instant::now();
        sched.client().submit(req, Box::new(move |e| tx.send(e).is_ok())).map_err(|e| match e {
            SubmitError::ContextLength { prompt, max_tokens, ctx } => {
                EngineError::ContextFull { prompt, gen: max_tokens, ctx }
            }
            SubmitError::Token { id, vocab } => latent_models::ModelError::Token { id, vocab }.into(),
            other => EngineError::Invalid(other.to_string()),
        })?;
        let mut out = Vec::new();
        let mut text = String::new();
        let mut first: Option<f64> = None;
        let finish = loop {
            sched.step()?;
            let mut end = None;
            for e in rx.try_iter() {
                first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                match e {
                    Event::Token { id, text: piece, .. } => {
                        out.push(id);
                        if !piece.is_empty() {
                            on_text(&piece);
                            text.push_str(&piece);
                        }
                    }
                    Event::Done { finish, tail, .. } => {
                        // A character cut by the token limit ends as U+FFFD, as it was
                        // streamed: the returned text is exactly what `on_text` received.
                        if !tail.is_empty() {
                            on_text(&tail);
                            text.push_str(&tail);
                        }
                        end = Some(finish);
                    }
                    Event::Failed(msg) => return Err(EngineError::Invalid(msg)),
                }
            }
            if let Some(f) = end {
                break f;
            }
            if sched.is_idle() {
                return Err(EngineError::Invalid("the request ended without a result".into()));
            }
        };
        let total = t0.elapsed().as_secs_f64();
        let prefill_seconds = first.unwrap_or(total);
        let stop = match finish {
            Finish::Eog => "eog",
            Finish::Length => "length",
        };
        Ok(GenerateOutput {
            prompt_tokens,
            tokens: out,
            text,
            prefill_seconds,
            decode_seconds: total - prefill_seconds,
            stop,
        })
    }

    /// Teacher-forced logits `[T, V]` of `tokens` from an empty cache.
    pub fn forced_logits(&self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let mut s = self.session(tokens.len())?;
        s.feed(tokens, Logits::All)
    }

    /// Runs `tokens` from an empty cache with `tap` observing the forward pass (no logits).
    pub fn observe(&self, tokens: &[u32], tap: &dyn Tap) -> Result<(), EngineError> {
        let mut s = self.session(tokens.len())?;
        let ex = Exec { tap: Some(tap), ..self.exec() };
        s.feed_with(&ex, tokens, Logits::None)?;
        Ok(())
    }

    /// Perplexity with the protocol of `latent perplexity`: consecutive non-overlapping
    /// windows of `ctx` tokens (a shorter tail is dropped), each from an empty cache, scoring
    /// positions 1..ctx−1 of every window.
    pub fn perplexity(
        &self,
        tokens: &[u32],
        ctx: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<PerplexityOutput, EngineError> {
        if ctx < 2 {
            return Err(EngineError::Invalid("--ctx must be ≥ 2".into()));
        }
        if ctx > self.max_sequence() {
            return Err(EngineError::Invalid(format!(
                "perplexity window --ctx {ctx} exceeds the model's context of {} (use --window to stream past it)",
                self.model.info().context
            )));
        }
        let windows = tokens.len() / ctx;
        if windows == 0 {
            return Err(EngineError::Invalid(format!("{} tokens are fewer than one window of {ctx}", tokens.len())));
        }
        let vocab = self.model.info().vocab;
        let (mut nll, mut scored, mut peak) = (0f64, 0usize, 0usize);
        for w in 0..windows {
            let win = &tokens[w * ctx..(w + 1) * ctx];
            let mut s = self.session(win.len())?;
            let logits = s.feed(win, Logits::All)?;
            peak = peak.max(s.cache.peak_tokens());
            for i in 0..ctx - 1 {
                let row = &logits[i * vocab..(i + 1) * vocab];
                nll += logsumexp(row) - row[win[i + 1] as usize] as f64;
                scored += 1;
            }
            progress(w + 1, windows);
        }
        let mean = nll / scored as f64;
        Ok(PerplexityOutput { tokens: tokens.len(), scored, nll: mean, ppl: mean.exp(), kv_peak_tokens: peak })
    }
}

/// log Σ exp(x) in f64.
pub fn logsumexp(x: &[f32]) -> f64 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

/// One sequence: its cache and the tokens fed so far.
pub struct Session<'e> {
    engine: &'e Engine,
    pub cache: SeqCache,
    pub history: Vec<u32>,
}

impl Session<'_> {
    pub fn pos(&self) -> usize {
        self.history.len()
    }

    /// Feeds `tokens` (in prefill chunks) and returns the requested logits.
    pub fn feed(&mut self, tokens: &[u32], logits: Logits) -> Result<Vec<f32>, EngineError> {
        let ex = self.engine.exec();
        self.feed_with(&ex, tokens, logits)
    }

    /// [`Session::feed`] under the given execution settings.
    fn feed_with(&mut self, ex: &Exec, tokens: &[u32], logits: Logits) -> Result<Vec<f32>, EngineError> {
        if self.pos().saturating_add(tokens.len()) > self.cache.capacity() {
            return Err(EngineError::CacheFull(format!(
                "{} cached + {} new tokens exceed the session's {} slots",
                self.pos(),
                tokens.len(),
                self.cache.capacity()
            )));
        }
        let chunk = self.engine.opts.prefill_chunk.max(1);
        let mut out = Vec::new();
        let n_chunks = tokens.len().div_ceil(chunk);
        for (ci, part) in tokens.chunks(chunk).enumerate() {
            let want = match logits {
                Logits::All => Logits::All,
                Logits::Last if ci + 1 == n_chunks => Logits::Last,
                _ => Logits::None,
            };
            let l = self.engine.model.forward(ex, part, self.pos(), &mut self.cache, want)?;
            self.cache.release_dead()?;
            self.history.extend_from_slice(part);
            out.extend(l);
        }
        Ok(out)
    }

    /// Greedy next token after what was fed (helper for tests).
    pub fn greedy(logits: &[f32]) -> u32 {
        argmax(logits)
    }
}
