//! Sampling on the GPU (`CudaBackend::sample`, kernel `sample_rows`) against the host's
//! `Sampler::pick` with the same uniforms: random rows of 1 to 128256 logits, ties, -inf / NaN /
//! +inf rows, a row with nothing to sample, greedy and sampled configurations; then greedy and
//! seeded generation through the device path against the host path. Sampled picks must be equal
//! except where the naive reference says the draw lies on a boundary (counted, see
//! `sampling_ref::MARGIN`). The same comparisons run on the CPU backend (its default
//! `Backend::sample`, which must trivially pass: it checks the harness). The GPU tests skip,
//! saying why, when no CUDA device is present.
#![cfg(feature = "cuda")]

use bitnet_core::{Device, DeviceRequest};
use bitnet_inference::backend::{Backend, CpuBackend, CudaBackend};
use bitnet_inference::sampling::{nothing_to_sample, Rng, Sampler, SamplingParams};
use bitnet_inference::{Engine, GenerationConfig};
use std::time::Instant;

mod sampling_ref;
use sampling_ref::{configs, logits_row, reference, Gen, MARGIN};

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

fn host_pick(p: &SamplingParams, row: &[f32], u: f64) -> bitnet_core::Result<u32> {
    Sampler::new(p.clone()).unwrap().pick(&mut row.to_vec(), u)
}

/// Backend ids of `rows x vocab` logits (uploaded) with `uniforms`.
fn device_pick<B: Backend>(
    b: &B,
    logits: &[f32],
    rows: usize,
    vocab: usize,
    p: &SamplingParams,
    uniforms: &[f64],
) -> bitnet_core::Result<Vec<u32>> {
    let buf = b.upload(logits).unwrap();
    let mut out = vec![0u32; rows];
    b.sample(&buf, rows, vocab, p, uniforms, &mut out)?;
    Ok(out)
}

/// Counts of one comparison run.
#[derive(Default)]
struct Tally {
    equal: usize,
    skipped: usize,
    mismatches: Vec<String>,
}

fn cpu() -> CpuBackend {
    CpuBackend::new(1)
}

impl Tally {
    /// Compares the device's pick of one row with the host's.
    fn check(&mut self, what: &str, p: &SamplingParams, row: &[f32], u: f64, got: u32) {
        let want = host_pick(p, row, u).unwrap();
        let c = reference(p, row, u).unwrap();
        if c.margin < MARGIN {
            self.skipped += 1;
            return;
        }
        if want != c.token {
            self.mismatches.push(format!("{what}: u={u} host {want} != reference {}", c.token));
        } else if got == want {
            self.equal += 1;
        } else if self.mismatches.len() < 40 {
            let (g, w) = (row[got as usize], row[want as usize]);
            self.mismatches.push(format!(
                "{what}: u={u} device {got} (logit {g}) host {want} (logit {w}) margin {:.3e}",
                c.margin
            ));
        } else {
            self.mismatches.push(String::new());
        }
    }

    /// Prints the counts and the first mismatches; panics if any.
    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} equal, {} on a boundary skipped, {} differ",
            self.equal,
            self.skipped,
            self.mismatches.len()
        );
        for m in self.mismatches.iter().filter(|m| !m.is_empty()) {
            eprintln!("  {m}");
        }
        assert!(self.mismatches.is_empty(), "{what}");
        assert!(self.skipped * 3 < self.equal + self.skipped, "{what}: too many boundary cases");
    }
}

/// A row of `kind` with at least one finite logit.
fn row_with_a_finite(g: &mut Gen, vocab: usize, kind: usize) -> Vec<f32> {
    let mut row = logits_row(g, vocab, kind);
    if !row.iter().any(|x| x.is_finite()) {
        row[vocab / 2] = 0.5;
    }
    row
}

