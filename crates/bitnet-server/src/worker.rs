//! The engine's thread: one generation at a time, in arrival order, from a bounded queue.
//!
//! The [`Engine`] is not shared between requests; a request sends a [`Job`] and gets its
//! tokens back on a channel. When the receiving side goes away (the client disconnected), the
//! next token's send fails and the generation stops there.

use crate::metrics::Metrics;
use bitnet_core::Error;
use bitnet_inference::chat::ChatMessage;
use bitnet_inference::{Engine, GenerationConfig, StopReason};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// What to generate from.
#[derive(Debug, Clone)]
pub(crate) enum Prompt {
    /// Text, encoded with the model's tokenizer (with BOS when the config says so).
    Text(String),
    /// Token ids as given.
    Ids(Vec<u32>),
    /// A conversation, formatted with the model's chat template.
    Chat(Vec<ChatMessage>),
}

/// One generation request.
pub(crate) struct Job {
    pub prompt: Prompt,
    pub cfg: GenerationConfig,
    pub events: UnboundedSender<Event>,
}

/// How a generation ended.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub stop: StopReason,
    pub text: String,
}

/// What a job reports, in order: text pieces, then `Done` or `Failed`.
#[derive(Debug)]
pub(crate) enum Event {
    Text(String),
    Done(Summary),
    Failed(Error),
}

/// Why a job was not queued.
#[derive(Debug)]
pub(crate) enum SubmitError {
    /// The queue holds its limit of waiting jobs.
    Full(usize),
    /// The engine's thread has ended (it panicked).
    Gone,
}

/// The handle requests use to queue jobs.
pub(crate) struct Worker {
    tx: SyncSender<Job>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// Starts the engine's thread with room for `limit` waiting jobs.
    pub fn start(
        engine: Engine,
        limit: usize,
        metrics: Arc<Metrics>,
        log: bool,
    ) -> std::io::Result<Worker> {
        let (tx, rx) = sync_channel::<Job>(limit);
        let m = metrics.clone();
        std::thread::Builder::new().name("bitnet-engine".into()).spawn(move || {
            let mut engine = engine;
            for job in rx {
                m.queued.fetch_sub(1, Relaxed);
                m.busy.store(1, Relaxed);
                let events = job.events.clone();
                let r = catch_unwind(AssertUnwindSafe(|| run(&mut engine, job, &m, log)));
                m.busy.store(0, Relaxed);
                if r.is_err() {
                    m.engine_failed.store(1, Relaxed);
                    let _ = events.send(Event::Failed(Error::Device(
                        "the engine panicked; the server must be restarted".into(),
                    )));
                    return;
                }
            }
        })?;
        Ok(Worker { tx, limit, metrics })
    }

    /// Queues a job without waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.metrics.queued.fetch_add(1, Relaxed);
        let r = self.tx.try_send(job);
        if r.is_err() {
            self.metrics.queued.fetch_sub(1, Relaxed);
        }
        match r {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SubmitError::Full(self.limit)),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Gone),
        }
    }

    /// Whether the engine's thread still takes jobs.
    pub fn alive(&self) -> bool {
        // The thread ends only on a panic, which it records in `engine_failed`.
        self.metrics.engine_failed.load(Relaxed) == 0
    }
}

fn run(engine: &mut Engine, job: Job, m: &Metrics, log: bool) {
    let Job { prompt, cfg, events } = job;
    let ids = match &prompt {
        Prompt::Ids(ids) => Ok(ids.clone()),
        Prompt::Text(t) => engine.encode(t, cfg.add_bos),
        Prompt::Chat(msgs) => engine.chat_prompt(msgs).and_then(|p| engine.encode(&p, false)),
    };
    let result = ids.and_then(|ids| {
        engine.generate_ids_stream(&ids, &cfg, |t| {
            t.text.is_empty() || events.send(Event::Text(t.text.to_string())).is_ok()
        })
    });
    match result {
        Ok(out) => {
            let t = &out.timings;
            m.prompt_tokens.fetch_add(out.prompt_ids.len() as u64, Relaxed);
            m.completion_tokens.fetch_add(out.generated_ids.len() as u64, Relaxed);
            m.add_seconds(t.prompt_s, t.generate_s);
            if out.stop_reason == StopReason::Cancelled {
                m.cancelled.fetch_add(1, Relaxed);
            }
            if log {
                eprintln!(
                    "generation: {} prompt tokens ({} run), {} generated at {:.1} tokens/s, stop {:?}",
                    out.prompt_ids.len(),
                    t.prompt_tokens,
                    t.generated_tokens,
                    t.generate_tps(),
                    out.stop_reason
                );
            }
            let _ = events.send(Event::Done(Summary {
                prompt_tokens: out.prompt_ids.len(),
                completion_tokens: out.generated_ids.len(),
                stop: out.stop_reason,
                text: out.text,
            }));
        }
        Err(e) => {
            if log {
                eprintln!("generation failed: {e}");
            }
            let _ = events.send(Event::Failed(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_inference::sampling::SamplingParams;

    /// A client that has gone away (its receiver dropped) stops the generation at the first
    /// token with text, and the stop is counted as a cancellation.
    #[test]
    fn a_dropped_receiver_cancels_the_generation() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
        let mut engine = Engine::builder().model(dir).threads(1).build().unwrap();
        let cfg = GenerationConfig {
            max_tokens: 100,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            ..GenerationConfig::default()
        };
        let m = Metrics::default();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        drop(rx);
        run(
            &mut engine,
            Job { prompt: Prompt::Text("ROMEO:".into()), cfg: cfg.clone(), events: tx },
            &m,
            false,
        );
        assert_eq!(m.cancelled.load(Relaxed), 1);
        let n = m.completion_tokens.load(Relaxed);
        assert!((1..10).contains(&n), "{n} tokens");

        // With a receiver, the same job runs to its limit.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        run(&mut engine, Job { prompt: Prompt::Text("ROMEO:".into()), cfg, events: tx }, &m, false);
        assert_eq!(m.cancelled.load(Relaxed), 1);
        let mut last = None;
        while let Ok(ev) = rx.try_recv() {
            last = Some(ev);
        }
        match last {
            Some(Event::Done(s)) => assert_eq!(s.completion_tokens, 100),
            other => panic!("{other:?}"),
        }
    }
}
