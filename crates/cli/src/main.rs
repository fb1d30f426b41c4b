//! `latent`: attention for large language models, from MHA to Multi-Head Latent Attention.

mod bench_attn;
mod kv_cmd;
mod model_path;
mod run_cmds;
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
    /// Generate text from a prompt (streams; --json for one object).
    Generate(run_cmds::GenerateArgs),
    /// Interactive chat with the model's chat template.
    Chat(run_cmds::ChatArgs),
    /// Tokenize text with the model's tokenizer.
    Tokenize(run_cmds::TokenizeArgs),
    /// Perplexity over a text file in non-overlapping windows.
    Perplexity(run_cmds::PerplexityArgs),
    /// Teacher-forced top-k logits of a file's first N tokens.
    Logits(run_cmds::LogitsArgs),
    /// Fetch the default model into the user cache (checks its sha256).
    Pull {
        /// Download again even if present.
        #[arg(long)]
        force: bool,
    },
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
    /// Prefill and decode tokens/s of a model, with peak RSS.
    Generate(run_cmds::BenchGenArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Generate(a) => run_cmds::generate(a),
        Cmd::Chat(a) => run_cmds::chat(a),
        Cmd::Tokenize(a) => run_cmds::tokenize(a),
        Cmd::Perplexity(a) => run_cmds::perplexity(a),
        Cmd::Logits(a) => run_cmds::logits(a),
        Cmd::Pull { force } => model_path::pull(force).map(|_| ()),
        Cmd::Bench(BenchCmd::Generate(a)) => run_cmds::bench_generate(a),
        Cmd::Kv(a) => kv_cmd::run(a),
        Cmd::Bench(BenchCmd::Attention(a)) => bench_attn::run(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
