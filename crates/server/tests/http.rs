//! The HTTP API on a tiny random-weight model (built here; nothing outside the repository):
//! routing, the OpenAI shapes, SSE framing, stop strings, log-probabilities, seeds, every
//! error case, cancellation on disconnect and the metrics.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use latent_engine::{Engine, EngineOptions, Sampler, SamplingParams, SchedulerOptions};
use latent_formats::gguf::GgufFile;
use latent_models::testing::TinyLlama;
use latent_server::{AppState, EngineThread, HttpConfig};
use latent_tokenizer::{Tokenizer, TokenizerSpec};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const VOCAB: usize = 300;
const MODEL: &str = "tiny";
const CHATML: &str = "{% for m in messages %}<|ctl_256|>{{ m.role }}\n{{ m.content }}<|ctl_257|>\n{% endfor %}\
{% if add_generation_prompt %}<|ctl_256|>assistant\n{% endif %}";

fn engine() -> Engine {
    let gguf = TinyLlama { vocab: VOCAB, context: 512, ..TinyLlama::default() }.gguf();
    let f = Arc::new(GgufFile::from_bytes(gguf).expect("tiny GGUF parses"));
    let m = latent_models::load_from(f).expect("tiny model loads");
    let spec = TokenizerSpec { chat_template: Some(CHATML.into()), ..TokenizerSpec::byte_level(VOCAB) };
    let tok = Tokenizer::new(spec).expect("byte-level tokenizer");
    Engine::new(m, tok, EngineOptions { threads: 2, prefill_chunk: 64, ..EngineOptions::default() }).expect("engine")
}

struct App {
    router: Router,
    state: AppState,
    _thread: EngineThread,
}

fn app_with(sched: SchedulerOptions, api_key: Option<&str>) -> App {
    let e = Arc::new(engine());
    let thread = EngineThread::start(e.clone(), sched).expect("scheduler");
    let state = AppState::new(HttpConfig {
        model_id: MODEL.into(),
        api_key: api_key.map(str::to_string),
        max_body_bytes: 64 << 10,
    });
    state.set_ready(e, thread.client());
    App { router: latent_server::router(state.clone()), state, _thread: thread }
}

fn app() -> App {
    app_with(
        SchedulerOptions { max_seqs: 4, max_queue: 64, kv_blocks: Some(64), max_parked: 0, ..Default::default() },
        None,
    )
}

async fn send(r: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = r.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).expect("utf-8 body"))
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path).header(header::CONTENT_TYPE, "application/json").body(body.into()).unwrap()
}

