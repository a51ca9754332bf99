//! End to end on a tiny model: the loss falls well below its start, training is
//! deterministic across an interruption + resume, and the exported HF directory loads in
//! `bitnet-inference` with logits equal to the training-side evaluation forward (within 1e-2
//! of the max |logit|, the parity tolerance) and the same greedy tokens.

use bitnet_inference::backend::LmHeadMode;
use bitnet_inference::sampling::SamplingParams;
use bitnet_inference::{Engine, GenerationConfig};
use bitnet_training::params::Rng;
use bitnet_training::plot::read_csv;
use bitnet_training::trainer::load_checkpoint_model;
use bitnet_training::{train, TrainConfig, TrainOptions};
use std::path::{Path, PathBuf};

/// A corpus with learnable structure: sentences from a tiny grammar.
fn corpus(dir: &Path) -> PathBuf {
    let (who, verb, what) = (
        ["the king", "a fool", "my lord", "the queen", "good Romeo", "sweet Juliet"],
        ["loves", "fears", "calls", "serves", "sees"],
        ["the crown", "his horse", "the night", "a rose", "her father"],
    );
    let mut r = Rng::new(5);
    let mut s = String::new();
    for _ in 0..1500 {
        let line = format!("{} {} {}.\n", who[r.below(6)], verb[r.below(5)], what[r.below(5)]);
        s.push_str(&line);
    }
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("corpus.txt");
    std::fs::write(&p, s).unwrap();
    p
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        vocab_size: 320,
        seq_len: 32,
        batch_size: 8,
        steps,
        lr: 1e-2,
        warmup_steps: 5,
        eval_every: 10,
        eval_windows: 16,
        checkpoint_every: 10,
        ..TrainConfig::tiny()
    }
}

fn opts(dir: &Path, data: &Path, steps: usize) -> TrainOptions {
    TrainOptions {
        data: data.to_path_buf(),
        out: dir.to_path_buf(),
        config: config(steps),
        seed: 3,
        resume: false,
        stop_at: None,
    }
}

#[test]
fn training_learns_resumes_deterministically_and_exports_a_model_inference_runs_identically() {
    let root = std::env::temp_dir().join(format!("bitnet-train-e2e-{}", std::process::id()));
    let data = corpus(&root.join("data"));
    let steps = 60;

    // 1. A straight run: the loss falls well below its start (ln 320 = 5.8).
    let a = root.join("a");
    let sa = train(&opts(&a, &data, steps), |_| {}).unwrap();
    let rows = read_csv(&a.join("loss.csv"), usize::MAX).unwrap();
    let first = rows[0].train_loss;
    assert!(sa.eval_loss < 0.5 * first, "held-out loss {} vs first {first}", sa.eval_loss);
    assert!(a.join("loss.png").is_file() && a.join("model.safetensors").is_file());

    // 2. Interrupted at 30, resumed to 60: the same losses, bit for bit.
    let b = root.join("b");
    let mut ob = opts(&b, &data, steps);
    ob.stop_at = Some(30);
    train(&ob, |_| {}).unwrap();
    ob.stop_at = None;
    ob.resume = true;
    let sb = train(&ob, |_| {}).unwrap();
    let rb = read_csv(&b.join("loss.csv"), usize::MAX).unwrap();
    let key = |r: &bitnet_training::plot::LogRow| (r.step, r.lr, r.train_loss, r.eval_loss);
    assert_eq!(rows.iter().map(key).collect::<Vec<_>>(), rb.iter().map(key).collect::<Vec<_>>());
    assert_eq!(sa.eval_loss, sb.eval_loss);

    // 3. The export runs in bitnet-inference exactly as the training-side eval forward.
    let model = load_checkpoint_model(&a, &config(steps), 3).unwrap();
    let mut engine =
        Engine::builder().model(&a).threads(1).lm_head(LmHeadMode::F32).build().unwrap();
    let ids = engine.encode("the king loves the crown.\nmy lord", true).unwrap();
    assert_eq!(ids[0], 0, "BOS first");
    let want = model.logits(&ids).unwrap();
    let got = engine.logits(&ids).unwrap();
    let maxmag = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-2 * maxmag, "max |err| {err} vs max |logit| {maxmag}");
    eprintln!("parity: max |err| / max |logit| = {:.2e}", err / maxmag);

    let cfg = GenerationConfig {
        max_tokens: 12,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        ignore_eos: true,
        ..GenerationConfig::default()
    };
    let out = engine.generate_ids(&ids, &cfg).unwrap();
    let mut seq = ids.clone();
    for _ in 0..12 {
        let l = model.logits(&seq).unwrap();
        let last = l.last().unwrap();
        let arg = (0..last.len()).max_by(|&i, &j| last[i].total_cmp(&last[j])).unwrap();
        seq.push(arg as u32);
    }
    assert_eq!(out.generated_ids, seq[ids.len()..], "greedy tokens agree");
    std::fs::remove_dir_all(root).ok();
}
