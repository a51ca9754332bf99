//! `bitnet generate`, `bitnet chat` and `bitnet logits`.

use anyhow::{bail, Context, Result};
use bitnet_inference::backend::{KvType, LmHeadMode};
use bitnet_inference::chat::ChatMessage;
use bitnet_inference::sampling::{argmax, SamplingParams};
use bitnet_inference::{Engine, GenerationConfig, Output};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

/// Which model to load and how.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a Hugging Face directory (config.json + *.safetensors) or a GGUF file
    /// (default: the model shipped in models/default).
    #[arg(short, long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Use a synthetic model with random weights instead of a file: 2b4t, tiny, 1bitLLM's large
    /// and 3b (SiLU), or the LLaMA-architecture falcon3-1b and llama3-8b.
    #[arg(long, value_name = "NAME", conflicts_with = "model")]
    pub synthetic: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Device: auto, cpu, cuda or cuda:N (auto falls back to the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Context length (KV-cache size in tokens; default: the model's, at most 4096).
    #[arg(long, value_name = "TOKENS")]
    pub ctx: Option<usize>,
    /// lm_head precision: i8 (fast; default for generation) or f32 (exact; default for logits).
    #[arg(long, value_name = "i8|f32")]
    pub lm_head: Option<String>,
    /// KV cache precision: f32 (exact; the default) or f16 (half the cache's memory and the
    /// bytes long-context decode reads; each key and value rounded to f16 when stored).
    #[arg(long, value_name = "f32|f16", default_value = "f32")]
    pub kv_cache: String,
}

impl ModelArgs {
    /// Loads the engine, with a progress bar on a terminal.
    pub fn load(&self, default_head: LmHeadMode) -> Result<Engine> {
        self.load_with(default_head, false)
    }

    /// The KV cache type `--kv-cache` names.
    pub fn kv_type(&self) -> Result<KvType> {
        Ok(self.kv_cache.parse::<KvType>()?)
    }

    /// Loads the engine, optionally with per-operation profiling.
    pub fn load_with(&self, default_head: LmHeadMode, profile: bool) -> Result<Engine> {
        let head = match &self.lm_head {
            Some(h) => h.parse::<LmHeadMode>()?,
            None => default_head,
        };
        let mut b = Engine::builder()
            .threads(self.threads)
            .device(self.device.parse()?)
            .lm_head(head)
            .kv_cache(self.kv_type()?)
            .profile(profile);
        if let Some(c) = self.ctx {
            if c == 0 {
                bail!("--ctx must be at least 1");
            }
            b = b.context_len(c);
        }
        b = match (&self.model, &self.synthetic) {
            (Some(p), _) => b.model(p),
            (None, Some(s)) => b.synthetic(s),
            (None, None) => b.model(default_model_dir()?),
        };
        let bar = progress_bar("loading");
        let engine = b.build_with_progress(|done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        });
        bar.finish_and_clear();
        let engine = engine?;
        if let Some(why) = engine.device_fallback() {
            eprintln!("note: device auto -> cpu ({why})");
        }
        Ok(engine)
    }
}

/// The model shipped in the repository (`models/default`), found from this crate's source
/// directory at build time: no download, no copy in the binary.
fn default_model_dir() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    if !dir.join("config.json").is_file() {
        bail!(
            "no model given and the shipped default model is not at {}: pass -m PATH \
             (an HF directory or a GGUF file)",
            dir.display()
        );
    }
    Ok(dir)
}

/// A layer-count progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress_bar(msg: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} layers ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(msg);
    bar
}

/// Sampling options shared by generate and chat.
#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 128)]
    pub max_tokens: usize,
    /// Temperature; 0 means greedy (always the most likely token).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens already in the context (1 = off).
    #[arg(long, default_value_t = 1.1)]
    pub repeat_penalty: f32,
    /// Random seed (default: from the clock; printed with --json).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SampleArgs {
    /// The generation config these options describe.
    pub fn config(&self) -> GenerationConfig {
        let seed = self.seed.unwrap_or_else(SamplingParams::clock_seed);
        GenerationConfig {
            max_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repeat_penalty,
                seed,
            },
            stop_strings: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            ..GenerationConfig::default()
        }
    }
}

/// `bitnet generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(short, long, conflicts_with = "ids")]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated (e.g. 128000,791,7438).
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// Do not prepend the beginning-of-text token to a text prompt (by default it goes first
    /// where the model's tokenizer adds one: its `add_bos_token` setting, post-processor or GGUF
    /// `tokenizer.ggml.add_bos_token`).
    #[arg(long)]
    no_bos: bool,
    /// Print one JSON object (prompt_ids, generated_ids, text, timings) instead of streaming.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sample: SampleArgs,
}

