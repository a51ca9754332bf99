//! `--stack POS`: the one-kernel decode step (`ops::decode_layers`) on 2B-4T's shapes: 30 layers
//! cycling over 4 distinct random weight sets (70 MB, more than the L2), one token at position
//! POS. Prints µs per step and per layer, then where a layer's time goes, from the kernel's
//! global-timer stamps (one stamped launch).

use super::{device_weights, Rng, Timer};
use bitnet_core::Result;
use bitnet_cuda::ops::{self, DeviceTernary, StackDims, StackLayer, DECODE_STAMPS};
use bitnet_cuda::Gpu;
use std::sync::Arc;

/// Random ternary matrices of `rows` rows each and `cols` columns, stacked when several.
fn ternary(gpu: &Arc<Gpu>, rng: &mut Rng, rows: &[usize], cols: usize) -> Result<DeviceTernary> {
    let mut parts = Vec::new();
    for &n in rows {
        parts.push(device_weights(gpu, rng, (n, cols), false)?.0.remove(0));
    }
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    DeviceTernary::stack(gpu, parts)
}

pub(super) fn bench_stack(gpu: &Arc<Gpu>, t: &Timer, pos: usize, iters: usize) -> Result<()> {
    let (h, f, heads, kvh, hd, layers) = (2560, 6912, 20, 5, 128, 30);
    let attn_split_len = gpu.attention_split_len();
    let dims = StackDims {
        hidden: h,
        inter: f,
        heads,
        kv_heads: kvh,
        head_dim: hd,
        eps: 1e-5,
        attn_split_len,
    };
    let mut rng = Rng(17);
    let mut sets = Vec::new();
    for _ in 0..4 {
        let mats = [
            ternary(gpu, &mut rng, &[h, kvh * hd, kvh * hd], h)?,
            ternary(gpu, &mut rng, &[h], h)?,
            ternary(gpu, &mut rng, &[f, f], h)?,
            ternary(gpu, &mut rng, &[h], f)?,
        ];
        let norms = [
            ops::upload(gpu, &rng.units(h))?,
            ops::upload(gpu, &rng.units(h))?,
            ops::upload(gpu, &rng.units(h))?,
            ops::upload(gpu, &rng.units(f))?,
        ];
        sets.push((mats, norms));
    }
    let parts: Vec<StackLayer<'_>> = (0..layers)
        .map(|i| {
            let (m, n) = &sets[i % sets.len()];
            StackLayer { mats: [&m[0], &m[1], &m[2], &m[3]], norms: [&n[0], &n[1], &n[2], &n[3]] }
        })
        .collect();
    let mut stack = ops::DecodeStack::new(gpu, &parts, dims)?;
    let c = ops::CacheDims { layers, slots: 1, max_seq: pos + 1, kv_heads: kvh, head_dim: hd };
    let kv: Vec<f32> = rng.units(c.len()?).iter().map(|v| v * 0.5).collect();
    let (mut kc, mut vc) = (ops::upload(gpu, &kv)?, ops::upload(gpu, &kv)?);
    let x0 = ops::upload(gpu, &rng.units(h))?;
    let mut x = ops::zeros::<f32>(gpu, h)?;
    let freq: Vec<f32> =
        (0..hd / 2).map(|i| 1.0 / 500_000f32.powf((2 * i) as f32 / hd as f32)).collect();
    let freq = ops::upload(gpu, &freq)?;
    let rows = ops::RowsArg::small(&[(0, pos)])?.expect("one row");
    let mut step =
        |x: &mut _| ops::decode_layers(gpu, &stack, x, &mut kc, &mut vc, &c, &rows, &freq);
    let ms = t.time_graph(|| {
        for _ in 0..iters {
            // The hidden state grows through the layers: start each step from the same one.
            ops::copy(gpu, &x0, 0, &mut x, 0, h)?;
            step(&mut x)?;
        }
        Ok(())
    })?;
    let us = ms * 1e3 / iters as f64;
    println!(
        "\none-kernel decode step, 2B-4T shapes, position {pos}: {us:.1} µs per step, {:.2} µs per layer ({iters} steps in a graph; includes a {h}-float copy per step)",
        us / layers as f64
    );
    stack.stamp(gpu)?;
    ops::copy(gpu, &x0, 0, &mut x, 0, h)?;
    ops::decode_layers(gpu, &stack, &mut x, &mut kc, &mut vc, &c, &rows, &freq)?;
    report(&stack.trace(gpu)?, stack.blocks(), layers);
    Ok(())
}

/// Per phase, averaged over layers 1.. (layer 0 also waits for its first weights): mean and
/// slowest block's time in each part, and the barrier after it (last block done to first block
/// on).
fn report(tr: &[u64], blocks: usize, layers: usize) {
    let at = |b: usize, l: usize, k: usize| tr[(b * layers + l) * DECODE_STAMPS + k] as f64;
    // (name, stamps of its parts: start .. end, stamp that starts the next phase and its layer step)
    let phases: [(&str, &[usize], usize, usize); 5] = [
        ("q/k/v", &[0, 1, 2, 3], 4, 0),
        ("attention", &[4, 5], 8, 0),
        ("o", &[8, 9, 10, 11], 12, 0),
        ("gate/up", &[12, 13, 14, 15], 16, 0),
        ("down", &[16, 17, 18, 19], 0, 1),
    ];
    println!("| phase | part | mean µs | slowest block µs |\n| --- | --- | ---: | ---: |");
    let names = ["norm", "wait for weights", "GEMV + store"];
    let mut total = 0.0;
    for (name, ks, next, step) in phases {
        for (i, w) in ks.windows(2).enumerate() {
            let (mut mean, mut worst) = (0.0, 0.0);
            for l in 1..layers - 1 {
                let d: Vec<f64> = (0..blocks).map(|b| at(b, l, w[1]) - at(b, l, w[0])).collect();
                mean += d.iter().sum::<f64>() / blocks as f64;
                worst += d.iter().cloned().fold(0.0, f64::max);
            }
            let n = (layers - 2) as f64;
            let part = if ks.len() == 2 { "work" } else { names[i] };
            println!("| {name} | {part} | {:.2} | {:.2} |", mean / n / 1e3, worst / n / 1e3);
        }
        let mut bar = 0.0;
        for l in 1..layers - 1 {
            let done = (0..blocks).map(|b| at(b, l, *ks.last().unwrap())).fold(0.0, f64::max);
            let on = (0..blocks).map(|b| at(b, l + step, next)).fold(f64::MAX, f64::min);
            bar += on - done;
        }
        println!("| {name} | barrier after | {:.2} | |", bar / (layers - 2) as f64 / 1e3);
    }
    for l in 1..layers - 1 {
        let s = (0..blocks).map(|b| at(b, l, 0)).fold(f64::MAX, f64::min);
        let e = (0..blocks).map(|b| at(b, l + 1, 0)).fold(f64::MAX, f64::min);
        total += e - s;
    }
    println!(
        "layer (first block on to first block on): {:.2} µs",
        total / (layers - 2) as f64 / 1e3
    );
}