fn random_rows<B: Backend>(b: &B, vocabs: &[usize]) {
    let mut g = Gen(0x5eed);
    let mut t = Tally::default();
    for &vocab in vocabs {
        for &rows in &[1usize, 3, 64] {
            let data: Vec<Vec<f32>> =
                (0..rows).map(|r| row_with_a_finite(&mut g, vocab, r + vocab)).collect();
            let flat: Vec<f32> = data.concat();
            for (name, p) in configs() {
                let uniforms: Vec<f64> = (0..rows).map(|_| g.unit()).collect();
                let got = device_pick(b, &flat, rows, vocab, &p, &uniforms).unwrap();
                for (r, row) in data.iter().enumerate() {
                    let what = format!("{name} vocab={vocab} rows={rows} row={r}");
                    t.check(&what, &p, row, uniforms[r], got[r]);
                }
            }
        }
    }
    t.report(&format!("random rows on {}", b.describe()));
}

#[test]
fn device_picks_equal_host_picks_on_random_rows() {
    let Some(b) = cuda() else { return };
    random_rows(&b, &[1, 7, 1000, 128_256]);
}

#[test]
fn cpu_backend_picks_equal_host_picks_on_random_rows() {
    random_rows(&cpu(), &[1, 7, 1000]);
}

#[test]
fn ties_go_to_the_lowest_index_on_the_device() {
    let Some(b) = cuda() else { return };
    ties(&b);
}

#[test]
fn ties_go_to_the_lowest_index_on_the_cpu_backend() {
    ties(&cpu());
}

fn ties<B: Backend>(b: &B) {
    let vocab = 1000;
    // Row 0: all equal. Row 1: a tie of three at the top (ids 10, 500, 999) over a low floor.
    // Row 2: coarse values (many ties everywhere), -0 and +0 at the top.
    let mut rows = [vec![0.25f32; vocab], vec![-8.0f32; vocab], vec![0.0f32; vocab]];
    for i in [10, 500, 999] {
        rows[1][i] = 2.0;
    }
    let mut g = Gen(77);
    for (i, x) in rows[2].iter_mut().enumerate() {
        *x = -((g.unit() * 8.0).floor() as f32) * 0.5;
        if i % 3 == 0 && *x == 0.0 {
            *x = -0.0;
        }
    }
    let flat = rows.concat();
    let mut t = Tally::default();
    for (name, p) in configs() {
        for u in [0.0, 0.0005, 0.3335, 0.5, 0.6665, 0.999] {
            let us = [u; 3];
            let got = device_pick(b, &flat, 3, vocab, &p, &us).unwrap();
            for r in 0..3 {
                t.check(&format!("ties {name} row {r}"), &p, &rows[r], u, got[r]);
            }
        }
    }
    let greedy = device_pick(b, &flat, 3, vocab, &SamplingParams::greedy(), &[]).unwrap();
    assert_eq!(greedy[..2], [0, 10]);
    assert_eq!(greedy[2], host_pick(&SamplingParams::greedy(), &rows[2], 0.0).unwrap());
    t.report(&format!("ties on {}", b.describe()));
}

#[test]
fn neg_inf_nan_and_inf_rows_match_the_host_on_the_device() {
    let Some(b) = cuda() else { return };
    non_finite(&b);
}

#[test]
fn neg_inf_nan_and_inf_rows_match_the_host_on_the_cpu_backend() {
    non_finite(&cpu());
}

fn non_finite<B: Backend>(b: &B) {
    let (nan, ninf, inf) = (f32::NAN, f32::NEG_INFINITY, f32::INFINITY);
    let vocab = 6;
    let rows = [
        [nan, 0.5, ninf, 0.4, nan, -1.0],
        [0.0, inf, nan, inf, 2.0, 1.0],
        [ninf, ninf, ninf, 3.0, ninf, nan],
        [nan, nan, 1.0, 1.0, ninf, 1.0],
    ];
    let flat: Vec<f32> = rows.concat();
    let mut t = Tally::default();
    for (name, p) in configs() {
        for u in [0.0, 0.2, 0.45, 0.7, 0.95] {
            let us = [u; 4];
            let got = device_pick(b, &flat, 4, vocab, &p, &us).unwrap();
            assert_eq!(got[1], 1, "{name}: the first +inf wins");
            assert_eq!(got[2], 3, "{name}: the only finite logit");
            for r in 0..4 {
                t.check(&format!("non-finite {name} row {r}"), &p, &rows[r], u, got[r]);
            }
        }
    }
    t.report(&format!("non-finite rows on {}", b.describe()));
}

