//! The simple API: [`Engine::load`] a model, [`Engine::generate`] text, or stream tokens.
//!
//! ```no_run
//! use bitnet_inference::{Engine, GenerationConfig};
//! let mut engine = Engine::load("path/to/model")?;
//! let out = engine.generate("The meaning of life is", &GenerationConfig::default())?;
//! println!("{}", out.text);
//! # Ok::<(), bitnet_core::Error>(())
//! ```

use crate::backend::{CpuBackend, LmHeadMode};
use crate::chat::{ChatMessage, ChatTemplate};
use crate::config::{BitNetConfig, LinearClass, Quantization};
use crate::formats::{self, ModelFile};
use crate::models::weights::{self, ScaleConvention, TensorSource, WeightKind};
use crate::models::{synthetic, Dims};
use crate::runner::{ModelRunner, Runner};
use crate::sampling::{Sampler, SamplingParams};
use crate::sampling::{StopChecker, StopConditions, StopReason as StopKind};
use crate::tokenizer::{GgufVocabInput, StreamDecoder, Tokenizer};
use bitnet_core::{DeviceRequest, Error, Result, ResultExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// Options for loading a model.
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    path: Option<PathBuf>,
    synthetic: Option<String>,
    device: DeviceRequest,
    threads: usize,
    context: Option<usize>,
    prefill_chunk: usize,
    lm_head: LmHeadMode,
    profile: bool,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            path: None,
            synthetic: None,
            device: DeviceRequest::Auto,
            threads: 0,
            context: None,
            prefill_chunk: 128,
            lm_head: LmHeadMode::default(),
            profile: false,
        }
    }
}

impl EngineBuilder {
    /// A model file or HF directory.
    pub fn model(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }
    /// A synthetic model (`2b4t`, `large`, `tiny`) with random weights instead of a file.
    pub fn synthetic(mut self, name: impl Into<String>) -> Self {
        self.synthetic = Some(name.into());
        self
    }
    /// Device request (`auto` falls back to the CPU).
    pub fn device(mut self, d: DeviceRequest) -> Self {
        self.device = d;
        self
    }
    /// CPU threads (0 = all cores).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }
    /// KV-cache length in tokens (default: the model's max positions, at most 4096).
    pub fn context_len(mut self, n: usize) -> Self {
        self.context = Some(n);
        self
    }
    /// Rows per prefill forward call.
    pub fn prefill_chunk(mut self, n: usize) -> Self {
        self.prefill_chunk = n.max(1);
        self
    }
    /// How the vocabulary projection is computed.
    pub fn lm_head(mut self, m: LmHeadMode) -> Self {
        self.lm_head = m;
        self
    }

    /// Time every backend operation (see [`Engine::take_profile`]).
    pub fn profile(mut self, on: bool) -> Self {
        self.profile = on;
        self
    }

    /// Loads the model.
    pub fn build(self) -> Result<Engine> {
        self.build_with_progress(|_, _| {})
    }

    /// Loads the model, reporting `(layers_done, layers)` as it goes.
    pub fn build_with_progress(self, progress: impl FnMut(usize, usize)) -> Result<Engine> {
        let sel = self.device.select(probe_cuda)?;
        let t0 = Instant::now();
        let (runner, file, dir) = match sel.device {
            #[cfg(feature = "cuda")]
            bitnet_core::Device::Cuda(i) => {
                self.load_runner(crate::backend::CudaBackend::new(i)?, progress)?
            }
            _ => {
                let mut backend = CpuBackend::new(self.threads);
                if self.profile {
                    backend = backend.with_profiling();
                }
                self.load_runner(backend, progress)?
            }
        };
        let (tokenizer, chat, eos) = match (&file, &dir) {
            (Some(f), Some(d)) => load_text_side(f, d)?,
            _ => (None, None, Vec::new()),
        };
        Ok(Engine {
            runner,
            tokenizer,
            chat,
            eos,
            cached: Vec::new(),
            logits: Vec::new(),
            load_s: t0.elapsed().as_secs_f64(),
            fallback: sel.fallback_reason,
        })
    }
}

