//! Running a request: its `n` choices submitted to the scheduler, their events turned into
//! text deltas (stop strings, log-probabilities), then a JSON response or an SSE stream.

use crate::api::{Kind, Prepared};
use crate::error::ApiError;
use crate::state::Ready;
use crate::stop::StopMatcher;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use latent_engine::{Event, RequestHandle, Sink, TokenLogprob};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Cancels its requests when dropped: a finished request ignores it, a running one is
/// dropped by the scheduler at its next step and its KV blocks freed. Held by the response
/// (the SSE stream or the handler's future), so a client that goes away cancels.
struct CancelOnDrop(Vec<RequestHandle>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.cancel();
        }
    }
}

/// One generated token waiting for its text to be released.
struct LpToken {
    id: u32,
    /// The text this token completed (empty for the first bytes of a split character).
    text: String,
    /// Byte offset of that text in the choice's stream.
    start: usize,
    /// Character offset (completions' `text_offset`).
    char_start: usize,
    lp: TokenLogprob,
}

/// The state of one choice.
struct Choice {
    stop: StopMatcher,
    pending: VecDeque<LpToken>,
    chars: usize,
    tokens: usize,
    cached: usize,
    finish: Option<&'static str>,
    /// Whether the role delta was sent (chat streaming).
    started: bool,
}

