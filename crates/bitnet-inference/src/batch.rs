//! Batched decode: several sequences, one KV-cache slot each, advanced together so that every
//! forward call carries one row per sequence (row `b` at `RowPos { slot: b, pos }`).
//!
//! ```no_run
//! use bitnet_inference::Engine;
//! let mut engine = Engine::builder().synthetic("tiny").build()?;
//! let prompts: Vec<Vec<u32>> = (0..8).map(|b| vec![1, 2 + b]).collect();
//! let out = engine.decode_batch(&prompts, 16, true)?;
//! println!("{:.1} tokens/s over {} sequences", out.tokens_per_second(), prompts.len());
//! # Ok::<(), bitnet_core::Error>(())
//! ```

use crate::backend::{Backend, RowPos};
use crate::models::{BitNetModel, LogitsFor};
use crate::runner::{pick_ahead, Ahead};
use crate::sampling::SamplingParams;
use crate::Engine;
use bitnet_core::{Error, Result};
use std::time::Instant;

/// The result of [`Engine::decode_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchDecode {
    /// Tokens fed at each decode step, per sequence (`steps` each; the first is the argmax of
    /// the prompt's last logits).
    pub tokens: Vec<Vec<u32>>,
    /// Logits of the last decode step, `batch x vocab` (only row 0 unless `greedy`), downloaded
    /// after the timed steps.
    pub last_logits: Vec<f32>,
    /// Seconds spent in the decode steps (prefill excluded).
    pub decode_s: f64,
}

impl BatchDecode {
    /// Generated tokens per second summed over the batch.
    pub fn tokens_per_second(&self) -> f64 {
        let n: usize = self.tokens.iter().map(Vec::len).sum();
        n as f64 / self.decode_s.max(1e-12)
    }
}

/// Runs [`Engine::decode_batch`] on `model` with a fresh state of `prompts.len()` slots.
pub(crate) fn decode_batch<B: Backend>(
    model: &BitNetModel<B>,
    chunk: usize,
    prompts: &[Vec<u32>],
    steps: usize,
    greedy: bool,
) -> Result<BatchDecode> {
    let batch = prompts.len();
    let vocab = model.dims().vocab;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if batch == 0 || steps == 0 || prompts.iter().any(Vec::is_empty) {
        return Err(Error::invalid("batched decode needs non-empty prompts and at least one step"));
    }
    if let Some(&bad) = prompts.iter().flatten().find(|&&i| i as usize >= vocab) {
        return Err(Error::invalid(format!(
            "token id {bad} is out of range (vocabulary of {vocab})"
        )));
    }
    let mut st = model.new_state(batch, longest + steps, batch.max(chunk.max(1)))?;
    let argmax = SamplingParams::greedy();
    let mut next = vec![0; batch];
    let mut rows = Vec::with_capacity(st.max_rows());
    // Prefill each sequence in its own slot.
    for (slot, p) in prompts.iter().enumerate() {
        for (c, part) in p.chunks(st.max_rows()).enumerate() {
            let base = c * st.max_rows();
            rows.clear();
            rows.extend((0..part.len()).map(|i| RowPos { slot, pos: base + i }));
            model.forward(&mut st, part, &rows, LogitsFor::Last)?;
        }
        let b = model.backend();
        b.sample(st.logits_buf(), 1, vocab, &argmax, &[], &mut next[slot..slot + 1])?;
    }
    let mut tokens = vec![Vec::with_capacity(steps); batch];
    let mut logits = vec![0.0; if greedy { batch * vocab } else { vocab }];
    // A profile taken after this call covers the decode steps only.
    drop(model.backend().take_profile());
    // Greedy steps are queued one ahead where the backend can (see `Runner::forward_sample`).
    let ahead = greedy && model.backend().samples_ahead();
    let (mut queue, zeros, mut picked) = (Ahead::default(), vec![0.0; batch], vec![0; batch]);
    let mut after = Vec::with_capacity(batch);
    let t = Instant::now();
    for step in 0..steps {
        rows.clear();
        rows.extend(
            prompts.iter().enumerate().map(|(slot, p)| RowPos { slot, pos: p.len() + step }),
        );
        for (seq, &id) in tokens.iter_mut().zip(&next) {
            seq.push(id);
        }
        let hit = queue.take((&next, &rows), &argmax, &zeros);
        if hit.is_none() {
            model.forward(&mut st, &next, &rows, LogitsFor::All)?;
        }
        if ahead {
            after.clear();
            after.extend(rows.iter().map(|r| RowPos { pos: r.pos + 1, ..*r }));
            let more = (step + 1 < steps).then_some(&zeros[..]);
            let h = (hit, &argmax);
            pick_ahead(model, &mut st, &mut queue, h, (&zeros, more), &after, &mut picked)?;
            next.copy_from_slice(&picked);
        } else if greedy {
            // Argmax of every row on the device: only the ids come back.
            model.backend().sample(st.logits_buf(), batch, vocab, &argmax, &[], &mut next)?;
        } else {
            // Waits for the step by reading row 0 only; every sequence keeps its token.
            model.backend().download(st.logits_buf(), &mut logits)?;
        }
    }
    let decode_s = t.elapsed().as_secs_f64();
    if greedy {
        model.logits_into(&st, &mut logits)?;
    }
    Ok(BatchDecode { tokens, last_logits: logits, decode_s })
}

