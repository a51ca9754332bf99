//! One generation's handling of sampled tokens: stop conditions, streaming detokenization and
//! the per-token callback. Shared by [`super::Engine::generate_ids_stream`] and the batch
//! scheduler ([`crate::scheduler`]), so both end generations the same way.

use super::{GenerationConfig, StopReason, TokenEvent};
use crate::sampling::{StopChecker, StopConditions, StopReason as StopKind};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use bitnet_core::Result;

/// The tokens of one generation so far, and what has been emitted of their text.
pub(crate) struct Emitter {
    max_tokens: usize,
    checker: StopChecker,
    decoder: StreamDecoder,
    generated: Vec<u32>,
}

impl Emitter {
    /// A generation under `cfg`, ending on `eos` too unless `cfg.ignore_eos`.
    pub fn new(cfg: &GenerationConfig, eos: &[u32]) -> Self {
        let mut stop_ids = cfg.stop_tokens.clone();
        if !cfg.ignore_eos {
            stop_ids.extend_from_slice(eos);
        }
        let checker = StopChecker::new(StopConditions {
            max_tokens: Some(cfg.max_tokens),
            stop_ids,
            stop_strings: cfg.stop_strings.clone(),
        });
        let decoder = StreamDecoder::new(true);
        Emitter { max_tokens: cfg.max_tokens, checker, decoder, generated: Vec::new() }
    }

    /// Takes the next sampled token: emits the text it completes through `on_token` and says
    /// whether the generation ends with it (a stop token or string, the token budget, or
    /// `on_token` returning false).
    pub fn push(
        &mut self,
        tok: Option<&Tokenizer>,
        id: u32,
        on_token: &mut dyn FnMut(&TokenEvent) -> bool,
    ) -> Result<Option<StopReason>> {
        self.generated.push(id);
        let stop = self.checker.on_token(id);
        if let Some(StopKind::StopToken(_)) = stop {
            return Ok(Some(StopReason::StopToken));
        }
        let delta = match tok {
            Some(t) => self.decoder.push(t, id)?,
            None => String::new(),
        };
        let (emit, by_string) = self.checker.push_text(&delta);
        if !on_token(&TokenEvent { id, text: &emit }) {
            return Ok(Some(StopReason::Cancelled));
        }
        if by_string.is_some() {
            return Ok(Some(StopReason::StopString));
        }
        Ok(stop.map(|_| StopReason::MaxTokens))
    }

    /// Tokens the budget (`max_tokens`) still allows.
    pub fn budget_left(&self) -> usize {
        self.max_tokens.saturating_sub(self.generated.len())
    }

    /// Ends the generation for `reason`: releases text held back (an unfinished character or
    /// a possible stop-string prefix) unless a stop string or the callback ended it, and
    /// returns the output text and the generated ids.
    pub fn finish(
        mut self,
        tok: Option<&Tokenizer>,
        reason: StopReason,
        on_token: &mut dyn FnMut(&TokenEvent) -> bool,
    ) -> Result<(String, Vec<u32>)> {
        if reason != StopReason::StopString && reason != StopReason::Cancelled {
            let tail = match tok {
                Some(t) => self.decoder.finish(t)?,
                None => String::new(),
            };
            let (mut emit, _) = self.checker.push_text(&tail);
            emit.push_str(&self.checker.finish());
            if let (false, Some(&last)) = (emit.is_empty(), self.generated.last()) {
                on_token(&TokenEvent { id: last, text: &emit });
            }
        }
        Ok((self.checker.text().to_string(), self.generated))
    }
}
