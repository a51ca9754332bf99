//! The training loop: data and tokenizer, AdamW with warm-up + cosine decay and gradient
//! clipping, periodic held-out evaluation, checkpoints and resume, the loss log, and the
//! final export as an HF BitNet directory. Deterministic for a given seed and config.

use crate::config::TrainConfig;
use crate::data::{bos_id, encode, read_corpus, split_held_out, train_tokenizer, Batch, Windows};
use crate::export::export_hf;
use crate::model::BitNetLm;
use crate::optim::{lr_at, AdamW, AdamWConfig};
use crate::params::{load_safetensors, Rng};
use crate::plot::{read_csv, write_csv, write_png, LogRow};
use crate::{bitlinear::Quant, CandleExt};
use bitnet_core::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokenizers::Tokenizer;

/// What to train, on what, and where to write it.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// A text file or a directory of `.txt` files.
    pub data: PathBuf,
    /// Output directory (HF model, tokenizer, loss log, checkpoint/).
    pub out: PathBuf,
    /// Model and schedule.
    pub config: TrainConfig,
    /// Seed of initialisation and batch sampling.
    pub seed: u64,
    /// Continue from `out/checkpoint` if there is one.
    pub resume: bool,
    /// Stop (with a checkpoint, no export) after this many steps, as an interrupted run would;
    /// the schedule still follows `config.steps`.
    pub stop_at: Option<usize>,
}

/// Something the loop reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A line of information (data sizes, tokenizer, resume point, ...).
    Info(String),
    /// A finished step.
    Step(StepReport),
}

/// One finished optimiser step.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Steps done.
    pub step: usize,
    /// Total steps of the run.
    pub total: usize,
    /// This step's training loss.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Training tokens per second since the run (or resume) started.
    pub tokens_per_s: f64,
    /// Held-out loss, when this step evaluated.
    pub eval_loss: Option<f32>,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Trainable parameters.
    pub params: usize,
    /// Steps done in total.
    pub steps: usize,
    /// Training loss of the last step.
    pub final_train_loss: f32,
    /// Loss on every held-out window at the end.
    pub eval_loss: f32,
    /// `exp(eval_loss)`: per-token held-out perplexity.
    pub eval_ppl: f64,
    /// Wall time of this invocation's training steps (evaluation included), seconds.
    pub wall_s: f64,
    /// Training tokens per second of this invocation.
    pub tokens_per_s: f64,
    /// Tokens in the training and held-out splits.
    pub tokens: (usize, usize),
}

fn tensor_batch(b: &Batch, seq: usize) -> Result<(Tensor, Tensor)> {
    let dev = Device::Cpu;
    Ok((
        Tensor::from_slice(&b.inputs, (b.rows, seq), &dev).ce()?,
        Tensor::from_slice(&b.targets, (b.rows, seq), &dev).ce()?,
    ))
}

/// Mean loss over the windows of `b`, `chunk` windows at a time (quantized forward, no update).
pub fn evaluate(model: &BitNetLm, b: &Batch, chunk: usize) -> Result<f32> {
    let seq = model.config().seq_len;
    let mut total = 0f64;
    for start in (0..b.rows).step_by(chunk.max(1)) {
        let rows = chunk.min(b.rows - start);
        let part = Batch {
            inputs: b.inputs[start * seq..(start + rows) * seq].to_vec(),
            targets: b.targets[start * seq..(start + rows) * seq].to_vec(),
            rows,
        };
        let (x, y) = tensor_batch(&part, seq)?;
        let l = model.loss(&x, &y, Quant::Ste)?.detach().to_scalar::<f32>().ce()?;
        total += f64::from(l) * rows as f64;
    }
    Ok((total / b.rows.max(1) as f64) as f32)
}

