//! Continuous batching: generations that start and end at any time, each in a KV-cache slot of
//! its own, advanced together one token per step, so every decode step is one forward call with
//! one row per running sequence.
//!
//! [`Scheduler::admit`] takes a new sequence; [`Scheduler::step`] emits each running sequence's
//! next token through its sink, ends the ones that stop, runs the others' tokens in one forward
//! call, and then runs prompts: while other sequences decode, at most
//! [`Scheduler::set_prefill_chunk`] prompt tokens a step (chunked prefill, so a long prompt
//! slows the running sequences down instead of stopping them), else the whole of the first
//! waiting prompt. A sequence's first token comes out in the step after its prompt ends. Each
//! sequence ends exactly as [`Engine::generate_ids_stream`] would end it with the same config
//! (stop tokens and strings, the token budget, the context, the sink returning false), and a
//! seed draws the same numbers, so the tokens are the engine's up to the floating-point
//! rounding of batched rows. A slot keeps its last sequence's tokens: a new prompt goes to the
//! free slot that shares the longest prefix with it and reuses those positions.
//!
//! ```no_run
//! use bitnet_inference::scheduler::SeqEvent;
//! use bitnet_inference::{Engine, GenerationConfig};
//! let mut engine = Engine::load("models/default")?;
//! let mut sched = engine.scheduler(4)?;
//! for prompt in ["ROMEO:", "JULIET:"] {
//!     let ids = sched.encode(prompt, true)?;
//!     sched.admit(&ids, &GenerationConfig::default(), Box::new(|ev| {
//!         if let SeqEvent::Done(out) = ev {
//!             println!("{}", out.text);
//!         }
//!         true
//!     }))?;
//! }
//! while sched.active() > 0 {
//!     sched.step()?;
//! }
//! # Ok::<(), bitnet_core::Error>(())
//! ```

use crate::backend::RowPos;
use crate::chat::{ChatMessage, ChatTemplate};
use crate::engine::{check_ids, common_prefix, Emitter};
use crate::runner::Runner;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;
use crate::{Engine, GenerationConfig, Output, StopReason, Timings, TokenEvent};
use bitnet_core::{Error, Result};
use std::time::Instant;

/// What a sequence's sink receives: each token with the text it completes, then the end.
pub enum SeqEvent<'a> {
    /// A generated token; the sink's `false` stops the sequence ([`StopReason::Cancelled`]).
    Token(&'a TokenEvent<'a>),
    /// The sequence ended; its output as [`Engine::generate_ids_stream`] returns it.
    Done(Output),
    /// The sequence was dropped because a step failed (the message says why).
    Failed(&'a str),
}

/// Where a sequence's events go.
pub type Sink = Box<dyn FnMut(SeqEvent<'_>) -> bool + Send>;

/// Sequences decoded together; see the module documentation.
pub struct Scheduler<'e> {
    runner: &'e mut dyn Runner,
    tokenizer: Option<&'e Tokenizer>,
    chat: Option<&'e ChatTemplate>,
    eos: &'e [u32],
    rows_per_call: usize,
    prefill_chunk: usize,
    slots: Vec<Slot>,
    logits: Vec<f32>,
    admitted: u64,
}

/// Prompt tokens a step runs while other sequences decode, by default.
pub const DEFAULT_PREFILL_CHUNK: usize = 64;

/// A KV-cache slot: the tokens whose keys and values it holds, and its sequence if running.
#[derive(Default)]
struct Slot {
    cached: Vec<u32>,
    seq: Option<Seq>,
}

struct Seq {
    /// Prompt and generated ids (for the repetition penalty); the prompt is the first
    /// `prompt_len`.
    context: Vec<u32>,
    prompt_len: usize,
    sampler: Sampler,
    em: Emitter,
    /// The sampled token not yet emitted.
    next: u32,
    /// The uniform already drawn for the next pick (by a step queued ahead).
    ahead: Option<f64>,
    /// Whether the prompt is still being run (the slot's `cached` holds the part that ran).
    prefilling: bool,
    /// Admission order (prompts run first come, first served).
    order: u64,
    timings: Timings,
    started: Instant,
    sink: Sink,
}