impl Engine {
    /// Decodes `prompts.len()` sequences together: prefills each prompt into its own KV-cache
    /// slot (a fresh state of `prompts.len()` slots and `longest prompt + steps` positions;
    /// the engine's own cache is untouched), then runs `steps` forward calls of one row per
    /// sequence. With `greedy`, each row's next token is the argmax of its logits, picked on the
    /// backend (only the ids go to the host each step; see `Backend::sample`); without, only row 0's logits are read back and every
    /// sequence repeats its first token (measures the model alone).
    pub fn decode_batch(
        &mut self,
        prompts: &[Vec<u32>],
        steps: usize,
        greedy: bool,
    ) -> Result<BatchDecode> {
        self.runner.decode_batch(prompts, steps, greedy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Engine {
        Engine::builder().synthetic("tiny").threads(1).build().unwrap()
    }

    fn prompts(batch: usize, vocab: usize) -> Vec<Vec<u32>> {
        (0..batch)
            .map(|b| (0..3 + b % 4).map(|i| ((b * 31 + i * 7 + 1) % vocab) as u32).collect())
            .collect()
    }

    #[test]
    fn batched_rows_match_each_sequence_decoded_alone() {
        let mut e = tiny();
        let vocab = e.dims().vocab;
        let ps = prompts(5, vocab);
        let steps = 4;
        let all = e.decode_batch(&ps, steps, true).unwrap();
        assert_eq!(all.tokens.len(), 5);
        assert_eq!(all.last_logits.len(), 5 * vocab);
        for (b, p) in ps.iter().enumerate() {
            let alone = e.decode_batch(std::slice::from_ref(p), steps, true).unwrap();
            assert_eq!(alone.tokens[0], all.tokens[b], "tokens of sequence {b}");
            // Same sequence through the engine's single-slot path.
            let mut ids = p.clone();
            ids.extend_from_slice(&all.tokens[b]);
            let reference = e.logits(&ids).unwrap();
            let want = reference.last().unwrap();
            let got = &all.last_logits[b * vocab..(b + 1) * vocab];
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-4 * scale, "sequence {b}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn batched_decode_counts_tokens_and_rejects_bad_input() {
        let mut e = tiny();
        let vocab = e.dims().vocab;
        let out = e.decode_batch(&prompts(3, vocab), 2, false).unwrap();
        assert_eq!(out.tokens.iter().map(Vec::len).sum::<usize>(), 6);
        assert_eq!(out.last_logits.len(), vocab);
        assert!(out.tokens_per_second() > 0.0);
        assert!(e.decode_batch(&[], 2, true).is_err());
        assert!(e.decode_batch(&[vec![]], 2, true).is_err());
        assert!(e.decode_batch(&[vec![vocab as u32]], 2, true).is_err());
    }
}
