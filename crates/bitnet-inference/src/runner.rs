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
}

/// The [`Runner`] for a [`BitNetModel`] on backend `B`.
pub struct ModelRunner<B: Backend> {
    model: BitNetModel<B>,
    state: State<B>,
    rows: Vec<RowPos>,
    /// The step `forward_sample` queued ahead, if any.
    queued: Option<Queued>,
    /// The multi-sequence state of [`Runner::open_slots`].
    slots: Option<State<B>>,
}

/// A decode step queued on the backend ahead of the host: `token` at `pos`, its pick drawn with
/// `p` and the uniform of bits `u`, its id coming back under `ticket`.
struct Queued {
    token: u32,
    pos: usize,
    p: SamplingParams,
    u: u64,
    ticket: usize,
}

impl<B: Backend> ModelRunner<B> {
    /// A runner with a KV cache of `context` positions and prefill chunks of `chunk` rows.
    pub fn new(model: BitNetModel<B>, context: usize, chunk: usize) -> Result<Self> {
        let state = model.new_state(1, context, chunk)?;
        Ok(ModelRunner { model, state, rows: Vec::with_capacity(chunk), queued: None, slots: None })
    }
    /// The model.
    pub fn model(&self) -> &BitNetModel<B> {
        &self.model
    }

    /// Queues the step at `pos` whose token is the one the last `sample_ahead` picked (still on
    /// the backend), and its own pick with uniform `u`. Returns the pick's ticket and `u`'s bits.
    fn queue_step(&mut self, pos: usize, p: &SamplingParams, u: f64) -> Result<(usize, u64)> {
        let vocab = self.model.dims().vocab;
        self.model.backend().feed_sampled(true)?;
        self.rows.clear();
        self.rows.push(RowPos { slot: 0, pos });
        // The id passed is a placeholder: the backend reads the sampled one.
        if let Err(e) = self.model.forward(&mut self.state, &[0], &self.rows, LogitsFor::Last) {
            // Failing before its embed, the step would leave the feed on for the next one.
            let _ = self.model.backend().feed_sampled(false);
            return Err(e);
        }
        let ticket = self.model.backend().sample_ahead(self.state.logits_buf(), vocab, p, u)?;
        Ok((ticket, u.to_bits()))
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
        self.queued = None;
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
        let queued = self.queued.take();
        if !self.samples_ahead() {
            self.run(ids, start, false, None)?;
            let mut id = [0u32];
            self.model.backend().sample(self.state.logits_buf(), 1, vocab, p, &[u], &mut id)?;
            return Ok(id[0]);
        }
        let hit = queued
            .filter(|q| ids == [q.token] && start == q.pos && q.p == *p && q.u == u.to_bits());
        let ticket = match hit {
            Some(q) => q.ticket,
            None => {
                self.run(ids, start, false, None)?;
                self.model.backend().sample_ahead(self.state.logits_buf(), vocab, p, u)?
            }
        };
        let pos = start + ids.len();
        let next = match ahead.filter(|_| pos < self.state.max_seq()) {
            Some(a) => Some(self.queue_step(pos, p, a)?),
            None => None,
        };
        let id = self.model.backend().sampled_id(ticket, vocab)?;
        self.queued = next.map(|(ticket, u)| Queued { token: id, pos, p: p.clone(), u, ticket });
        Ok(id)
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
        self.queued = None;
        crate::batch::decode_batch(&self.model, self.state.max_rows(), prompts, steps, greedy)
    }
    fn open_slots(&mut self, slots: usize) -> Result<usize> {
        self.queued = None;
        self.slots = None; // free the old state first
        let rows = self.state.max_rows().max(slots);
        self.slots = Some(self.model.new_state(slots, self.state.max_seq(), rows)?);
        Ok(rows)
    }
    fn forward_slots(&mut self, ids: &[u32], rows: &[RowPos], all: bool) -> Result<()> {
        // The slots' steps overwrite the device ids a step queued by `forward_sample` would
        // feed its successor.
        self.queued = None;
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
        let st = self.slots.as_ref().ok_or_else(no_slots)?;
        let (rows, vocab) = (st.logit_rows(), self.model.dims().vocab);
        if uniforms.len() != rows || out.len() != rows {
            return Err(Error::invalid("sample_slots: one uniform and one output per row"));
        }
        self.model.backend().sample(st.logits_buf(), rows, vocab, p, uniforms, out)
    }
}

fn no_slots() -> Error {
    Error::invalid("no multi-sequence state: call open_slots first")
}