/// A runner with the model file and its directory (for the tokenizer).
type LoadedRunner = (Box<dyn Runner>, Option<ModelFile>, Option<PathBuf>);

impl EngineBuilder {
    /// Builds the model on `backend` and wraps it in a runner; also returns the model file and
    /// its directory (for the tokenizer).
    fn load_runner<B: crate::backend::Backend + 'static>(
        &self,
        backend: B,
        progress: impl FnMut(usize, usize),
    ) -> Result<LoadedRunner> {
        let (model, file, dir) = match (&self.path, &self.synthetic) {
            (_, Some(name)) => {
                let dims = synthetic::preset(name)?;
                (synthetic::build(backend, dims, 42, self.lm_head)?, None, None)
            }
            (Some(p), None) => {
                let file = formats::load(p).with_context(|| format!("loading {}", p.display()))?;
                let dims = dims_from_config(&file.config);
                let kind = weight_kind(&file.config)?;
                let m = weights::build(
                    backend,
                    dims,
                    &file.tensors as &dyn TensorSource,
                    kind,
                    file.config.tie_word_embeddings,
                    self.lm_head,
                    progress,
                )
                .with_context(|| format!("building the model from {}", p.display()))?;
                let dir =
                    if p.is_dir() { Some(p.clone()) } else { p.parent().map(Path::to_path_buf) };
                (m, Some(file), dir)
            }
            (None, None) => {
                return Err(Error::invalid("no model given (a path or a synthetic name)"))
            }
        };
        let dims = model.dims().clone();
        let context = self.context.unwrap_or(dims.max_positions.min(4096)).max(1);
        let runner: Box<dyn Runner> =
            Box::new(ModelRunner::new(model, context, self.prefill_chunk.min(context))?);
        Ok((runner, file, dir))
    }
}

fn probe_cuda(ordinal: usize) -> Result<()> {
    #[cfg(feature = "cuda")]
    return crate::backend::cuda::probe(ordinal).map(|_| ());
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err(Error::Device("this build has no CUDA backend".into()))
    }
}

/// The model dimensions a config describes.
pub(crate) fn dims_from_config(c: &BitNetConfig) -> Dims {
    Dims {
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        layers: c.num_hidden_layers,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        vocab: c.vocab_size,
        max_positions: c.max_position_embeddings,
        eps: c.rms_norm_eps as f32,
        rope_theta: c.rope_theta as f32,
    }
}

/// How the projection weights of a checkpoint with this config are stored.
pub(crate) fn weight_kind(c: &BitNetConfig) -> Result<WeightKind> {
    Ok(match c.quantization {
        Quantization::None => {
            return Err(Error::unsupported(
                "config.json has no quantization_config: Hugging Face would run this model \
                 unquantized (plain nn.Linear); BitNet checkpoints carry a bitnet quantization_config",
            ))
        }
        Quantization::Online => WeightKind::Online,
        Quantization::OfflinePacked { linear_class: LinearClass::AutoBitLinear } => {
            WeightKind::Offline(ScaleConvention::Multiply)
        }
        Quantization::OfflinePacked { linear_class: LinearClass::BitLinear } => {
            WeightKind::Offline(ScaleConvention::Divide)
        }
    })
}

type TextSide = (Option<Tokenizer>, Option<ChatTemplate>, Vec<u32>);

fn load_text_side(file: &ModelFile, dir: &Path) -> Result<TextSide> {
    let tj = dir.join("tokenizer.json");
    let tok = if file.gguf_vocab.is_none() && tj.is_file() {
        Some(Tokenizer::from_file(&tj)?)
    } else if let Some(v) = &file.gguf_vocab {
        Some(Tokenizer::from_gguf_vocab(gguf_vocab_input(v))?)
    } else {
        None
    };
    let chat = match (&file.gguf_vocab, &tok) {
        // A GGUF carries its own template; the directory around it is not the model's.
        (Some(v), Some(t)) => match &v.chat_template {
            Some(src) => {
                let name = |id: Option<u32>| id.and_then(|i| t.id_to_token(i)).unwrap_or_default();
                Some(ChatTemplate::from_jinja(src, &name(t.bos_id()), &name(t.eos_id()))?)
            }
            None => None,
        },
        _ => ChatTemplate::from_tokenizer_config(dir.join("tokenizer_config.json"))?,
    };
    let mut eos = file.config.eos_token_ids.clone();
    if let Some(t) = &tok {
        eos.extend(t.eos_id());
        eos.extend(t.eot_id());
    }
    eos.sort_unstable();
    eos.dedup();
    Ok((tok, chat, eos))
}