async fn post_json(r: &Router, path: &str, v: Value) -> (StatusCode, Value) {
    let (s, _, b) = send(r, post(path, v.to_string())).await;
    (s, serde_json::from_str(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {b}")))
}

/// The `data:` payloads of an SSE body, checking the framing on the way.
fn sse_events(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "events end with a blank line: {body:?}");
    body.split_terminator("\n\n")
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {e:?}")).to_string())
        .collect()
}

fn assert_error(status: StatusCode, v: &Value, want: StatusCode, param: Option<&str>, code: Option<&str>) {
    assert_eq!(status, want, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert_eq!(e["param"].as_str(), param, "{v}");
    if let Some(c) = code {
        assert_eq!(e["code"].as_str(), Some(c), "{v}");
    }
}

/// Greedy tokens of `prompt` on a fresh engine (the reference path: `Engine::generate`).
fn reference_text(prompt: &[u32], max_tokens: usize) -> String {
    let e = engine();
    let mut s = Sampler::new(SamplingParams::default());
    e.generate(prompt, max_tokens, &mut s, |_| {}).expect("generate").text
}

#[tokio::test]
async fn health_is_loading_until_the_model_is_ready() {
    let state = AppState::new(HttpConfig { model_id: MODEL.into(), api_key: Some("k".into()), max_body_bytes: 1024 });
    let r = latent_server::router(state.clone());
    let (s, _, b) = send(&r, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap(), json!({"status": "loading"}));
    let req = Request::post("/v1/completions")
        .header(header::AUTHORIZATION, "Bearer k")
        .body(Body::from(json!({"model": MODEL, "prompt": "x"}).to_string()));
    let (s, h, b) = send(&r, req.unwrap()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(h.get(header::RETRY_AFTER).unwrap(), "1");
    let e = Arc::new(engine());
    let t = EngineThread::start(e.clone(), SchedulerOptions { kv_blocks: Some(8), ..Default::default() }).unwrap();
    state.set_ready(e, t.client());
    let (s, _, b) = send(&r, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn models_lists_the_one_model() {
    let a = app();
    let (s, _, b) = send(&a.router, Request::get("/v1/models").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    let (s, _, _) = send(&a.router, Request::get("/v1/models/tiny").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, b) = send(&a.router, Request::get("/v1/models/other").body(Body::empty()).unwrap()).await;
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_error(s, &v, StatusCode::NOT_FOUND, Some("model"), Some("model_not_found"));
}

#[tokio::test]
async fn completions_match_the_engine_and_report_usage() {
    let a = app();
    let (s, v) = post_json(
        &a.router,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "hello", "max_tokens": 12, "temperature": 0}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    let prompt: Vec<u32> = b"hello".iter().map(|&b| b as u32).collect();
    assert_eq!(text, reference_text(&prompt, 12));
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], 5);
    let done = u["completion_tokens"].as_u64().unwrap();
    assert_eq!(u["total_tokens"].as_u64().unwrap(), 5 + done);
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());
    let reason = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!((reason == "length" && done == 12) || (reason == "stop" && done < 12), "{v}");

    // The same prompt as token ids, bare and as a list of one.
    for prompt in [json!(prompt), json!([prompt])] {
        let (s, v) = post_json(
            &a.router,
            "/v1/completions",
            json!({"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["choices"][0]["text"], text.as_str());
    }
}

#[tokio::test]
async fn streaming_completion_is_framed_and_equals_the_plain_one() {
    let a = app();
    let req = json!({"model": MODEL, "prompt": "stream me", "max_tokens": 10, "temperature": 0});
    let (_, plain) = post_json(&a.router, "/v1/completions", req.clone()).await;
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (s, h, body) = send(&a.router, post("/v1/completions", sreq.to_string())).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.get(header::CONTENT_TYPE).unwrap(), "text/event-stream");
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let mut text = String::new();
    let mut reasons = Vec::new();
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["object"], "text_completion");
        assert!(c["usage"].is_null(), "{c}");
        let ch = &c["choices"][0];
        text.push_str(ch["text"].as_str().unwrap());
        if let Some(r) = ch["finish_reason"].as_str() {
            reasons.push(r.to_string());
        }
    }
    assert_eq!(text, plain["choices"][0]["text"].as_str().unwrap());
    assert_eq!(reasons, vec![plain["choices"][0]["finish_reason"].as_str().unwrap().to_string()]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], plain["usage"]["completion_tokens"]);
    assert_eq!(last["usage"]["prompt_tokens"], 9);
}

#[tokio::test]
async fn chat_streams_a_role_then_content() {
    let a = app();
    let req = json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_completion_tokens": 8,
        "temperature": 0,
    });
    let (s, plain) = post_json(&a.router, "/v1/chat/completions", req.clone()).await;
    assert_eq!(s, StatusCode::OK, "{plain}");
    assert!(plain["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["choices"][0]["message"]["role"], "assistant");
    let content = plain["choices"][0]["message"]["content"].as_str().unwrap();
    // The prompt is the rendered template (special tokens parsed).
    let e = engine();
    let msgs = [latent_tokenizer::ChatMessage::system("be brief"), latent_tokenizer::ChatMessage::user("hi")];
    let prompt = e.tokenizer.encode(&e.tokenizer.render_chat(&msgs, true).unwrap(), true);
    assert_eq!(plain["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(content, reference_text(&prompt, 8));

    let mut sreq = req;
    sreq["stream"] = json!(true);
    let (_, _, body) = send(&a.router, post("/v1/chat/completions", sreq.to_string())).await;
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(text, content);
    let end = chunks.last().unwrap();
    assert_eq!(end["object"], "chat.completion.chunk");
    assert_eq!(end["choices"][0]["delta"], json!({}));
    assert_eq!(end["choices"][0]["finish_reason"], plain["choices"][0]["finish_reason"]);
    assert!(end.get("usage").is_none(), "no usage without include_usage");
}

#[tokio::test]
async fn stop_strings_cut_the_text_streaming_or_not() {
    let a = app();
    let base = json!({"model": MODEL, "prompt": "abc", "max_tokens": 24, "temperature": 0});
    let (_, v) = post_json(&a.router, "/v1/completions", base.clone()).await;
    let full = v["choices"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "the tiny model wrote {full:?}");
    // A stop string taken from the middle of the text: the answer ends before its first
    // occurrence.
    let stop: String = chars[5..7].iter().collect();
    let cut = &full[..full.find(&stop).unwrap()];
    for stream in [false, true] {
        let mut req = base.clone();
        req["stop"] = json!([stop, "never-appears"]);
        req["stream"] = json!(stream);
        let (text, reason) = if stream {
            let (_, _, body) = send(&a.router, post("/v1/completions", req.to_string())).await;
            let ev = sse_events(&body);
            let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
            let t: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
            (t, chunks.last().unwrap()["choices"][0]["finish_reason"].as_str().unwrap().to_string())
        } else {
            let (_, v) = post_json(&a.router, "/v1/completions", req).await;
            (v["choices"][0]["text"].as_str().unwrap().to_string(), v["choices"][0]["finish_reason"].to_string())
        };
        assert_eq!(text, cut, "stream {stream}");
        assert!(reason.contains("stop"), "{reason}");
    }
    // The stopped request was cancelled: its blocks come back.
    wait_all_blocks_free(&a).await;
}

#[tokio::test]
async fn logprobs_have_the_openai_shapes() {
    let a = app();
    let (s, v) = post_json(
        &a.router,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "log", "max_tokens": 6, "temperature": 0, "logprobs": 3}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
    assert_eq!(lp["text_offset"].as_array().unwrap().len(), n);
    let tokens: String = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens, v["choices"][0]["text"].as_str().unwrap());
    for (t, top) in lp["token_logprobs"].as_array().unwrap().iter().zip(lp["top_logprobs"].as_array().unwrap()) {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3);
        // Greedy: the chosen token is the most likely one.
        let best = top.values().map(|x| x.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert!((t.as_f64().unwrap() - best).abs() < 1e-6);
        assert!(best <= 0.0);
    }

    let (s, v) = post_json(
        &a.router,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "temperature": 0,
               "logprobs": true, "top_logprobs": 2}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), v["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    for c in content {
        assert!(c["token"].is_string() && c["logprob"].is_f64() && c["bytes"].is_array());
        assert_eq!(c["top_logprobs"].as_array().unwrap().len(), 2);
        assert!(c["top_logprobs"][0]["token"].is_string());
    }
}

#[tokio::test]
async fn n_choices_use_consecutive_seeds() {
    let a = app();
    let req = |n: usize, seed: u64| json!({"model": MODEL, "prompt": "seed", "max_tokens": 8, "temperature": 1.5, "n": n, "seed": seed});
    let (s, both) = post_json(&a.router, "/v1/completions", req(2, 41)).await;
    assert_eq!(s, StatusCode::OK, "{both}");
    assert_eq!(both["choices"].as_array().unwrap().len(), 2);
    let (_, first) = post_json(&a.router, "/v1/completions", req(1, 41)).await;
    let (_, second) = post_json(&a.router, "/v1/completions", req(1, 42)).await;
    assert_eq!(both["choices"][0]["text"], first["choices"][0]["text"]);
    assert_eq!(both["choices"][1]["text"], second["choices"][0]["text"]);
    assert_eq!(both["choices"][1]["index"], 1);
    let total =
        first["usage"]["completion_tokens"].as_u64().unwrap() + second["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(both["usage"]["completion_tokens"].as_u64().unwrap(), total);
}

#[tokio::test]
async fn every_bad_request_is_an_openai_error() {
    let a = app();
    let r = &a.router;
    let c = "/v1/completions";
    let bad = StatusCode::BAD_REQUEST;
    // Malformed JSON, wrong types, missing fields.
    let (s, _, b) = send(r, post(c, "{\"model\": ")).await;
    assert_error(s, &serde_json::from_str(&b).unwrap(), bad, None, None);
    let (s, _, b) = send(r, post(c, "")).await;
    assert_error(s, &serde_json::from_str(&b).unwrap(), bad, None, None);
    let (s, v) = post_json(r, c, json!({"model": MODEL, "prompt": "x", "temperature": "hot"})).await;
    assert_error(s, &v, bad, Some("temperature"), None);
    let (s, v) = post_json(r, c, json!({"prompt": "x"})).await;
    assert_error(s, &v, bad, Some("model"), None);
    let (s, v) = post_json(r, c, json!({"model": MODEL})).await;
    assert_error(s, &v, bad, Some("prompt"), None);
    let (s, v) = post_json(r, "/v1/chat/completions", json!({"model": MODEL})).await;
    assert_error(s, &v, bad, Some("messages"), None);
    let (s, v) = post_json(r, "/v1/chat/completions", json!({"model": MODEL, "messages": [{"content": "x"}]})).await;
    assert_error(s, &v, bad, Some("messages[0].role"), None);
    let (s, v) = post_json(r, c, json!({"model": MODEL, "prompt": {"a": 1}})).await;
    assert_error(s, &v, bad, Some("prompt"), None);
    let (s, v) = post_json(r, c, json!({"model": MODEL, "prompt": [1, 2, 999999]})).await;
    assert_error(s, &v, bad, Some("prompt"), None);
    // Values out of range name their field.
    for (field, value) in [
        ("temperature", json!(2.5)),
        ("temperature", json!(-0.1)),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(-3)),
        ("top_p", json!(0)),
        ("top_p", json!(1.5)),
        ("n", json!(0)),
        ("n", json!(9)),
        ("stop", json!(["a", "b", "c", "d", "e"])),
        ("logprobs", json!(21)),
    ] {
        let mut req = json!({"model": MODEL, "prompt": "x"});
        req[field] = value.clone();
        let (s, v) = post_json(r, c, req).await;
        assert_error(s, &v, bad, Some(field), None);
    }
    let (s, v) = post_json(
        r,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}),
    )
    .await;
    assert_error(s, &v, bad, Some("top_logprobs"), None);
    let (s, v) = post_json(
        r,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}),
    )
    .await;
    assert_error(s, &v, bad, Some("max_completion_tokens"), None);
    // Context: 400 prompt tokens + 200 > 512.
    let long = "y".repeat(400);
    let (s, v) = post_json(r, c, json!({"model": MODEL, "prompt": long, "max_tokens": 200})).await;
    assert_error(s, &v, bad, Some("prompt"), Some("context_length_exceeded"));
    let (s, v) = post_json(r, c, json!({"model": MODEL, "prompt": "y".repeat(600)})).await;
    assert_error(s, &v, bad, Some("prompt"), Some("context_length_exceeded"));
    // Unknown model.
    let (s, v) = post_json(r, c, json!({"model": "gpt-4", "prompt": "x"})).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, Some("model"), Some("model_not_found"));
    // Body over the limit (64 KiB here).
    let big = json!({"model": MODEL, "prompt": "z".repeat(100 << 10)}).to_string();
    let (s, _, b) = send(r, post(c, big)).await;
    assert_error(s, &serde_json::from_str(&b).unwrap(), StatusCode::PAYLOAD_TOO_LARGE, None, Some("request_too_large"));
    // Unknown route and wrong method: JSON too.
    let (s, _, b) = send(r, Request::get("/v2/nothing").body(Body::empty()).unwrap()).await;
    assert_error(s, &serde_json::from_str(&b).unwrap(), StatusCode::NOT_FOUND, None, Some("not_found"));
    let (s, _, b) = send(r, Request::get(c).body(Body::empty()).unwrap()).await;
    assert_error(s, &serde_json::from_str(&b).unwrap(), StatusCode::METHOD_NOT_ALLOWED, None, None);
    // And the server still answers.
    let (s, v) = post_json(r, c, json!({"model": MODEL, "prompt": "ok", "max_tokens": 2})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn kv_too_small_and_queue_full() {
    // 2 blocks of 64 tokens: a sequence of 150 tokens cannot fit.
    let a = app_with(SchedulerOptions { max_seqs: 1, max_queue: 0, kv_blocks: Some(2), ..Default::default() }, None);
    let (s, v) =
        post_json(&a.router, "/v1/completions", json!({"model": MODEL, "prompt": "y".repeat(100), "max_tokens": 50}))
            .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, Some("max_tokens"), Some("kv_cache_too_small"));
    // A queue of 0: every request is refused with 429 and Retry-After.
    let (s, h, b) = send(&a.router, post("/v1/completions", json!({"model": MODEL, "prompt": "q"}).to_string())).await;
    assert_error(s, &serde_json::from_str(&b).unwrap(), StatusCode::TOO_MANY_REQUESTS, None, Some("queue_full"));
    assert_eq!(h.get(header::RETRY_AFTER).unwrap(), "1");
}

