//! The routes: `/health`, `/metrics`, `/v1/models`, `/v1/completions`,
//! `/v1/chat/completions`; API-key check, request counters, JSON 404/405.

use crate::api::{self, ApiJson, GenBody, Kind, Limits};
use crate::error::ApiError;
use crate::gen;
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::fmt::Write as _;

/// The server's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read (and bounded) by `ApiJson` itself.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Requires `Authorization: Bearer <key>` on everything but `/health` when a key is set.
async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.config().api_key {
        if req.uri().path() != "/health" {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
                return ApiError::unauthorized().into_response();
            }
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts answered requests by route (the matched pattern, or `other`) and status.
async fn count(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("other", |m| m.as_str()).to_string();
    let r = next.run(req).await;
    st.count(&route, r.status().as_u16());
    r
}

async fn health(State(st): State<AppState>) -> Response {
    match st.ready() {
        Some(_) => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response(),
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let mut text = match st.ready() {
        Some(r) => r.client.metrics().render(),
        None => String::new(),
    };
    let _ = writeln!(text, "# HELP latent_http_requests_total HTTP requests answered, by route and status.");
    let _ = writeln!(text, "# TYPE latent_http_requests_total counter");
    for ((route, status), n) in st.inner.http.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(text, "latent_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
    }
    let _ = writeln!(text, "# HELP latent_model_loaded Whether the model is loaded (1) or loading (0).");
    let _ = writeln!(text, "# TYPE latent_model_loaded gauge");
    let _ = writeln!(text, "latent_model_loaded {}", u8::from(st.ready().is_some()));
    let mut r = text.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

fn model_object(st: &AppState) -> serde_json::Value {
    json!({
        "id": st.config().model_id,
        "object": "model",
        "created": st.inner.created,
        "owned_by": "latent",
    })
}

async fn models(State(st): State<AppState>) -> Response {
    Json(json!({"object": "list", "data": [model_object(&st)]})).into_response()
}

async fn model(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    if id == st.config().model_id {
        Json(model_object(&st)).into_response()
    } else {
        ApiError::model_not_found(&id).into_response()
    }
}

async fn not_found(State(st): State<AppState>, req: Request) -> ApiError {
    // The fallback runs outside the route layers: counted here.
    st.count("other", StatusCode::NOT_FOUND.as_u16());
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("method {} is not allowed on {}", req.method(), req.uri().path()),
    )
    .with_code("method_not_allowed")
}

async fn completions(State(st): State<AppState>, ApiJson(body): ApiJson<GenBody>) -> Result<Response, ApiError> {
    generate(st, Kind::Completion, body).await
}

async fn chat(State(st): State<AppState>, ApiJson(body): ApiJson<GenBody>) -> Result<Response, ApiError> {
    generate(st, Kind::Chat, body).await
}

async fn generate(st: AppState, kind: Kind, body: GenBody) -> Result<Response, ApiError> {
    let ready = st.ready().ok_or_else(ApiError::loading)?;
    if body.model != ready.model_id {
        return Err(ApiError::model_not_found(&body.model));
    }
    let limits = Limits { max_sequence: ready.client.max_sequence(), pool_tokens: ready.pool_tokens };
    // Tokenizing and template rendering are CPU work: off the async workers.
    let r = ready.clone();
    let seed = crate::state::random_u64();
    let prepared = tokio::task::spawn_blocking(move || api::prepare(kind, body, &r.engine, limits, seed))
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request: {e}")))??;
    let stream = prepared.stream;
    let job = gen::submit(ready, prepared)?;
    if stream {
        Ok(job.stream())
    } else {
        job.collect().await
    }
}