impl Engine {
    /// A [`Scheduler`] of `slots` sequences, each with the engine's context length (a KV cache
    /// of its own, allocated now; the engine's single-sequence cache is left as it is).
    pub fn scheduler(&mut self, slots: usize) -> Result<Scheduler<'_>> {
        if slots == 0 {
            return Err(Error::invalid("a scheduler needs at least one slot"));
        }
        let rows_per_call = self.runner.open_slots(slots)?;
        Ok(Scheduler {
            runner: &mut *self.runner,
            tokenizer: self.tokenizer.as_ref(),
            chat: self.chat.as_ref(),
            eos: &self.eos,
            rows_per_call,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            slots: (0..slots).map(|_| Slot::default()).collect(),
            logits: Vec::new(),
            admitted: 0,
        })
    }
}

impl Scheduler<'_> {
    /// Encodes text with the model's tokenizer.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        self.tokenizer
            .ok_or_else(|| Error::invalid("this model has no tokenizer (tokenizer.json)"))?
            .encode(text, add_bos)
    }
    /// Formats a conversation with the model's chat template (see [`Engine::chat_prompt`]).
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String> {
        match self.chat {
            Some(t) => t.render(messages, true),
            None => ChatTemplate::bitnet().render(messages, true),
        }
    }
    /// Positions per sequence.
    pub fn context_len(&self) -> usize {
        self.runner.context_len()
    }
    /// Prompt tokens a step runs while other sequences decode ([`DEFAULT_PREFILL_CHUNK`]
    /// unless set); 0 runs each prompt whole in the step after its admission.
    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.prefill_chunk = tokens;
    }
    /// Admitted sequences, running or with their prompt still to run.
    pub fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.seq.is_some()).count()
    }
    /// Slots free for [`Scheduler::admit`].
    pub fn free_slots(&self) -> usize {
        self.slots.len() - self.active()
    }

    /// Takes the prompt `ids` into a free slot; the following [`Scheduler::step`]s run it and
    /// pick its first token, and `sink` receives the sequence's events. Errors (nothing
    /// admitted, the sink not called) on bad ids, a prompt longer than the context, bad sampling
    /// parameters, or no free slot.
    pub fn admit(&mut self, ids: &[u32], cfg: &GenerationConfig, sink: Sink) -> Result<()> {
        let sampler = Sampler::new(cfg.sampling.clone())?;
        self.check_prompt(ids)?;
        let slot = self.pick_slot(ids)?;
        let reuse = common_prefix(&self.slots[slot].cached, ids).min(ids.len() - 1);
        self.slots[slot].cached.truncate(reuse);
        self.admitted += 1;
        self.slots[slot].seq = Some(Seq {
            context: ids.to_vec(),
            prompt_len: ids.len(),
            sampler,
            em: Emitter::new(cfg, self.eos),
            next: 0,
            ahead: None,
            prefilling: true,
            order: self.admitted,
            timings: Timings { prompt_tokens: ids.len() - reuse, ..Timings::default() },
            started: Instant::now(),
            sink,
        });
        Ok(())
    }

    /// Runs prompts after a step's decode, first come first served: up to `prefill_chunk`
    /// tokens while sequences decode (`decoding`), else the whole of the first waiting prompt
    /// and then up to `prefill_chunk` tokens of the others. A prompt that ends gets its first
    /// token picked. A failed forward call drops that sequence only (its sink is told).
    fn prefill(&mut self, mut decoding: bool) -> Result<()> {
        let chunk = match self.prefill_chunk {
            0 => usize::MAX,
            n => n,
        };
        let mut budget = if decoding { chunk } else { usize::MAX };
        while budget > 0 {
            let waiting =
                self.slots.iter().enumerate().filter_map(|(i, s)| {
                    s.seq.as_ref().filter(|q| q.prefilling).map(|q| (q.order, i))
                });
            let Some((_, slot)) = waiting.min() else { break };
            let Slot { cached, seq } = &mut self.slots[slot];
            let Some(seq) = seq.as_mut() else { break };
            let (start, len) = (cached.len(), seq.prompt_len);
            let end = start.saturating_add(budget).min(len);
            let mut run = || -> Result<()> {
                for (c, part) in seq.context[start..end].chunks(self.rows_per_call).enumerate() {
                    let base = start + c * self.rows_per_call;
                    let rows: Vec<RowPos> =
                        (0..part.len()).map(|i| RowPos { slot, pos: base + i }).collect();
                    self.runner.forward_slots(part, &rows, false)?;
                    cached.extend_from_slice(part);
                }
                if end == len && seq.em.budget_left() > 0 {
                    pick_rows(&mut *self.runner, &mut self.logits, &mut [&mut *seq])?;
                }
                Ok(())
            };
            if let Err(e) = run() {
                cached.clear();
                if let Some(mut seq) = self.slots[slot].seq.take() {
                    (seq.sink)(SeqEvent::Failed(&e.to_string()));
                }
                continue;
            }
            budget -= end - start;
            if end < len {
                break;
            }
            seq.prefilling = false;
            seq.timings.prompt_s = seq.started.elapsed().as_secs_f64();
            seq.started = Instant::now();
            if !decoding {
                (decoding, budget) = (true, chunk);
            }
        }
        Ok(())
    }

    fn check_prompt(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        check_ids(ids, self.runner.dims().vocab, self.context_len())
    }

    /// The free slot whose cached tokens share the longest prefix with `ids`.
    fn pick_slot(&self, ids: &[u32]) -> Result<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.seq.is_none())
            .max_by_key(|(i, s)| (common_prefix(&s.cached, ids), usize::MAX - i))
            .map(|(i, _)| i)
            .ok_or_else(|| Error::invalid("no free slot: every sequence slot is running"))
    }

    /// One step: every running sequence emits its pending token (ending if it stops), and the
    /// rest run that token in one forward call and pick their next; then prompts run (see the
    /// module documentation). On an error of the decode call the running sequences are dropped
    /// with [`SeqEvent::Failed`] and the error is returned.
    pub fn step(&mut self) -> Result<()> {
        let r = self.emit_all().and_then(|rows| match rows.is_empty() {
            true => self.prefill(false),
            false => self.decode(&rows).and_then(|()| self.prefill(true)),
        });
        if let Err(e) = &r {
            self.fail_all(&e.to_string());
        }
        r
    }

    /// Emits every running sequence's pending token and ends those that stop; returns the rows
    /// of those that go on (in slot order).
    fn emit_all(&mut self) -> Result<Vec<RowPos>> {
        let (tok, ctx) = (self.tokenizer, self.context_len());
        let mut rows = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot.seq.as_mut().filter(|s| !s.prefilling) else { continue };
            let end = emit_next(seq, tok)?;
            if end.is_none() && slot.cached.len() < ctx {
                rows.push(RowPos { slot: i, pos: slot.cached.len() });
            } else if let Some(seq) = slot.seq.take() {
                finish(seq, tok, end.unwrap_or(StopReason::ContextFull))?;
            }
        }
        Ok(rows)
    }

    /// Runs each running sequence's pending token (one row each, `rows` in slot order) in one
    /// forward call and picks every sequence's next token. Where the picks are made on the
    /// backend and it can, the step after this one is queued before the ids come back, when
    /// every sequence will run it (a token left in its budget after the one picked now, and
    /// room in the context) and no prompt waits to run; the next call finds it queued unless
    /// the sequences changed.
    fn decode(&mut self, rows: &[RowPos]) -> Result<()> {
        let ctx = self.context_len();
        let waiting = self.slots.iter().any(|s| s.seq.as_ref().is_some_and(|q| q.prefilling));
        let mut seqs: Vec<&mut Seq> = self
            .slots
            .iter_mut()
            .filter_map(|s| s.seq.as_mut().filter(|q| !q.prefilling))
            .collect();
        let ids: Vec<u32> = seqs.iter().map(|s| s.next).collect();
        for seq in seqs.iter_mut() {
            seq.context.push(seq.next);
        }
        match device_params(&seqs) {
            Some(p) => {
                let us: Vec<f64> = seqs.iter_mut().map(|s| s.pending_uniform()).collect();
                let more = self.runner.samples_ahead()
                    && !waiting
                    && seqs
                        .iter()
                        .zip(rows)
                        .all(|(s, r)| s.em.budget_left() >= 2 && r.pos + 1 < ctx);
                let ahead: Option<Vec<f64>> = more
                    .then(|| seqs.iter_mut().map(|s| *s.ahead.insert(s.sampler.draw())).collect());
                let mut out = vec![0u32; seqs.len()];
                let a = ahead.as_deref();
                self.runner.forward_sample_slots((&ids, rows), &p, &us, a, &mut out)?;
                for (s, id) in seqs.iter_mut().zip(out) {
                    s.next = id;
                }
            }
            None => {
                self.runner.forward_slots(&ids, rows, true)?;
                pick_on_host(&mut *self.runner, &mut self.logits, &mut seqs)?;
            }
        }
        for (r, &id) in rows.iter().zip(&ids) {
            self.slots[r.slot].cached.push(id);
        }
        Ok(())
    }

    /// Drops every running sequence, telling its sink why.
    fn fail_all(&mut self, why: &str) {
        for slot in &mut self.slots {
            if let Some(mut seq) = slot.seq.take() {
                (seq.sink)(SeqEvent::Failed(why));
            }
            slot.cached.clear();
        }
    }
}

