//! [`EngineBuilder`]: loading a model file (or a synthetic model) onto a device.

use super::Engine;
use crate::backend::{CpuBackend, FreqFactors, KvType, LmHeadMode, Rope};
use crate::chat::ChatTemplate;
use crate::config::{BitNetConfig, LinearClass, Quantization};
use crate::formats::{self, ModelFile};
use crate::models::weights::{self, ScaleConvention, TensorSource, WeightKind};
use crate::models::{synthetic, Dims};
use crate::runner::{ModelRunner, Runner};
use crate::tokenizer::Tokenizer;
use bitnet_core::{DeviceRequest, Error, Result, ResultExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    kv: KvType,
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
            kv: KvType::default(),
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

    /// How the KV cache stores keys and values (default f32; f16 halves its memory and the
    /// bytes long-context decode reads).
    pub fn kv_cache(mut self, kv: KvType) -> Self {
        self.kv = kv;
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
                let mut backend = crate::backend::CudaBackend::new(i)?;
                if self.profile {
                    backend = backend.with_profiling();
                }
                self.load_runner(backend, progress)?
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
        let (mut model, file, dir) = match (&self.path, &self.synthetic) {
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
        model.set_kv_type(self.kv);
        let dims = model.dims().clone();
        let context = self.context.unwrap_or(default_context(dims.max_positions)).max(1);
        let runner: Box<dyn Runner> =
            Box::new(ModelRunner::new(model, context, self.prefill_chunk.min(context))?);
        Ok((runner, file, dir))
    }
}

/// The context (KV-cache positions per sequence) a model gets unless
/// [`EngineBuilder::context_len`] says otherwise: its `max_position_embeddings`, at most 4096.
pub fn default_context(max_positions: usize) -> usize {
    max_positions.clamp(1, 4096)
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
        rope: Rope {
            theta: c.rope_theta as f32,
            llama3: c.rope_scaling,
            // Validated with the config (BitNetConfig::validate): every value positive.
            factors: c.rope_freq_factors.as_deref().and_then(FreqFactors::new),
        },
        arch: c.architecture,
        act: c.hidden_act,
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

/// The tokenizer, chat template and stop ids: from the GGUF file's own vocabulary, else from
/// the directory's `tokenizer.json`, else from its SentencePiece `tokenizer.model`.
fn load_text_side(file: &ModelFile, dir: &Path) -> Result<TextSide> {
    let tj = dir.join("tokenizer.json");
    let spm = dir.join("tokenizer.model");
    let tok = if file.gguf_vocab.is_none() && tj.is_file() {
        Some(Tokenizer::from_file(&tj)?)
    } else if file.gguf_vocab.is_none() && spm.is_file() {
        Some(Tokenizer::from_spm_file(&spm)?)
    } else if let Some(v) = &file.gguf_vocab {
        Some(Tokenizer::from_gguf_vocab(v)?)
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
