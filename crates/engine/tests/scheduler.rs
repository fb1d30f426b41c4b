//! The scheduler on tiny random-weight models (built here, nothing outside the repository):
//! batch invariance (bit-identical tokens and log-probabilities alone or among others,
//! whenever a request arrives, across preemption and prefix reuse), admission within the
//! token budget, preemption when the pool runs out, cancellation, the queue bound, sessions.

use latent_engine::{
    Client, Engine, EngineOptions, Event, Finish, MatmulPrecision, Request, SamplingParams, Scheduler,
    SchedulerOptions, StreamWindow, SubmitError, Usage,
};
use latent_formats::gguf::GgufFile;
use latent_models::testing::{TinyDeepseek2, TinyLlama};
use latent_quant::WeightType;
use latent_tokenizer::{Tokenizer, TokenizerSpec};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;

const VOCAB: usize = 300;

fn engine(gguf: Vec<u8>, opts: EngineOptions) -> Engine {
    let f = Arc::new(GgufFile::from_bytes(gguf).expect("tiny GGUF parses"));
    let m = latent_models::load_from(f).expect("tiny model loads");
    let tok = Tokenizer::new(TokenizerSpec::byte_level(VOCAB)).expect("byte-level tokenizer");
    Engine::new(m, tok, opts).expect("engine")
}

fn llama(wtype: WeightType) -> Vec<u8> {
    TinyLlama { vocab: VOCAB, context: 512, wtype, ..TinyLlama::default() }.gguf()
}

fn deepseek() -> Vec<u8> {
    TinyDeepseek2 { vocab: VOCAB, context: 512, ..TinyDeepseek2::default() }.gguf()
}

fn opts(chunk: usize, precision: MatmulPrecision) -> EngineOptions {
    EngineOptions { threads: 2, precision, prefill_chunk: chunk, ..EngineOptions::default() }
}

fn prompt(n: usize, seed: u64) -> Vec<u32> {
    let mut r = latent_attention::testing::Rng(seed);
    (0..n).map(|_| r.below(256) as u32).collect()
}

/// A generated token: its id, the bits of its log-probability, and its top alternatives:
/// ids with their log-probability bits.
type TokenBits = (u32, u32, Vec<(u32, u32)>);

/// What a request produced: per token its id and the bits of its log-probabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    tokens: Vec<TokenBits>,
    finish: Option<Finish>,
    usage: Usage,
    failed: Option<String>,
}

fn sink() -> (latent_engine::Sink, Receiver<Event>) {
    let (tx, rx) = channel();
    (Box::new(move |e| tx.send(e).is_ok()), rx)
}

fn collect(rx: &Receiver<Event>) -> Outcome {
    let mut o = Outcome { tokens: Vec::new(), finish: None, usage: Usage::default(), failed: None };
    for e in rx.try_iter() {
        match e {
            Event::Token { id, logprob, .. } => {
                let lp = logprob.expect("logprobs requested");
                o.tokens.push((id, lp.logprob.to_bits(), lp.top.iter().map(|&(t, l)| (t, l.to_bits())).collect()));
            }
            Event::Done { finish, usage, .. } => {
                o.finish = Some(finish);
                o.usage = usage;
            }
            Event::Failed(m) => o.failed = Some(m),
        }
    }
    o
}

fn request(p: Vec<u32>, max_tokens: usize, i: u64) -> Request {
    // Greedy and seeded sampling alternate.
    let sampling = if i.is_multiple_of(2) {
        SamplingParams { temperature: 0.0, ..SamplingParams::default() }
    } else {
        SamplingParams { temperature: 0.9, top_k: 20, seed: 7 + i, ..SamplingParams::default() }
    };
    Request { logprobs: Some(3), ..Request::new(p, max_tokens, sampling) }
}

/// Each request alone on a fresh single-sequence scheduler (what `latent generate` runs).
fn alone(e: &Engine, reqs: &[Request]) -> Vec<Outcome> {
    reqs.iter()
        .map(|r| {
            let mut s = e.single_scheduler(r.prompt.len() + r.max_tokens).unwrap();
            let (tx, rx) = sink();
            s.client().submit(r.clone(), tx).unwrap();
            s.run_until_idle().unwrap();
            collect(&rx)
        })
        .collect()
}

