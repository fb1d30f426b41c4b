//! Many sequences on one engine: one paged block pool, batched forward steps with
//! continuous batching, prefix reuse, preemption and cancellation.
//!
//! A [`Scheduler`] owns the pool and the running batch; requests reach it through a
//! [`Client`] (any thread) and their results leave through each request's [`Sink`].
//! [`Scheduler::step`] is the one step function: `latent generate`, `latent chat` and
//! `latent serve` all run it.
//!
//! # One step
//! 1. Cancelled requests (flag set, or their sink refused an event) free their blocks.
//! 2. Waiting requests are admitted first come, first served while fewer than `max_seqs`
//!    run and the pool has blocks for their first pass.
//! 3. Every running sequence gets its next pass in arrival order: one token when its prompt
//!    is done, else its next prefill chunk while the step's token budget lasts (the first
//!    chunk of a step is always taken, so a step makes progress). A pass whose blocks are
//!    not free preempts the newest running sequence (blocks freed, recomputed later).
//! 4. One forward pass runs all of them ([`latent_models::Model::forward_batch`]); each
//!    sequence that produced logits samples its next token with its own sampler.
//!
//! # Batch invariance
//! A sequence's passes are the same whatever else runs: its prompt is cut into chunks of
//! `prefill_chunk` tokens counted from its first computed position, and each generated
//! token is one pass. Reused prompt prefixes are whole chunks, so the chunks after them
//! are those of a cold run; a preempted sequence recomputes its prompt in the same chunks
//! and replays its generated tokens one per step. With the models' row-invariant kernels
//! its logits are bit-identical alone or among any others, whenever it arrived.

use crate::metrics::Metrics;
use crate::sampling::{Sampler, SamplingParams};
use crate::session::Engine;
use crate::EngineError;
use latent_attention::{AttnError, BatchCache, KvSeq};
use latent_kv::{BlockPool, CacheLayout, SeqId, DEFAULT_BLOCK_SIZE};
use latent_models::{CacheSpec, Logits, Pass};
use latent_tokenizer::DecodeState;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Most alternatives a request may ask per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How a scheduler runs.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Sequences running at once (≥ 1).
    pub max_seqs: usize,
    /// Requests waiting beyond the running ones; more are refused ([`SubmitError::QueueFull`]).
    pub max_queue: usize,
    /// Tokens one step may run (decode tokens plus prefill chunks). At least one prefill
    /// chunk always runs, so values below the chunk size only limit mixing.
    pub step_tokens: usize,
    /// KV pool size in bytes (`None`: [`default_kv_memory`]).
    pub kv_memory: Option<usize>,
    /// KV pool size in blocks (overrides `kv_memory`).
    pub kv_blocks: Option<usize>,
    /// Sessions (`Request::session`) kept cached after their request ends.
    pub max_parked: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            max_seqs: 16,
            max_queue: 256,
            step_tokens: 1024,
            kv_memory: None,
            kv_blocks: None,
            max_parked: 4,
        }
    }
}

/// Bytes the KV pool takes by default: room for `max_seqs` sequences of the whole context,
/// capped at a quarter of the memory the OS reports available (1 GiB when it reports none)
/// and 64 GiB. The pool's pages are committed only as blocks are first used.
pub fn default_kv_memory(bytes_per_token: usize, context: usize, max_seqs: usize) -> usize {
    let want = bytes_per_token.saturating_mul(context).saturating_mul(max_seqs);
    let avail = mem_available().unwrap_or(4 << 30);
    want.min(avail / 4).min(64 << 30).max(bytes_per_token * DEFAULT_BLOCK_SIZE)
}

fn mem_available() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// A generation request, in tokens.
#[derive(Clone, Debug)]
pub struct Request {
    /// ≥ 1 token.
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (generation also ends at an end-of-generation token).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// `Some(n)`: each token comes with its log-probability and the `n` (≤
    /// [`MAX_TOP_LOGPROBS`]) most likely alternatives, from the model's distribution
    /// (log-softmax of the logits, before sampling settings).
    pub logprobs: Option<usize>,
    /// Keeps the sequence cached after the request under this key: a later request with the
    /// same key continues from the longest common prefix of its prompt and the cached tokens
    /// (a chat's history is not computed again).
    pub session: Option<u64>,
}