#[test]
fn greedy_over_many_blocks_matches_the_host_on_the_device() {
    let Some(b) = cuda() else { return };
    greedy_blocks(&b);
}

#[test]
fn greedy_over_many_blocks_matches_the_host_on_the_cpu_backend() {
    greedy_blocks(&cpu());
}

/// Greedy rows long enough that the device splits each over several blocks (of ~2048
/// logits): ties and +inf in different blocks, -0 against +0, an odd length.
fn greedy_blocks<B: Backend>(b: &B) {
    let greedy = SamplingParams::greedy();
    for vocab in [20_000usize, 20_003] {
        let mut rows = vec![vec![-4.0f32; vocab]; 3];
        for i in [vocab - 1, 4_100, 12_000] {
            rows[0][i] = 3.0;
        }
        rows[1][10] = 5.0;
        rows[1][15_000] = f32::INFINITY;
        rows[1][18_500] = f32::INFINITY;
        rows[1][2] = f32::NAN;
        rows[2][9_000] = 0.0;
        rows[2][2_050] = -0.0;
        rows[2][19_990] = f32::NAN;
        let got = device_pick(b, &rows.concat(), 3, vocab, &greedy, &[]).unwrap();
        assert_eq!(got, [4_100, 15_000, 2_050], "vocab {vocab}");
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(got[r], host_pick(&greedy, row, 0.0).unwrap(), "vocab {vocab} row {r}");
        }
        // Nothing finite in any block: the host's error.
        let mut none = vec![f32::NEG_INFINITY; vocab];
        none[7_777] = f32::NAN;
        let err = device_pick(b, &none, 1, vocab, &greedy, &[]).unwrap_err().to_string();
        assert_eq!(err, host_pick(&greedy, &none, 0.0).unwrap_err().to_string());
    }
}

#[test]
fn a_row_with_nothing_to_sample_is_the_host_error_on_the_device() {
    let Some(b) = cuda() else { return };
    nothing(&b);
}

#[test]
fn a_row_with_nothing_to_sample_is_the_host_error_on_the_cpu_backend() {
    nothing(&cpu());
}

fn nothing<B: Backend>(b: &B) {
    let vocab = 1000;
    let mut flat = vec![0.5f32; 3 * vocab];
    for (i, x) in flat[vocab..2 * vocab].iter_mut().enumerate() {
        *x = if i % 2 == 0 { f32::NEG_INFINITY } else { f32::NAN };
    }
    let want = nothing_to_sample(vocab).to_string();
    for (name, p) in configs() {
        let err = device_pick(b, &flat, 3, vocab, &p, &[0.5; 3]).unwrap_err().to_string();
        assert_eq!(err, want, "{name}");
        let host = host_pick(&p, &flat[vocab..2 * vocab], 0.5).unwrap_err().to_string();
        assert_eq!(host, want);
    }
    // The backend stays usable after the error.
    let ok = device_pick(b, &flat[..vocab], 1, vocab, &SamplingParams::greedy(), &[]).unwrap();
    assert_eq!(ok, [0]);
}

