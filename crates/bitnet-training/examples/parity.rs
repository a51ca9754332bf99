//! Compares a training run's checkpoint (training-side quantized eval forward) with its
//! exported HF directory run by bitnet-inference (f32 lm_head).
//! `cargo run --profile test -p bitnet-training --example parity -- OUT_DIR [small|tiny|FILE.toml] [SEED] [PROMPT]`
use bitnet_inference::backend::LmHeadMode;
use bitnet_inference::Engine;
use bitnet_training::trainer::load_checkpoint_model;
use bitnet_training::TrainConfig;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = PathBuf::from(args.get(1).ok_or("usage: parity OUT_DIR [CONFIG] [SEED] [PROMPT]")?);
    let cfg = TrainConfig::resolve(args.get(2).map_or("small", |s| s.as_str()))?;
    let seed = args.get(3).map_or(Ok(0), |s| s.parse())?;
    let prompt = args.get(4).map_or("ROMEO:\nWhat light through yonder window breaks?", |s| s);
    let model = load_checkpoint_model(&out, &cfg, seed)?;
    let mut engine = Engine::builder().model(&out).lm_head(LmHeadMode::F32).build()?;
    let ids = engine.encode(prompt, true)?;
    let (want, got) = (model.logits(&ids)?, engine.logits(&ids)?);
    let max = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let argmax = |r: &Vec<f32>| (0..r.len()).max_by(|&i, &j| r[i].total_cmp(&r[j]));
    let agree = want.iter().zip(&got).filter(|(a, b)| argmax(a) == argmax(b)).count();
    println!(
        "{} ids: max |err| {err:.3e}, max |logit| {max:.3}, ratio {:.2e}, top-1 agree {agree}/{}",
        ids.len(),
        err / max,
        ids.len()
    );
    Ok(())
}
