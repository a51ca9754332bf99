//! When to stop generating: a token budget, stop token ids, and stop strings found in the
//! decoded text as it streams (the stop string itself is never emitted).

/// What ends a generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopConditions {
    /// Stop after this many generated tokens (`None` = no limit).
    pub max_tokens: Option<usize>,
    /// Stop when one of these ids is sampled (the id is not part of the output).
    pub stop_ids: Vec<u32>,
    /// Stop when the output text contains one of these strings (cut before it).
    pub stop_strings: Vec<String>,
}

/// Why a generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The token budget is spent; the last token is part of the output.
    MaxTokens,
    /// This stop id was sampled; it is not part of the output.
    StopToken(u32),
    /// The stop string with this index in [`StopConditions::stop_strings`] appeared.
    StopString(usize),
}

impl StopReason {
    /// True when the token that triggered the stop belongs to the output (only [`StopReason::MaxTokens`]).
    pub fn token_is_output(&self) -> bool {
        matches!(self, StopReason::MaxTokens)
    }
}

/// Tracks one generation against its [`StopConditions`].
///
/// Per sampled id: call [`StopChecker::on_token`]; unless it says the id is not output, decode
/// it (e.g. with a `StreamDecoder`) and pass the text delta to [`StopChecker::push_text`], which
/// returns the part that is safe to emit: text that might be the start of a stop string is held
/// back until it is known not to be one. [`StopChecker::finish`] releases what is held.
#[derive(Clone, Debug)]
pub struct StopChecker {
    cond: StopConditions,
    n_tokens: usize,
    text: String,
    emitted: usize,
    stopped: Option<StopReason>,
    longest_stop: usize,
}

impl StopChecker {
    /// A checker at the start of a generation. Empty stop strings are ignored.
    pub fn new(mut cond: StopConditions) -> Self {
        cond.stop_strings.retain(|s| !s.is_empty());
        let longest_stop = cond.stop_strings.iter().map(String::len).max().unwrap_or(0);
        Self { cond, n_tokens: 0, text: String::new(), emitted: 0, stopped: None, longest_stop }
    }

    /// Counts one sampled id; `Some` when the generation must end with it. A
    /// [`StopReason::StopToken`] id is not output; after [`StopReason::MaxTokens`] the id is.
    pub fn on_token(&mut self, id: u32) -> Option<StopReason> {
        if self.stopped.is_some() {
            return self.stopped.clone();
        }
        if self.cond.stop_ids.contains(&id) {
            self.stopped = Some(StopReason::StopToken(id));
            return self.stopped.clone();
        }
        self.n_tokens += 1;
        if self.cond.max_tokens.is_some_and(|m| self.n_tokens >= m) {
            self.stopped = Some(StopReason::MaxTokens);
        }
        self.stopped.clone()
    }

    /// Adds decoded text; returns the text now safe to emit, and the stop string reason if one
    /// appeared (the returned text then ends right before it, and the rest is dropped).
    pub fn push_text(&mut self, delta: &str) -> (String, Option<StopReason>) {
        if matches!(self.stopped, Some(StopReason::StopString(_))) {
            return (String::new(), self.stopped.clone());
        }
        // A match must end in the new text, so it starts at most longest_stop - 1 bytes earlier.
        let mut from = self.text.len().saturating_sub(self.longest_stop.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(delta);
        if let Some((at, idx)) = self.find_stop(from) {
            self.text.truncate(at);
            self.stopped = Some(StopReason::StopString(idx));
            let out = self.text[self.emitted..].to_string();
            self.emitted = at;
            return (out, self.stopped.clone());
        }
        let safe = self.text.len() - self.held_suffix_len();
        let out = self.text[self.emitted..safe.max(self.emitted)].to_string();
        self.emitted = self.emitted.max(safe);
        (out, None)
    }

    /// Releases the text held back as a possible stop-string prefix (call at the end).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    /// The whole output text so far (cut before a stop string once one was found).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Number of output tokens counted so far (stop ids excluded).
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Why the generation stopped, if it has.
    pub fn stopped(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    /// Earliest stop string occurrence starting at or after `from`: (byte offset, index).
    fn find_stop(&self, from: usize) -> Option<(usize, usize)> {
        let hay = &self.text[from..];
        self.cond
            .stop_strings
            .iter()
            .enumerate()
            .filter_map(|(i, s)| hay.find(s.as_str()).map(|at| (from + at, i)))
            .min()
    }

    /// Length of the longest suffix of the text that is a proper prefix of a stop string.
    fn held_suffix_len(&self) -> usize {
        let t = self.text.as_bytes();
        let mut best = 0;
        for s in &self.cond.stop_strings {
            let s = s.as_bytes();
            for len in (best + 1..s.len().min(t.len() + 1)).rev() {
                if t[t.len() - len..] == s[..len] {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}