impl Request {
    pub fn new(prompt: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> Request {
        Request { prompt, max_tokens, sampling, logprobs: None, session: None }
    }
}

/// Log-probabilities of a generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    /// The most likely tokens, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token (not part of the output).
    Eog,
    /// `max_tokens` reached.
    Length,
}

impl Finish {
    /// The OpenAI `finish_reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Finish::Eog => "stop",
            Finish::Length => "length",
        }
    }
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens found cached (prefix cache or session), not computed.
    pub cached_tokens: usize,
}

/// What a request's sink receives: tokens as they are sampled, then one `Done` or `Failed`.
#[derive(Clone, Debug)]
pub enum Event {
    /// `text`: the UTF-8 completed by this token (possibly empty: a character cut between
    /// tokens is sent with the token that completes it).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// `tail`: held bytes of an incomplete character, as U+FFFD (usually empty).
    Done {
        finish: Finish,
        usage: Usage,
        tail: String,
    },
    Failed(String),
}

/// Receives a request's events on the scheduler's thread; returns `false` when nobody
/// listens any more (the request is then cancelled and its blocks freed at the next step).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// Why a request was refused at submission.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the wait queue is full ({0} requests waiting)")]
    QueueFull(usize),
    #[error("{prompt} prompt tokens plus {max_tokens} to generate exceed the context of {ctx} tokens")]
    ContextLength { prompt: usize, max_tokens: usize, ctx: usize },
    #[error("{need} tokens exceed the KV cache of {have} tokens (raise --kv-memory)")]
    KvTooSmall { need: usize, have: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    Token { id: u32, vocab: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("the engine has stopped")]
    Stopped,
}

/// A submitted request: cancel it from any thread.
#[derive(Clone, Debug)]
pub struct RequestHandle {
    pub id: u64,
    cancel: Arc<AtomicBool>,
}

impl RequestHandle {
    /// Asks the scheduler to drop the request; its blocks are freed at the next step.
    pub fn cancel(&self) {
        self.cancel.store(true, Relaxed);
    }
}

struct Pending {
    id: u64,
    req: Request,
    sink: Sink,
    cancel: Arc<AtomicBool>,
    arrived: Instant,
}

struct Queue {
    waiting: VecDeque<Pending>,
    stopped: bool,
}

/// Limits a client checks at submission.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_queue: usize,
    /// Most tokens one sequence may reach (the context, or unbounded under a stream window).
    max_sequence: usize,
    context: usize,
    vocab: usize,
    /// Tokens the whole pool holds (one sequence can never exceed them).
    pool_tokens: usize,
    windowed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    metrics: Metrics,
    limits: Limits,
    next_id: AtomicU64,
}

