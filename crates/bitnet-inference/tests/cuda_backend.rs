//! Every CUDA backend operation against the CPU backend on the same inputs: random and edge
//! shapes (odd widths, padded K, all-zero rows, long contexts that split attention, batches
//! above 8 rows). Skips, saying why, when no CUDA device is present.
#![cfg(feature = "cuda")]

use bitnet_core::{DType, Tensor};
use bitnet_inference::backend::{
    AttnShape, Backend, CacheShape, CpuBackend, CudaBackend, DenseMatrix, KvType, LmHeadMode,
    NormInput, NormSpec, Rope, RowPos,
};
use bitnet_quant::formats::i2s::I2sMatrix;

fn cuda() -> Option<CudaBackend> {
    match bitnet_inference::backend::cuda::probe(0) {
        Ok(_) => {
            Some(CudaBackend::new(0).expect("a CUDA device is present but could not be opened"))
        }
        Err(e) => {
            eprintln!("skipped: no usable CUDA device ({e})");
            None
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }
    fn vec(&mut self, n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * s).collect()
    }
}

fn get<B: Backend>(b: &B, buf: &B::Buf, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    b.download(buf, &mut v).unwrap();
    v
}

/// max |a - b| / max(max |b|, 1e-6)
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|v| v.is_finite()), "non-finite output");
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |e, (x, y)| e.max((x - y).abs())) / m
}

struct Case {
    d: usize,
    f: usize,
    heads: usize,
    kv: usize,
    hd: usize,
    vocab: usize,
    /// How the KV cache stores keys and values.
    cache: KvType,
}