#[tokio::test]
async fn api_key_is_required_except_for_health() {
    let a = app_with(SchedulerOptions { kv_blocks: Some(8), ..Default::default() }, Some("sekrit"));
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 1}).to_string();
    let (s, _, b) = send(&a.router, post("/v1/completions", body.clone())).await;
    assert_error(s, &serde_json::from_str(&b).unwrap(), StatusCode::UNAUTHORIZED, None, Some("invalid_api_key"));
    let wrong =
        Request::post("/v1/completions").header(header::AUTHORIZATION, "Bearer nope").body(Body::from(body.clone()));
    let (s, _, _) = send(&a.router, wrong.unwrap()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = send(&a.router, Request::get("/v1/models").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let right = Request::post("/v1/completions").header(header::AUTHORIZATION, "Bearer sekrit").body(Body::from(body));
    let (s, _, b) = send(&a.router, right.unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _, _) = send(&a.router, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

async fn wait_all_blocks_free(a: &App) {
    let t0 = Instant::now();
    loop {
        let (s, h, m) = send(&a.router, Request::get("/metrics").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h.get(header::CONTENT_TYPE).unwrap(), "text/plain; version=0.0.4; charset=utf-8");
        let (free, total) = (metric(&m, "latent_kv_blocks_free"), metric(&m, "latent_kv_blocks_total"));
        if free == total && metric(&m, "latent_requests_running") == 0 {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "blocks not freed: {free}/{total}\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_request() {
    let a = app();
    let req = json!({"model": MODEL, "prompt": "long", "max_tokens": 400, "temperature": 0, "stream": true});
    let resp = a.router.clone().oneshot(post("/v1/completions", req.to_string())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // Read until the first content arrives, then drop the stream.
    let mut seen = String::new();
    while !seen.contains("\"text\"") {
        let f = body.frame().await.expect("a frame").expect("no error");
        if let Ok(d) = f.into_data() {
            seen.push_str(std::str::from_utf8(&d).unwrap());
        }
    }
    drop(body);
    wait_all_blocks_free(&a).await;
    let m = a.state.ready().unwrap().client.metrics().render();
    assert!(m.contains("latent_requests_finished_total{reason=\"cancelled\"} 1"), "{m}");
    let (_, _, text) = send(&a.router, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert!(text.contains("latent_http_requests_total{route=\"/v1/completions\",status=\"200\"} 1"), "{text}");
}