#[test]
fn device_sampling_downloads_ids_not_logits_timing() {
    let Some(b) = cuda() else { return };
    let vocab = 128_256;
    let mut g = Gen(99);
    for rows in [1, 64] {
        let flat: Vec<f32> = (0..rows).flat_map(|r| logits_row(&mut g, vocab, r % 3)).collect();
        let buf = b.upload(&flat).unwrap();
        let mut ids = vec![0u32; rows];
        let uniforms: Vec<f64> = (0..rows).map(|_| g.unit()).collect();
        let mut host = vec![0f32; rows * vocab];
        for (name, p) in configs() {
            b.sample(&buf, rows, vocab, &p, &uniforms, &mut ids).unwrap(); // warm
            let t = Instant::now();
            for _ in 0..10 {
                b.sample(&buf, rows, vocab, &p, &uniforms, &mut ids).unwrap();
            }
            let dev = t.elapsed().as_secs_f64() / 10.0 * 1e3;
            // The host path: download every row, pick on the host.
            let t = Instant::now();
            b.download(&buf, &mut host).unwrap();
            let mut s = Sampler::new(p.clone()).unwrap();
            let picked: Vec<u32> = host
                .chunks_mut(vocab)
                .zip(&uniforms)
                .map(|(r, &u)| s.pick(r, u).unwrap())
                .collect();
            let host_ms = t.elapsed().as_secs_f64() * 1e3;
            eprintln!(
                "{rows} x {vocab} {name}: device {dev:.3} ms, download + host {host_ms:.3} ms"
            );
            if p.is_greedy() {
                assert_eq!(ids, picked);
            }
        }
    }
}

fn engine(device: Device) -> Engine {
    let e =
        Engine::builder().synthetic("tiny").device(DeviceRequest::Exact(device)).build().unwrap();
    if device != Device::Cpu {
        assert!(e.describe().starts_with("cuda:0"), "not on the GPU: {}", e.describe());
    }
    e
}

/// Replays generation step by step on the host path: logits downloaded, picked by `Sampler`.
/// Returns the tokens and the step at which a draw first lay on a boundary (if any).
fn host_path(
    device: Device,
    p: &SamplingParams,
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, Option<usize>) {
    let mut e = engine(device);
    let mut sampler = Sampler::new(p.clone()).unwrap();
    let mut rng = Rng::new(p.seed);
    let mut context = prompt.to_vec();
    let mut logits = e.forward_tokens(prompt, 0, false).unwrap().to_vec();
    let mut out = Vec::new();
    let mut boundary = None;
    for step in 0..n {
        if !p.is_greedy() && p.repetition_penalty == 1.0 {
            let c = reference(p, &logits, rng.next_f64()).unwrap();
            if c.margin < MARGIN && boundary.is_none() {
                boundary = Some(step);
            }
        }
        let t = sampler.sample(&mut logits, &context).unwrap();
        out.push(t);
        context.push(t);
        logits = e.forward_tokens(&[t], context.len() - 1, false).unwrap().to_vec();
    }
    (out, boundary)
}

#[test]
fn generation_through_device_sampling_equals_the_host_path() {
    if cuda().is_some() {
        generation(Device::Cuda(0));
    }
}

#[test]
fn generation_through_cpu_backend_sampling_equals_the_host_path() {
    generation(Device::Cpu);
}

fn generation(device: Device) {
    let prompt = [1u32, 5, 9, 300];
    let n = 40;
    let d = SamplingParams::default;
    for p in [
        SamplingParams::greedy(),
        SamplingParams { temperature: 0.8, seed: 3, ..d() },
        SamplingParams { temperature: 0.7, top_k: 40, top_p: 0.9, seed: 4, ..d() },
        SamplingParams { temperature: 0.7, repetition_penalty: 1.2, seed: 5, ..d() },
    ] {
        let cfg = GenerationConfig {
            max_tokens: n,
            sampling: p.clone(),
            ignore_eos: true,
            ..Default::default()
        };
        let backend = engine(device).generate_ids(&prompt, &cfg).unwrap().generated_ids;
        let (host, boundary) = host_path(device, &p, &prompt, n);
        let upto = boundary.unwrap_or(n);
        eprintln!("{device:?} {p:?}: {upto} tokens compared (boundary at {boundary:?})");
        assert_eq!(backend[..upto], host[..upto], "{p:?}");
    }
}