/// Runs the same operation sequence on a backend; returns the named outputs.
fn run<B: Backend>(
    b: &B,
    c: &Case,
    seed: u64,
    table_dtype: DType,
    head: LmHeadMode,
) -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = Rng(seed);
    let (d, qd, kvd) = (c.d, c.heads * c.hd, c.kv * c.hd);
    let mut outs = Vec::new();
    // Embedding (f16 or f32 table) for 1 and 12 ids.
    let tvals = rng.vec(c.vocab * d, 1.0);
    let t = match table_dtype {
        DType::F16 => {
            let h: Vec<half::f16> = tvals.iter().map(|&v| half::f16::from_f32(v)).collect();
            Tensor::from_slice(DType::F16, [c.vocab, d], &h).unwrap()
        }
        _ => Tensor::from_f32([c.vocab, d], &tvals).unwrap(),
    };
    let table = DenseMatrix::new(t, "emb").unwrap();
    let emb = b.embedding(table.clone()).unwrap();
    let lm = b.lm_head(table, head).unwrap();
    let n = 12;
    let ids: Vec<u32> = (0..n)
        .map(|i| if i == 0 { c.vocab as u32 - 1 } else { (rng.next() % c.vocab as u64) as u32 })
        .collect();
    let mut x = b.alloc(n * d).unwrap();
    b.embed(&emb, &ids[..1], &mut x).unwrap();
    outs.push(("embed1", get(b, &x, d)));
    b.embed(&emb, &ids, &mut x).unwrap();
    outs.push(("embed12", get(b, &x, n * d)));
    // RMSNorm + BitLinear (fused quantization) for 1, 5 and 12 rows; BitLinear on a raw upload.
    let w = b.upload(&rng.vec(d, 1.0).iter().map(|v| 1.0 + 0.2 * v).collect::<Vec<_>>()).unwrap();
    let tern: Vec<i8> = (0..qd * d).map(|_| (rng.next() % 3) as i8 - 1).collect();
    let lin = b.linear(I2sMatrix::from_ternary(&tern, qd, d, 0.03).unwrap()).unwrap();
    let mut xn = b.alloc(n * d.max(qd)).unwrap();
    let mut q = b.alloc(n * qd).unwrap();
    for rows in [1, 5, 12] {
        b.rms_norm(&x, &w, 1e-5, rows, &mut xn).unwrap();
        outs.push(("rms_norm", get(b, &xn, rows * d)));
        b.bitlinear(&lin, &xn, rows, &mut q).unwrap();
        outs.push(("bitlinear_fused", get(b, &q, rows * qd)));
    }
    let mut raw_in = rng.vec(n * d, 2.0);
    raw_in[d..2 * d].iter_mut().for_each(|v| *v = 0.0); // an all-zero row
    let raw = b.upload(&raw_in).unwrap();
    b.bitlinear(&lin, &raw, n, &mut q).unwrap();
    outs.push(("bitlinear_raw", get(b, &q, n * qd)));
    // RoPE, KV store and attention: fill 700 positions, then decode and a prefill batch.
    let cache_shape = CacheShape {
        layers: 2,
        slots: 2,
        max_seq: 800,
        kv_heads: c.kv,
        head_dim: c.hd,
        kv: c.cache,
    };
    let mut cache = b.kv_cache(cache_shape).unwrap();
    let attn = AttnShape { heads: c.heads, kv_heads: c.kv, head_dim: c.hd };
    let chunk = 100;
    let mut kb = b.alloc(chunk * kvd).unwrap();
    let vb = b.upload(&rng.vec(chunk * kvd, 1.0)).unwrap();
    for start in (0..700).step_by(chunk) {
        let rows: Vec<RowPos> = (0..chunk).map(|i| RowPos { slot: 1, pos: start + i }).collect();
        let kv = b.upload(&rng.vec(chunk * kvd, 1.0)).unwrap();
        b.copy(&kv, 0, &mut kb, 0, chunk * kvd).unwrap();
        b.rope(&mut kb, &rows, c.kv, c.hd, Rope::new(10_000.0)).unwrap();
        if start == 600 {
            outs.push(("rope_k", get(b, &kb, chunk * kvd)));
        }
        b.store_kv(&mut cache, 1, &kb, &vb, &rows).unwrap();
    }
    let qv = b.upload(&rng.vec(n * qd, 2.0)).unwrap();
    let mut att = b.alloc(n * qd).unwrap();
    for rows in [
        vec![RowPos { slot: 1, pos: 699 }],
        (0..n).map(|i| RowPos { slot: 1, pos: 7 + 50 * i }).collect(),
    ] {
        b.attention(&qv, &cache, 1, &rows, attn, &mut att).unwrap();
        outs.push(("attention", get(b, &att, rows.len() * qd)));
    }
    // RoPE on q and k plus the KV store in one call, then attention over what it stored.
    let rows: Vec<RowPos> = (0..n).map(|i| RowPos { slot: 0, pos: 3 + 11 * i }).collect();
    let mut qf = b.upload(&rng.vec(n * qd, 1.0)).unwrap();
    let mut kf = b.upload(&rng.vec(n * kvd, 1.0)).unwrap();
    let vf = b.upload(&rng.vec(n * kvd, 1.0)).unwrap();
    b.rope_store_kv(&mut qf, &mut kf, &vf, &mut cache, 0, &rows, attn, Rope::new(10_000.0))
        .unwrap();
    outs.push(("rope_store_q", get(b, &qf, n * qd)));
    outs.push(("rope_store_k", get(b, &kf, n * kvd)));
    b.attention(&qf, &cache, 0, &rows, attn, &mut att).unwrap();
    outs.push(("attention", get(b, &att, n * qd)));
    // RoPE, KV store and attention in one call: one row, two rows in slots of their own (one
    // fused kernel on the GPU), two rows of one slot (not fused); then plain attention reads
    // what was stored.
    for rows in [
        vec![RowPos { slot: 1, pos: 700 }],
        vec![RowPos { slot: 0, pos: 40 }, RowPos { slot: 1, pos: 701 }],
        vec![RowPos { slot: 0, pos: 41 }, RowPos { slot: 0, pos: 42 }],
    ] {
        let m = rows.len();
        let mut qf = b.upload(&rng.vec(n * qd, 1.0)).unwrap();
        let mut kf = b.upload(&rng.vec(n * kvd, 1.0)).unwrap();
        let vf = b.upload(&rng.vec(n * kvd, 1.0)).unwrap();
        b.rope_attention(
            &mut qf,
            &mut kf,
            &vf,
            &mut cache,
            1,
            &rows,
            attn,
            Rope::new(10_000.0),
            &mut att,
        )
        .unwrap();
        outs.push(("attention", get(b, &att, m * qd)));
        let q2 = b.upload(&rng.vec(n * qd, 1.0)).unwrap();
        b.attention(&q2, &cache, 1, &rows, attn, &mut att).unwrap();
        outs.push(("attention", get(b, &att, m * qd)));
    }
    // ReLU² times up fused into the norm (and quantized for a BitLinear after it).
    let wd = b.upload(&rng.vec(d, 1.0).iter().map(|v| 1.0 + 0.2 * v).collect::<Vec<_>>()).unwrap();
    let (gate_vals, up) = (rng.vec(n * d, 2.0), b.upload(&rng.vec(n * d, 2.0)).unwrap());
    for rows in [1, 12] {
        // The CPU leaves relu(gate)² * up in `gate`, the GPU leaves it as it was: fresh each time.
        let mut gt = b.upload(&gate_vals).unwrap();
        b.relu2_rms_norm(&mut gt, &up, &wd, d, 1e-5, rows, &mut xn).unwrap();
        outs.push(("relu2_rms_norm", get(b, &xn, rows * d)));
        b.bitlinear(&lin, &xn, rows, &mut q).unwrap();
        outs.push(("bitlinear_fused", get(b, &q, rows * qd)));
    }
    // The norm and the projection in one call (one kernel on the GPU for one row), for each
    // kind of norm input.
    // With no norm weight (LLaMA-architecture o and down): the input, or silu(gate) * up, as is.
    // silu(gate) * up normed: 1bitLLM's down.
    for rows in [1, 12] {
        for kind in 0..5 {
            let mut gt = b.upload(&gate_vals).unwrap();
            let (input, weight) = match kind {
                0 => (NormInput::Plain(&x), Some(&w)),
                1 => (NormInput::Relu2(&mut gt, &up), Some(&wd)),
                2 => (NormInput::Plain(&x), None),
                3 => (NormInput::Silu(&mut gt, &up), None),
                _ => (NormInput::Silu(&mut gt, &up), Some(&wd)),
            };
            let normed = weight.is_some();
            let norm = NormSpec { input, weight, width: d, eps: 1e-5 };
            b.norm_linear(norm, rows, &mut xn, &lin, &mut [&mut q]).unwrap();
            // With no norm `xn` is the backend's scratch (the fused kernel writes the input).
            if normed {
                outs.push(("norm_linear_xn", get(b, &xn, rows * d)));
            }
            outs.push(("bitlinear_fused", get(b, &q, rows * qd)));
        }
    }
    // The norm and the projection added into a buffer (a layer's last projection and its
    // residual add; one kernel for one row on the GPU).
    let mut acc = b.upload(&rng.vec(n * qd, 1.0)).unwrap();
    let mut tmp = b.alloc(n * qd).unwrap();
    for rows in [1, 12] {
        for weight in [Some(&w), None] {
            let norm = NormSpec { input: NormInput::Plain(&x), weight, width: d, eps: 1e-5 };
            b.norm_linear_add(norm, rows, &mut xn, &lin, &mut tmp, &mut acc, qd).unwrap();
            outs.push(("norm_linear_add", get(b, &acc, n * qd)));
        }
    }
    // Element-wise ops.
    let mut g = b.upload(&rng.vec(1000, 3.0)).unwrap();
    let u = b.upload(&rng.vec(1000, 3.0)).unwrap();
    b.relu2_mul(&mut g, &u, 999).unwrap();
    outs.push(("relu2_mul", get(b, &g, 1000)));
    // SiLU with exp over- and underflowing at the ends.
    let mut gv = rng.vec(1000, 8.0);
    gv[..6].copy_from_slice(&[-100.0, 30.0, -88.0, -30.0, 0.0, -0.0]);
    let mut gs = b.upload(&gv).unwrap();
    b.silu_mul(&mut gs, &u, 1000).unwrap();
    outs.push(("silu_mul", get(b, &gs, 1000)));
    b.add(&mut g, &u, 1000).unwrap();
    outs.push(("add", get(b, &g, 1000)));
    b.copy(&u, 10, &mut g, 500, 300).unwrap();
    outs.push(("copy", get(b, &g, 1000)));
    // Logits of 1 and 12 rows (the 12-row batch splits as 8 + 4).
    let mut logits = b.alloc(n * c.vocab).unwrap();
    for rows in [1, 12] {
        b.rms_norm(&x, &w, 1e-5, rows, &mut xn).unwrap();
        b.logits(&lm, &xn, rows, &mut logits).unwrap();
        outs.push(("logits", get(b, &logits, rows * c.vocab)));
    }
    outs
}

