//! The simple API: [`Engine::load`] a model, [`Engine::generate`] text, or stream tokens.
//!
//! ```no_run
//! use bitnet_inference::{Engine, GenerationConfig};
//! let mut engine = Engine::load("path/to/model")?;
//! let out = engine.generate("The meaning of life is", &GenerationConfig::default())?;
//! println!("{}", out.text);
//! # Ok::<(), bitnet_core::Error>(())
//! ```

mod builder;
mod emit;
mod types;

pub use builder::{default_context, EngineBuilder};
pub(crate) use builder::{dims_from_config, weight_kind};
pub(crate) use emit::Emitter;
pub use types::{GenerationConfig, Output, StopReason, Timings, TokenEvent};

use crate::chat::{ChatMessage, ChatTemplate};
use crate::models::Dims;
use crate::runner::Runner;
use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;
use bitnet_core::{Error, Result};
use std::path::Path;
use std::time::Instant;

/// A loaded model ready to generate.
pub struct Engine {
    pub(super) runner: Box<dyn Runner>,
    pub(super) tokenizer: Option<Tokenizer>,
    pub(super) chat: Option<ChatTemplate>,
    pub(super) eos: Vec<u32>,
    /// Token ids whose keys/values are in the KV cache (reused as a prefix).
    pub(super) cached: Vec<u32>,
    pub(super) logits: Vec<f32>,
    pub(super) load_s: f64,
    pub(super) fallback: Option<String>,
}

impl Engine {
    /// Loads a model (HF directory or GGUF file) with default options.
    pub fn load(path: impl AsRef<Path>) -> Result<Engine> {
        EngineBuilder::default().model(path.as_ref()).build()
    }
    /// Options for loading.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }
    /// Model dimensions.
    pub fn dims(&self) -> &Dims {
        self.runner.dims()
    }
    /// Backend description.
    pub fn describe(&self) -> String {
        self.runner.describe()
    }
    /// Seconds and calls per backend operation since the last call (empty unless profiling).
    pub fn take_profile(&self) -> Vec<(&'static str, f64, u64)> {
        self.runner.take_profile()
    }
    /// Why `--device auto` fell back to the CPU, if it did (for one log line).
    pub fn device_fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
    /// Seconds the load took.
    pub fn load_seconds(&self) -> f64 {
        self.load_s
    }
    /// The tokenizer, if the model came with one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }
    /// KV-cache length.
    pub fn context_len(&self) -> usize {
        self.runner.context_len()
    }

