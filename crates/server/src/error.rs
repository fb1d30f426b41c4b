//! Errors: the server's own (`ServerError`, what `run` returns) and the OpenAI error object
//! every failed request gets (`ApiError`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use latent_engine::SubmitError;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("loading the model: {0}")]
    Load(String),
    #[error("starting the scheduler: {0}")]
    Scheduler(String),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

/// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}` with its status.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `rate_limit_error`, `server_error`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    /// 400 `invalid_request_error` naming the offending field (if any).
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            param: param.map(str::to_string),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 400 for a field whose value is out of range.
    pub fn bad_value(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::invalid(message, Some(param)).with_code("invalid_value")
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message).with_code("not_found")
    }

    pub fn model_not_found(model: &str) -> ApiError {
        ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist (GET /v1/models lists the one served here)"),
            )
        }
        .with_code("model_not_found")
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Incorrect or missing API key: send the header `Authorization: Bearer <key>`",
        )
        .with_code("invalid_api_key")
    }

    pub fn loading() -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the model is loading")
        }
        .with_code("model_loading")
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// A submission the scheduler refused; `prompt_param` names the prompt's field
    /// (`prompt` or `messages`).
    pub fn from_submit(e: SubmitError, prompt_param: &str, tokens_param: &str) -> ApiError {
        match e {
            SubmitError::QueueFull(n) => ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!("The server is busy ({n} requests are waiting): retry later"),
                )
            }
            .with_code("queue_full"),
            SubmitError::ContextLength { prompt, max_tokens, ctx } => ApiError::invalid(
                format!(
                    "This model's maximum context length is {ctx} tokens. However, you requested {} tokens \
                     ({prompt} in the prompt, {max_tokens} for the completion). Please reduce the length of the \
                     prompt or of {tokens_param}.",
                    prompt.saturating_add(max_tokens)
                ),
                Some(prompt_param),
            )
            .with_code("context_length_exceeded"),
            e @ SubmitError::KvTooSmall { .. } => {
                ApiError::invalid(e.to_string(), Some(tokens_param)).with_code("kv_cache_too_small")
            }
            SubmitError::Stopped => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down")
                    .with_code("shutting_down")
            }
            // Malformed requests (an empty prompt, a token id outside the vocabulary, …).
            other => {
                let msg = other.to_string();
                let param = (msg.contains("prompt") || msg.contains("token id")).then_some(prompt_param);
                ApiError::invalid(msg, param)
            }
        }
    }

    /// The JSON error object.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}