fn compare(c: &Case, seed: u64, dtype: DType, head: LmHeadMode) {
    let Some(gpu) = cuda() else { return };
    let cpu = CpuBackend::new(2);
    let want = run(&cpu, c, seed, dtype, head);
    let got = run(&gpu, c, seed, dtype, head);
    for ((name, a), (_, b)) in got.iter().zip(&want) {
        let e = rel_err(a, b);
        let tol = match *name {
            "embed1" | "embed12" | "relu2_mul" | "add" | "copy" => 0.0,
            // expf on the device, the host's exp on the CPU: ulps apart.
            "silu_mul" => 1e-6,
            // One int8 step of difference at a rounding boundary of the RMSNorm output.
            "bitlinear_fused" | "norm_linear_add" | "logits" => 2e-2,
            _ => 2e-5,
        };
        assert!(
            e <= tol,
            "{name} (d={}, hd={}, {dtype}, {head:?}, {:?} cache): rel err {e:e} > {tol:e}",
            c.d,
            c.hd,
            c.cache
        );
    }
}

#[test]
fn every_op_matches_the_cpu_backend_small_heads() {
    let c = Case { d: 200, f: 0, heads: 4, kv: 2, hd: 16, vocab: 300, cache: KvType::F32 };
    compare(&c, 1, DType::F16, LmHeadMode::I8);
    compare(&c, 2, DType::F32, LmHeadMode::F32);
}

