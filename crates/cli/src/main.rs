//! `latent`: attention for large language models, from MHA to Multi-Head Latent Attention.

#[macro_use]
mod util;
mod bench_attn;
mod bench_mla;
mod bench_serve;
mod convert_cmd;
mod kv_cmd;
mod model_path;
mod report;
mod run_cmds;
mod serve_cmd;

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
    /// OpenAI-compatible HTTP server (completions, chat, streaming, metrics).
    Serve(serve_cmd::ServeArgs),
    /// Convert a Llama-architecture GQA/MHA model to DeepSeek-style MLA (--report: quality vs KV size).
    Convert(convert_cmd::ConvertArgs),
    /// KV-cache size per token for MHA, GQA, MQA, MLA and sliding window.
    Kv(kv_cmd::KvArgs),
    /// Regenerate REPORT.md: the measured figures (SVG, PNG, CSV) of KV size, attention cost,
    /// conversion quality, sliding windows, generation and llama.cpp.
    Report(report::ReportArgs),
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
    /// Streaming requests against the server at several concurrency levels: tok/s, TTFT, ITL.
    Serve(bench_serve::BenchServeArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => parse_failed(e),
    };
    let r = match cli.cmd {
        Cmd::Generate(a) => run_cmds::generate(a),
        Cmd::Chat(a) => run_cmds::chat(a),
        Cmd::Tokenize(a) => run_cmds::tokenize(a),
        Cmd::Perplexity(a) => run_cmds::perplexity(a),
        Cmd::Logits(a) => run_cmds::logits(a),
        Cmd::Pull { force } => model_path::pull(force).map(|_| ()),
        Cmd::Bench(BenchCmd::Generate(a)) => run_cmds::bench_generate(a),
        Cmd::Serve(a) => serve_cmd::run(a),
        Cmd::Kv(a) => kv_cmd::run(a),
        Cmd::Report(a) => report::run(a),
        Cmd::Convert(a) => convert_cmd::run(a),
        Cmd::Bench(BenchCmd::Attention(a)) => bench_attn::run(a),
        Cmd::Bench(BenchCmd::Serve(a)) => bench_serve::run(a),
    };
    if let Err(e) = r {
        util::report_error(&util::error_chain(&e));
        std::process::exit(1);
    }
}

/// Help and version go to stdout as clap writes them; a usage error becomes one line,
/// `error: … (see --help)`, with clap's status 2.
fn parse_failed(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        out!("{e}");
        std::process::exit(0);
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // `latent` or `latent bench` alone: clap's help text, on stderr.
        note!("{e}");
        std::process::exit(2);
    }
    let text = e.render().to_string();
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    util::report_error(&format!("{first} (see --help)"));
    std::process::exit(e.exit_code());
}
