//! `latent serve`: the OpenAI-compatible HTTP server (crate `latent-server`).

use crate::model_path;
use crate::run_cmds::ModelArgs;
use anyhow::{bail, Context, Result};
use latent_server::ServeOptions;

#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 = any free port; the address is printed as `listening on http://HOST:PORT`).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model's id in the API (default: the file name without .gguf).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` (default: $LATENT_API_KEY; /health stays open).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Sequences generating at once (continuous batching).
    #[arg(long, default_value_t = 16)]
    pub max_seqs: usize,
    /// Requests waiting beyond the running ones; more are refused with 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// KV-cache pool size, bytes with an optional K/M/G suffix (default: room for --max-seqs
    /// sequences of the full context, at most a quarter of the available memory).
    #[arg(long, value_name = "BYTES")]
    pub kv_memory: Option<String>,
}

impl ServeArgs {
    /// The server's options; the model path is resolved as every command resolves it.
    pub fn options(&self) -> Result<ServeOptions> {
        crate::util::check_threads(self.m.threads)?;
        if self.max_seqs == 0 {
            bail!("--max-seqs must be ≥ 1");
        }
        let model = model_path::resolve(self.m.model.as_deref())?;
        let api_key = match &self.api_key {
            Some(k) => Some(k.clone()),
            None => std::env::var("LATENT_API_KEY").ok(),
        }
        .filter(|k| !k.is_empty());
        let kv_memory = self.kv_memory.as_deref().map(parse_bytes).transpose().context("--kv-memory")?;
        Ok(ServeOptions {
            host: self.host.clone(),
            port: self.port,
            served_model_name: self.served_model_name.clone(),
            api_key,
            max_seqs: self.max_seqs,
            max_queue: self.max_queue,
            kv_memory,
            ..ServeOptions::new(model)
        })
    }

    /// Builds the engine with the model flags every command shares (`--threads`, `--exact`,
    /// `--kv-dtype`, `--window`, `--sinks`, `--mla-path`).
    pub fn loader(&self, model: std::path::PathBuf) -> latent_server::Loader {
        let m = ModelArgs { model: Some(model), ..self.m.clone() };
        Box::new(move || m.engine().map_err(|e| crate::util::error_chain(&e)))
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    let opts = a.options()?;
    let loader = a.loader(opts.model.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let r = rt.block_on(latent_server::run_with(opts, Some(loader)));
    // A model still loading when a signal came is not waited for.
    rt.shutdown_background();
    r?;
    noteln!("latent serve: stopped");
    Ok(())
}

/// Bytes with an optional binary suffix: `1048576`, `512K`, `64M`, `2G`, `1T` (also `MiB`,
/// `MB`: all binary).
pub fn parse_bytes(s: &str) -> Result<usize> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &lower[digits.len()..];
    let mult: usize = match suffix {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => bail!("not a size: {s:?} (bytes with an optional K, M, G or T suffix)"),
    };
    let n: usize = digits.trim().parse().map_err(|_| anyhow::anyhow!("not a size: {s:?}"))?;
    match n.checked_mul(mult) {
        Some(0) => bail!("the size must be > 0, got {s:?}"),
        Some(v) => Ok(v),
        None => bail!("{s:?} is too large"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("512K").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("3GiB").unwrap(), 3 << 30);
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1.5G").is_err());
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("99999999999999999999T").is_err());
    }
}