#[test]
fn every_op_matches_the_cpu_backend_2b4t_heads() {
    let c = Case { d: 256, f: 0, heads: 20, kv: 5, hd: 128, vocab: 1000, cache: KvType::F32 };
    compare(&c, 3, DType::F32, LmHeadMode::I8);
    compare(&c, 4, DType::F16, LmHeadMode::F32);
    let _ = c.f;
}

/// Heads of 64 values (attention's per-lane RoPE with two values a lane), of 100 (not a
/// multiple of 32: its shared-memory RoPE with four) and of 256 (the widest).
#[test]
fn every_op_matches_the_cpu_backend_other_head_widths() {
    let c = Case { d: 256, f: 0, heads: 4, kv: 2, hd: 64, vocab: 300, cache: KvType::F32 };
    compare(&c, 5, DType::F32, LmHeadMode::I8);
    let c = Case { d: 200, f: 0, heads: 4, kv: 1, hd: 100, vocab: 300, cache: KvType::F32 };
    compare(&c, 6, DType::F32, LmHeadMode::I8);
    // Falcon3's heads of 256 values.
    let c = Case { d: 256, f: 0, heads: 4, kv: 2, hd: 256, vocab: 300, cache: KvType::F32 };
    compare(&c, 7, DType::F32, LmHeadMode::I8);
}

/// An f16 KV cache: both backends store the same rounded keys and values and attend over them
/// in f32 (every head-width path of the CUDA kernels: per-lane RoPE at 16 / 64 / 128 / 256,
/// shared-memory RoPE at 100).
#[test]
fn every_op_matches_the_cpu_backend_f16_cache() {
    for (i, (heads, kv, hd)) in
        [(4, 2, 16), (20, 5, 128), (4, 2, 64), (4, 1, 100), (4, 2, 256)].into_iter().enumerate()
    {
        let c = Case { d: 200, f: 0, heads, kv, hd, vocab: 300, cache: KvType::F16 };
        compare(&c, 20 + i as u64, DType::F32, LmHeadMode::I8);
    }
}

#[test]
fn bad_arguments_are_errors_not_crashes() {
    let Some(b) = cuda() else { return };
    let x = b.alloc(10).unwrap();
    let mut out = [0f32; 11];
    assert!(b.download(&x, &mut out).is_err());
    let shape =
        CacheShape { layers: 1, slots: 1, max_seq: 4, kv_heads: 1, head_dim: 8, kv: KvType::F32 };
    let mut cache = b.kv_cache(shape).unwrap();
    let k = b.alloc(8).unwrap();
    let far = [RowPos { slot: 0, pos: 4 }];
    assert!(b.store_kv(&mut cache, 0, &k, &k, &far).is_err());
    let t = Tensor::from_f32([3, 4], &[0.5; 12]).unwrap();
    let emb = b.embedding(DenseMatrix::new(t, "e").unwrap()).unwrap();
    let mut o = b.alloc(8).unwrap();
    assert!(b.embed(&emb, &[3], &mut o).unwrap_err().to_string().contains("out of range"));
}