    fn tok(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::invalid("this model has no tokenizer (tokenizer.json); pass token ids instead")
        })
    }

    /// Encodes text with the model's tokenizer.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        self.tok()?.encode(text, add_bos)
    }

    /// Formats a conversation with the model's chat template (or the BitNet 2B-4T format).
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String> {
        match &self.chat {
            Some(t) => t.render(messages, true),
            None => ChatTemplate::bitnet().render(messages, true),
        }
    }

    /// The logits at every position of `ids` (`ids.len()` rows of `vocab`).
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check_ids(ids)?;
        self.cached.clear();
        let mut out = Vec::new();
        self.runner.forward(ids, 0, true, &mut out)?;
        self.cached = ids.to_vec();
        Ok(out.chunks(self.dims().vocab).map(<[f32]>::to_vec).collect())
    }

    /// Low level: runs `ids` at positions `start..` in the KV cache and returns the logits of
    /// the last row (or every row with `all`). For benchmarks and custom loops.
    pub fn forward_tokens(&mut self, ids: &[u32], start: usize, all: bool) -> Result<&[f32]> {
        self.check_ids(ids)?;
        if start + ids.len() > self.context_len() {
            return Err(Error::invalid(format!(
                "positions {start}..{} exceed the context of {}",
                start + ids.len(),
                self.context_len()
            )));
        }
        self.cached.truncate(start.min(self.cached.len()));
        self.runner.forward(ids, start, all, &mut self.logits)?;
        if self.cached.len() == start {
            self.cached.extend_from_slice(ids);
        }
        Ok(&self.logits)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        check_ids(ids, self.dims().vocab, self.context_len())
    }

    /// Generates from a text prompt.
    pub fn generate(&mut self, prompt: &str, cfg: &GenerationConfig) -> Result<Output> {
        let ids = self.encode(prompt, cfg.add_bos)?;
        self.generate_ids_stream(&ids, cfg, |_| true)
    }

    /// Generates from token ids.
    pub fn generate_ids(&mut self, ids: &[u32], cfg: &GenerationConfig) -> Result<Output> {
        self.generate_ids_stream(ids, cfg, |_| true)
    }

    /// Generates from a text prompt, calling `on_token` for each token as it is produced;
    /// return `false` from it to stop.
    pub fn generate_stream(
        &mut self,
        prompt: &str,
        cfg: &GenerationConfig,
        on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Output> {
        let ids = self.encode(prompt, cfg.add_bos)?;
        self.generate_ids_stream(&ids, cfg, on_token)
    }

    /// Generates from token ids with a per-token callback (see [`Engine::generate_stream`]).
    pub fn generate_ids_stream(
        &mut self,
        ids: &[u32],
        cfg: &GenerationConfig,
        mut on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Output> {
        cfg.sampling.validate()?;
        if ids.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        self.check_ids(ids)?;
        let mut timings = Timings::default();
        // Reuse the cached prefix (chat turns, repeated prompts); always recompute the last token.
        let reuse = common_prefix(&self.cached, ids).min(ids.len() - 1);
        self.cached.truncate(reuse);
        let mut sampler = Sampler::new(cfg.sampling.clone())?;
        let mut context: Vec<u32> = ids.to_vec();
        let t0 = Instant::now();
        let mut logits = std::mem::take(&mut self.logits);
        let mut next = 0;
        // The uniform drawn for a step queued ahead (see forward_pick).
        let mut ahead = None;
        if cfg.max_tokens > 0 {
            let more = cfg.max_tokens > 1;
            next = forward_pick(
                &mut *self.runner,
                (&ids[reuse..], reuse),
                &mut sampler,
                &context,
                &mut logits,
                (&mut ahead, more),
            )?;
        } else {
            self.runner.forward(&ids[reuse..], reuse, false, &mut logits)?;
        }
        self.cached.extend_from_slice(&ids[reuse..]);
        timings.prompt_tokens = ids.len() - reuse;
        timings.prompt_s = t0.elapsed().as_secs_f64();

        let tok = self.tokenizer.as_ref();
        let mut em = Emitter::new(cfg, &self.eos);
        let mut reason = StopReason::MaxTokens;
        let t1 = Instant::now();
        while em.budget_left() > 0 {
            context.push(next);
            if let Some(r) = em.push(tok, next, &mut on_token)? {
                reason = r;
                break;
            }
            if self.cached.len() >= self.context_len() {
                reason = StopReason::ContextFull;
                break;
            }
            let (pos, fed) = (self.cached.len(), next);
            let more = em.budget_left() > 1;
            next = forward_pick(
                &mut *self.runner,
                (&[fed], pos),
                &mut sampler,
                &context,
                &mut logits,
                (&mut ahead, more),
            )?;
            self.cached.push(fed);
        }
        let (text, generated) = em.finish(tok, reason, &mut on_token)?;
        timings.generated_tokens = generated.len();
        timings.generate_s = t1.elapsed().as_secs_f64();
        self.logits = logits;
        Ok(Output {
            prompt_ids: ids.to_vec(),
            generated_ids: generated,
            text,
            stop_reason: reason,
            timings,
        })
    }
}

/// Runs `ids` at positions `start..` and picks the next token: on the backend when the sampler
/// has no repetition penalty (only the id reaches the host), else on the host from the
/// downloaded logits (`logits`, with `context` for the penalty). Both consume the sampler's
/// stream alike, one uniform per step, so a seed gives the same tokens either way. With `more`
/// (another step will follow), a backend that can queues that step before the id comes back:
/// its uniform is drawn now and kept in `ahead` for the next call.
fn forward_pick(
    runner: &mut dyn Runner,
    (ids, start): (&[u32], usize),
    sampler: &mut Sampler,
    context: &[u32],
    logits: &mut Vec<f32>,
    (ahead, more): (&mut Option<f64>, bool),
) -> Result<u32> {
    if sampler.params().repetition_penalty == 1.0 {
        let u = ahead.take().unwrap_or_else(|| sampler.draw());
        *ahead = (more && runner.samples_ahead()).then(|| sampler.draw());
        return runner.forward_sample(ids, start, sampler.params(), u, *ahead);
    }
    runner.forward(ids, start, false, logits)?;
    sampler.sample(logits, context)
}

/// Errors when an id is outside the vocabulary or there are more ids than the context holds.
pub(crate) fn check_ids(ids: &[u32], vocab: usize, context: usize) -> Result<()> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::invalid(format!(
            "token id {bad} is out of range (vocabulary of {vocab})"
        )));
    }
    if ids.len() > context {
        return Err(Error::invalid(format!(
            "the prompt has {} tokens but the context holds {context}",
            ids.len()
        )));
    }
    Ok(())
}

/// How many leading ids `a` and `b` share.
pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_counts_equal_leading_ids() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
    }
}