fn gguf_vocab_input(v: &formats::GgufVocab) -> GgufVocabInput {
    GgufVocabInput {
        model: v.model.clone(),
        tokens: v.tokens.clone(),
        merges: v.merges.clone(),
        token_types: v.token_types.clone(),
        bos: v.bos_token_id,
        eos: v.eos_token_id,
        pre: v.pre.clone(),
    }
}

/// A loaded model ready to generate.
pub struct Engine {
    runner: Box<dyn Runner>,
    tokenizer: Option<Tokenizer>,
    chat: Option<ChatTemplate>,
    eos: Vec<u32>,
    /// Token ids whose keys/values are in the KV cache (reused as a prefix).
    cached: Vec<u32>,
    logits: Vec<f32>,
    load_s: f64,
    fallback: Option<String>,
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
        let v = self.dims().vocab;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(Error::invalid(format!(
                "token id {bad} is out of range (vocabulary of {v})"
            )));
        }
        if ids.len() > self.context_len() {
            return Err(Error::invalid(format!(
                "the prompt has {} tokens but the context holds {}",
                ids.len(),
                self.context_len()
            )));
        }
        Ok(())
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
        let t0 = Instant::now();
        let mut logits = std::mem::take(&mut self.logits);
        self.runner.forward(&ids[reuse..], reuse, false, &mut logits)?;
        self.cached.extend_from_slice(&ids[reuse..]);
        timings.prompt_tokens = ids.len() - reuse;
        timings.prompt_s = t0.elapsed().as_secs_f64();

        let mut sampler = Sampler::new(cfg.sampling.clone())?;
        let mut stop_ids = cfg.stop_tokens.clone();
        if !cfg.ignore_eos {
            stop_ids.extend_from_slice(&self.eos);
        }
        let mut checker = StopChecker::new(StopConditions {
            max_tokens: Some(cfg.max_tokens),
            stop_ids,
            stop_strings: cfg.stop_strings.clone(),
        });
        let tok = self.tokenizer.as_ref();
        let mut decoder = StreamDecoder::new(true);
        let mut generated = Vec::new();
        let mut reason = StopReason::MaxTokens;
        let t1 = Instant::now();
        let mut context: Vec<u32> = ids.to_vec();
        while generated.len() < cfg.max_tokens {
            let next = sampler.sample(&mut logits, &context)?;
            generated.push(next);
            context.push(next);
            let stop = checker.on_token(next);
            if let Some(StopKind::StopToken(_)) = stop {
                reason = StopReason::StopToken;
                break;
            }
            let delta = match tok {
                Some(t) => decoder.push(t, next)?,
                None => String::new(),
            };
            let (emit, by_string) = checker.push_text(&delta);
            if !on_token(&TokenEvent { id: next, text: &emit }) {
                reason = StopReason::Cancelled;
                break;
            }
            if by_string.is_some() {
                reason = StopReason::StopString;
                break;
            }
            if stop.is_some() {
                break; // max tokens
            }
            if self.cached.len() >= self.context_len() {
                reason = StopReason::ContextFull;
                break;
            }
            let pos = self.cached.len();
            self.runner.forward(&[next], pos, false, &mut logits)?;
            self.cached.push(next);
        }
        if reason != StopReason::StopString && reason != StopReason::Cancelled {
            // Release text held back (an unfinished character or a possible stop-string prefix).
            let tail = match tok {
                Some(t) => decoder.finish(t)?,
                None => String::new(),
            };
            let (mut emit, _) = checker.push_text(&tail);
            emit.push_str(&checker.finish());
            if let (false, Some(&last)) = (emit.is_empty(), generated.last()) {
                on_token(&TokenEvent { id: last, text: &emit });
            }
        }
        let text = checker.text().to_string();
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

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
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
