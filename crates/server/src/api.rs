//! Request bodies of `/v1/completions` and `/v1/chat/completions`: parsing (every failure an
//! OpenAI error naming the field) and validation into what the scheduler runs.

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use futures_util::StreamExt;
use latent_engine::scheduler::MAX_TOP_LOGPROBS;
use latent_engine::{Engine, SamplingParams};
use latent_tokenizer::ChatMessage;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// `max_tokens` when a request gives none: what fits the context, at most this.
pub const DEFAULT_MAX_TOKENS_CAP: usize = 4096;
/// Most choices per request.
pub const MAX_N: i64 = 8;
/// Most stop strings per request, and the longest one in bytes.
pub const MAX_STOPS: usize = 4;
pub const MAX_STOP_BYTES: usize = 1024;

/// A JSON body parsed with `serde_path_to_error`, so that a wrong type names its field;
/// malformed JSON and oversized bodies become OpenAI errors (never axum's plain text).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req.into_body(), state.config().max_body_bytes).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Reads a body of at most `limit` bytes. A larger one is read on (and dropped) up to
/// [`DRAIN_FACTOR`] × `limit` before the 413 goes out, so that a client still sending gets
/// the answer rather than a reset connection.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than {limit} bytes"),
        )
        .with_code("request_too_large")
    };
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("could not read the request body: {e}"), None))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > limit.saturating_mul(DRAIN_FACTOR) {
            return Err(too_large());
        }
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok(buf)
}

/// How much of an oversized body is read before answering 413 (× the limit).
const DRAIN_FACTOR: usize = 4;

/// Parses `bytes` as a `T`; errors name the field (`param`) where serde knows it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde reads a struct from an array too (`["m", …]`): only objects are bodies.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("the request body must be a JSON object", None));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid(format!("the request body is not valid JSON: {inner}"), None);
        }
        let msg = inner.to_string();
        // A missing field is reported at its parent; name the field itself.
        let param = match msg.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
            Some(field) if path == "." => field.to_string(),
            Some(field) => format!("{path}.{field}"),
            None => path,
        };
        let param = (param != ".").then_some(param);
        ApiError::invalid(format!("invalid request: {msg}"), param.as_deref())
    })?;
    de.end().map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    Ok(v)
}

#[derive(Deserialize, Debug)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The fields of both endpoints (`prompt` for completions, `messages` for chat). Unknown
/// fields are ignored.
#[derive(Deserialize, Debug)]
pub struct GenBody {
    pub model: String,
    #[serde(default)]
    pub prompt: Option<Value>,
    #[serde(default)]
    pub messages: Option<Vec<MessageIn>>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Completions: an integer (top-n); chat: a boolean.
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub best_of: Option<i64>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub response_format: Option<Value>,
}

#[derive(Deserialize, Debug)]
pub struct MessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
}

/// Which endpoint a body came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

impl Kind {
    pub fn prompt_param(self) -> &'static str {
        match self {
            Kind::Completion => "prompt",
            Kind::Chat => "messages",
        }
    }
}

/// A validated request: what each of its `n` choices submits.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub kind: Kind,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    /// Sampling of choice 0; choice i uses `seed + i`.
    pub sampling: SamplingParams,
    pub n: usize,
    pub stops: Vec<String>,
    /// Top alternatives per token (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// The field `max_tokens` came from (for error messages).
    pub tokens_param: &'static str,
}

impl Prepared {
    pub fn sampling_for(&self, choice: usize) -> SamplingParams {
        SamplingParams { seed: self.sampling.seed.wrapping_add(choice as u64), ..self.sampling.clone() }
    }
}

/// What the engine's limits allow a request (from the scheduler's client).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most tokens one sequence may reach.
    pub max_sequence: usize,
    /// Tokens the KV pool holds.
    pub pool_tokens: usize,
}

fn check_range(param: &str, v: Option<f64>, ok: impl Fn(f64) -> bool, rule: &str) -> Result<(), ApiError> {
    match v {
        Some(x) if !ok(x) => Err(ApiError::bad_value(param, format!("{param} must be {rule}, got {x}"))),
        _ => Ok(()),
    }
}

