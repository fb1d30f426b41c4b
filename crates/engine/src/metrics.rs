//! Serving metrics: counters, gauges and latency histograms kept by the scheduler, rendered
//! in the Prometheus text exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// A cumulative histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    inner: Mutex<HistData>,
}

#[derive(Clone, Debug, Default)]
pub struct HistData {
    /// Observations ≤ each bucket bound (not cumulative here; rendered cumulatively).
    pub counts: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| seconds <= b) {
            h.counts[i] += 1;
        }
        h.count += 1;
        h.sum += seconds;
    }

    pub fn snapshot(&self) -> HistData {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the scheduler reports; every field is safe to read from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sequences in the running batch.
    pub requests_running: AtomicU64,
    /// Requests in the wait queue.
    pub requests_waiting: AtomicU64,
    /// Blocks of the KV pool.
    pub kv_blocks_total: AtomicU64,
    /// Blocks an allocation can take (free, or cached and evictable).
    pub kv_blocks_free: AtomicU64,
    /// Requests that found part of their prompt cached.
    pub prefix_cache_hits_total: AtomicU64,
    /// Prompt tokens found cached (not computed).
    pub prefix_cache_hit_tokens_total: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub generation_tokens_total: AtomicU64,
    /// Requests finished, by how: end of generation, length, cancelled, failed.
    pub requests_finished_eog: AtomicU64,
    pub requests_finished_length: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub requests_failed: AtomicU64,
    /// Requests refused at submission (queue full, too long, invalid).
    pub requests_rejected: AtomicU64,
    /// Sequences preempted (blocks freed, recomputed later).
    pub preemptions_total: AtomicU64,
    /// Forward steps and the tokens they ran.
    pub steps_total: AtomicU64,
    pub step_tokens_total: AtomicU64,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
}

impl Metrics {
    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one("latent_requests_running", "gauge", "Sequences in the running batch.", self.requests_running.load(Relaxed));
        one("latent_requests_waiting", "gauge", "Requests in the wait queue.", self.requests_waiting.load(Relaxed));
        one("latent_kv_blocks_total", "gauge", "Blocks of the KV-cache pool.", self.kv_blocks_total.load(Relaxed));
        one(
            "latent_kv_blocks_free",
            "gauge",
            "KV blocks an allocation can take (free or cached).",
            self.kv_blocks_free.load(Relaxed),
        );
        one(
            "latent_prefix_cache_hits_total",
            "counter",
            "Requests that found part of their prompt in the prefix cache.",
            self.prefix_cache_hits_total.load(Relaxed),
        );
        one(
            "latent_prefix_cache_hit_tokens_total",
            "counter",
            "Prompt tokens taken from the prefix cache.",
            self.prefix_cache_hit_tokens_total.load(Relaxed),
        );
        one("latent_prompt_tokens_total", "counter", "Prompt tokens admitted.", self.prompt_tokens_total.load(Relaxed));
        one(
            "latent_generation_tokens_total",
            "counter",
            "Tokens generated.",
            self.generation_tokens_total.load(Relaxed),
        );
        one(
            "latent_requests_rejected_total",
            "counter",
            "Requests refused at submission.",
            self.requests_rejected.load(Relaxed),
        );
        one(
            "latent_preemptions_total",
            "counter",
            "Sequences preempted to free KV blocks.",
            self.preemptions_total.load(Relaxed),
        );
        one("latent_steps_total", "counter", "Batched forward steps.", self.steps_total.load(Relaxed));
        one(
            "latent_step_tokens_total",
            "counter",
            "Tokens run by forward steps.",
            self.step_tokens_total.load(Relaxed),
        );
        let _ = writeln!(s, "# HELP latent_requests_finished_total Requests finished, by reason.");
        let _ = writeln!(s, "# TYPE latent_requests_finished_total counter");
        for (reason, v) in [
            ("stop", &self.requests_finished_eog),
            ("length", &self.requests_finished_length),
            ("cancelled", &self.requests_cancelled),
            ("error", &self.requests_failed),
        ] {
            let _ = writeln!(s, "latent_requests_finished_total{{reason=\"{reason}\"}} {}", v.load(Relaxed));
        }
        for (name, help, h) in [
            ("latent_time_to_first_token_seconds", "Time from arrival to the first token.", &self.time_to_first_token),
            ("latent_inter_token_latency_seconds", "Time between consecutive tokens.", &self.inter_token_latency),
        ] {
            let d = h.snapshot();
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
            let mut cum = 0;
            for (b, c) in LATENCY_BUCKETS.iter().zip(d.counts) {
                cum += c;
                let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {cum}");
            }
            let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {}", d.count);
            let _ = writeln!(s, "{name}_sum {}", d.sum);
            let _ = writeln!(s, "{name}_count {}", d.count);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let m = Metrics::default();
        for v in [0.001, 0.03, 0.03, 100.0] {
            m.time_to_first_token.observe(v);
        }
        let r = m.render();
        assert!(r.contains("latent_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"), "{r}");
        assert!(r.contains("latent_time_to_first_token_seconds_bucket{le=\"0.04\"} 3\n"), "{r}");
        assert!(r.contains("latent_time_to_first_token_seconds_bucket{le=\"30\"} 3\n"), "{r}");
        assert!(r.contains("latent_time_to_first_token_seconds_bucket{le=\"+Inf\"} 4\n"), "{r}");
        assert!(r.contains("latent_time_to_first_token_seconds_count 4\n"), "{r}");
        assert!(r.contains("# TYPE latent_kv_blocks_free gauge\nlatent_kv_blocks_free 0\n"), "{r}");
    }
}