/// Generation queues each next step on the device before the host has the token: a stop
/// token mid-way leaves a queued step behind, and the next generation (reusing the cached
/// prefix, or following `forward_tokens`) must still match the host path.
#[test]
fn queued_steps_survive_stops_and_prefix_reuse_on_the_device() {
    if cuda().is_some() {
        queued_steps(Device::Cuda(0));
    }
}

#[test]
fn queued_steps_survive_stops_and_prefix_reuse_on_the_cpu_backend() {
    queued_steps(Device::Cpu);
}

fn queued_steps(device: Device) {
    let prompt = vec![1u32, 5, 9, 300];
    for p in [
        SamplingParams::greedy(),
        SamplingParams { temperature: 0.8, seed: 7, ..SamplingParams::default() },
    ] {
        let (full, boundary) = host_path(device, &p, &prompt, 30);
        if boundary.is_some_and(|b| b < 30) {
            eprintln!("{p:?}: a draw on a boundary, skipped");
            continue;
        }
        let stop = full[12];
        let upto = full.iter().position(|&t| t == stop).unwrap() + 1;
        let mut e = engine(device);
        let cfg = |n: usize, stop_tokens: Vec<u32>| GenerationConfig {
            max_tokens: n,
            sampling: p.clone(),
            ignore_eos: true,
            stop_tokens,
            ..Default::default()
        };
        let first = e.generate_ids(&prompt, &cfg(30, vec![stop])).unwrap().generated_ids;
        assert_eq!(first, full[..upto], "{device:?} {p:?}: stopped generation");
        // Continue after the stop token plus one more (the cached prefix is reused).
        let mut prompt2 = prompt.clone();
        prompt2.extend_from_slice(&first);
        prompt2.push(7);
        let second = e.generate_ids(&prompt2, &cfg(12, Vec::new())).unwrap().generated_ids;
        let (want, b2) = host_path(device, &p, &prompt2, 12);
        let n = b2.unwrap_or(12);
        assert_eq!(second[..n], want[..n], "{device:?} {p:?}: continued generation");
        // A forward pass in between (another position's logits), then the same generation.
        e.forward_tokens(&prompt, 0, false).unwrap();
        let again = e.generate_ids(&prompt2, &cfg(12, Vec::new())).unwrap().generated_ids;
        assert_eq!(again, second, "{device:?} {p:?}: after forward_tokens");
    }
}

#[test]
fn batched_greedy_ids_from_the_device_are_the_host_argmax() {
    if cuda().is_some() {
        batched_greedy(Device::Cuda(0));
    }
}

#[test]
fn batched_greedy_ids_from_the_cpu_backend_are_the_host_argmax() {
    batched_greedy(Device::Cpu);
}

/// `decode_batch` with `steps` and `steps + 1`: the extra step's tokens were picked (on the
/// backend) from the logits the shorter run returns, which the host argmax must reproduce.
fn batched_greedy(device: Device) {
    let mut e = engine(device);
    let vocab = e.dims().vocab;
    let prompts: Vec<Vec<u32>> = (0..11)
        .map(|b| (0..2 + b % 5).map(|i| ((b * 37 + i * 11 + 3) % vocab) as u32).collect())
        .collect();
    let steps = 5;
    let short = e.decode_batch(&prompts, steps, true).unwrap();
    let long = e.decode_batch(&prompts, steps + 1, true).unwrap();
    for (b, row) in short.last_logits.chunks(vocab).enumerate() {
        assert_eq!(long.tokens[b][..steps], short.tokens[b][..], "sequence {b}");
        let want = bitnet_inference::sampling::argmax(row).0;
        assert_eq!(long.tokens[b][steps], want, "sequence {b}");
    }
}

