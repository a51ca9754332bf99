//! `bitnet bench`: prompt-processing and generation speed, in the style of llama-bench.

use crate::generate::ModelArgs;
use anyhow::{bail, Result};
use bitnet_inference::backend::{CacheShape, KvType, LmHeadMode};
use bitnet_inference::models::Dims;
use bitnet_inference::sampling::SamplingParams;
use bitnet_inference::{Engine, GenerationConfig};
use clap::Args;
use std::time::Instant;

/// `bitnet bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens for the prompt-processing test (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    n_prompt: usize,
    /// Tokens for the generation test (0 = skip): greedy generation from one prompt token, the
    /// next token picked on the backend as `generate` does.
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    n_gen: usize,
    /// Tokens already in the KV cache when the generation test starts (as llama-bench's -d):
    /// decode speed deep in a conversation, where attention reads the whole cache.
    #[arg(short = 'd', long, default_value_t = 0, value_name = "TOKENS")]
    depth: usize,
    /// Repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long, default_value_t = 3)]
    reps: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also time every backend operation and print where generation time goes.
    #[arg(long)]
    profile: bool,
    /// Batched decode test at these batch sizes (comma-separated): each sequence gets its own
    /// KV-cache slot and an `-p`-token prompt, then `-n` steps carry one row per sequence.
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
}

struct Stat {
    mean: f64,
    sd: f64,
}

fn stat(v: &[f64]) -> Stat {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Stat { mean, sd: var.sqrt() }
}