fn load_or_train_tokenizer(o: &TrainOptions, train_text: &str) -> Result<Tokenizer> {
    let path = o.out.join("tokenizer.json");
    if o.resume && path.is_file() {
        return Tokenizer::from_file(&path)
            .map_err(|e| Error::format("tokenizer", format!("{}: {e}", path.display())));
    }
    let tok = train_tokenizer(train_text, o.config.vocab_size)?;
    tok.save(&path, true)
        .map_err(|e| Error::format("tokenizer", format!("saving {}: {e}", path.display())))?;
    Ok(tok)
}

struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    fn save(&self, model: &BitNetLm, opt: &AdamW, cfg: &TrainConfig, seed: u64) -> Result<()> {
        let tmp = self.dir.with_extension("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut map = model.params().tensors()?;
        map.extend(opt.state()?);
        candle_core::safetensors::save(&map, tmp.join("state.safetensors")).ce()?;
        let meta = serde_json::json!({ "step": opt.steps_taken(), "seed": seed, "config": cfg });
        std::fs::write(tmp.join("state.json"), meta.to_string())
            .map_err(|e| Error::io(tmp.join("state.json"), e))?;
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        }
        std::fs::rename(&tmp, &self.dir).map_err(|e| Error::io(&self.dir, e))
    }

    /// Restores model and optimiser; returns the step to continue from.
    fn load(
        &self,
        model: &BitNetLm,
        opt: &mut AdamW,
        cfg: &TrainConfig,
        seed: u64,
    ) -> Result<usize> {
        let p = self.dir.join("state.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let meta: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format("checkpoint", e.to_string()))?;
        let saved: TrainConfig = serde_json::from_value(meta["config"].clone())
            .map_err(|e| Error::format("checkpoint", format!("config: {e}")))?;
        let same = TrainConfig { steps: cfg.steps, ..saved.clone() } == *cfg;
        if !same || meta["seed"].as_u64() != Some(seed) {
            return Err(Error::invalid(
                "the checkpoint was made with another config or seed (only --steps may change)",
            ));
        }
        let step = meta["step"]
            .as_u64()
            .ok_or_else(|| Error::format("checkpoint", "state.json has no step"))?
            as usize;
        let map = load_safetensors(&self.dir.join("state.safetensors"))?;
        model.params().load_from(&map)?;
        opt.load_state(&map, step)?;
        Ok(step)
    }
}

