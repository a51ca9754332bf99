//! The HTTP routes: generation (JSON or server-sent events), models, health and metrics.

use crate::api::{self, ChatRequest, Common, CompletionRequest, UNTIL_CONTEXT_END};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::worker::{Event, Job, Prompt, SubmitError, Worker};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bitnet_inference::{Output, StopReason};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio_stream::wrappers::ReceiverStream;

/// What every handler shares.
pub(crate) struct AppState {
    pub worker: Worker,
    pub metrics: Arc<Metrics>,
    /// The model's id in requests and in `/v1/models`.
    pub model: String,
    /// Unix seconds when the server started (the model's `created`).
    pub started: u64,
    pub next_id: AtomicU64,
}

/// The server's routes.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.worker.alive() {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        let body = json!({ "status": "error", "message": "the engine has stopped" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

fn model_card(s: &AppState) -> Value {
    json!({ "id": s.model, "object": "model", "created": s.started, "owned_by": "bitnet-rust" })
}

async fn models(State(s): State<Arc<AppState>>) -> Response {
    Json(json!({ "object": "list", "data": [model_card(&s)] })).into_response()
}

async fn model(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == s.model {
        Json(model_card(&s)).into_response()
    } else {
        fail(&s, ApiError::model_not_found(&id, &s.model))
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn not_found(State(s): State<Arc<AppState>>) -> Response {
    let e = ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such route; see /v1/completions, /v1/chat/completions, /v1/models, \
                  /health, /metrics"
            .into(),
        kind: "invalid_request_error",
        param: None,
        code: None,
    };
    fail(&s, e)
}

/// Counts the error and answers it.
fn fail(s: &AppState, e: ApiError) -> Response {
    s.metrics.errors.fetch_add(1, Relaxed);
    e.into_response()
}

/// Which endpoint a generation answers.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    s.metrics.completions.fetch_add(1, Relaxed);
    let prepared = api::parse::<CompletionRequest>(&body).and_then(|r| {
        r.common.check(&s.model)?;
        let cfg = r.common.config(16, true)?;
        Ok((r.prompt()?, cfg, r.common))
    });
    match prepared {
        Ok((prompt, cfg, common)) => generate(s, Kind::Completion, prompt, cfg, common).await,
        Err(e) => fail(&s, e),
    }
}

async fn chat_completions(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    s.metrics.chat_completions.fetch_add(1, Relaxed);
    let prepared = api::parse::<ChatRequest>(&body).and_then(|r| {
        r.common.check(&s.model)?;
        // The chat template writes the beginning-of-text token itself.
        let cfg = r.common.config(UNTIL_CONTEXT_END, false)?;
        Ok((r.messages()?, cfg, r.common))
    });
    match prepared {
        Ok((prompt, cfg, common)) => generate(s, Kind::Chat, prompt, cfg, common).await,
        Err(e) => fail(&s, e),
    }
}

/// Queues the generation and answers with one JSON body or, with `stream`, server-sent events.
async fn generate(
    s: Arc<AppState>,
    kind: Kind,
    prompt: Prompt,
    cfg: bitnet_inference::GenerationConfig,
    common: Common,
) -> Response {
    let (tx, mut rx) = mpsc::unbounded_channel();
    match s.worker.submit(Job { prompt, cfg, events: tx }) {
        Ok(()) => {}
        Err(SubmitError::Full(n)) => {
            let msg = format!("the server is busy ({n} requests are waiting); try again later");
            return fail(&s, ApiError::unavailable(msg));
        }
        Err(SubmitError::Gone) => {
            return fail(&s, ApiError::unavailable("the engine has stopped; restart the server"))
        }
    }
    let id = format!(
        "{}-{:x}{:04x}",
        if kind == Kind::Chat { "chatcmpl" } else { "cmpl" },
        s.started,
        s.next_id.fetch_add(1, Relaxed)
    );
    let head = Head { id, created: unix_now(), model: s.model.clone(), kind };
    // The first event decides the status: an error before any token is an HTTP error.
    let first = match rx.recv().await {
        Some(Event::Failed(e)) => return fail(&s, ApiError::from_engine(e)),
        Some(ev) => ev,
        None => return fail(&s, engine_stopped()),
    };
    if common.stream {
        stream(s, head, first, rx, common.include_usage())
    } else {
        let mut ev = Some(first);
        loop {
            match ev {
                Some(Event::Text(_)) => {}
                Some(Event::Done(out)) => return Json(head.full(&out)).into_response(),
                Some(Event::Failed(e)) => return fail(&s, ApiError::from_engine(e)),
                None => return fail(&s, engine_stopped()),
            }
            ev = rx.recv().await;
        }
    }
}