/// All requests on one scheduler, submitted in waves between steps.
fn together(s: &mut Scheduler, reqs: &[Request], waves: &[usize]) -> Vec<Outcome> {
    let c = s.client();
    let mut rxs = Vec::new();
    let mut next = 0;
    for &w in waves {
        for r in &reqs[next..(next + w).min(reqs.len())] {
            let (tx, rx) = sink();
            c.submit(r.clone(), tx).unwrap();
            rxs.push(rx);
        }
        next = (next + w).min(reqs.len());
        for _ in 0..3 {
            s.step().unwrap();
        }
    }
    for r in &reqs[next..] {
        let (tx, rx) = sink();
        c.submit(r.clone(), tx).unwrap();
        rxs.push(rx);
    }
    s.run_until_idle().unwrap();
    rxs.iter().map(collect).collect()
}

fn mixed_requests() -> Vec<Request> {
    [1usize, 3, 40, 63, 17, 127, 5, 70]
        .iter()
        .enumerate()
        .map(|(i, &n)| request(prompt(n, 100 + i as u64), 9 + i % 4, i as u64))
        .collect()
}

fn check_invariance(e: &Engine, sopts: SchedulerOptions, waves: &[usize]) -> Client {
    let reqs = mixed_requests();
    let want = alone(e, &reqs);
    for (w, r) in want.iter().zip(&reqs) {
        assert!(w.failed.is_none(), "{w:?}");
        assert!(!w.tokens.is_empty() || w.finish == Some(Finish::Eog));
        assert_eq!(w.usage.prompt_tokens, r.prompt.len());
    }
    let mut s = Scheduler::new(e, sopts).unwrap();
    let got = together(&mut s, &reqs, waves);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.tokens, w.tokens, "request {i}: batched tokens/logprobs differ from alone");
        assert_eq!(g.finish, w.finish, "request {i}");
        assert_eq!(g.usage.completion_tokens, w.usage.completion_tokens, "request {i}");
    }
    let (total, free) = s.kv_blocks();
    assert_eq!(free, total, "every block is back once idle");
    s.client()
}

#[test]
fn llama_batched_equals_alone_bit_for_bit() {
    for (wtype, precision) in [
        (WeightType::Q4_1, MatmulPrecision::Fast),
        (WeightType::Q8_0, MatmulPrecision::Exact),
        (WeightType::F32, MatmulPrecision::Fast),
    ] {
        let e = engine(llama(wtype), opts(16, precision));
        let sopts = SchedulerOptions { max_seqs: 5, step_tokens: 40, ..SchedulerOptions::default() };
        let c = check_invariance(&e, sopts, &[3, 2, 1]);
        let m = c.metrics();
        assert!(m.steps_total.load(std::sync::atomic::Ordering::Relaxed) > 0);
    }
}

#[test]
fn deepseek2_batched_equals_alone_bit_for_bit() {
    let e = engine(deepseek(), opts(16, MatmulPrecision::Fast));
    let sopts = SchedulerOptions { max_seqs: 8, step_tokens: 64, ..SchedulerOptions::default() };
    check_invariance(&e, sopts, &[1, 4]);
}

#[test]
fn windowed_batched_equals_alone() {
    let window = Some(StreamWindow::new(24, 4).unwrap());
    let e = engine(llama(WeightType::Q4_1), EngineOptions { window, ..opts(16, MatmulPrecision::Fast) });
    let sopts = SchedulerOptions { max_seqs: 4, step_tokens: 48, ..SchedulerOptions::default() };
    check_invariance(&e, sopts, &[2, 2]);
}

#[test]
fn preemption_recomputes_to_the_same_result() {
    let e = engine(llama(WeightType::Q4_1), opts(16, MatmulPrecision::Fast));
    // 5 blocks of 64 tokens: the longest request alone needs 3; four at once cannot fit.
    let sopts = SchedulerOptions { max_seqs: 4, step_tokens: 64, kv_blocks: Some(5), ..SchedulerOptions::default() };
    let c = check_invariance(&e, sopts, &[8]);
    assert!(c.metrics().preemptions_total.load(std::sync::atomic::Ordering::Relaxed) > 0, "the pool ran out");
}