#[test]
fn a_step_queued_by_generation_does_not_survive_scheduler_steps_on_the_device() {
    if cuda().is_some() {
        queued_then_scheduled(Device::Cuda(0));
    }
}

#[test]
fn a_step_queued_by_generation_does_not_survive_scheduler_steps_on_the_cpu_backend() {
    queued_then_scheduled(Device::Cpu);
}

/// A greedy generation that ends on a stop token leaves its next step queued on the device;
/// scheduler steps in between (their ids uploaded to the same device buffer) must not let the
/// engine's continuation at that step take the queued step's fed ids.
fn queued_then_scheduled(device: Device) {
    use bitnet_inference::scheduler::SeqEvent;
    let build = || {
        let request = DeviceRequest::Exact(device);
        Engine::builder().synthetic("tiny").device(request).context_len(64).build().unwrap()
    };
    let mut e = build();
    let prompt = vec![3u32, 17, 29];
    let cfg = |n: usize, stop_tokens: Vec<u32>| GenerationConfig {
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        stop_tokens,
        ..Default::default()
    };
    let alone = e.generate_ids(&prompt, &cfg(12, Vec::new())).unwrap().generated_ids;
    let first = e.generate_ids(&prompt, &cfg(12, vec![alone[5]])).unwrap().generated_ids;
    assert_eq!(first.last(), Some(&alone[5]));
    let mut sched = e.scheduler(2).unwrap();
    for k in 0..2u32 {
        let ids = vec![5 + k, 40 + k, 7];
        sched.admit(&ids, &cfg(10, Vec::new()), Box::new(|_: SeqEvent| true)).unwrap();
    }
    while sched.active() > 0 {
        sched.step().unwrap();
    }
    drop(sched);
    let cont = [&prompt[..], &first[..]].concat();
    let after = e.generate_ids(&cont, &cfg(6, Vec::new())).unwrap().generated_ids;
    let fresh = build().generate_ids(&cont, &cfg(6, Vec::new())).unwrap().generated_ids;
    assert_eq!(after, fresh, "{device:?}: the continuation after scheduler steps");
}

#[test]
fn scheduled_sequences_picked_ahead_on_the_device_end_as_the_engine_ends_them() {
    if cuda().is_some() {
        scheduled(Device::Cuda(0));
    }
}

#[test]
fn scheduled_sequences_picked_on_the_cpu_backend_end_as_the_engine_ends_them() {
    scheduled(Device::Cpu);
}

