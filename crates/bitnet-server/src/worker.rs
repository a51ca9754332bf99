//! The engine's thread: a continuous-batching [`Scheduler`] of a few sequence slots, fed from a
//! bounded queue in arrival order.
//!
//! The [`Engine`] is not shared between requests; a request sends a [`Job`] and gets its
//! tokens back on a channel. Waiting jobs are admitted whenever a slot is free, and every step
//! advances all running sequences by one token in one forward call. When a receiving side goes
//! away (the client disconnected), that sequence's next send fails and it stops there.

use crate::metrics::Metrics;
use crate::ServerOptions;
use bitnet_core::Error;
use bitnet_inference::chat::ChatMessage;
use bitnet_inference::scheduler::{Scheduler, SeqEvent, Sink};
use bitnet_inference::{Engine, GenerationConfig, Output, StopReason};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
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

/// What a job reports, in order: text pieces, then `Done` or `Failed`.
#[derive(Debug)]
pub(crate) enum Event {
    Text(String),
    Done(Output),
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
    /// Starts the engine's thread with `opts.parallel` sequences decoded together and room for
    /// `opts.queue` waiting jobs. Fails when the slots' KV caches cannot be allocated.
    pub fn start(
        engine: Engine,
        opts: &ServerOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Worker> {
        let (slots, limit, log) = (opts.parallel.max(1), opts.queue.max(1), opts.log);
        let prefill_chunk = opts.prefill_chunk;
        let (tx, rx) = sync_channel::<Job>(limit);
        let (ready_tx, ready_rx) = sync_channel::<Result<(), String>>(1);
        let m = metrics.clone();
        std::thread::Builder::new().name("bitnet-engine".into()).spawn(move || {
            let mut engine = engine;
            let mut sched = match engine.scheduler(slots) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            sched.set_prefill_chunk(prefill_chunk);
            let _ = ready_tx.send(Ok(()));
            if catch_unwind(AssertUnwindSafe(|| serve_jobs(&mut sched, &rx, &m, log))).is_err() {
                // The running sequences' channels close with the scheduler: their requests
                // answer that the engine stopped.
                m.engine_failed.store(1, Relaxed);
            }
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Worker { tx, limit, metrics }),
            Ok(Err(e)) => {
                Err(std::io::Error::other(format!("opening {slots} sequence slots: {e}")))
            }
            Err(_) => Err(std::io::Error::other("the engine thread ended while starting")),
        }
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

/// The engine thread's loop: admit waiting jobs while slots are free (blocking when nothing
/// runs), then advance every running sequence one token. Returns when the queue is closed and
/// nothing runs.
fn serve_jobs(sched: &mut Scheduler<'_>, rx: &Receiver<Job>, m: &Arc<Metrics>, log: bool) {
    loop {
        while sched.free_slots() > 0 {
            let job = if sched.active() == 0 {
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            };
            m.queued.fetch_sub(1, Relaxed);
            admit(sched, job, m, log);
        }
        m.active.store(sched.active() as u64, Relaxed);
        if sched.active() > 0 {
            // A failed step has told each running sequence's sink; the slots are free again.
            if let Err(e) = sched.step() {
                if log {
                    eprintln!("decode step failed: {e}");
                }
            }
        }
        m.active.store(sched.active() as u64, Relaxed);
    }
}

/// Tokenizes a job's prompt and admits it; a failure goes to the job's channel.
fn admit(sched: &mut Scheduler<'_>, job: Job, m: &Arc<Metrics>, log: bool) {
    let Job { prompt, cfg, events } = job;
    let ids = match &prompt {
        Prompt::Ids(ids) => Ok(ids.clone()),
        Prompt::Text(t) => sched.encode(t, cfg.add_bos),
        Prompt::Chat(msgs) => sched.chat_prompt(msgs).and_then(|p| sched.encode(&p, false)),
    };
    let sink = sink(events.clone(), m.clone(), log);
    if let Err(e) = ids.and_then(|ids| sched.admit(&ids, &cfg, sink)) {
        if log {
            eprintln!("request rejected: {e}");
        }
        let _ = events.send(Event::Failed(e));
    }
}

/// Forwards a sequence's events to its request, counting tokens and time.
fn sink(events: UnboundedSender<Event>, m: Arc<Metrics>, log: bool) -> Sink {
    Box::new(move |ev| match ev {
        SeqEvent::Token(t) => {
            t.text.is_empty() || events.send(Event::Text(t.text.to_string())).is_ok()
        }
        SeqEvent::Done(out) => {
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
            let _ = events.send(Event::Done(out));
            true
        }
        SeqEvent::Failed(why) => {
            let _ = events.send(Event::Failed(Error::Device(why.to_string())));
            true
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_inference::sampling::SamplingParams;

    /// A client that has gone away (its receiver dropped) stops the generation at the first
    /// token with text, and the stop is counted as a cancellation; the other sequence of the
    /// same steps runs to its limit.
    #[test]
    fn a_dropped_receiver_cancels_its_generation_only() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
        let mut engine = Engine::builder().model(dir).threads(1).build().unwrap();
        let mut sched = engine.scheduler(2).unwrap();
        let cfg = GenerationConfig {
            max_tokens: 100,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            ..GenerationConfig::default()
        };
        let m = Arc::new(Metrics::default());
        let (gone, rx) = tokio::sync::mpsc::unbounded_channel();
        drop(rx);
        let (kept, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for events in [gone, kept] {
            let job = Job { prompt: Prompt::Text("ROMEO:".into()), cfg: cfg.clone(), events };
            admit(&mut sched, job, &m, false);
        }
        while sched.active() > 0 {
            sched.step().unwrap();
        }
        assert_eq!(m.cancelled.load(Relaxed), 1);
        let n = m.completion_tokens.load(Relaxed);
        assert!((101..110).contains(&n), "{n} tokens");
        let mut last = None;
        while let Ok(ev) = rx.try_recv() {
            last = Some(ev);
        }
        match last {
            Some(Event::Done(out)) => assert_eq!(out.generated_ids.len(), 100),
            other => panic!("{other:?}"),
        }
    }
}