/// Decode steps replayed as CUDA graphs give bit-identical logits to eager launches, across
/// attention split changes (positions crossing multiples of 64) and a prefill in between.
#[test]
fn decode_graphs_match_eager_launches_bit_for_bit() {
    use bitnet_inference::models::synthetic;
    use bitnet_inference::runner::{ModelRunner, Runner};
    if cuda().is_none() {
        return;
    }
    let run = |graphs: bool| -> (Vec<Vec<f32>>, (usize, usize)) {
        let b = CudaBackend::new(0).unwrap().with_graphs(graphs);
        let dims = synthetic::preset("tiny").unwrap();
        let model = synthetic::build(b, dims, 7, LmHeadMode::I8).unwrap();
        let mut r = ModelRunner::new(model, 256, 16).unwrap();
        let mut out = Vec::new();
        let mut all = Vec::new();
        let prompt: Vec<u32> = (0..5).map(|i| i * 37 % 1000).collect();
        r.forward(&prompt, 0, false, &mut out).unwrap();
        let mut tok = 1u32;
        for pos in 5..150 {
            if pos == 100 {
                // A multi-token call in the middle (ends the run of single-token steps).
                r.forward(&[3, 4], pos, false, &mut out).unwrap();
                all.push(out.clone());
                continue;
            }
            if pos == 101 {
                continue;
            }
            r.forward(&[tok], pos, false, &mut out).unwrap();
            tok = out
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0 as u32;
            all.push(out.clone());
        }
        (all, r.model().backend().gpu().graph_stats())
    };
    let (eager, s0) = run(false);
    let (graph, s1) = run(true);
    assert_eq!(s0, (0, 0));
    assert!(s1.0 >= 2 && s1.1 > 100, "graphs captured / replayed: {s1:?}");
    for (i, (a, b)) in graph.iter().zip(&eager).enumerate() {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "step {i} differs");
    }
}

/// Batched decode steps (one row per sequence, each sequence in its own slot) replayed as CUDA
/// graphs give bit-identical tokens and logits to eager launches, at batch sizes on both sides
/// of the by-value row limit (8) and through the split-K GEMM (more than 8 rows).
#[test]
fn batched_decode_graphs_match_eager_launches_bit_for_bit() {
    use bitnet_inference::models::synthetic;
    use bitnet_inference::runner::{ModelRunner, Runner};
    if cuda().is_none() {
        return;
    }
    for batch in [3, 12, 40] {
        let run = |graphs: bool| {
            let b = CudaBackend::new(0).unwrap().with_graphs(graphs);
            let dims = synthetic::preset("tiny").unwrap();
            let model = synthetic::build(b, dims, 11, LmHeadMode::I8).unwrap();
            let mut r = ModelRunner::new(model, 256, 16).unwrap();
            let prompts: Vec<Vec<u32>> = (0..batch)
                .map(|s| (0..3 + s % 4).map(|i| (i * 31 + s * 7) as u32 % 1000).collect())
                .collect();
            let out = r.decode_batch(&prompts, 70, true).unwrap();
            (out, r.model().backend().gpu().graph_stats())
        };
        let (eager, s0) = run(false);
        let (graph, s1) = run(true);
        assert_eq!(s0, (0, 0));
        assert!(s1.1 > 50, "batch {batch}: graphs captured / replayed: {s1:?}");
        assert_eq!(graph.tokens, eager.tokens, "batch {batch}");
        let same = graph
            .last_logits
            .iter()
            .zip(&eager.last_logits)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "batch {batch}: last logits differ");
    }
}