/// Continuous batching with every sequence on one sampling configuration, so that each step
/// picks on the backend (on the GPU the step after it is queued before the ids come back):
/// sequences with different budgets, a stop token, one cut by its sink and one reaching the
/// end of the context, admitted at different steps, end with the engine's tokens for each
/// alone. Where a sampled draw lies on a boundary the comparison stops there (as above).
fn scheduled(device: Device) {
    use bitnet_inference::scheduler::SeqEvent;
    use std::sync::{Arc, Mutex};
    let d = SamplingParams::default;
    for p in [SamplingParams::greedy(), SamplingParams { temperature: 0.8, top_k: 40, ..d() }] {
        let request = DeviceRequest::Exact(device);
        let e = Engine::builder().synthetic("tiny").device(request).context_len(48).build();
        let mut e = e.unwrap();
        assert!(device == Device::Cpu || e.describe().starts_with("cuda:0"), "{}", e.describe());
        let ctx = e.context_len();
        let vocab = e.dims().vocab as u32;
        let budgets = [9, 14, 3, 20, 1, 11, 16, ctx];
        let mut jobs: Vec<(Vec<u32>, GenerationConfig, Option<usize>)> = (0..budgets.len())
            .map(|k| {
                let k32 = k as u32;
                let prompt = (0..2 + k32 % 4).map(|i| (k32 * 41 + i * 13 + 2) % vocab).collect();
                let sampling = SamplingParams { seed: 10 + k as u64, ..p.clone() };
                let cfg = GenerationConfig {
                    max_tokens: budgets[k],
                    sampling,
                    ignore_eos: true,
                    ..Default::default()
                };
                (prompt, cfg, (k == 5).then_some(6))
            })
            .collect();
        // A stop token that job 3 meets mid-way.
        let alone = e.generate_ids(&jobs[3].0, &jobs[3].1).unwrap().generated_ids;
        jobs[3].1.stop_tokens = vec![alone[7]];
        let want: Vec<_> = jobs
            .iter()
            .map(|(ids, c, stop)| {
                let mut n = 0;
                let out = e.generate_ids_stream(ids, c, |_| {
                    n += 1;
                    stop.is_none_or(|k| n < k)
                });
                out.unwrap()
            })
            .collect();
        // Job 3 again: its stop token leaves a step queued on the engine's own sequence.
        let first = e.generate_ids(&jobs[3].0, &jobs[3].1).unwrap().generated_ids;
        let got: Arc<Mutex<Vec<Option<_>>>> = Arc::new(Mutex::new(vec![None; jobs.len()]));
        let mut sched = e.scheduler(3).unwrap();
        let (mut next, mut steps) = (0, 0);
        while next < jobs.len() || sched.active() > 0 {
            if next < jobs.len() && sched.free_slots() > 0 && steps % 3 == 0 {
                let (ids, c, stop) = &jobs[next];
                let (got, stop, k) = (got.clone(), *stop, next);
                let mut n = 0;
                let sink = Box::new(move |ev: SeqEvent| match ev {
                    SeqEvent::Token(_) => {
                        n += 1;
                        stop.is_none_or(|s| n < s)
                    }
                    SeqEvent::Done(o) => {
                        got.lock().unwrap()[k] = Some(o);
                        true
                    }
                    SeqEvent::Failed(why) => panic!("job {k} failed: {why}"),
                });
                sched.admit(ids, c, sink).unwrap();
                next += 1;
            }
            sched.step().unwrap();
            steps += 1;
            assert!(steps < 10_000);
        }
        drop(sched);
        // After the scheduler's steps, continuing job 3 (its stop token at the position of the
        // step left queued: a greedy pick would find it) gives a fresh engine's tokens.
        let cont = [&jobs[3].0[..], &first[..]].concat();
        let c = GenerationConfig { max_tokens: 6, stop_tokens: Vec::new(), ..jobs[3].1.clone() };
        let after = e.generate_ids(&cont, &c).unwrap().generated_ids;
        let fresh = Engine::builder().synthetic("tiny").device(request).context_len(48).build();
        assert_eq!(after, fresh.unwrap().generate_ids(&cont, &c).unwrap().generated_ids);
        let got = got.lock().unwrap();
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let g = g.as_ref().expect("every job ends");
            let (g_ids, w_ids) = (&g.generated_ids, &w.generated_ids);
            let upto = match p.is_greedy() {
                true => w_ids.len().max(g_ids.len()),
                false => {
                    let (_, boundary) =
                        host_path(device, &jobs[k].1.sampling, &jobs[k].0, w_ids.len());
                    boundary.unwrap_or(w_ids.len().max(g_ids.len()))
                }
            };
            let n = upto.min(g_ids.len()).min(w_ids.len());
            assert_eq!(g_ids[..n], w_ids[..n], "{device:?} {p:?} job {k}");
            if n == w_ids.len().max(g_ids.len()) {
                assert_eq!(g.stop_reason, w.stop_reason, "{device:?} {p:?} job {k}");
            }
        }
        assert_eq!(want[3].stop_reason, bitnet_inference::StopReason::StopToken);
        assert_eq!(want[5].stop_reason, bitnet_inference::StopReason::Cancelled);
        assert_eq!(want[7].stop_reason, bitnet_inference::StopReason::ContextFull);
    }
}
