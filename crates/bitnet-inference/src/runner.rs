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
    /// repetition penalty.
    fn forward_sample(
        &mut self,
        ids: &[u32],
        start: usize,
        p: &SamplingParams,
        u: f64,
    ) -> Result<u32>;
    /// Decodes several sequences together in a fresh multi-slot state (see
    /// [`crate::Engine::decode_batch`]).
    fn decode_batch(
        &mut self,
        prompts: &[Vec<u32>],
        steps: usize,
        greedy: bool,
    ) -> Result<crate::batch::BatchDecode>;
}

/// The [`Runner`] for a [`BitNetModel`] on backend `B`.
pub struct ModelRunner<B: Backend> {
    model: BitNetModel<B>,
    state: State<B>,
    rows: Vec<RowPos>,
}

impl<B: Backend> ModelRunner<B> {
    /// A runner with a KV cache of `context` positions and prefill chunks of `chunk` rows.
    pub fn new(model: BitNetModel<B>, context: usize, chunk: usize) -> Result<Self> {
        let state = model.new_state(1, context, chunk)?;
        Ok(ModelRunner { model, state, rows: Vec::with_capacity(chunk) })
    }
    /// The model.
    pub fn model(&self) -> &BitNetModel<B> {
        &self.model
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
        out.clear();
        self.run(ids, start, all, Some(out))
    }
    fn forward_sample(
        &mut self,
        ids: &[u32],
        start: usize,
        p: &SamplingParams,
        u: f64,
    ) -> Result<u32> {
        if ids.is_empty() {
            return Err(Error::invalid("forward_sample needs at least one token"));
        }
        self.run(ids, start, false, None)?;
        let mut id = [0u32];
        let vocab = self.model.dims().vocab;
        self.model.backend().sample(self.state.logits_buf(), 1, vocab, p, &[u], &mut id)?;
        Ok(id[0])
    }
    fn decode_batch(
        &mut self,
        prompts: &[Vec<u32>],
        steps: usize,
        greedy: bool,
    ) -> Result<crate::batch::BatchDecode> {
        crate::batch::decode_batch(&self.model, self.state.max_rows(), prompts, steps, greedy)
    }
}