/// One-token steps through the one-kernel layer stack (`Backend::decode_layers`) against the
/// same model run layer by layer: the same tokens fed to both, logits bit for bit equal at every
/// step (the kernel does the separate kernels' arithmetic and splits attention as they do),
/// through attention splits (positions up to 155), a prefill in the middle, and over many
/// launches (the kernel resets its barrier counters for the next one); on the tiny preset and on
/// 2B-4T's layer shapes (2 layers). Both split attention at 16 positions, where each warp of a
/// split takes one step of positions: with longer splits the compiler contracts the online
/// softmax's multiply-adds differently in the two kernels (ulps apart; writing them out costs
/// ~2% of tg64, NOTES.md, eighteenth session).
#[test]
fn one_kernel_decode_matches_layer_by_layer() {
    use bitnet_inference::models::{synthetic, Dims};
    use bitnet_inference::runner::{ModelRunner, Runner};
    if cuda().is_none() {
        return;
    }
    if std::env::var("BITNET_CUDA_FUSE_NORM").as_deref() == Ok("0") {
        // The layer path's separate norm kernel rounds w·(x·inv), the one kernel (x·w)·inv.
        eprintln!("skipped: BITNET_CUDA_FUSE_NORM=0 (the layer path is then not bit-identical)");
        return;
    }
    let tiny = synthetic::preset("tiny").unwrap();
    let wide = Dims { layers: 2, vocab: 1024, ..synthetic::preset("2b4t").unwrap() };
    for (name, dims, steps) in [("tiny", tiny, 150), ("2b4t shapes", wide, 60)] {
        let runner = |one: bool| {
            let b =
                CudaBackend::new(0).unwrap().with_one_kernel_decode(one).with_attn_split_len(16);
            let model = synthetic::build(b, dims.clone(), 5, LmHeadMode::I8).unwrap();
            ModelRunner::new(model, 256, 16).unwrap()
        };
        let (mut on, mut off) = (runner(true), runner(false));
        if !on.model().one_kernel_decode() {
            eprintln!("skipped {name}: this device does not run the one-kernel decode");
            return;
        }
        assert!(!off.model().one_kernel_decode());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let prompt: Vec<u32> = (0..5).map(|i| i * 37 % 1000).collect();
        on.forward(&prompt, 0, false, &mut a).unwrap();
        off.forward(&prompt, 0, false, &mut b).unwrap();
        let mut tok = 1u32;
        let mut differ = Vec::new();
        for pos in 5..5 + steps {
            let ids: &[u32] = if pos == 30 { &[3, 4] } else { std::slice::from_ref(&tok) };
            if pos == 31 {
                continue;
            }
            on.forward(ids, pos, false, &mut a).unwrap();
            off.forward(ids, pos, false, &mut b).unwrap();
            if !a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()) {
                differ.push((pos, rel_err(&a, &b)));
            }
            tok = b
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m })
                .0 as u32;
        }
        assert!(differ.is_empty(), "{name}: (position, |err| / max|logit|) {differ:?}");
    }
}

/// Models whose feed-forward is wider than 8192 (1bitLLM-3B's 8640, normed; Llama3-8B's 14336,
/// not normed): prefill (the wide RMSNorm kernel) and one-token steps (the wide fused norm +
/// GEMV) give the CPU's logits. Two layers of each, the same tokens fed to both backends, with
/// 2B-4T's shapes (no wide rows) as the control: on random weights this wide, an ulp apart in a
/// norm moves an int8 activation now and then, and the logits follow (the kernels' own tests
/// check the wide kernels' arithmetic exactly); a wrong wide kernel is off by O(1).
#[test]
fn wide_feed_forward_models_match_the_cpu() {
    use bitnet_inference::models::{synthetic, Dims};
    use bitnet_inference::runner::{ModelRunner, Runner};
    if cuda().is_none() {
        return;
    }
    for name in ["2b4t", "3b", "llama3-8b"] {
        let dims = Dims { layers: 2, vocab: 1024, ..synthetic::preset(name).unwrap() };
        let gpu = synthetic::build(CudaBackend::new(0).unwrap(), dims.clone(), 9, LmHeadMode::I8);
        let cpu = synthetic::build(CpuBackend::new(4), dims, 9, LmHeadMode::I8);
        let mut g = ModelRunner::new(gpu.unwrap(), 64, 16).unwrap();
        let mut c = ModelRunner::new(cpu.unwrap(), 64, 16).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let prompt: Vec<u32> = (0..5).map(|i| i * 37 % 1000).collect();
        g.forward(&prompt, 0, false, &mut a).unwrap();
        c.forward(&prompt, 0, false, &mut b).unwrap();
        let mut errs = vec![rel_err(&a, &b)];
        let mut tok = 1u32;
        for pos in 5..25 {
            g.forward(&[tok], pos, false, &mut a).unwrap();
            c.forward(&[tok], pos, false, &mut b).unwrap();
            errs.push(rel_err(&a, &b));
            tok = b
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m })
                .0 as u32;
        }
        let mean = errs.iter().sum::<f32>() / errs.len() as f32;
        let worst = errs.iter().fold(0f32, |m, &e| m.max(e));
        eprintln!("{name}: |cuda - cpu| / max|logit| over 21 steps: mean {mean:.2e}, worst {worst:.2e}, prefill {:.2e}", errs[0]);
        assert!(worst < 0.1, "{name}: {errs:?}");
    }
}
