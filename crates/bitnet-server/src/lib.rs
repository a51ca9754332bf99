//! `bitnet-server`: an OpenAI-compatible HTTP server for one loaded BitNet model.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with `"stream": true` for
//! server-sent events), `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text).
//! Up to [`ServerOptions::parallel`] requests are generated together by continuous batching
//! (`bitnet_inference::scheduler`: one KV-cache slot each, one forward call per step for all of
//! them); more wait in a bounded queue, in arrival order (a full queue answers 503). A slot
//! keeps its last request's tokens, so a chat that resends its history reuses the shared
//! prefix. The engine knows nothing of HTTP: this crate turns its errors into status codes and
//! OpenAI error bodies.
//!
//! ```no_run
//! use bitnet_inference::Engine;
//! use bitnet_server::{run, ServerOptions};
//! let listener = std::net::TcpListener::bind("127.0.0.1:8080")?;
//! let engine = Engine::load("models/default")?;
//! run(engine, &ServerOptions::new("default"), listener)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

mod api;
mod error;
mod metrics;
mod routes;
mod worker;

pub use bitnet_inference::scheduler::DEFAULT_PREFILL_CHUNK;
use bitnet_inference::Engine;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use axum::Router;

/// How the server presents and queues requests.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The model's id: what `/v1/models` lists and what requests may name in `model`.
    pub model_name: String,
    /// Requests generated together (continuous batching: one KV-cache slot each).
    pub parallel: usize,
    /// Most requests waiting for a slot; more are answered 503.
    pub queue: usize,
    /// Print one line per generation (tokens, speed, stop reason) to stderr.
    pub log: bool,
    /// Prompt tokens run per decode step while other requests generate (chunked prefill; 0
    /// runs a prompt whole, pausing the others).
    pub prefill_chunk: usize,
}

impl ServerOptions {
    /// Options with the given model id, 4 parallel sequences, a queue of 64, prompts in chunks
    /// of [`DEFAULT_PREFILL_CHUNK`] tokens and no log.
    pub fn new(model_name: impl Into<String>) -> Self {
        ServerOptions {
            model_name: model_name.into(),
            parallel: 4,
            queue: 64,
            log: false,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }
}

/// The routes, with the engine moved to a thread of its own (its sequence slots allocated
/// now: an error if they do not fit). Serve them with [`serve`] (or any
/// axum/tower stack; tests call them directly).
pub fn app(engine: Engine, opts: &ServerOptions) -> std::io::Result<Router> {
    let metrics = Arc::new(metrics::Metrics::default());
    let worker = worker::Worker::start(engine, opts, metrics.clone())?;
    let state = routes::AppState {
        worker,
        metrics,
        model: opts.model_name.clone(),
        started: routes::unix_now(),
        next_id: AtomicU64::new(0),
    };
    Ok(routes::router(Arc::new(state)))
}

/// Serves `app` on `listener` until `shutdown` completes; requests in flight finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Serves `engine` on `listener` (bound beforehand, so that a busy port fails before a model
/// is loaded) until Ctrl-C; blocks. Prints the address it listens on to stderr.
pub fn run(
    engine: Engine,
    opts: &ServerOptions,
    listener: std::net::TcpListener,
) -> std::io::Result<()> {
    let describe = engine.describe();
    let app = app(engine, opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let local = listener.local_addr()?;
        eprintln!(
            "serving `{}` ({describe}) on http://{local}/v1 (Ctrl-C to stop)",
            opts.model_name
        );
        serve(listener, app, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })
}