/// Trains a BitNet language model as `o` says, reporting through `on_event`; writes the HF
/// directory, `loss.csv`, `loss.png` and `checkpoint/` into `o.out`.
pub fn train(o: &TrainOptions, mut on_event: impl FnMut(Event)) -> Result<TrainSummary> {
    let cfg = &o.config;
    cfg.validate()?;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let text = read_corpus(&o.data)?;
    let (train_text, val_text) = split_held_out(&text);
    let tok = load_or_train_tokenizer(o, train_text)?;
    let bos = bos_id(&tok)?;
    let train_w = Windows::new(encode(&tok, train_text)?, cfg.seq_len, bos)
        .map_err(|e| e.context("the training split"))?;
    let val_w = Windows::new(encode(&tok, val_text)?, cfg.seq_len, bos)
        .map_err(|e| e.context("the held-out split (the last 10% of the corpus)"))?;
    on_event(Event::Info(format!(
        "corpus {} bytes: {} training tokens, {} held-out tokens (vocab {})",
        text.len(),
        train_w.len(),
        val_w.len(),
        tok.get_vocab_size(true)
    )));
    let model = BitNetLm::new(cfg, o.seed)?;
    let adam = AdamWConfig {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.adam_eps,
        weight_decay: cfg.weight_decay,
    };
    let mut opt = AdamW::new(model.params(), adam, BitNetLm::is_projection)?;
    let ckpt = Checkpoint { dir: o.out.join("checkpoint") };
    let mut start = 0;
    if o.resume && ckpt.dir.join("state.json").is_file() {
        start = ckpt.load(&model, &mut opt, cfg, o.seed)?;
        on_event(Event::Info(format!("resumed from step {start}")));
    }
    let csv = o.out.join("loss.csv");
    let mut rows = if start > 0 { read_csv(&csv, start)? } else { Vec::new() };
    on_event(Event::Info(format!("{} parameters", model.params().count())));
    let eval_set = val_w.spread(cfg.eval_windows);
    let t0 = Instant::now();
    let mut last_loss = f32::NAN;
    let end = o.stop_at.map_or(cfg.steps, |s| s.min(cfg.steps));
    for step in start..end {
        let batch =
            train_w.random(cfg.batch_size, &mut Rng::stream(o.seed, 1_000_000 + step as u64));
        let (x, y) = tensor_batch(&batch, cfg.seq_len)?;
        let loss = model.loss(&x, &y, Quant::Ste)?;
        last_loss = loss.to_scalar::<f32>().ce()?;
        if !last_loss.is_finite() {
            return Err(Error::invalid(format!("the loss diverged at step {}", step + 1)));
        }
        let grads = loss.backward().ce()?;
        let norm = opt.grad_norm(&grads)?;
        let scale =
            if cfg.grad_clip > 0.0 && norm > cfg.grad_clip { cfg.grad_clip / norm } else { 1.0 };
        let lr = lr_at(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio);
        opt.step(&grads, lr, scale)?;
        let done = step + 1;
        let tps =
            ((done - start) * cfg.batch_size * cfg.seq_len) as f64 / t0.elapsed().as_secs_f64();
        let eval_loss = if done.is_multiple_of(cfg.eval_every) || done == cfg.steps {
            Some(evaluate(&model, &eval_set, cfg.batch_size)?)
        } else {
            None
        };
        rows.push(LogRow { step: done, lr, train_loss: last_loss, eval_loss, tokens_per_s: tps });
        if eval_loss.is_some() {
            write_csv(&csv, &rows)?;
            write_png(&o.out.join("loss.png"), &rows)?;
        }
        if done.is_multiple_of(cfg.checkpoint_every) || done == end {
            ckpt.save(&model, &opt, cfg, o.seed)?;
        }
        let report = StepReport {
            step: done,
            total: cfg.steps,
            loss: last_loss,
            lr,
            tokens_per_s: tps,
            eval_loss,
        };
        on_event(Event::Step(report));
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let trained = end.saturating_sub(start);
    let tokens_per_s = (trained * cfg.batch_size * cfg.seq_len) as f64 / wall_s.max(1e-9);
    write_csv(&csv, &rows)?;
    if end < cfg.steps {
        let e = rows.last().and_then(|r| r.eval_loss).unwrap_or(f32::NAN);
        return Ok(TrainSummary {
            params: model.params().count(),
            steps: end,
            final_train_loss: last_loss,
            eval_loss: e,
            eval_ppl: f64::from(e).exp(),
            wall_s,
            tokens_per_s,
            tokens: (train_w.len(), val_w.len()),
        });
    }
    let full_val = val_w.spread(usize::MAX);
    let eval_loss = evaluate(&model, &full_val, cfg.batch_size)?;
    write_png(&o.out.join("loss.png"), &rows)?;
    export_hf(&model, &tok, &o.out)?;
    Ok(TrainSummary {
        params: model.params().count(),
        steps: cfg.steps,
        final_train_loss: last_loss,
        eval_loss,
        eval_ppl: f64::from(eval_loss).exp(),
        wall_s,
        tokens_per_s,
        tokens: (train_w.len(), val_w.len()),
    })
}

/// Loads a model's latent weights back from a run's checkpoint (for tests and tools).
pub fn load_checkpoint_model(out: &Path, cfg: &TrainConfig, seed: u64) -> Result<BitNetLm> {
    let model = BitNetLm::new(cfg, seed)?;
    let map = load_safetensors(&out.join("checkpoint").join("state.safetensors"))?;
    model.params().load_from(&map)?;
    Ok(model)
}
