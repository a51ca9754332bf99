//! The OpenAI request bodies this server reads, and their checks.
//!
//! Unknown fields are ignored (clients send many); known fields this server cannot honour
//! (`n` > 1, log-probabilities, penalties other than the repetition penalty, tools, ...) are
//! rejected with a message rather than ignored.

use crate::error::ApiError;
use crate::worker::Prompt;
use bitnet_inference::chat::ChatMessage;
use bitnet_inference::sampling::SamplingParams;
use bitnet_inference::GenerationConfig;
use serde::Deserialize;
use serde_json::Value;

/// Fields shared by `/v1/completions` and `/v1/chat/completions`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extension (llama.cpp, vLLM): keep the K most likely tokens.
    pub top_k: Option<usize>,
    /// Extension: drop tokens less likely than `min_p` times the most likely one.
    pub min_p: Option<f32>,
    /// Extension: CTRL/HF repetition penalty (1 = off).
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Extension: keep generating past end-of-sequence tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    // Fields accepted only at the values that mean "off".
    pub n: Option<u32>,
    pub best_of: Option<u32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub logit_bias: Option<Value>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub tools: Option<Value>,
    pub functions: Option<Value>,
    pub response_format: Option<Value>,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// A `/v1/completions` body.
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    pub prompt: Option<PromptField>,
    #[serde(flatten)]
    pub common: Common,
}

/// `prompt`: a string, a list of one string, token ids, or a list of one list of ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PromptField {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

/// A `/v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub messages: Option<Vec<Message>>,
    #[serde(flatten)]
    pub common: Common,
}

/// One chat message; `content` is a string or a list of `{"type": "text", "text": ...}` parts.
#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// The default when a chat request sets no `max_tokens`: up to the end of the context.
pub(crate) const UNTIL_CONTEXT_END: usize = usize::MAX;

/// Parses a JSON body, naming what is wrong with it.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid: {e}"), None))
}

impl Common {
    /// Checks the fields this server does not implement and the model name.
    pub fn check(&self, served: &str) -> Result<(), ApiError> {
        if let Some(m) = &self.model {
            if m != served {
                return Err(ApiError::model_not_found(m, served));
            }
        }
        let unsupported = |field: &'static str, what: &str| {
            Err(ApiError::unsupported(format!("`{field}` {what} is not supported yet"), field))
        };
        if self.n.is_some_and(|n| n != 1) {
            return unsupported("n", "other than 1");
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return unsupported("best_of", "other than 1");
        }
        if self.frequency_penalty.is_some_and(|p| p != 0.0) {
            return unsupported("frequency_penalty", "other than 0 (use repetition_penalty)");
        }
        if self.presence_penalty.is_some_and(|p| p != 0.0) {
            return unsupported("presence_penalty", "other than 0 (use repetition_penalty)");
        }
        if is_on(&self.logprobs) {
            return unsupported("logprobs", "");
        }
        if is_on(&self.top_logprobs) {
            return unsupported("top_logprobs", "");
        }
        if self.logit_bias.as_ref().is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty())) {
            return unsupported("logit_bias", "");
        }
        if self.echo == Some(true) {
            return unsupported("echo", "");
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return unsupported("suffix", "");
        }
        if is_on(&self.tools) || is_on(&self.functions) {
            return unsupported("tools", "(function calling)");
        }
        if let Some(f) = &self.response_format {
            if f.get("type").and_then(Value::as_str).is_some_and(|t| t != "text") {
                return unsupported("response_format", "other than text");
            }
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid(
                "`stream_options` is only allowed when `stream` is true",
                Some("stream_options"),
            ));
        }
        Ok(())
    }

    /// The generation config these fields describe; `default_max` when no maximum is given.
    pub fn config(&self, default_max: usize, add_bos: bool) -> Result<GenerationConfig, ApiError> {
        let seed = self.seed.unwrap_or_else(SamplingParams::clock_seed);
        let d = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            seed,
        };
        sampling.validate().map_err(ApiError::from_engine)?;
        let stop_strings = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop_strings.iter().any(String::is_empty) {
            return Err(ApiError::invalid("a stop string is empty", Some("stop")));
        }
        Ok(GenerationConfig {
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(default_max),
            sampling,
            stop_strings,
            stop_tokens: Vec::new(),
            ignore_eos: self.ignore_eos,
            add_bos,
        })
    }

    /// Whether a stream ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// Whether an optional field holds something other than null, false, 0 or an empty list.
fn is_on(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

impl CompletionRequest {
    /// The prompt: one text or one list of token ids.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        let many = || {
            ApiError::unsupported(
                "a `prompt` list of more than one prompt is not supported yet",
                "prompt",
            )
        };
        match &self.prompt {
            None => Err(ApiError::invalid("`prompt` is required", Some("prompt"))),
            Some(PromptField::Text(t)) => Ok(Prompt::Text(t.clone())),
            Some(PromptField::Ids(ids)) => Ok(Prompt::Ids(ids.clone())),
            Some(PromptField::Texts(v)) if v.len() == 1 => Ok(Prompt::Text(v[0].clone())),
            Some(PromptField::IdLists(v)) if v.len() == 1 => Ok(Prompt::Ids(v[0].clone())),
            Some(_) => Err(many()),
        }
    }
}

impl ChatRequest {
    /// The conversation, with text parts joined.
    pub fn messages(&self) -> Result<Prompt, ApiError> {
        let msgs = match &self.messages {
            None => return Err(ApiError::invalid("`messages` is required", Some("messages"))),
            Some(m) if m.is_empty() => {
                return Err(ApiError::invalid("`messages` is empty", Some("messages")))
            }
            Some(m) => m,
        };
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut t = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(s)) => t.push_str(s),
                            (kind, _) => {
                                return Err(ApiError::unsupported(
                                    format!("message content of type `{kind}` is not supported yet (text only)"),
                                    "messages",
                                ))
                            }
                        }
                    }
                    t
                }
            };
            out.push(ChatMessage::new(m.role.clone(), text));
        }
        Ok(Prompt::Chat(out))
    }
}
