//! `bitnet serve`: an OpenAI-compatible HTTP server (see the `bitnet-server` crate).

use crate::generate::ModelArgs;
use anyhow::{Context, Result};
use bitnet_inference::backend::LmHeadMode;
use bitnet_server::ServerOptions;
use clap::Args;

/// `bitnet serve`.
#[derive(Args, Debug)]
#[command(after_help = "Endpoints: POST /v1/completions, POST /v1/chat/completions (\"stream\": \
true for server-sent events), GET /v1/models, GET /health, GET /metrics (Prometheus).
Up to --parallel requests are generated together (continuous batching), more wait in \
arrival order; sampling defaults are OpenAI's (temperature 1, \
top_p 1), with top_k, min_p, repetition_penalty and ignore_eos as extensions.

Example:
  bitnet serve --port 8080 &
  curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \\
    -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 32}'")]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The model's id in /v1/models and requests (default: the model's file or directory name).
    #[arg(long, value_name = "ID")]
    name: Option<String>,
    /// Requests generated together (continuous batching; each has a KV cache of --ctx tokens).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Most requests waiting for a free slot; more are answered 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Prompt tokens run per step while other requests generate: a long prompt slows them
    /// down instead of pausing them (0: each prompt whole, pausing them).
    #[arg(long, value_name = "TOKENS", default_value_t = bitnet_server::DEFAULT_PREFILL_CHUNK)]
    prefill_chunk: usize,
}

pub fn run(a: ServeArgs) -> Result<()> {
    if a.parallel == 0 {
        anyhow::bail!("--parallel must be at least 1");
    }
    let addr = if a.host.contains(':') {
        format!("[{}]:{}", a.host, a.port)
    } else {
        format!("{}:{}", a.host, a.port)
    };
    // Before the model loads: a busy port should not cost the user a load.
    let listener =
        std::net::TcpListener::bind(&addr).with_context(|| format!("cannot listen on {addr}"))?;
    let name = a.name.clone().unwrap_or_else(|| default_name(&a.model));
    let engine = a.model.load(LmHeadMode::I8)?;
    let opts = ServerOptions {
        model_name: name,
        parallel: a.parallel,
        queue: a.queue,
        log: true,
        prefill_chunk: a.prefill_chunk,
    };
    bitnet_server::run(engine, &opts, listener).context("serving")
}

/// The last component of the model's path (without `.gguf`), `synthetic-NAME`, or `default`.
fn default_name(m: &ModelArgs) -> String {
    match (&m.model, &m.synthetic) {
        (Some(p), _) => {
            let p = p.canonicalize().unwrap_or_else(|_| p.clone());
            let stem = if p.is_dir() { p.file_name() } else { p.file_stem() };
            stem.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
        }
        (None, Some(s)) => format!("synthetic-{s}"),
        (None, None) => "default".into(),
    }
}