impl Seq {
    /// The uniform of the next pick: the one drawn ahead, else the next of the stream.
    fn pending_uniform(&mut self) -> f64 {
        self.ahead.take().unwrap_or_else(|| self.sampler.draw())
    }
}

/// The parameters the backend picks every sequence's token with: those of the sequences when
/// they all sample alike (up to the seed) with no repetition penalty, else none.
fn device_params(seqs: &[&mut Seq]) -> Option<SamplingParams> {
    let same = |p: &SamplingParams| SamplingParams { seed: 0, ..p.clone() };
    let first = same(seqs.first()?.sampler.params());
    let alike = seqs.iter().all(|s| same(s.sampler.params()) == first);
    (first.repetition_penalty == 1.0 && alike).then_some(first)
}

/// Each sequence's next token (`seq.next`) from the logits rows of the last forward call, row
/// `r` for `seqs[r]`: on the backend when [`device_params`] allows it (only ids come back),
/// else on the host from the downloaded rows. Either way each sampler draws one number per
/// pick (none when greedy) or uses the one it drew ahead, as the engine does.
fn pick_rows(runner: &mut dyn Runner, logits: &mut Vec<f32>, seqs: &mut [&mut Seq]) -> Result<()> {
    let Some(p) = device_params(seqs) else {
        return pick_on_host(runner, logits, seqs);
    };
    let uniforms: Vec<f64> = seqs.iter_mut().map(|s| s.pending_uniform()).collect();
    let mut out = vec![0u32; seqs.len()];
    runner.sample_slots(&p, &uniforms, &mut out)?;
    for (s, id) in seqs.iter_mut().zip(out) {
        s.next = id;
    }
    Ok(())
}