/// Validates `b` and turns its prompt into tokens (`seed`: used when the body has none).
pub fn prepare(kind: Kind, b: GenBody, engine: &Engine, limits: Limits, seed: u64) -> Result<Prepared, ApiError> {
    // Sampling settings.
    check_range("temperature", b.temperature, |t| (0.0..=2.0).contains(&t), "between 0 and 2")?;
    check_range("top_p", b.top_p, |p| p > 0.0 && p <= 1.0, "in (0, 1]")?;
    check_range("min_p", b.min_p, |p| (0.0..=1.0).contains(&p), "in [0, 1]")?;
    check_range("repetition_penalty", b.repetition_penalty, |p| p > 0.0 && p.is_finite(), "> 0")?;
    check_range("presence_penalty", b.presence_penalty, |p| (-2.0..=2.0).contains(&p), "between -2 and 2")?;
    check_range("frequency_penalty", b.frequency_penalty, |p| (-2.0..=2.0).contains(&p), "between -2 and 2")?;
    let top_k = match b.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => return Err(ApiError::bad_value("top_k", format!("top_k must be ≥ 1 (or -1/0: off), got {k}"))),
    };
    let n = b.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::bad_value("n", format!("n must be between 1 and {MAX_N}, got {n}")));
    }
    let (tokens_param, max_tokens) = match (b.max_completion_tokens, b.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    if let Some(m) = max_tokens {
        if m < 1 {
            return Err(ApiError::bad_value(tokens_param, format!("{tokens_param} must be at least 1, got {m}")));
        }
    }
    // Features this server does not have: refused rather than silently ignored.
    if b.echo == Some(true) {
        return Err(ApiError::invalid("echo is not supported", Some("echo")));
    }
    if b.best_of.is_some_and(|k| k != 1 && k != n) {
        return Err(ApiError::invalid("best_of is not supported (use n)", Some("best_of")));
    }
    if b.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix is not supported", Some("suffix")));
    }
    if b.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::invalid("logit_bias is not supported", Some("logit_bias")));
    }
    if b.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid("tools are not supported", Some("tools")));
    }
    if let Some(rf) = &b.response_format {
        let ty = rf.get("type").and_then(Value::as_str);
        if ty != Some("text") {
            return Err(ApiError::invalid(
                "response_format other than {\"type\": \"text\"} is not supported",
                Some("response_format"),
            ));
        }
    }
    let stops = parse_stop(b.stop.as_ref())?;
    let logprobs = match kind {
        Kind::Completion => match &b.logprobs {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(k) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Some(k as usize),
                _ => {
                    return Err(ApiError::bad_value(
                        "logprobs",
                        format!("logprobs must be an integer between 0 and {MAX_TOP_LOGPROBS}, got {v}"),
                    ))
                }
            },
        },
        Kind::Chat => {
            let on = match &b.logprobs {
                None | Some(Value::Null) => false,
                Some(Value::Bool(x)) => *x,
                Some(v) => {
                    return Err(ApiError::invalid(format!("logprobs must be a boolean, got {v}"), Some("logprobs")))
                }
            };
            match b.top_logprobs {
                Some(k) if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) => {
                    return Err(ApiError::bad_value(
                        "top_logprobs",
                        format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
                    ))
                }
                Some(k) if k > 0 && !on => {
                    return Err(ApiError::invalid("top_logprobs needs logprobs: true", Some("top_logprobs")))
                }
                k => on.then(|| k.unwrap_or(0) as usize),
            }
        }
    };

    let prompt = match kind {
        Kind::Completion => completion_prompt(b.prompt.as_ref(), engine)?,
        Kind::Chat => chat_prompt(b.messages.as_deref(), engine)?,
    };
    let room = limits.max_sequence.min(limits.pool_tokens).saturating_sub(prompt.len());
    let max_tokens = match max_tokens {
        Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
        None => {
            if prompt.len() >= limits.max_sequence {
                return Err(ApiError::invalid(
                    format!(
                        "This model's maximum context length is {} tokens, and the prompt has {} tokens.",
                        limits.max_sequence,
                        prompt.len()
                    ),
                    Some(kind.prompt_param()),
                )
                .with_code("context_length_exceeded"));
            }
            room.clamp(1, DEFAULT_MAX_TOKENS_CAP)
        }
    };
    let sampling = SamplingParams {
        temperature: b.temperature.unwrap_or(1.0) as f32,
        top_k,
        top_p: b.top_p.unwrap_or(1.0) as f32,
        min_p: b.min_p.unwrap_or(0.0) as f32,
        repeat_penalty: b.repetition_penalty.unwrap_or(1.0) as f32,
        repeat_last_n: 64,
        seed: b.seed.map_or(seed, |s| s as u64),
    };
    let include_usage = b.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    Ok(Prepared {
        kind,
        prompt,
        max_tokens,
        sampling,
        n: n as usize,
        stops,
        logprobs,
        stream: b.stream.unwrap_or(false),
        include_usage,
        tokens_param,
    })
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stops: Vec<String> = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOPS {
                return Err(ApiError::bad_value("stop", format!("at most {MAX_STOPS} stop strings, got {}", a.len())));
            }
            a.iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| ApiError::invalid("stop must be a string or an array of strings", Some("stop")))
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(ApiError::invalid("stop must be a string or an array of strings", Some("stop"))),
    };
    if stops.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::bad_value("stop", format!("stop strings must have 1 to {MAX_STOP_BYTES} bytes")));
    }
    Ok(stops)
}

