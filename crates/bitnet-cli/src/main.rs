//! `bitnet`: generate text, chat, serve, inspect, convert and benchmark BitNet b1.58 models.

mod bench;
mod convert;
mod generate;
mod inspect;
mod serve;
mod train;

use clap::{Parser, Subcommand};

/// BitNet-Rust: run BitNet b1.58 (ternary) language models on CPU and GPU.
#[derive(Parser)]
#[command(name = "bitnet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (streams to the terminal).
    Generate(generate::GenerateArgs),
    /// Interactive chat that keeps the conversation history.
    Chat(generate::ChatArgs),
    /// Print the logits at every position of a token sequence (for parity checks).
    Logits(generate::LogitsArgs),
    /// Show a model's architecture, dimensions, tensor types and sizes, and metadata.
    Inspect(inspect::InspectArgs),
    /// Convert a model to GGUF (I2_S for bitnet.cpp, TQ2_0 / TQ1_0 for llama.cpp).
    Convert(convert::ConvertArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (completions, chat, streaming).
    Serve(serve::ServeArgs),
    /// Benchmark prompt processing and generation speed (llama-bench style).
    Bench(bench::BenchArgs),
    /// Train a BitNet model (quantization-aware) on a text corpus into an HF directory.
    Train(train::TrainArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Generate(a) => generate::run_generate(a),
        Command::Chat(a) => generate::run_chat(a),
        Command::Logits(a) => generate::run_logits(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run(a),
    };
    if let Err(e) = r {
        // `bitnet inspect m | head` closing the pipe is not an error.
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return;
        }
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}