/// Submits requests to a [`Scheduler`] from any thread.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Queues `req`; its events go to `sink`. Refused when the queue is full, the request
    /// cannot fit the context or the KV pool, or it is malformed.
    pub fn submit(&self, req: Request, sink: Sink) -> Result<RequestHandle, SubmitError> {
        let r = self.check(&req);
        if r.is_err() {
            self.shared.metrics.requests_rejected.fetch_add(1, Relaxed);
        }
        r?;
        let cancel = Arc::new(AtomicBool::new(false));
        let id = self.shared.next_id.fetch_add(1, Relaxed);
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.stopped {
            return Err(SubmitError::Stopped);
        }
        if q.waiting.len() >= self.shared.limits.max_queue {
            self.shared.metrics.requests_rejected.fetch_add(1, Relaxed);
            return Err(SubmitError::QueueFull(q.waiting.len()));
        }
        q.waiting.push_back(Pending { id, req, sink, cancel: cancel.clone(), arrived: Instant::now() });
        self.shared.metrics.requests_waiting.store(q.waiting.len() as u64, Relaxed);
        drop(q);
        self.shared.wake.notify_all();
        Ok(RequestHandle { id, cancel })
    }

    fn check(&self, req: &Request) -> Result<(), SubmitError> {
        let l = &self.shared.limits;
        if req.prompt.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= l.vocab) {
            return Err(SubmitError::Token { id: bad, vocab: l.vocab });
        }
        if req.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(SubmitError::Invalid(format!("at most {MAX_TOP_LOGPROBS} top log-probabilities")));
        }
        req.sampling.validate().map_err(|e| SubmitError::Invalid(e.to_string()))?;
        let need = req.prompt.len().saturating_add(req.max_tokens);
        if need > l.max_sequence {
            return Err(SubmitError::ContextLength {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                ctx: l.context,
            });
        }
        if !l.windowed && need > l.pool_tokens {
            return Err(SubmitError::KvTooSmall { need, have: l.pool_tokens });
        }
        Ok(())
    }

    /// The scheduler's metrics (live).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).waiting.len()
    }

    /// Most tokens one sequence may reach.
    pub fn max_sequence(&self) -> usize {
        self.shared.limits.max_sequence
    }

    /// Stops the scheduler's [`Scheduler::serve`] loop; waiting requests fail.
    pub fn shutdown(&self) {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).stopped = true;
        self.shared.wake.notify_all();
    }
}

/// A sequence in the running batch.
struct Running {
    id: u64,
    req: Request,
    sink: Sink,
    cancel: Arc<AtomicBool>,
    arrived: Instant,
    /// Its sequence in the pool (`None` while preempted).
    seq: Option<SeqId>,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    /// Tokens whose K/V are in the cache (always < `tokens.len()` while running).
    computed: usize,
    /// Prompt chunks start at `chunk_base + k · prefill_chunk`.
    chunk_base: usize,
    cached_tokens: usize,
    sampler: Sampler,
    decode: DecodeState,
    last_token: Option<Instant>,
}

impl Running {
    fn generated(&self) -> usize {
        self.tokens.len() - self.req.prompt.len()
    }

    /// The next pass: `(start, end, logits wanted)`.
    fn next_pass(&self, chunk: usize) -> (usize, usize, Logits) {
        let end = pass_end(self.computed, self.chunk_base, self.req.prompt.len(), chunk);
        let want = if end == self.tokens.len() { Logits::Last } else { Logits::None };
        (self.computed, end, want)
    }
}

/// Where the pass starting at `computed` ends: the end of its prefill chunk (chunks of
/// `chunk` tokens from `chunk_base`, cut at the prompt's end) inside the prompt, else one
/// token on.
fn pass_end(computed: usize, chunk_base: usize, prompt: usize, chunk: usize) -> usize {
    if computed < prompt {
        let k = (computed - chunk_base.min(computed)) / chunk + 1;
        (chunk_base + k * chunk).min(prompt)
    } else {
        computed + 1
    }
}

struct Parked {
    seq: SeqId,
    tokens: Vec<u32>,
    used: u64,
}

/// The KV pool lent to one batched forward pass: segment s is `seqs[s]`.
struct StepCache<'a> {
    pool: &'a mut BlockPool,
    seqs: &'a [SeqId],
}

impl BatchCache for StepCache<'_> {
    fn write_kv(&mut self, seg: usize, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<(), AttnError> {
        let seq = *self.seqs.get(seg).ok_or_else(|| AttnError::Config(format!("no segment {seg}")))?;
        self.pool.write_kv(seq, layer, pos, k, v).map_err(AttnError::cache)
    }
    fn write_latent(&mut self, seg: usize, layer: usize, pos: usize, row: &[f32]) -> Result<(), AttnError> {
        let seq = *self.seqs.get(seg).ok_or_else(|| AttnError::Config(format!("no segment {seg}")))?;
        self.pool.write_latent(seq, layer, pos, row).map_err(AttnError::cache)
    }
    fn view(&self, seg: usize, layer: usize, len: usize) -> Result<KvSeq<'_>, AttnError> {
        let seq = *self.seqs.get(seg).ok_or_else(|| AttnError::Config(format!("no segment {seg}")))?;
        let mut v = self.pool.view(seq, layer).map_err(AttnError::cache)?;
        if len > v.len {
            return Err(AttnError::Config(format!("view of {len} tokens beyond the {} reserved", v.len)));
        }
        v.len = len;
        Ok(v)
    }
}

