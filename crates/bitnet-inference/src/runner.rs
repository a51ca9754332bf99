//! A model plus its state on one backend, behind an object-safe trait so the [`crate::Engine`]
//! can hold a CPU or a CUDA model alike.

use crate::backend::{Backend, RowPos};
use crate::models::{BitNetModel, Dims, LogitsFor, State};
use crate::sampling::SamplingParams;
use bitnet_core::{Error, Result};

/// One sequence's worth of model execution (KV-cache slot 0).
pub trait Runner: Send {
    /// Model dimensions.
    fn dims(&self) -> &Dims;
    /// Backend description.
    fn describe(&self) -> String;
    /// Positions the KV cache holds.
    fn context_len(&self) -> usize;
    /// Per-operation (name, seconds, calls) since the last call, when profiling is on.
    fn take_profile(&self) -> Vec<(&'static str, f64, u64)>;
    /// Runs `ids` at positions `start..start + ids.len()` (in chunks of the state's row limit)
    /// and writes logits of the last row, or of every row when `all` is set, into `out`
    /// (`rows x vocab`).
    fn forward(&mut self, ids: &[u32], start: usize, all: bool, out: &mut Vec<f32>) -> Result<()>;
    /// Runs `ids` like [`Runner::forward`] (last row only), then picks the next token from the
    /// last row's logits on the backend with the uniform `u` (see
    /// [`crate::backend::Backend::sample`]): only the id reaches the host. `p` must have no
    /// repetition penalty. With `ahead` (used where [`Runner::samples_ahead`]), the step after
    /// this one (the picked token at the next position, picked in turn with the uniform
    /// `ahead`) is queued on the backend before this id comes back; a later call for exactly
    /// that step (same token, position, parameters and uniform, nothing run in between) only
    /// waits for its id.
    fn forward_sample(
        &mut self,
        ids: &[u32],
        start: usize,
        p: &SamplingParams,
        u: f64,
        ahead: Option<f64>,
    ) -> Result<u32>;
    /// Whether [`Runner::forward_sample`] queues the next step when asked.
    fn samples_ahead(&self) -> bool;
    /// Decodes several sequences together in a fresh multi-slot state (see
    /// [`crate::Engine::decode_batch`]).
    fn decode_batch(
        &mut self,
        prompts: &[Vec<u32>],
        steps: usize,
        greedy: bool,
    ) -> Result<crate::batch::BatchDecode>;
    /// Allocates the state [`crate::scheduler::Scheduler`] runs in: `slots` KV-cache slots of
    /// [`Runner::context_len`] positions each (replacing an earlier one). Returns the most rows
    /// one [`Runner::forward_slots`] call takes.
    fn open_slots(&mut self, slots: usize) -> Result<usize>;
    /// One forward call in that state: `ids[r]` at `rows[r]`, logits of every row with `all`,
    /// else of the last row only.
    fn forward_slots(&mut self, ids: &[u32], rows: &[RowPos], all: bool) -> Result<()>;
    /// Downloads the logits of the last [`Runner::forward_slots`] call (`rows x vocab`).
    fn slot_logits(&mut self, out: &mut Vec<f32>) -> Result<()>;
    /// One id per logits row of the last [`Runner::forward_slots`] call, picked on the backend
    /// with `p` (no repetition penalty) and `uniforms[r]` (see
    /// [`crate::backend::Backend::sample`]).
    fn sample_slots(&mut self, p: &SamplingParams, uniforms: &[f64], out: &mut [u32])
        -> Result<()>;
    /// [`Runner::forward_slots`] of one row per sequence (`ids[r]` at `rows[r]`), then
    /// [`Runner::sample_slots`] into `out`. With `ahead` (one uniform per row; used where
    /// [`Runner::samples_ahead`]), the step after this one (each picked id at its row's next
    /// position, picked in turn with `ahead[r]`) is queued on the backend before these ids
    /// come back; a later call for exactly that step (same ids, rows, parameters and uniforms,
    /// nothing run in between) only waits for its ids.
    fn forward_sample_slots(
        &mut self,
        step: (&[u32], &[RowPos]),
        p: &SamplingParams,
        uniforms: &[f64],
        ahead: Option<&[f64]>,
        out: &mut [u32],
    ) -> Result<()>;
}

/// The [`Runner`] for a [`BitNetModel`] on backend `B`.
pub struct ModelRunner<B: Backend> {
    model: BitNetModel<B>,
    state: State<B>,
    rows: Vec<RowPos>,
    /// The step `forward_sample` queued ahead, if any.
    ahead: Ahead,
    /// The multi-sequence state of [`Runner::open_slots`], and the step queued ahead in it.
    slots: Option<State<B>>,
    slots_ahead: Ahead,
}

/// A decode step queued on the backend ahead of the host (see [`Runner::forward_sample`]): it
/// runs `tokens` (the picks of the call before, still on the backend) at `rows`, one row per
/// sequence, and picks the next ids with `p` and the uniforms of bits `us`; they come back under
/// `ticket`. The buffers are reused from step to step.
#[derive(Default)]
pub(crate) struct Ahead {
    live: bool,
    tokens: Vec<u32>,
    rows: Vec<RowPos>,
    p: SamplingParams,
    us: Vec<u64>,
    ticket: usize,
    /// Placeholder ids of the queued step (the backend reads the sampled ones).
    zeros: Vec<u32>,
}

impl Ahead {
    /// The ticket of the queued step when it is `ids` at `rows` picked with `p` and
    /// `uniforms`; empties the queue either way.
    pub(crate) fn take(
        &mut self,
        (ids, rows): (&[u32], &[RowPos]),
        p: &SamplingParams,
        uniforms: &[f64],
    ) -> Option<usize> {
        let live = std::mem::take(&mut self.live);
        let same_us = self.us.len() == uniforms.len()
            && self.us.iter().zip(uniforms).all(|(a, u)| *a == u.to_bits());
        let hit = live && self.tokens == ids && self.rows == rows && self.p == *p && same_us;
        hit.then_some(self.ticket)
    }
    /// Forgets the queued step (something else ran after it).
    pub(crate) fn clear(&mut self) {
        self.live = false;
    }
}

/// Picks one id per logits row of `st`'s last forward call on the backend into `out` with `p`
/// and `uniforms`, or takes them from the queued step `hit` (a ticket of [`Ahead::take`]).
/// With `ahead`, first queues the step that runs those ids at `next` (one row each) and picks
/// with `ahead`, then waits for this call's ids; `q` then holds that step.
pub(crate) fn pick_ahead<B: Backend>(
    model: &BitNetModel<B>,
    st: &mut State<B>,
    q: &mut Ahead,
    (hit, p): (Option<usize>, &SamplingParams),
    (uniforms, ahead): (&[f64], Option<&[f64]>),
    next: &[RowPos],
    out: &mut [u32],
) -> Result<()> {
    let (b, vocab, n) = (model.backend(), model.dims().vocab, out.len());
    let ticket = match hit {
        Some(t) => t,
        None => b.sample_ahead(st.logits_buf(), n, vocab, p, uniforms)?,
    };
    let queued = match ahead {
        Some(a) => {
            if next.len() != n || a.len() != n {
                return Err(Error::invalid("a step queued ahead needs one row and uniform per id"));
            }
            b.feed_sampled(true)?;
            q.zeros.resize(n, 0);
            if let Err(e) = model.forward(st, &q.zeros, next, LogitsFor::All) {
                // Failing before its embed, the step would leave the feed on for the next one.
                let _ = b.feed_sampled(false);
                return Err(e);
            }
            Some((b.sample_ahead(st.logits_buf(), n, vocab, p, a)?, a))
        }
        None => None,
    };
    b.sampled_ids(ticket, vocab, out)?;
    if let Some((ticket, a)) = queued {
        q.tokens.clear();
        q.tokens.extend_from_slice(out);
        q.rows.clear();
        q.rows.extend_from_slice(next);
        q.us.clear();
        q.us.extend(a.iter().map(|u| u.to_bits()));
        (q.p, q.ticket, q.live) = (p.clone(), ticket, true);
    }
    Ok(())
}

impl<B: Backend> ModelRunner<B> {
    /// A runner with a KV cache of `context` positions and prefill chunks of `chunk` rows.
    pub fn new(model: BitNetModel<B>, context: usize, chunk: usize) -> Result<Self> {
        let state = model.new_state(1, context, chunk)?;
        let rows = Vec::with_capacity(chunk);
        let (ahead, slots_ahead) = (Ahead::default(), Ahead::default());
        Ok(ModelRunner { model, state, rows, ahead, slots: None, slots_ahead })
    }
    /// The model.
    pub fn model(&self) -> &BitNetModel<B> {
        &self.model
    }
    /// Forgets the steps queued ahead: whatever runs next on the backend may overwrite the
    /// device ids a queued step's successor would be fed, and the host slots of its picks.
    fn forget_queued(&mut self) {
        self.ahead.clear();
        self.slots_ahead.clear();
    }

