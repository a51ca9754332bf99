//! `bitnet train`: quantization-aware training of a BitNet model into an HF directory.

use anyhow::{Context, Result};
use bitnet_training::{train, Event, TrainConfig, TrainOptions};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;

/// `bitnet train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training text: a file, or a directory of .txt files (the last 10% is held out).
    #[arg(long, value_name = "PATH")]
    data: PathBuf,
    /// Model and schedule: `tiny`, `small`, or a TOML file (missing keys take `small`'s values).
    #[arg(long, default_value = "small", value_name = "tiny|small|FILE.toml")]
    config: String,
    /// Output directory: the HF model, tokenizer, loss.csv, loss.png and checkpoint/.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Optimiser steps (overrides the config's).
    #[arg(long)]
    steps: Option<usize>,
    /// Seed of initialisation and batch sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from DIR/checkpoint (same config and seed; --steps may grow).
    #[arg(long)]
    resume: bool,
}

fn bar(total: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(total as u64);
    b.set_style(
        ProgressStyle::with_template("[{bar:30}] step {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b
}

pub fn run(a: TrainArgs) -> Result<()> {
    let mut config = TrainConfig::resolve(&a.config)?;
    if let Some(s) = a.steps {
        config.steps = s;
    }
    config.validate()?;
    let opts = TrainOptions {
        data: a.data,
        out: a.out.clone(),
        config,
        seed: a.seed,
        resume: a.resume,
        stop_at: None,
    };
    let pb = bar(opts.config.steps);
    // Without a terminal, print a line at every evaluation instead of drawing a bar.
    let plain = pb.is_hidden();
    let summary = train(&opts, |ev| match ev {
        Event::Info(s) if plain => eprintln!("{s}"),
        Event::Info(s) => pb.println(s),
        Event::Step(r) => {
            pb.set_position(r.step as u64);
            pb.set_message(format!("loss {:.4} | {:.0} tok/s", r.loss, r.tokens_per_s));
            if let Some(e) = r.eval_loss {
                let line = format!(
                    "step {}/{}: train loss {:.4}, held-out loss {:.4} (ppl {:.2}), lr {:.2e}, {:.0} tok/s",
                    r.step,
                    r.total,
                    r.loss,
                    e,
                    f64::from(e).exp(),
                    r.lr,
                    r.tokens_per_s
                );
                if plain {
                    eprintln!("{line}");
                } else {
                    pb.println(line);
                }
            }
        }
    })
    .with_context(|| format!("training into {}", a.out.display()))?;
    pb.finish_and_clear();
    eprintln!(
        "done: {} parameters, {} steps, held-out loss {:.4} (perplexity {:.2}) over {} tokens, \
         {:.0} s, {:.0} tokens/s",
        summary.params,
        summary.steps,
        summary.eval_loss,
        summary.eval_ppl,
        summary.tokens.1,
        summary.wall_s,
        summary.tokens_per_s
    );
    eprintln!(
        "model written to {} (try: bitnet generate -m {} -p \"ROMEO:\")",
        a.out.display(),
        a.out.display()
    );
    Ok(())
}