#[test]
fn prefix_reuse_takes_whole_chunks_and_changes_nothing() {
    let e = engine(llama(WeightType::Q4_1), opts(64, MatmulPrecision::Fast));
    let p = prompt(150, 9);
    let req = request(p.clone(), 6, 0);
    let want = alone(&e, std::slice::from_ref(&req)).remove(0);
    let mut s = Scheduler::new(&e, SchedulerOptions::default()).unwrap();
    let first = together(&mut s, std::slice::from_ref(&req), &[1]).remove(0);
    let second = together(&mut s, std::slice::from_ref(&req), &[1]).remove(0);
    assert_eq!(first.tokens, want.tokens);
    assert_eq!(second.tokens, want.tokens, "a reused prefix changes no bit");
    assert_eq!(first.usage.cached_tokens, 0);
    // 150 tokens: blocks of 64 cover 128 (one token is always computed), whole chunks of 64.
    assert_eq!(second.usage.cached_tokens, 128);
    let m = s.client();
    assert_eq!(m.metrics().prefix_cache_hits_total.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn budget_mixes_decode_with_chunks_and_bounds_the_step() {
    let e = engine(llama(WeightType::Q4_1), opts(16, MatmulPrecision::Fast));
    let sopts = SchedulerOptions { max_seqs: 8, step_tokens: 20, ..SchedulerOptions::default() };
    let mut s = Scheduler::new(&e, sopts).unwrap();
    let c = s.client();
    let mut rxs = Vec::new();
    for i in 0..4 {
        let (tx, rx) = sink();
        c.submit(request(prompt(50, i), 5, i), tx).unwrap();
        rxs.push(rx);
    }
    let mut max_tokens = 0;
    let mut steps = 0;
    while !s.is_idle() {
        let r = s.step().unwrap();
        // One chunk of ≤ 16 always runs; beyond it decode tokens fill the budget of 20 and
        // further chunks wait.
        assert!(r.tokens <= 16 + 4, "step of {} tokens", r.tokens);
        max_tokens = max_tokens.max(r.tokens);
        steps += 1;
    }
    assert!(max_tokens > 16, "decode tokens shared a step with a chunk");
    assert!(steps < 100);
    for rx in &rxs {
        assert_eq!(collect(rx).usage.completion_tokens, 5);
    }
}

#[test]
fn cancelled_requests_free_their_blocks_at_the_next_step() {
    let e = engine(llama(WeightType::Q4_1), opts(16, MatmulPrecision::Fast));
    let mut s = Scheduler::new(&e, SchedulerOptions { max_seqs: 2, ..SchedulerOptions::default() }).unwrap();
    let c = s.client();
    let (tx, _rx1) = sink();
    let h1 = c.submit(request(prompt(40, 1), 50, 0), tx).unwrap();
    let (tx, rx2) = sink();
    c.submit(request(prompt(20, 2), 3, 0), tx).unwrap();
    // Dropped receiver: the sink refuses, which cancels.
    let (tx, rx3) = sink();
    c.submit(request(prompt(30, 3), 50, 0), tx).unwrap();
    drop(rx3);
    let (tx, _rx4) = sink();
    let h4 = c.submit(request(prompt(30, 4), 50, 0), tx).unwrap();
    h4.cancel(); // cancelled while waiting
    for _ in 0..4 {
        s.step().unwrap();
    }
    let (total, free) = s.kv_blocks();
    assert!(free < total);
    h1.cancel();
    s.run_until_idle().unwrap();
    assert_eq!(s.kv_blocks().1, total);
    assert_eq!(collect(&rx2).usage.completion_tokens, 3);
    let m = c.metrics();
    assert!(m.requests_cancelled.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    assert_eq!(m.kv_blocks_free.load(std::sync::atomic::Ordering::Relaxed) as usize, total);
}

#[test]
fn submission_limits_are_clear_refusals() {
    let e = engine(llama(WeightType::Q4_1), opts(16, MatmulPrecision::Fast));
    let s = Scheduler::new(&e, SchedulerOptions { max_queue: 2, kv_blocks: Some(2), ..SchedulerOptions::default() })
        .unwrap();
    let c = s.client();
    let sub = |r: Request| c.submit(r, Box::new(|_| true));
    assert!(matches!(sub(request(vec![], 4, 0)), Err(SubmitError::Invalid(_))));
    assert!(matches!(sub(request(vec![VOCAB as u32], 4, 0)), Err(SubmitError::Token { vocab: VOCAB, .. })));
    assert!(matches!(sub(request(prompt(500, 1), 13, 0)), Err(SubmitError::ContextLength { ctx: 512, .. })));
    assert!(matches!(sub(request(prompt(100, 1), 100, 0)), Err(SubmitError::KvTooSmall { have: 128, .. })));
    let bad = Request { logprobs: Some(21), ..request(prompt(3, 1), 4, 0) };
    assert!(matches!(sub(bad), Err(SubmitError::Invalid(_))));
    let bad = Request {
        sampling: SamplingParams { temperature: f32::NAN, ..SamplingParams::default() },
        ..request(prompt(3, 1), 4, 0)
    };
    assert!(matches!(sub(bad), Err(SubmitError::Invalid(_))));
    sub(request(prompt(3, 1), 4, 0)).unwrap();
    sub(request(prompt(3, 2), 4, 0)).unwrap();
    assert!(matches!(sub(request(prompt(3, 3), 4, 0)), Err(SubmitError::QueueFull(2))));
    assert_eq!(c.metrics().requests_rejected.load(std::sync::atomic::Ordering::Relaxed), 7);
}

#[test]
fn zero_max_tokens_finishes_at_once() {
    let e = engine(llama(WeightType::Q4_1), opts(16, MatmulPrecision::Fast));
    let mut s = Scheduler::new(&e, SchedulerOptions::default()).unwrap();
    let (tx, rx) = sink();
    s.client().submit(request(prompt(10, 1), 0, 0), tx).unwrap();
    s.run_until_idle().unwrap();
    let o = collect(&rx);
    assert_eq!((o.finish, o.usage.completion_tokens, o.usage.prompt_tokens), (Some(Finish::Length), 0, 10));
}

#[test]
fn a_session_continues_from_its_cached_history() {
    let e = engine(llama(WeightType::Q4_1), opts(16, MatmulPrecision::Fast));
    let mut s = e.single_scheduler(400).unwrap();
    let c = s.client();
    let turn1 = prompt(30, 5);
    let (tx, rx) = sink();
    c.submit(Request { session: Some(1), ..request(turn1.clone(), 8, 0) }, tx).unwrap();
    s.run_until_idle().unwrap();
    let o1 = collect(&rx);
    let mut turn2 = turn1.clone();
    turn2.extend(o1.tokens.iter().map(|t| t.0));
    turn2.extend(prompt(12, 6));
    let (tx, rx) = sink();
    c.submit(Request { session: Some(1), ..request(turn2.clone(), 8, 0) }, tx).unwrap();
    s.run_until_idle().unwrap();
    let o2 = collect(&rx);
    // Everything computed in turn 1 (the prompt and all generated tokens but the last,
    // which was never fed) is reused.
    assert_eq!(o2.usage.cached_tokens, turn1.len() + o1.tokens.len() - 1);
    assert_eq!(o2.usage.completion_tokens, 8);
    // The same follow-up on another key starts cold.
    let (tx, rx) = sink();
    c.submit(Request { session: Some(2), ..request(turn2, 8, 0) }, tx).unwrap();
    s.run_until_idle().unwrap();
    assert_eq!(collect(&rx).usage.cached_tokens, 0);
}

#[test]
fn a_token_the_tokenizer_cannot_decode_fails_only_its_request() {
    // The model's vocabulary (300) is larger than the tokenizer's (258): sampling an id the
    // tokenizer lacks fails that request with a message; the others finish, blocks come back.
    let f = Arc::new(GgufFile::from_bytes(llama(WeightType::Q4_1)).unwrap());
    let m = latent_models::load_from(f).unwrap();
    let tok = Tokenizer::new(TokenizerSpec::byte_level(258)).unwrap();
    let e = Engine::new(m, tok, opts(16, MatmulPrecision::Fast)).unwrap();
    let mut s = Scheduler::new(&e, SchedulerOptions::default()).unwrap();
    let c = s.client();
    let mut rxs = Vec::new();
    for i in 0..12 {
        let (tx, rx) = sink();
        let sampling = SamplingParams { temperature: 1.0, seed: i, ..SamplingParams::default() };
        let req = Request { logprobs: Some(0), ..Request::new(prompt(8, i), 3, sampling) };
        c.submit(req, tx).unwrap();
        rxs.push(rx);
    }
    s.run_until_idle().unwrap();
    let outcomes: Vec<Outcome> = rxs.iter().map(collect).collect();
    let failed = outcomes.iter().filter(|o| o.failed.is_some()).count();
    assert!(failed > 0, "some request sampled an id ≥ 258");
    assert!(failed < outcomes.len(), "the others finished");
    for o in &outcomes {
        assert!(o.failed.is_some() != o.finish.is_some(), "{o:?}");
        if let Some(m) = &o.failed {
            assert!(m.contains("258") || m.to_lowercase().contains("token"), "{m}");
        }
    }
    let (total, free) = s.kv_blocks();
    assert_eq!(free, total);
}