/// What the events of a choice produce.
enum Out {
    Delta { index: usize, text: String, lps: Vec<LpToken> },
    Finish { index: usize, reason: &'static str },
    Error(String),
}

/// A submitted request.
pub struct Job {
    ready: Arc<Ready>,
    p: Prepared,
    rx: UnboundedReceiver<(usize, Event)>,
    handles: CancelOnDrop,
    choices: Vec<Choice>,
    pub id: String,
    pub created: u64,
}

/// Submits the `n` choices of `p`; on a refusal the ones already submitted are cancelled.
pub fn submit(ready: Arc<Ready>, p: Prepared) -> Result<Job, ApiError> {
    let (tx, rx) = unbounded_channel();
    let mut handles = CancelOnDrop(Vec::with_capacity(p.n));
    for i in 0..p.n {
        let tx = tx.clone();
        let req = latent_engine::Request {
            prompt: p.prompt.clone(),
            max_tokens: p.max_tokens,
            sampling: p.sampling_for(i),
            logprobs: p.logprobs,
            session: None,
        };
        let sink: Sink = Box::new(move |e| tx.send((i, e)).is_ok());
        let h = ready
            .client
            .submit(req, sink)
            .map_err(|e| ApiError::from_submit(e, p.kind.prompt_param(), p.tokens_param))?;
        handles.0.push(h);
    }
    let choices = (0..p.n)
        .map(|_| Choice {
            stop: StopMatcher::new(p.stops.clone()),
            pending: VecDeque::new(),
            chars: 0,
            tokens: 0,
            cached: 0,
            finish: None,
            started: false,
        })
        .collect();
    let prefix = match p.kind {
        Kind::Completion => "cmpl-",
        Kind::Chat => "chatcmpl-",
    };
    Ok(Job {
        ready,
        p,
        rx,
        handles,
        choices,
        id: format!("{prefix}{}", crate::state::random_id()),
        created: crate::state::unix_now(),
    })
}

impl Job {
    fn all_finished(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// Waits for the next event and turns it into outputs (empty when nothing is released);
    /// `None` when the scheduler dropped every choice without a result.
    async fn next_outputs(&mut self) -> Option<Vec<Out>> {
        let (i, e) = self.rx.recv().await?;
        Some(self.handle(i, e))
    }

    fn handle(&mut self, i: usize, e: Event) -> Vec<Out> {
        let want_lp = self.p.logprobs.is_some();
        let Some(c) = self.choices.get_mut(i) else { return Vec::new() };
        if c.finish.is_some() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let released_text = match e {
            Event::Token { id, text, logprob } => {
                c.tokens += 1;
                if let (true, Some(lp)) = (want_lp, logprob) {
                    c.pending.push_back(LpToken {
                        id,
                        text: text.clone(),
                        start: c.stop.received(),
                        char_start: c.chars,
                        lp,
                    });
                }
                c.chars += text.chars().count();
                c.stop.push(&text)
            }
            Event::Done { finish, usage, tail } => {
                c.tokens = usage.completion_tokens;
                c.cached = usage.cached_tokens;
                let mut t = c.stop.push(&tail);
                t.push_str(&c.stop.finish());
                c.finish = Some(if c.stop.stopped() { "stop" } else { finish.reason() });
                t
            }
            Event::Failed(msg) => {
                c.finish = Some("error");
                return vec![Out::Error(msg)];
            }
        };
        if c.stop.stopped() && c.finish.is_none() {
            // A stop string: the engine request ends here.
            c.finish = Some("stop");
            if let Some(h) = self.handles.0.get(i) {
                h.cancel();
            }
        }
        // Tokens whose text began before the release point go out with this delta; after a
        // stop, those that began inside the stop string are dropped.
        let upto = c.stop.released();
        let mut lps = Vec::new();
        while c.pending.front().is_some_and(|t| t.start < upto || (c.finish.is_some() && !c.stop.stopped())) {
            lps.extend(c.pending.pop_front());
        }
        if c.finish.is_some() {
            c.pending.clear();
        }
        if !released_text.is_empty() || !lps.is_empty() {
            out.push(Out::Delta { index: i, text: released_text, lps });
        }
        if let Some(reason) = c.finish {
            out.push(Out::Finish { index: i, reason });
        }
        out
    }

    fn usage(&self) -> Value {
        let completion: usize = self.choices.iter().map(|c| c.tokens).sum();
        let prompt = self.p.prompt.len();
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self.choices.first().map_or(0, |c| c.cached)},
        })
    }

    fn token_text(&self, id: u32) -> String {
        self.ready.engine.tokenizer.decode_lossy(&[id]).unwrap_or_default()
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.ready.engine.tokenizer.token_bytes(id).map(<[u8]>::to_vec).unwrap_or_default()
    }

    /// Completions' log-probabilities of `lps` (the legacy shape).
    fn completion_logprobs(&self, lps: &[LpToken]) -> Value {
        let tops: Vec<Value> = lps
            .iter()
            .map(|t| {
                let mut m = Map::new();
                for &(id, lp) in &t.lp.top {
                    m.entry(self.token_text(id)).or_insert(json!(lp));
                }
                Value::Object(m)
            })
            .collect();
        json!({
            "tokens": lps.iter().map(|t| t.text.clone()).collect::<Vec<_>>(),
            "token_logprobs": lps.iter().map(|t| t.lp.logprob).collect::<Vec<_>>(),
            "top_logprobs": tops,
            "text_offset": lps.iter().map(|t| t.char_start).collect::<Vec<_>>(),
        })
    }

    /// Chat's log-probabilities of `lps`: `{"content": [...], "refusal": null}`.
    fn chat_logprobs(&self, lps: &[LpToken]) -> Value {
        let content: Vec<Value> = lps
            .iter()
            .map(|t| {
                let top: Vec<Value> = t
                    .lp
                    .top
                    .iter()
                    .map(
                        |&(id, lp)| json!({"token": self.token_text(id), "logprob": lp, "bytes": self.token_bytes(id)}),
                    )
                    .collect();
                json!({"token": t.text, "logprob": t.lp.logprob, "bytes": self.token_bytes(t.id), "top_logprobs": top})
            })
            .collect();
        json!({"content": content, "refusal": null})
    }

    fn logprobs_of(&self, lps: &[LpToken]) -> Value {
        match (self.p.logprobs, self.p.kind) {
            (None, _) => Value::Null,
            (Some(_), Kind::Completion) => self.completion_logprobs(lps),
            (Some(_), Kind::Chat) => self.chat_logprobs(lps),
        }
    }

    fn model(&self) -> &str {
        &self.ready.model_id
    }

    /// Runs the request to its end and builds the non-streaming response.
    pub async fn collect(mut self) -> Result<Response, ApiError> {
        let n = self.choices.len();
        let mut texts = vec![String::new(); n];
        let mut lps: Vec<Vec<LpToken>> = (0..n).map(|_| Vec::new()).collect();
        while !self.all_finished() {
            let Some(outs) = self.next_outputs().await else {
                return Err(ApiError::internal("the request ended without a result"));
            };
            for o in outs {
                match o {
                    Out::Delta { index, text, lps: l } => {
                        texts[index].push_str(&text);
                        lps[index].extend(l);
                    }
                    Out::Finish { .. } => {}
                    Out::Error(msg) => return Err(engine_failure(msg)),
                }
            }
        }
        let choices: Vec<Value> = (0..n)
            .map(|i| {
                let reason = self.choices[i].finish;
                let logprobs = self.logprobs_of(&lps[i]);
                match self.p.kind {
                    Kind::Completion => {
                        json!({"index": i, "text": texts[i], "logprobs": logprobs, "finish_reason": reason})
                    }
                    Kind::Chat => json!({
                        "index": i,
                        "message": {"role": "assistant", "content": texts[i], "refusal": null},
                        "logprobs": logprobs,
                        "finish_reason": reason,
                    }),
                }
            })
            .collect();
        let object = match self.p.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion",
        };
        let body = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model(),
            "system_fingerprint": crate::state::FINGERPRINT,
            "choices": choices,
            "usage": self.usage(),
        });
        Ok(axum::Json(body).into_response())
    }

    /// A chunk object with `choices` (and `usage: null` when usage was asked for).
    fn chunk(&self, choices: Vec<Value>) -> Value {
        let object = match self.p.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model(),
            "system_fingerprint": crate::state::FINGERPRINT,
            "choices": choices,
        });
        if self.p.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The SSE events of outputs `outs` (in order).
    fn sse_events(&mut self, outs: Vec<Out>, q: &mut VecDeque<SseEvent>) {
        for o in outs {
            let chunk = match o {
                Out::Delta { index, text, lps } => {
                    let logprobs = self.logprobs_of(&lps);
                    match self.p.kind {
                        Kind::Completion => self.chunk(vec![
                            json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": null}),
                        ]),
                        Kind::Chat => {
                            self.start_chat_choice(index, q);
                            self.chunk(vec![json!({
                                "index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null,
                            })])
                        }
                    }
                }
                Out::Finish { index, reason } => match self.p.kind {
                    Kind::Completion => {
                        self.chunk(vec![json!({"index": index, "text": "", "logprobs": null, "finish_reason": reason})])
                    }
                    Kind::Chat => {
                        self.start_chat_choice(index, q);
                        self.chunk(vec![
                            json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}),
                        ])
                    }
                },
                Out::Error(msg) => engine_failure(msg).body(),
            };
            q.push_back(SseEvent::default().data(chunk.to_string()));
        }
    }

    /// Chat streams open each choice with a delta carrying the role.
    fn start_chat_choice(&mut self, index: usize, q: &mut VecDeque<SseEvent>) {
        if self.choices[index].started {
            return;
        }
        self.choices[index].started = true;
        let c = self.chunk(vec![json!({
            "index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null,
        })]);
        q.push_back(SseEvent::default().data(c.to_string()));
    }

    /// The streaming response: `data: {chunk}` events, then (with `include_usage`) a chunk
    /// with the usage and no choices, then `data: [DONE]`. Dropping the stream (the client
    /// went away) cancels the request.
    pub fn stream(mut self) -> Response {
        let mut first = VecDeque::new();
        if self.p.kind == Kind::Chat {
            for i in 0..self.choices.len() {
                self.start_chat_choice(i, &mut first);
            }
        }
        let state = (self, first, false);
        let s = futures_util::stream::unfold(state, |(mut job, mut q, mut ended)| async move {
            loop {
                if let Some(e) = q.pop_front() {
                    return Some((Ok::<_, Infallible>(e), (job, q, ended)));
                }
                if ended {
                    return None;
                }
                if job.all_finished() {
                    if job.p.include_usage {
                        let mut c = job.chunk(Vec::new());
                        c["usage"] = job.usage();
                        q.push_back(SseEvent::default().data(c.to_string()));
                    }
                    q.push_back(SseEvent::default().data("[DONE]"));
                    ended = true;
                    continue;
                }
                match job.next_outputs().await {
                    Some(outs) => {
                        let failed = outs.iter().any(|o| matches!(o, Out::Error(_)));
                        job.sse_events(outs, &mut q);
                        if failed {
                            // The error event, then the end of the stream.
                            q.push_back(SseEvent::default().data("[DONE]"));
                            ended = true;
                        }
                    }
                    None => {
                        let e = ApiError::internal("the request ended without a result");
                        q.push_back(SseEvent::default().data(e.body().to_string()));
                        q.push_back(SseEvent::default().data("[DONE]"));
                        ended = true;
                    }
                }
            }
        });
        Sse::new(s).into_response()
    }
}

/// A request the engine failed (a forward error, or the server shutting down).
fn engine_failure(msg: String) -> ApiError {
    if msg.contains("shutting down") {
        ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "server_error", msg).with_code("shutting_down")
    } else {
        ApiError::internal(msg)
    }
}
