//! Times the parts of one training step of a config (forward, backward, optimiser).
//! `cargo run --profile test -p bitnet-training --example step_time -- small`
use bitnet_training::optim::{AdamW, AdamWConfig};
use bitnet_training::{BitNetLm, Quant, TrainConfig};
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "small".into());
    let cfg = TrainConfig::resolve(&name)?;
    let m = BitNetLm::new(&cfg, 0)?;
    let adam = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::new(m.params(), adam, BitNetLm::is_projection)?;
    let n = cfg.batch_size * cfg.seq_len;
    let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % cfg.vocab_size as u32).collect();
    let x = Tensor::from_slice(&ids, (cfg.batch_size, cfg.seq_len), &Device::Cpu)?;
    for _ in 0..3 {
        let t = Instant::now();
        let logits = m.forward(&x, Quant::Ste)?;
        let t_fwd = t.elapsed();
        let loss = m.loss(&x, &x, Quant::Ste)?;
        let t_loss = t.elapsed() - t_fwd;
        let g = loss.backward()?;
        let t_bwd = t.elapsed() - t_fwd - t_loss;
        opt.grad_norm(&g)?;
        opt.step(&g, 1e-3, 1.0)?;
        let t_opt = t.elapsed() - t_fwd - t_loss - t_bwd;
        drop(logits);
        println!("fwd {t_fwd:?} fwd+loss {t_loss:?} bwd {t_bwd:?} opt {t_opt:?} => {:.0} tok/s (one fwd+bwd)", n as f64 / (t_loss + t_bwd + t_opt).as_secs_f64());
    }
    Ok(())
}
