//! `latent`: attention for large language models, from MHA to Multi-Head Latent Attention.

mod bench_attn;
mod kv_cmd;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "latent", version, about = "Attention for LLMs, from multi-head to multi-head latent attention", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// KV-cache size per token for MHA, GQA, MQA, MLA and sliding window.
    Kv(kv_cmd::KvArgs),
    /// Benchmarks (each reports achieved GB/s and GFLOP/s beside the machine's own limits).
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Decode and causal prefill attention per mechanism.
    Attention(bench_attn::BenchAttnArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Kv(a) => kv_cmd::run(a),
        Cmd::Bench(BenchCmd::Attention(a)) => bench_attn::run(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