/// What one [`Scheduler::step`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Sequences in the forward pass.
    pub passes: usize,
    /// Tokens the forward pass ran.
    pub tokens: usize,
    /// Tokens sampled.
    pub sampled: usize,
    pub preempted: usize,
}

/// The batch, the pool and the wait queue of one engine.
pub struct Scheduler<'e> {
    engine: &'e Engine,
    opts: SchedulerOptions,
    shared: Arc<Shared>,
    pool: BlockPool,
    running: Vec<Running>,
    parked: HashMap<u64, Parked>,
    /// Preempted sequences (their queue entries carry the same id).
    preempted: Vec<Running>,
    tick: u64,
}

impl<'e> Scheduler<'e> {
    pub fn new(engine: &'e Engine, opts: SchedulerOptions) -> Result<Scheduler<'e>, EngineError> {
        if opts.max_seqs == 0 || opts.step_tokens == 0 {
            return Err(EngineError::Invalid("--max-seqs and the step token budget must be ≥ 1".into()));
        }
        let info = engine.model.info();
        let fmt = engine.kv_format();
        let layout = match info.cache {
            CacheSpec::Gqa { layers, kv_heads, head_dim } => CacheLayout::gqa(layers, kv_heads, head_dim, fmt),
            CacheSpec::Latent { layers, rank, rope } => CacheLayout::latent(layers, rank, rope, fmt.dtype),
        };
        let bs = DEFAULT_BLOCK_SIZE;
        let block_bytes = layout
            .checked_block_bytes(bs)
            .ok_or_else(|| EngineError::Invalid("a KV block overflows the address space".into()))?;
        let blocks = match (opts.kv_blocks, opts.kv_memory) {
            (Some(b), _) => b,
            (None, Some(m)) => m / block_bytes,
            (None, None) => {
                default_kv_memory(layout.bytes_per_token(), engine.max_sequence().min(info.context), opts.max_seqs)
                    / block_bytes
            }
        };
        if blocks == 0 {
            return Err(EngineError::Invalid(format!(
                "the KV memory holds no block of {bs} tokens ({block_bytes} bytes): raise --kv-memory"
            )));
        }
        let pool = BlockPool::with_blocks(layout, bs, blocks)?;
        let limits = Limits {
            max_queue: opts.max_queue,
            max_sequence: engine.max_sequence(),
            context: info.context,
            vocab: info.vocab,
            pool_tokens: blocks * bs,
            windowed: engine.opts.window.is_some(),
        };
        let metrics = Metrics::default();
        metrics.kv_blocks_total.store(blocks as u64, Relaxed);
        metrics.kv_blocks_free.store(blocks as u64, Relaxed);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { waiting: VecDeque::new(), stopped: false }),
            wake: Condvar::new(),
            metrics,
            limits,
            next_id: AtomicU64::new(1),
        });
        Ok(Scheduler {
            engine,
            opts,
            shared,
            pool,
            running: Vec::new(),
            parked: HashMap::new(),
            preempted: Vec::new(),
            tick: 0,
        })
    }

    pub fn client(&self) -> Client {
        Client { shared: self.shared.clone() }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Blocks of the pool, and how many an allocation can take now.
    pub fn kv_blocks(&self) -> (usize, usize) {
        (self.pool.num_blocks(), self.pool.free_blocks())
    }

    /// Bytes of one KV block.
    pub fn block_bytes(&self) -> usize {
        self.pool.block_bytes()
    }

    /// Nothing running and nothing waiting.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).waiting.is_empty()
    }

    /// Sequences in the running batch.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Runs steps until nothing runs or waits.
    pub fn run_until_idle(&mut self) -> Result<(), EngineError> {
        while !self.is_idle() {
            self.step()?;
        }
        Ok(())
    }

    /// Runs steps as requests arrive until [`Client::shutdown`]; waiting requests then fail.
    pub fn serve(&mut self) {
        loop {
            {
                let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                while !q.stopped && q.waiting.is_empty() && self.running.is_empty() {
                    q = self
                        .shared
                        .wake
                        .wait_timeout(q, Duration::from_millis(200))
                        .map(|r| r.0)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                if q.stopped {
                    for mut p in q.waiting.drain(..) {
                        (p.sink)(Event::Failed("the server is shutting down".into()));
                    }
                    drop(q);
                    let mut gone = std::mem::take(&mut self.running);
                    gone.append(&mut self.preempted);
                    for r in gone {
                        self.fail(r, "the server is shutting down");
                    }
                    return;
                }
            }
            if let Err(e) = self.step() {
                // A step error fails the sequences of that step (done in `step`); the
                // scheduler goes on with the others.
                tracing_like_log(&e);
            }
        }
    }

    /// One forward step over the running batch (see the module docs).
    pub fn step(&mut self) -> Result<StepReport, EngineError> {
        self.tick += 1;
        let chunk = self.engine.opts.prefill_chunk.max(1);
        self.drop_cancelled();
        self.admit(chunk);
        let mut report = StepReport::default();

        // Plan: each running sequence's next pass, arrival order, within the token budget.
        let mut planned: Vec<usize> = Vec::new(); // indices into `running`
        let mut budget = self.opts.step_tokens;
        let mut took_chunk = false;
        let mut i = 0;
        while i < self.running.len() {
            let (s, e, _) = self.running[i].next_pass(chunk);
            let n = e - s;
            let is_chunk = self.running[i].computed < self.running[i].req.prompt.len();
            if is_chunk && took_chunk && n > budget {
                i += 1;
                continue;
            }
            // Blocks for this pass, preempting the newest sequences if needed.
            let Some(seq) = self.running[i].seq else {
                i += 1;
                continue;
            };
            let need = self.pool.blocks_for_append(seq, n)?;
            let mut fits = true;
            while self.pool.free_blocks() < need {
                if self.evict_parked() {
                    continue;
                }
                let newest = self.newest_preemptible(&planned);
                match newest {
                    Some(j) if j != i => {
                        self.preempt(j);
                        report.preempted += 1;
                        if j < i {
                            i -= 1;
                        }
                        for p in planned.iter_mut().filter(|p| **p > j) {
                            *p -= 1;
                        }
                    }
                    _ => {
                        fits = false;
                        break;
                    }
                }
            }
            if !fits {
                // Even alone this pass does not fit: only possible when planned passes hold
                // the blocks; it waits (preempted) for them.
                if planned.is_empty() {
                    let r = self.running.remove(i);
                    self.fail(r, "the KV cache cannot hold this sequence (raise --kv-memory)");
                } else {
                    self.preempt(i);
                    report.preempted += 1;
                }
                continue;
            }
            if let Err(e) = self.pool.append_tokens(seq, &self.running[i].tokens[s..e]) {
                let r = self.running.remove(i);
                self.fail(r, &format!("KV cache: {e}"));
                continue;
            }
            budget = budget.saturating_sub(n);
            took_chunk |= is_chunk;
            planned.push(i);
            i += 1;
        }
        self.publish_gauges();
        if planned.is_empty() {
            return Ok(report);
        }

        // One forward pass over every planned sequence.
        let passes: Vec<(usize, usize, Logits)> = planned.iter().map(|&i| self.running[i].next_pass(chunk)).collect();
        let seqs: Vec<SeqId> = planned.iter().filter_map(|&i| self.running[i].seq).collect();
        let model_passes: Vec<Pass> = planned
            .iter()
            .zip(&passes)
            .map(|(&i, &(s, e, logits))| Pass { tokens: &self.running[i].tokens[s..e], pos0: s, logits })
            .collect();
        report.passes = planned.len();
        report.tokens = passes.iter().map(|p| p.1 - p.0).sum();
        let ex = self.engine.exec();
        let result = {
            let mut cache = StepCache { pool: &mut self.pool, seqs: &seqs };
            self.engine.model.forward_batch(&ex, &model_passes, &mut cache)
        };
        drop(model_passes);
        let shared = self.shared.clone();
        let m = &shared.metrics;
        m.steps_total.fetch_add(1, Relaxed);
        m.step_tokens_total.fetch_add(report.tokens as u64, Relaxed);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // The pass's sequences fail; nothing else is touched.
                let msg = e.to_string();
                let mut idx = planned.clone();
                idx.sort_unstable();
                for &i in idx.iter().rev() {
                    let r = self.running.remove(i);
                    self.fail(r, &msg);
                }
                self.publish_gauges();
                return Err(e.into());
            }
        };

        // Sample, emit, finish.
        let mut done = Vec::new();
        for ((&i, &(_, e, _)), l) in planned.iter().zip(&passes).zip(logits) {
            let window = self.engine.opts.window;
            let r = &mut self.running[i];
            r.computed = e;
            if let (Some(w), Some(seq)) = (window, r.seq) {
                let released = self.pool.len(seq).and_then(|len| self.pool.release(seq, w.dead_range(len)));
                if let Err(e) = released {
                    done.push((i, Err(format!("KV cache: {e}"))));
                    continue;
                }
            }
            if l.is_empty() {
                continue;
            }
            report.sampled += 1;
            match self.sample(i, &l) {
                Ok(Some(f)) => done.push((i, Ok(f))),
                Ok(None) => {}
                // This sequence fails (e.g. a sampled id the tokenizer cannot decode); the
                // others of the step go on.
                Err(e) => done.push((i, Err(e.to_string()))),
            }
        }
        done.sort_unstable_by_key(|d| d.0);
        for (i, f) in done.into_iter().rev() {
            let r = self.running.remove(i);
            match f {
                Ok(f) => self.finish(r, f),
                Err(msg) => self.fail(r, &msg),
            }
        }
        self.publish_gauges();
        Ok(report)
    }

    /// Samples sequence `i`'s next token from `logits` `[V]`; returns how it ended, if it did.
    fn sample(&mut self, i: usize, logits: &[f32]) -> Result<Option<Finish>, EngineError> {
        let engine = self.engine;
        let tok_ref = &engine.tokenizer;
        let r = &mut self.running[i];
        let now = Instant::now();
        let tok = r.sampler.sample(logits, &r.tokens);
        let m = &self.shared.metrics;
        match r.last_token {
            None => m.time_to_first_token.observe(now.duration_since(r.arrived).as_secs_f64()),
            Some(t) => m.inter_token_latency.observe(now.duration_since(t).as_secs_f64()),
        }
        r.last_token = Some(now);
        if tok_ref.is_eog(tok) {
            return Ok(Some(Finish::Eog));
        }
        r.tokens.push(tok);
        m.generation_tokens_total.fetch_add(1, Relaxed);
        let text = r.decode.push(tok_ref, tok)?;
        let logprob = r.req.logprobs.map(|n| logprobs(logits, tok, n));
        if !(r.sink)(Event::Token { id: tok, text, logprob }) {
            r.cancel.store(true, Relaxed);
        }
        Ok((r.generated() >= r.req.max_tokens).then_some(Finish::Length))
    }

    fn finish(&mut self, mut r: Running, f: Finish) {
        let m = &self.shared.metrics;
        match f {
            Finish::Eog => m.requests_finished_eog.fetch_add(1, Relaxed),
            Finish::Length => m.requests_finished_length.fetch_add(1, Relaxed),
        };
        let usage = Usage {
            prompt_tokens: r.req.prompt.len(),
            completion_tokens: r.generated(),
            cached_tokens: r.cached_tokens,
        };
        let tail = std::mem::take(&mut r.decode).finish();
        (r.sink)(Event::Done { finish: f, usage, tail });
        self.release(r);
    }

    fn fail(&mut self, mut r: Running, msg: &str) {
        self.shared.metrics.requests_failed.fetch_add(1, Relaxed);
        (r.sink)(Event::Failed(msg.to_string()));
        if let Some(seq) = r.seq.take() {
            let _ = self.pool.free(seq);
        }
    }

    /// Frees a finished sequence's blocks, or parks them under its session key.
    fn release(&mut self, mut r: Running) {
        let Some(seq) = r.seq.take() else { return };
        match r.req.session {
            Some(key) if self.opts.max_parked > 0 => {
                if let Some(old) = self.parked.remove(&key) {
                    let _ = self.pool.free(old.seq);
                }
                // Only computed positions stay: the last sampled token was never fed.
                if self.pool.truncate(seq, r.computed).is_err() {
                    let _ = self.pool.free(seq);
                    return;
                }
                r.tokens.truncate(r.computed);
                self.parked.insert(key, Parked { seq, tokens: r.tokens, used: self.tick });
                while self.parked.len() > self.opts.max_parked {
                    if !self.evict_parked() {
                        break;
                    }
                }
            }
            _ => {
                let _ = self.pool.free(seq);
            }
        }
    }

    /// Frees the least recently used parked session; `false` if none.
    fn evict_parked(&mut self) -> bool {
        let Some((&key, _)) = self.parked.iter().min_by_key(|(_, p)| p.used) else { return false };
        if let Some(p) = self.parked.remove(&key) {
            let _ = self.pool.free(p.seq);
        }
        true
    }

    fn drop_cancelled(&mut self) {
        let shared = self.shared.clone();
        let m = &shared.metrics;
        self.preempted.retain(|r| !r.cancel.load(Relaxed));
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].cancel.load(Relaxed) {
                let mut r = self.running.remove(i);
                m.requests_cancelled.fetch_add(1, Relaxed);
                if let Some(seq) = r.seq.take() {
                    let _ = self.pool.free(seq);
                }
            } else {
                i += 1;
            }
        }
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let before = q.waiting.len();
        q.waiting.retain(|p| !p.cancel.load(Relaxed));
        m.requests_cancelled.fetch_add((before - q.waiting.len()) as u64, Relaxed);
    }

    /// The running sequence to preempt: the newest arrival not yet planned this step.
    fn newest_preemptible(&self, planned: &[usize]) -> Option<usize> {
        (0..self.running.len())
            .filter(|i| !planned.contains(i) && self.running[*i].seq.is_some())
            .max_by_key(|&i| (self.running[i].arrived, self.running[i].id))
    }

    /// Frees sequence `i`'s blocks and puts it back at the head of the queue; it recomputes
    /// its prompt in the same chunks and replays its generated tokens one per step.
    fn preempt(&mut self, i: usize) {
        let mut r = self.running.remove(i);
        self.shared.metrics.preemptions_total.fetch_add(1, Relaxed);
        if let Some(seq) = r.seq.take() {
            let _ = self.pool.free(seq);
        }
        r.computed = 0;
        r.chunk_base = 0;
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        // A preempted sequence keeps its tokens, sampler and decoder: it is re-admitted as a
        // continuation, ahead of everything that arrived after it.
        q.waiting.push_front(Pending {
            id: r.id,
            req: Request { prompt: r.tokens.clone(), ..r.req.clone() },
            sink: Box::new(|_| true),
            cancel: r.cancel.clone(),
            arrived: r.arrived,
        });
        drop(q);
        self.preempted.push(r);
    }

    fn admit(&mut self, chunk: usize) {
        let shared = self.shared.clone();
        let m = &shared.metrics;
        loop {
            if self.running.len() >= self.opts.max_seqs {
                break;
            }
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = q.waiting.pop_front() else { break };
            drop(q);
            let resumed = self.preempted.iter().position(|r| r.id == p.id).map(|k| self.preempted.remove(k));
            let prompt_len = resumed.as_ref().map_or(p.req.prompt.len(), |r| r.req.prompt.len());
            // The sequence and what of it is cached already.
            let (seq, cached, chunk_base) = match p.req.session.and_then(|k| self.parked.remove(&k)) {
                Some(park) if resumed.is_none() => {
                    let common = park.tokens.iter().zip(&p.req.prompt).take_while(|(a, b)| a == b).count();
                    let keep = common.min(p.req.prompt.len() - 1);
                    match self.pool.truncate(park.seq, keep) {
                        Ok(()) => (park.seq, keep, keep),
                        Err(_) => {
                            let _ = self.pool.free(park.seq);
                            (self.pool.create(), 0, 0)
                        }
                    }
                }
                other => {
                    if let Some(park) = other {
                        let _ = self.pool.free(park.seq);
                    }
                    // Whole prefill chunks of the prompt only (batch invariance).
                    let reusable = self.pool.cached_prefix_len(&p.req.prompt[..prompt_len]) / chunk * chunk;
                    let (seq, got) = self.pool.create_with_prefix_upto(&p.req.prompt[..prompt_len], reusable);
                    let got = if got % chunk != 0 {
                        let keep = got / chunk * chunk;
                        let _ = self.pool.truncate(seq, keep);
                        keep
                    } else {
                        got
                    };
                    (seq, got, 0)
                }
            };
            // Blocks for the first pass, or it waits at the head of the queue.
            let first = pass_end(cached, chunk_base, prompt_len, chunk) - cached;
            let need = self.pool.blocks_for_append(seq, first).unwrap_or(usize::MAX);
            while self.pool.free_blocks() < need && self.evict_parked() {}
            if self.pool.free_blocks() < need && !self.running.is_empty() {
                let _ = self.pool.free(seq);
                let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.waiting.push_front(p);
                if let Some(r) = resumed {
                    self.preempted.push(r);
                }
                break;
            }
            if p.req.max_tokens == 0 && resumed.is_none() {
                let _ = self.pool.free(seq);
                let mut sink = p.sink;
                m.prompt_tokens_total.fetch_add(prompt_len as u64, Relaxed);
                m.requests_finished_length.fetch_add(1, Relaxed);
                let usage = Usage { prompt_tokens: prompt_len, completion_tokens: 0, cached_tokens: 0 };
                sink(Event::Done { finish: Finish::Length, usage, tail: String::new() });
                continue;
            }
            let r = match resumed {
                Some(mut r) => {
                    r.seq = Some(seq);
                    r.computed = cached;
                    r.chunk_base = chunk_base;
                    r
                }
                None => {
                    m.prompt_tokens_total.fetch_add(prompt_len as u64, Relaxed);
                    if cached > 0 {
                        m.prefix_cache_hits_total.fetch_add(1, Relaxed);
                        m.prefix_cache_hit_tokens_total.fetch_add(cached as u64, Relaxed);
                    }
                    Running {
                        id: p.id,
                        tokens: p.req.prompt.clone(),
                        sampler: Sampler::new(p.req.sampling.clone()),
                        req: p.req,
                        sink: p.sink,
                        cancel: p.cancel,
                        arrived: p.arrived,
                        seq: Some(seq),
                        computed: cached,
                        chunk_base,
                        cached_tokens: cached,
                        decode: DecodeState::default(),
                        last_token: None,
                    }
                }
            };
            self.running.push(r);
        }
        self.publish_gauges();
    }

    fn publish_gauges(&self) {
        let m = &self.shared.metrics;
        m.requests_running.store(self.running.len() as u64, Relaxed);
        m.requests_waiting
            .store(self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).waiting.len() as u64, Relaxed);
        m.kv_blocks_free.store(self.pool.free_blocks() as u64, Relaxed);
    }
}

/// Log-probability of `tok` and the `n` most likely tokens under log-softmax(`logits`).
pub fn logprobs(logits: &[f32], tok: u32, n: usize) -> TokenLogprob {
    let lse = crate::session::logsumexp(logits);
    let lp = |i: usize| (logits[i] as f64 - lse) as f32;
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let n = n.min(idx.len());
    let by = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    if n > 0 && n < idx.len() {
        idx.select_nth_unstable_by(n - 1, by);
    }
    idx.truncate(n);
    idx.sort_unstable_by(by);
    TokenLogprob { logprob: lp(tok as usize), top: idx.into_iter().map(|i| (i as u32, lp(i))).collect() }
}

fn tracing_like_log(e: &EngineError) {
    eprintln!("latent: step failed: {e}");
}
