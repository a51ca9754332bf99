//! What a generation takes and returns.

use crate::sampling::SamplingParams;

/// What to generate and how to sample.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling parameters (temperature 0 = greedy).
    pub sampling: SamplingParams,
    /// Stop when the text contains one of these (the stop string is not returned).
    pub stop_strings: Vec<String>,
    /// Stop on these token ids, in addition to the model's end-of-sequence tokens.
    pub stop_tokens: Vec<u32>,
    /// Do not stop on the model's end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Prepend the BOS token when encoding a text prompt.
    pub add_bos: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop_strings: Vec::new(),
            stop_tokens: Vec::new(),
            ignore_eos: false,
            add_bos: true,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `max_tokens` reached.
    MaxTokens,
    /// An end-of-sequence or stop token.
    StopToken,
    /// A stop string appeared.
    StopString,
    /// The KV cache is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

/// Timings of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Prompt tokens run through the model (excluding any reused prefix).
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt.
    pub prompt_s: f64,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Seconds spent generating.
    pub generate_s: f64,
}

impl Timings {
    /// Prompt tokens per second.
    pub fn prompt_tps(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_s)
    }
    /// Generated tokens per second.
    pub fn generate_tps(&self) -> f64 {
        rate(self.generated_tokens, self.generate_s)
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Output {
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The generated ids (including a final stop token, if any).
    pub generated_ids: Vec<u32>,
    /// The generated text (without stop strings / end tokens).
    pub text: String,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Timings.
    pub timings: Timings,
}

/// One streamed token.
#[derive(Debug, Clone)]
pub struct TokenEvent<'a> {
    /// The token id.
    pub id: u32,
    /// Text that became final with this token (may be empty).
    pub text: &'a str,
}
