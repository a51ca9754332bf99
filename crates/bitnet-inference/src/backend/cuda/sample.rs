//! [`Backend::sample`](crate::backend::Backend::sample) on the GPU: the `sample_rows` kernel
//! picks one id per row, and only the ids are downloaded.

use super::{CudaBackend, CudaBuf};
use crate::sampling::{nothing_to_sample, SamplingParams};
use bitnet_core::{Error, Result};
use bitnet_cuda::ops::{self, IdFetch, SampleConfig, SampleScratch};

/// Device buffers and the host copy of the ids, reused across calls.
#[derive(Default)]
pub(super) struct SampleState {
    dev: SampleScratch,
    ids: Vec<i32>,
    /// Ids sampled ahead, on their way to the host.
    fetch: IdFetch,
}

impl CudaBackend {
    /// See [`Backend::sample`](crate::backend::Backend::sample).
    pub(super) fn sample_rows(
        &self,
        logits: &CudaBuf,
        rows: usize,
        vocab: usize,
        p: &SamplingParams,
        uniforms: &[f64],
        out: &mut [u32],
    ) -> Result<()> {
        let cfg = checked(logits, rows, vocab, p, uniforms, out.len())?;
        let mut s = super::lock(&self.scratch);
        // The kernel must follow the step's launches, which may still be deferred.
        s.end_step(&self.gpu, true)?;
        let st = &mut s.sample;
        st.ids.resize(rows, 0);
        ops::sample(
            &self.gpu,
            &logits.data,
            rows,
            vocab,
            &cfg,
            uniforms,
            &mut st.dev,
            &mut st.ids,
        )?;
        for (o, &id) in out.iter_mut().zip(&st.ids) {
            *o = u32::try_from(id).map_err(|_| nothing_to_sample(vocab))?;
        }
        Ok(())
    }

    /// See [`Backend::sample_ahead`](crate::backend::Backend::sample_ahead): the ids go to the
    /// step id buffer (where the next fed `embed` reads them) and to a host-mapped slot. The
    /// picks join the step's launches (its graph, when the step is deferred) and advance the
    /// step's row positions on the device, so that the next step starts with no copy before it.
    pub(super) fn sample_on_device(
        &self,
        logits: &CudaBuf,
        rows: usize,
        vocab: usize,
        p: &SamplingParams,
        uniforms: &[f64],
    ) -> Result<usize> {
        let mut guard = super::lock(&self.scratch);
        let s = &mut *guard;
        let cfg = checked(logits, rows, vocab, p, uniforms, rows)?;
        s.step_buffers(&self.gpu, rows)?;
        let slot = s.sample.fetch.reserve(&self.gpu, rows)?;
        let (Some(ids), Some(pairs)) = (s.step.ids.as_mut(), s.step.rows.as_ref()) else {
            return Err(Error::invalid("step buffers"));
        };
        let to = ops::PickTo::host(slot).advancing(&self.gpu, pairs)?;
        let picked = ops::sample_to_device(
            &self.gpu,
            &logits.data,
            rows,
            vocab,
            &cfg,
            uniforms,
            &mut s.sample.dev,
            ids,
            to,
        );
        // Whether or not the picks were queued, the step's launches go out before anything else.
        let ended = s.end_step(&self.gpu, true);
        match picked.and(ended) {
            Ok(()) => s.step.advanced(rows),
            Err(e) => {
                s.step.forget_rows();
                return Err(e);
            }
        }
        s.sample.fetch.mark(&self.gpu, slot)
    }

    /// See [`Backend::sampled_ids`](crate::backend::Backend::sampled_ids).
    pub(super) fn fetch_sampled(&self, ticket: usize, vocab: usize, out: &mut [u32]) -> Result<()> {
        let mut guard = super::lock(&self.scratch);
        let st = &mut guard.sample;
        st.ids.resize(out.len(), 0);
        st.fetch.wait(ticket, &mut st.ids)?;
        for (o, &id) in out.iter_mut().zip(&st.ids) {
            *o = u32::try_from(id).map_err(|_| nothing_to_sample(vocab))?;
        }
        Ok(())
    }
}

/// Checks a sampling call of `rows` rows of `vocab` logits into `outs` ids (as the host's `sample_args`, and
/// that `logits` holds them) and gives the device sampler's configuration for `p`.
fn checked(
    logits: &CudaBuf,
    rows: usize,
    vocab: usize,
    p: &SamplingParams,
    uniforms: &[f64],
    outs: usize,
) -> Result<SampleConfig> {
    crate::backend::sample_args(rows, vocab, p, uniforms, outs)?;
    if logits.len < rows * vocab {
        return Err(Error::shape(format!(
            "sampling {rows} x {vocab} logits from a buffer of {}",
            logits.len
        )));
    }
    Ok(SampleConfig {
        greedy: p.is_greedy(),
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
    })
}
