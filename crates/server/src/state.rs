//! What the handlers share: the configuration, the loaded engine with its scheduler's client
//! (set once loading is done), and the HTTP request counters.

use latent_engine::{Client, Engine, Scheduler, SchedulerOptions};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

/// `system_fingerprint` of every response: the server's version.
pub const FINGERPRINT: &str = concat!("latent-", env!("CARGO_PKG_VERSION"));

/// The HTTP side's settings.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// The id `/v1/models` lists and requests must name.
    pub model_id: String,
    /// Requests (except `/health`) must send `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
}

/// The loaded model: its engine and the client of the scheduler that runs it.
pub struct Ready {
    pub engine: Arc<Engine>,
    pub client: Client,
    pub model_id: String,
    /// Tokens the KV pool holds.
    pub pool_tokens: usize,
}

/// State shared by the handlers (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: HttpConfig,
    pub ready: OnceLock<Arc<Ready>>,
    pub created: u64,
    /// Requests answered, by route and status.
    pub http: Mutex<BTreeMap<(String, u16), u64>>,
}

impl AppState {
    /// A server whose model is still loading (`/health` answers 503).
    pub fn new(config: HttpConfig) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                config,
                ready: OnceLock::new(),
                created: unix_now(),
                http: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Marks the model loaded: requests run on `client`'s scheduler from now on.
    pub fn set_ready(&self, engine: Arc<Engine>, client: Client) {
        let blocks = client.metrics().kv_blocks_total.load(Relaxed) as usize;
        let ready = Ready {
            engine,
            client,
            model_id: self.inner.config.model_id.clone(),
            pool_tokens: blocks.saturating_mul(latent_kv::DEFAULT_BLOCK_SIZE),
        };
        let _ = self.inner.ready.set(Arc::new(ready));
    }

    pub fn ready(&self) -> Option<Arc<Ready>> {
        self.inner.ready.get().cloned()
    }

    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    pub(crate) fn count(&self, route: &str, status: u16) {
        let mut m = self.inner.http.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.to_string(), status)).or_insert(0) += 1;
    }
}

/// The scheduler on its own thread, serving until dropped (or [`Client::shutdown`]).
pub struct EngineThread {
    client: Client,
    join: Option<std::thread::JoinHandle<()>>,
}

impl EngineThread {
    /// Builds a scheduler over `engine` on a new thread and runs [`Scheduler::serve`] there.
    pub fn start(engine: Arc<Engine>, opts: SchedulerOptions) -> Result<EngineThread, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let join = std::thread::Builder::new()
            .name("latent-scheduler".into())
            .spawn(move || {
                let mut s = match Scheduler::new(&engine, opts) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = tx.send(Ok(s.client()));
                s.serve();
            })
            .map_err(|e| format!("cannot start the scheduler thread: {e}"))?;
        match rx.recv() {
            Ok(Ok(client)) => Ok(EngineThread { client, join: Some(join) }),
            Ok(Err(e)) => {
                let _ = join.join();
                Err(e)
            }
            Err(_) => {
                let _ = join.join();
                Err("the scheduler thread ended at start".into())
            }
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        self.client.shutdown();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A random u64 (the standard library's per-process random hash keys, a counter and the
/// clock): for ids and seeds, not for secrets.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// 24 hex digits.
pub fn random_id() -> String {
    format!("{:016x}{:08x}", random_u64(), random_u64() as u32)
}