pub fn run_generate(a: GenerateArgs) -> Result<()> {
    let mut cfg = a.sample.config();
    cfg.sampling.validate()?;
    cfg.add_bos = !a.no_bos;
    let mut engine = a.model.load(LmHeadMode::I8)?;
    let ids = match (&a.prompt, &a.ids) {
        (_, Some(ids)) => ids.clone(),
        (Some(p), None) => engine.encode(p, cfg.add_bos)?,
        (None, None) => bail!("give a prompt with -p TEXT or --ids 1,2,3"),
    };
    let out = if a.json {
        engine.generate_ids(&ids, &cfg)?
    } else {
        let mut stdout = std::io::stdout().lock();
        if let Some(p) = &a.prompt {
            write!(stdout, "{p}")?;
        }
        let show_ids = engine.tokenizer().is_none();
        let out = engine.generate_ids_stream(&ids, &cfg, |t| {
            let r =
                if show_ids { write!(stdout, " {}", t.id) } else { write!(stdout, "{}", t.text) };
            r.and_then(|_| stdout.flush()).is_ok()
        })?;
        writeln!(stdout)?;
        out
    };
    if a.json {
        println!("{}", output_json(&out, cfg.sampling.seed));
    } else {
        print_timings(&out);
    }
    Ok(())
}

fn output_json(o: &Output, seed: u64) -> serde_json::Value {
    serde_json::json!({
        "prompt_ids": o.prompt_ids,
        "generated_ids": o.generated_ids,
        "text": o.text,
        "stop_reason": format!("{:?}", o.stop_reason),
        "seed": seed,
        "timings": {
            "prompt_tokens": o.timings.prompt_tokens,
            "prompt_s": o.timings.prompt_s,
            "prompt_tokens_per_s": o.timings.prompt_tps(),
            "generated_tokens": o.timings.generated_tokens,
            "generate_s": o.timings.generate_s,
            "generate_tokens_per_s": o.timings.generate_tps(),
        }
    })
}

fn print_timings(o: &Output) {
    let t = &o.timings;
    eprintln!(
        "[prompt: {} tokens, {:.1} tokens/s | generated: {} tokens, {:.1} tokens/s | stop: {:?}]",
        t.prompt_tokens,
        t.prompt_tps(),
        t.generated_tokens,
        t.generate_tps(),
        o.stop_reason
    );
}

/// `bitnet chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message to start the conversation with.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sample: SampleArgs,
}

pub fn run_chat(a: ChatArgs) -> Result<()> {
    let mut cfg = a.sample.config();
    cfg.sampling.validate()?;
    cfg.add_bos = false; // the chat template writes it
    let mut engine = a.model.load(LmHeadMode::I8)?;
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &a.system {
        history.push(ChatMessage::new("system", s));
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "chat with {} — empty line or Ctrl-D to quit, /reset to clear",
            engine.describe()
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let line = line.trim();
        if line.is_empty() && interactive {
            break;
        }
        if line.is_empty() {
            continue;
        }
        if line == "/reset" {
            history.retain(|m| m.role == "system");
            continue;
        }
        history.push(ChatMessage::new("user", line));
        let prompt = engine.chat_prompt(&history)?;
        let ids = engine.encode(&prompt, false)?;
        let mut stdout = std::io::stdout().lock();
        let out = engine.generate_ids_stream(&ids, &cfg, |t| {
            write!(stdout, "{}", t.text).and_then(|_| stdout.flush()).is_ok()
        })?;
        writeln!(stdout)?;
        history.push(ChatMessage::new("assistant", out.text.trim()));
    }
    Ok(())
}

/// `bitnet logits`.
#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    /// Print `{"logits": [[...], ...]}` (one row per position).
    #[arg(long)]
    json: bool,
}

pub fn run_logits(a: LogitsArgs) -> Result<()> {
    let mut engine = a.model.load(LmHeadMode::F32)?;
    let rows = engine.logits(&a.ids)?;
    if a.json {
        println!("{}", serde_json::json!({ "logits": rows }));
    } else {
        for (i, r) in rows.iter().enumerate() {
            let (arg, max) = argmax(r);
            let head: Vec<String> = r.iter().take(8).map(|v| format!("{v:.4}")).collect();
            println!("pos {i} id {}: argmax {arg} ({max:.4}) [{} ...]", a.ids[i], head.join(", "));
        }
    }
    Ok(())
}