/// The engine's channel closed before the generation ended (its thread stopped).
fn engine_stopped() -> ApiError {
    ApiError::unavailable("the engine stopped during the request")
}

/// The fields every response object of one request repeats.
struct Head {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        StopReason::StopToken | StopReason::StopString | StopReason::Cancelled => "stop",
    }
}

fn usage(out: &Output) -> Value {
    let (prompt, completion) = (out.prompt_ids.len(), out.generated_ids.len());
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

impl Head {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    /// A response object around `choices`.
    fn wrap(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id, "object": self.object(chunk), "created": self.created,
            "model": self.model, "choices": choices,
        })
    }

    /// The whole response of a finished generation.
    fn full(&self, out: &Output) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({ "index": 0, "text": out.text, "logprobs": null,
                "finish_reason": finish_reason(out.stop_reason) }),
            Kind::Chat => json!({ "index": 0,
                "message": { "role": "assistant", "content": out.text },
                "logprobs": null, "finish_reason": finish_reason(out.stop_reason) }),
        };
        let mut v = self.wrap(false, json!([choice]));
        v["usage"] = usage(out);
        v
    }

    /// One streamed chunk: `text` as the next piece, or (with `finish`) the last chunk.
    fn chunk(&self, text: Option<&str>, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({ "index": 0, "text": text.unwrap_or(""), "logprobs": null,
                "finish_reason": finish }),
            Kind::Chat => {
                let delta = match text {
                    Some(t) => json!({ "content": t }),
                    None => json!({}),
                };
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish })
            }
        };
        self.wrap(true, json!([choice]))
    }
}

fn data(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

/// Server-sent events: chunks as tokens arrive, the last chunk with its finish reason, usage
/// (if asked), then `[DONE]`. A client that goes away stops the generation: the forwarding
/// task's send fails, it drops the engine's channel, and the engine's next send fails.
fn stream(
    s: Arc<AppState>,
    head: Head,
    first: Event,
    mut rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Response {
    let (out, out_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(32);
    tokio::spawn(async move {
        if head.kind == Kind::Chat {
            let mut c = head.chunk(None, None);
            c["choices"][0]["delta"] = json!({ "role": "assistant", "content": "" });
            if out.send(data(&c)).await.is_err() {
                return;
            }
        }
        let mut next = Some(first);
        while let Some(ev) = next {
            match ev {
                Event::Text(t) => {
                    if out.send(data(&head.chunk(Some(&t), None))).await.is_err() {
                        return;
                    }
                }
                Event::Done(done) => {
                    let last = head.chunk(None, Some(finish_reason(done.stop_reason)));
                    let _ = out.send(data(&last)).await;
                    if include_usage {
                        let mut u = head.wrap(true, json!([]));
                        u["usage"] = usage(&done);
                        let _ = out.send(data(&u)).await;
                    }
                    let _ = out.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
                Event::Failed(e) => {
                    s.metrics.errors.fetch_add(1, Relaxed);
                    let _ = out.send(data(&ApiError::from_engine(e).body())).await;
                    return;
                }
            }
            next = rx.recv().await;
        }
        // The engine's channel closed without an end: the engine stopped.
        s.metrics.errors.fetch_add(1, Relaxed);
        let _ = out.send(data(&engine_stopped().body())).await;
    });
    Sse::new(ReceiverStream::new(out_rx)).keep_alive(KeepAlive::default()).into_response()
}