/// The prompt of `/v1/completions`: a string (tokenized raw, with BOS where the model asks
/// for it, as `latent generate` without `--chat`), an array of token ids, or a list of one
/// of either.
fn completion_prompt(v: Option<&Value>, engine: &Engine) -> Result<Vec<u32>, ApiError> {
    let bad =
        || ApiError::invalid("prompt must be a string or an array of token ids (or a list of one)", Some("prompt"));
    let v = v.ok_or_else(|| ApiError::invalid("invalid request: missing field `prompt`", Some("prompt")))?;
    let tokens = match v {
        Value::String(s) => engine.tokenizer.encode_with_bos(s, false),
        Value::Array(a) if a.len() == 1 && (a[0].is_string() || a[0].is_array()) => {
            return completion_prompt(Some(&a[0]), engine)
        }
        Value::Array(a) if a.iter().all(|x| x.is_string() || x.is_array()) && a.len() > 1 => {
            return Err(ApiError::invalid("only one prompt per request: send the others separately", Some("prompt")))
        }
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(bad))
            .collect::<Result<Vec<u32>, _>>()?,
        _ => return Err(bad()),
    };
    if tokens.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    Ok(tokens)
}

/// The prompt of `/v1/chat/completions`: the messages rendered with the model's chat
/// template and the assistant turn opened (as `latent generate --chat`).
fn chat_prompt(msgs: Option<&[MessageIn]>, engine: &Engine) -> Result<Vec<u32>, ApiError> {
    let msgs = msgs.ok_or_else(|| ApiError::invalid("invalid request: missing field `messages`", Some("messages")))?;
    if msgs.is_empty() {
        return Err(ApiError::invalid("messages must not be empty", Some("messages")));
    }
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let param = format!("messages[{i}].content");
        let content = match &m.content {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => texts.push(t),
                        _ => {
                            return Err(ApiError::invalid(
                                "only text content parts ({\"type\": \"text\", \"text\": …}) are supported",
                                Some(&param),
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
            Some(_) => return Err(ApiError::invalid("content must be a string or an array of parts", Some(&param))),
        };
        out.push(ChatMessage::new(m.role.clone(), content));
    }
    let text = engine
        .tokenizer
        .render_chat(&out, true)
        .map_err(|e| ApiError::invalid(format!("the chat template failed: {e}"), Some("messages")))?;
    let tokens = engine.tokenizer.encode(&text, true);
    if tokens.is_empty() {
        return Err(ApiError::invalid("the rendered conversation is empty", Some("messages")));
    }
    Ok(tokens)
}