/// [`pick_rows`] on the host, from the downloaded logits rows.
fn pick_on_host(
    runner: &mut dyn Runner,
    logits: &mut Vec<f32>,
    seqs: &mut [&mut Seq],
) -> Result<()> {
    runner.slot_logits(logits)?;
    let vocab = runner.dims().vocab;
    for (r, s) in seqs.iter_mut().enumerate() {
        let row = &mut logits[r * vocab..(r + 1) * vocab];
        // A uniform drawn ahead was drawn for a pick with no repetition penalty.
        s.next = match s.ahead.take() {
            Some(u) => s.sampler.pick(row, u)?,
            None => s.sampler.sample(row, &s.context)?,
        };
    }
    Ok(())
}

/// Emits the sequence's pending token; `Some` when the sequence ends with it.
fn emit_next(seq: &mut Seq, tok: Option<&Tokenizer>) -> Result<Option<StopReason>> {
    if seq.em.budget_left() == 0 {
        return Ok(Some(StopReason::MaxTokens));
    }
    let sink = &mut seq.sink;
    seq.em.push(tok, seq.next, &mut |t| sink(SeqEvent::Token(t)))
}

/// Ends a sequence: its held-back text, then [`SeqEvent::Done`] (or [`SeqEvent::Failed`] when
/// the text cannot be decoded).
fn finish(seq: Seq, tok: Option<&Tokenizer>, reason: StopReason) -> Result<()> {
    let Seq { mut context, prompt_len, em, mut timings, started, mut sink, .. } = seq;
    let (text, generated) = match em.finish(tok, reason, &mut |t| sink(SeqEvent::Token(t))) {
        Ok(r) => r,
        Err(e) => {
            sink(SeqEvent::Failed(&e.to_string()));
            return Err(e);
        }
    };
    timings.generated_tokens = generated.len();
    timings.generate_s = started.elapsed().as_secs_f64();
    context.truncate(prompt_len);
    let out = Output {
        prompt_ids: context,
        generated_ids: generated,
        text,
        stop_reason: reason,
        timings,
    };
    sink(SeqEvent::Done(out));
    Ok(())
}
