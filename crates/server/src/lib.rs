//! `latent serve`: an OpenAI-compatible HTTP server over the engine's scheduler.
//!
//! The server binds first and answers `GET /health` with 503 `{"status":"loading"}` while the
//! model loads, then 200 `{"status":"ok"}`. One scheduler thread runs every request
//! (continuous batching); handlers submit to it through its [`latent_engine::Client`] and
//! receive tokens through per-request channels. Every failure is an OpenAI error object.
//! The server keeps no state between requests: replicas behind a gateway need no affinity.
//!
//! Routes: `GET /health`, `GET /metrics` (Prometheus text), `GET /v1/models`,
//! `POST /v1/completions`, `POST /v1/chat/completions` (both with `stream: true` as SSE).

mod api;
mod error;
mod gen;
mod routes;
mod state;
mod stop;

pub use api::{DEFAULT_MAX_TOKENS_CAP, MAX_N, MAX_STOPS};
pub use error::{ApiError, ServerError};
pub use routes::router;
pub use state::{AppState, EngineThread, HttpConfig, Ready};
pub use stop::StopMatcher;

use latent_engine::{Engine, EngineOptions, SchedulerOptions};
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Largest request body by default (4 MiB): larger bodies get 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// How `latent serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to bind (default 127.0.0.1).
    pub host: String,
    /// Port (0: any free port; the bound address is printed).
    pub port: u16,
    /// The GGUF model.
    pub model: PathBuf,
    /// The model's id in the API (default: the file stem of `model`).
    pub served_model_name: Option<String>,
    /// Requests (except `/health`) must send `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Sequences running at once.
    pub max_seqs: usize,
    /// Requests waiting beyond the running ones; more get 429.
    pub max_queue: usize,
    /// KV pool size in bytes (`None`: the scheduler's default).
    pub kv_memory: Option<usize>,
    /// Threads, precision, KV dtype, stream window, MLA path.
    pub engine: EngineOptions,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
}

impl ServeOptions {
    pub fn new(model: impl Into<PathBuf>) -> ServeOptions {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            model: model.into(),
            served_model_name: None,
            api_key: None,
            max_seqs: 16,
            max_queue: 256,
            kv_memory: None,
            engine: EngineOptions::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// The id the API serves the model under.
    pub fn model_id(&self) -> String {
        self.served_model_name.clone().unwrap_or_else(|| {
            self.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
        })
    }

    pub fn scheduler_options(&self) -> SchedulerOptions {
        SchedulerOptions {
            max_seqs: self.max_seqs,
            max_queue: self.max_queue,
            kv_memory: self.kv_memory,
            // Requests carry no session key: nothing is parked.
            max_parked: 0,
            ..SchedulerOptions::default()
        }
    }
}

/// Builds the engine while the server already answers (`/health` says loading).
pub type Loader = Box<dyn FnOnce() -> Result<Engine, String> + Send>;

/// A bound server whose model is not loaded yet.
pub struct Server {
    listener: tokio::net::TcpListener,
    opts: ServeOptions,
    state: AppState,
}

impl Server {
    /// Binds `opts.host:opts.port`.
    pub async fn bind(opts: ServeOptions) -> Result<Server, ServerError> {
        if opts.max_seqs == 0 {
            return Err(ServerError::Invalid("--max-seqs must be ≥ 1".into()));
        }
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let state = AppState::new(HttpConfig {
            model_id: opts.model_id(),
            api_key: opts.api_key.clone(),
            max_body_bytes: opts.max_body_bytes,
        });
        Ok(Server { listener, opts, state })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        Ok(self.listener.local_addr()?)
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, loading the model meanwhile with `loader`
    /// (`None`: [`Engine::load`] of `opts.model` with `opts.engine`). On shutdown the
    /// scheduler stops (requests in flight end with an error) and open connections close.
    pub async fn serve<F>(self, loader: Option<Loader>, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Server { listener, opts, state } = self;
        let loader: Loader = loader.unwrap_or_else(|| {
            let (path, eopts) = (opts.model.clone(), opts.engine.clone());
            Box::new(move || Engine::load(&path, eopts).map_err(|e| e.to_string()))
        });
        let load_failed = Arc::new(tokio::sync::Notify::new());
        let app = routes::router(state.clone());
        let graceful = {
            let (state, load_failed) = (state.clone(), load_failed.clone());
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = load_failed.notified() => {}
                }
                if let Some(r) = state.ready() {
                    r.client.shutdown();
                }
            }
        };
        let mut http = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(graceful).await });
        let load = tokio::task::spawn_blocking(loader);
        let mut engine_thread = None;
        let mut load_error = None;
        tokio::select! {
            r = load => {
                let r = r.map_err(|e| format!("the loading task failed: {e}")).and_then(|r| r);
                match r.map(Arc::new).and_then(|e| {
                    EngineThread::start(e.clone(), opts.scheduler_options()).map(|t| (e, t))
                }) {
                    Ok((engine, thread)) => {
                        state.set_ready(engine, thread.client());
                        let _ = writeln!(std::io::stderr(), "latent serve: ready, serving {}", state.config().model_id);
                        engine_thread = Some(thread);
                    }
                    Err(e) => {
                        load_error = Some(e);
                        load_failed.notify_one();
                    }
                }
            }
            r = &mut http => {
                // Shut down while loading.
                return r.map_err(|e| ServerError::Invalid(format!("the HTTP task failed: {e}")))?.map_err(ServerError::Io);
            }
        }
        let r = http.await.map_err(|e| ServerError::Invalid(format!("the HTTP task failed: {e}")))?;
        drop(engine_thread);
        if let Some(e) = load_error {
            return Err(ServerError::Load(e));
        }
        r.map_err(ServerError::Io)
    }
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `latent serve`: binds, prints `listening on http://ADDR` on stdout, loads the model and
/// serves until SIGINT/SIGTERM.
pub async fn run(opts: ServeOptions) -> Result<(), ServerError> {
    run_with(opts, None).await
}

/// [`run`] with the engine built by `loader` (`None`: [`Engine::load`]).
pub async fn run_with(opts: ServeOptions, loader: Option<Loader>) -> Result<(), ServerError> {
    let model = opts.model.clone();
    let server = Server::bind(opts).await?;
    let addr = server.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "latent serve: loading {} (GET /health answers 503 until it is ready)", model.display());
    drop(err);
    server.serve(loader, shutdown_signal()).await
}