    /// Runs `ids` at positions `start..` in chunks of the state's row limit; appends the logits
    /// of the last row (every row with `all`) to `out` when given.
    fn run(
        &mut self,
        ids: &[u32],
        start: usize,
        all: bool,
        mut out: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let vocab = self.model.dims().vocab;
        let chunk = self.state.max_rows();
        let n_chunks = ids.len().div_ceil(chunk);
        for (c, part) in ids.chunks(chunk).enumerate() {
            let base = start + c * chunk;
            self.rows.clear();
            self.rows.extend((0..part.len()).map(|i| RowPos { slot: 0, pos: base + i }));
            // Earlier chunks only fill the cache; they still compute the last row's logits
            // (cheap relative to the chunk) to keep one code path.
            let which = if all { LogitsFor::All } else { LogitsFor::Last };
            self.model.forward(&mut self.state, part, &self.rows, which)?;
            match out.as_deref_mut() {
                Some(out) if all || c + 1 == n_chunks => {
                    let rows = self.state.logit_rows();
                    let at = out.len();
                    out.resize(at + rows * vocab, 0.0);
                    self.model.logits_into(&self.state, &mut out[at..])?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl<B: Backend + 'static> Runner for ModelRunner<B>
where
    B::Buf: Send,
    B::Cache: Send,
{
    fn dims(&self) -> &Dims {
        self.model.dims()
    }
    fn describe(&self) -> String {
        self.model.backend().describe()
    }
    fn context_len(&self) -> usize {
        self.state.max_seq()
    }
    fn take_profile(&self) -> Vec<(&'static str, f64, u64)> {
        self.model.backend().take_profile()
    }
    fn forward(&mut self, ids: &[u32], start: usize, all: bool, out: &mut Vec<f32>) -> Result<()> {
        self.forget_queued();
        out.clear();
        self.run(ids, start, all, Some(out))
    }
    fn forward_sample(
        &mut self,
        ids: &[u32],
        start: usize,
        p: &SamplingParams,
        u: f64,
        ahead: Option<f64>,
    ) -> Result<u32> {
        if ids.is_empty() {
            return Err(Error::invalid("forward_sample needs at least one token"));
        }
        let vocab = self.model.dims().vocab;
        let mut id = [0u32];
        self.slots_ahead.clear();
        if !self.samples_ahead() {
            self.run(ids, start, false, None)?;
            self.model.backend().sample(self.state.logits_buf(), 1, vocab, p, &[u], &mut id)?;
            return Ok(id[0]);
        }
        let at = [RowPos { slot: 0, pos: start }];
        let hit = match ids.len() {
            1 => self.ahead.take((ids, &at), p, &[u]),
            _ => None,
        };
        if hit.is_none() {
            self.ahead.clear();
            self.run(ids, start, false, None)?;
        }
        let pos = start + ids.len();
        let next = [RowPos { slot: 0, pos }];
        let ahead = ahead.filter(|_| pos < self.state.max_seq());
        let (st, q) = (&mut self.state, &mut self.ahead);
        let us = (&[u][..], ahead.as_ref().map(std::slice::from_ref));
        pick_ahead(&self.model, st, q, (hit, p), us, &next, &mut id)?;
        Ok(id[0])
    }
    fn samples_ahead(&self) -> bool {
        self.model.backend().samples_ahead()
    }
    fn decode_batch(
        &mut self,
        prompts: &[Vec<u32>],
        steps: usize,
        greedy: bool,
    ) -> Result<crate::batch::BatchDecode> {
        self.forget_queued();
        crate::batch::decode_batch(&self.model, self.state.max_rows(), prompts, steps, greedy)
    }
    fn open_slots(&mut self, slots: usize) -> Result<usize> {
        self.slots = None; // free the old state first
        self.forget_queued();
        let rows = self.state.max_rows().max(slots);
        self.slots = Some(self.model.new_state(slots, self.state.max_seq(), rows)?);
        Ok(rows)
    }
    fn forward_slots(&mut self, ids: &[u32], rows: &[RowPos], all: bool) -> Result<()> {
        self.forget_queued();
        let st = self.slots.as_mut().ok_or_else(no_slots)?;
        let which = if all { LogitsFor::All } else { LogitsFor::Last };
        self.model.forward(st, ids, rows, which)
    }
    fn slot_logits(&mut self, out: &mut Vec<f32>) -> Result<()> {
        let st = self.slots.as_ref().ok_or_else(no_slots)?;
        out.resize(st.logit_rows() * self.model.dims().vocab, 0.0);
        self.model.logits_into(st, out)
    }
    fn sample_slots(
        &mut self,
        p: &SamplingParams,
        uniforms: &[f64],
        out: &mut [u32],
    ) -> Result<()> {
        self.forget_queued();
        let st = self.slots.as_ref().ok_or_else(no_slots)?;
        let (rows, vocab) = (st.logit_rows(), self.model.dims().vocab);
        if uniforms.len() != rows || out.len() != rows {
            return Err(Error::invalid("sample_slots: one uniform and one output per row"));
        }
        self.model.backend().sample(st.logits_buf(), rows, vocab, p, uniforms, out)
    }
    fn forward_sample_slots(
        &mut self,
        (ids, rows): (&[u32], &[RowPos]),
        p: &SamplingParams,
        uniforms: &[f64],
        ahead: Option<&[f64]>,
        out: &mut [u32],
    ) -> Result<()> {
        if ids.len() != rows.len() || out.len() != rows.len() || uniforms.len() != rows.len() {
            return Err(Error::invalid("forward_sample_slots: one id, uniform and output per row"));
        }
        self.ahead.clear();
        let st = self.slots.as_mut().ok_or_else(no_slots)?;
        let b = self.model.backend();
        if !b.samples_ahead() {
            self.model.forward(st, ids, rows, LogitsFor::All)?;
            return b.sample(
                st.logits_buf(),
                rows.len(),
                self.model.dims().vocab,
                p,
                uniforms,
                out,
            );
        }
        let hit = self.slots_ahead.take((ids, rows), p, uniforms);
        if hit.is_none() {
            self.model.forward(st, ids, rows, LogitsFor::All)?;
        }
        self.rows.clear();
        self.rows.extend(rows.iter().map(|r| RowPos { pos: r.pos + 1, ..*r }));
        let ahead = ahead.filter(|_| self.rows.iter().all(|r| r.pos < st.max_seq()));
        let q = &mut self.slots_ahead;
        pick_ahead(&self.model, st, q, (hit, p), (uniforms, ahead), &self.rows, out)
    }
}

fn no_slots() -> Error {
    Error::invalid("no multi-sequence state: call open_slots first")
}