/// Tokens per second of each repetition of `f` (which processes `tokens` tokens).
fn measure(reps: usize, tokens: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?; // warm-up
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        out.push(tokens as f64 / t.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// Positions each of `n_gen` decode steps after `depth` cached tokens attends to, on average
/// (depth + 1 ..= depth + n_gen), and the bytes of keys and values (stored as `kv`) that reads
/// per step.
fn kv_read_per_step(d: &Dims, depth: usize, n_gen: usize, kv: KvType) -> (f64, usize) {
    let positions = depth as f64 + (n_gen as f64 + 1.0) / 2.0;
    let (layers, kv_heads, head_dim) = (d.layers, d.kv_heads, d.head_dim);
    let one = CacheShape { layers, slots: 1, max_seq: 1, kv_heads, head_dim, kv };
    let per_position = one.bytes().map_or(0, |b| b as usize);
    (positions, (positions * per_position as f64) as usize)
}

/// Peak resident memory of this process in bytes (Linux), if known.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(a: BenchArgs) -> Result<()> {
    let mode = match &a.model.lm_head {
        Some(h) => h.parse::<LmHeadMode>()?,
        None => LmHeadMode::I8,
    };
    let mut engine = a.model.load_with(mode, a.profile)?;
    let d = engine.dims().clone();
    let ctx = engine.context_len();
    if a.n_prompt + a.n_gen > ctx {
        bail!("-p {} + -n {} exceeds the context of {ctx}", a.n_prompt, a.n_gen);
    }
    if a.depth + a.n_gen > ctx {
        bail!("-d {} + -n {} exceeds the context of {ctx} (--ctx sets it)", a.depth, a.n_gen);
    }
    let ids: Vec<u32> =
        (0..a.n_prompt.max(a.depth + 1)).map(|i| ((i * 7919 + 13) % d.vocab) as u32).collect();
    let pp = if a.n_prompt > 0 {
        Some(measure(a.reps, a.n_prompt, || {
            engine.forward_tokens(&ids, 0, false)?;
            Ok(())
        })?)
    } else {
        None
    };
    let pp_profile = engine.take_profile();
    // Generation as `bitnet generate` runs it: greedy, the token picked on the backend (on a
    // GPU only its id comes back), n_gen forward passes from one prompt token.
    let tg_cfg = GenerationConfig {
        max_tokens: a.n_gen,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        add_bos: false,
        ..GenerationConfig::default()
    };
    let tg = if a.n_gen > 0 {
        // The depth's tokens run once, untimed; each repetition then reuses them (the engine
        // keeps a prompt's cached prefix) and runs the last prompt token and the steps.
        let prompt = &ids[..a.depth + 1];
        if a.depth > 0 {
            engine.forward_tokens(&prompt[..a.depth], 0, false)?;
        }
        Some(measure(a.reps, a.n_gen, || {
            let out = engine.generate_ids(prompt, &tg_cfg)?;
            if out.generated_ids.len() != a.n_gen {
                bail!("generation stopped after {} tokens", out.generated_ids.len());
            }
            Ok(())
        })?)
    } else {
        None
    };
    let tg_profile = engine.take_profile();
    let batched = batched_decode(&mut engine, &a)?;
    let ternary = ternary_params(&engine);
    let head_bytes = d.vocab * d.hidden * if mode == LmHeadMode::I8 { 1 } else { 4 };
    let kv = a.model.kv_type()?;
    let (kv_positions, kv_bytes) = kv_read_per_step(&d, a.depth, a.n_gen, kv);
    let bytes_per_token = ternary / 4 + head_bytes + kv_bytes;
    let name = match (&a.model.model, &a.model.synthetic) {
        (Some(p), _) => p.display().to_string(),
        (_, Some(s)) => format!("synthetic {s}"),
        _ => String::new(),
    };
    let params = ternary + 2 * d.vocab * d.hidden;
    let rss = peak_rss();
    if a.json {
        let j = serde_json::json!({
            "model": name, "backend": engine.describe(), "params": params,
            "pp": pp.as_ref().map(|v| stat(v).mean), "pp_sd": pp.as_ref().map(|v| stat(v).sd),
            "tg": tg.as_ref().map(|v| stat(v).mean), "tg_sd": tg.as_ref().map(|v| stat(v).sd),
            "n_prompt": a.n_prompt, "n_gen": a.n_gen, "depth": a.depth,
            "bytes_per_token": bytes_per_token, "kv_bytes_per_token": kv_bytes, "peak_rss": rss,
            "batched": batched.iter().map(|(b, g, m)| serde_json::json!({
                "batch": b, "tg": stat(g).mean, "tg_sd": stat(g).sd,
                "tg_no_argmax": stat(m).mean, "tg_no_argmax_sd": stat(m).sd,
            })).collect::<Vec<_>>(),
        });
        println!("{j}");
        return Ok(());
    }
    println!("| model | params | backend | test | t/s |");
    println!("| --- | ---: | --- | ---: | ---: |");
    let b = engine.describe();
    let p = format!("{:.2} B", params as f64 / 1e9);
    if let Some(v) = &pp {
        let s = stat(v);
        println!("| {name} | {p} | {b} | pp{} | {:.2} ± {:.2} |", a.n_prompt, s.mean, s.sd);
    }
    if let Some(v) = &tg {
        let s = stat(v);
        let test = match a.depth {
            0 => format!("tg{}", a.n_gen),
            depth => format!("tg{} @ d{depth}", a.n_gen),
        };
        println!("| {name} | {p} | {b} | {test} | {:.2} ± {:.2} |", s.mean, s.sd);
        println!(
            "\nbytes read per generated token: {:.1} MB (ternary {:.1} MB + lm_head {:.1} MB + \
             {} KV cache {:.1} MB at {kv_positions:.1} positions on average); \
             at {:.2} tokens/s that is {:.2} GB/s",
            bytes_per_token as f64 / 1e6,
            (ternary / 4) as f64 / 1e6,
            head_bytes as f64 / 1e6,
            kv.name(),
            kv_bytes as f64 / 1e6,
            s.mean,
            s.mean * bytes_per_token as f64 / 1e9
        );
    }
    if !batched.is_empty() {
        println!(
            "\nbatched decode (pp{} per sequence, tg{} steps; aggregate generated t/s):",
            a.n_prompt.max(1),
            a.n_gen
        );
        println!("| batch | t/s (greedy, argmax on the backend) | t/s (logits row 0 only) |");
        println!("| ---: | ---: | ---: |");
        for (bs, g, m) in &batched {
            let (g, m) = (stat(g), stat(m));
            println!("| {bs} | {:.2} ± {:.2} | {:.2} ± {:.2} |", g.mean, g.sd, m.mean, m.sd);
        }
    }
    if let Some(r) = rss {
        println!("peak RSS: {:.1} MiB", r as f64 / (1 << 20) as f64);
    }
    let runs = (a.reps.max(1) + 1) as f64; // warm-up included
    print_profile("prompt processing", &pp_profile, runs * a.n_prompt as f64);
    print_profile("generation", &tg_profile, runs * a.n_gen as f64);
    Ok(())
}

/// Per batch size: aggregate tokens/s of each repetition, greedy and without host argmax.
type Batched = Vec<(usize, Vec<f64>, Vec<f64>)>;

/// Profile of the last batched run (decode steps only), printed per step.
fn print_batched_profile(engine: &Engine, bs: usize, steps: usize) {
    let p = engine.take_profile();
    print_profile(&format!("batch-{bs} decode"), &p, steps as f64);
}

fn batched_decode(engine: &mut Engine, a: &BenchArgs) -> Result<Batched> {
    let vocab = engine.dims().vocab;
    let prompt = a.n_prompt.max(1);
    if !a.batch.is_empty() && a.n_gen == 0 {
        bail!("--batch needs -n > 0 decode steps");
    }
    let mut out = Vec::new();
    for &bs in &a.batch {
        if bs == 0 {
            bail!("--batch sizes must be at least 1");
        }
        let prompts: Vec<Vec<u32>> = (0..bs)
            .map(|b| (0..prompt).map(|i| ((i * 7919 + b * 104_729 + 13) % vocab) as u32).collect())
            .collect();
        let mut runs = |greedy: bool| -> Result<Vec<f64>> {
            engine.decode_batch(&prompts, a.n_gen, greedy)?; // warm-up
            (0..a.reps.max(1))
                .map(|_| Ok(engine.decode_batch(&prompts, a.n_gen, greedy)?.tokens_per_second()))
                .collect()
        };
        let g = runs(true)?;
        let m = runs(false)?;
        if a.profile {
            // The last run's decode steps (each call's prefill profile is discarded).
            print_batched_profile(engine, bs, a.n_gen);
        }
        out.push((bs, g, m));
    }
    Ok(out)
}

fn print_profile(what: &str, profile: &[(&'static str, f64, u64)], tokens: f64) {
    if profile.is_empty() || tokens == 0.0 {
        return;
    }
    let total: f64 = profile.iter().map(|p| p.1).sum();
    println!("\nwhere {what} time goes ({tokens} tokens or steps, warm-up included):");
    println!("| operation | ms/token | share | calls/token |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, secs, calls) in profile {
        println!(
            "| {name} | {:.3} | {:.1}% | {:.1} |",
            secs * 1e3 / tokens,
            100.0 * secs / total.max(1e-12),
            *calls as f64 / tokens
        );
    }
}

fn ternary_params(e: &Engine) -> usize {
    let d = e.dims();
    let (qd, kvd) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    d.layers * (2 * d.hidden * qd + 2 * d.hidden * kvd + 3 * d.hidden * d.intermediate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_bytes_count_every_position_a_step_attends_to() {
        let d = Dims {
            hidden: 2560,
            intermediate: 6912,
            layers: 30,
            heads: 20,
            kv_heads: 5,
            head_dim: 128,
            vocab: 128256,
            max_positions: 4096,
            eps: 1e-5,
            rope: bitnet_inference::backend::Rope::new(5e5),
            arch: bitnet_inference::config::Architecture::BitNet,
            act: bitnet_inference::config::HiddenAct::Relu2,
        };
        // One step at depth 0 attends to its own position: 30 layers x 640 x (K + V) x 4 bytes.
        assert_eq!(kv_read_per_step(&d, 0, 1, KvType::F32), (1.0, 153_600));
        // Steps at positions 1001..=1064 attend to 1032.5 positions on average.
        assert_eq!(kv_read_per_step(&d, 1000, 64, KvType::F32), (1032.5, 158_592_000));
        // An f16 cache: half the bytes.
        assert_eq!(kv_read_per_step(&d, 1000, 64, KvType::F16), (1032.5, 79_296_000));
    }
}
