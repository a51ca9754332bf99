//! Continuous batching against the single-sequence engine: every sequence a scheduler runs,
//! admitted at different steps beside others, ends with the engine's tokens, stop reason and
//! text for the same prompt and config.

use bitnet_inference::sampling::SamplingParams;
use bitnet_inference::scheduler::{SeqEvent, Sink};
use bitnet_inference::{Engine, GenerationConfig, Output, StopReason};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn cfg(max_tokens: usize, temperature: f32, seed: u64, penalty: f32) -> GenerationConfig {
    GenerationConfig {
        max_tokens,
        sampling: SamplingParams {
            temperature,
            top_k: 20,
            top_p: 0.9,
            repetition_penalty: penalty,
            seed,
            ..SamplingParams::default()
        },
        ignore_eos: true,
        ..GenerationConfig::default()
    }
}

type Outputs = Arc<Mutex<Vec<(usize, Output)>>>;

/// A sink that records sequence `i`'s output, its streamed text, and stops it after `stop_after`
/// tokens if given.
fn sink(
    i: usize,
    outs: &Outputs,
    streamed: &Arc<Mutex<Vec<String>>>,
    stop_after: Option<usize>,
) -> Sink {
    let (outs, streamed) = (outs.clone(), streamed.clone());
    let mut n = 0;
    Box::new(move |ev| match ev {
        SeqEvent::Token(t) => {
            n += 1;
            streamed.lock().unwrap()[i].push_str(t.text);
            stop_after.is_none_or(|k| n < k)
        }
        SeqEvent::Done(o) => {
            outs.lock().unwrap().push((i, o));
            true
        }
        SeqEvent::Failed(why) => panic!("sequence {i} failed: {why}"),
    })
}

/// Runs `jobs` through a scheduler of `slots`, admitting each as soon as a slot is free and
/// stepping in between; returns the outputs and streamed texts in job order.
fn run_all(
    e: &mut Engine,
    slots: usize,
    jobs: &[(Vec<u32>, GenerationConfig, Option<usize>)],
) -> (Vec<Output>, Vec<String>) {
    let outs: Outputs = Arc::default();
    let streamed = Arc::new(Mutex::new(vec![String::new(); jobs.len()]));
    let mut sched = e.scheduler(slots).unwrap();
    let mut next = 0;
    let mut steps = 0;
    while next < jobs.len() || sched.active() > 0 {
        // Admit one at a time, every other step, so sequences start at different positions.
        if next < jobs.len() && sched.free_slots() > 0 && steps % 2 == 0 {
            let (ids, c, stop) = &jobs[next];
            sched.admit(ids, c, sink(next, &outs, &streamed, *stop)).unwrap();
            next += 1;
        }
        sched.step().unwrap();
        steps += 1;
        assert!(steps < 10_000);
    }
    let mut outs = std::mem::take(&mut *outs.lock().unwrap());
    outs.sort_by_key(|(i, _)| *i);
    assert_eq!(outs.len(), jobs.len());
    let texts = streamed.lock().unwrap().clone();
    (outs.into_iter().map(|(_, o)| o).collect(), texts)
}

#[test]
fn batched_sequences_end_as_the_engine_ends_them() {
    let mut e = Engine::builder().synthetic("tiny").threads(2).context_len(64).build().unwrap();
    let vocab = e.dims().vocab as u32;
    let prompt =
        |k: u32| (0..3 + k % 5).map(|i| (k * 37 + i * 11 + 1) % vocab).collect::<Vec<u32>>();
    let jobs: Vec<(Vec<u32>, GenerationConfig, Option<usize>)> = vec![
        (prompt(0), cfg(12, 0.0, 0, 1.0), None),
        (prompt(1), cfg(10, 0.8, 1, 1.0), None),
        (prompt(2), cfg(15, 0.8, 2, 1.0), None),
        (prompt(3), cfg(9, 0.7, 3, 1.3), None), // repetition penalty: picked on the host
        (prompt(4), cfg(0, 0.0, 0, 1.0), None),
        (prompt(5), cfg(200, 0.9, 5, 1.0), None), // runs into the end of the context
        (prompt(1), cfg(20, 0.8, 1, 1.0), Some(4)), // the sink stops it
        (prompt(0), cfg(12, 0.0, 0, 1.0), None),  // same prompt again: reuses a slot's prefix
    ];
    let want: Vec<Output> = jobs
        .iter()
        .map(|(ids, c, stop)| {
            let mut n = 0;
            e.generate_ids_stream(ids, c, |_| {
                n += 1;
                stop.is_none_or(|k| n < k)
            })
            .unwrap()
        })
        .collect();
    for slots in [1, 3] {
        let (got, _) = run_all(&mut e, slots, &jobs);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.generated_ids, w.generated_ids, "job {k}, {slots} slots");
            assert_eq!(g.stop_reason, w.stop_reason, "job {k}, {slots} slots");
            assert_eq!(g.prompt_ids, w.prompt_ids);
        }
    }
    assert_eq!(want[4].generated_ids.len(), 0);
    assert_eq!(want[5].stop_reason, StopReason::ContextFull);
    assert_eq!(want[6].stop_reason, StopReason::Cancelled);
}

#[test]
fn text_and_stop_strings_match_the_engine() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    let mut e = Engine::builder().model(dir).threads(2).build().unwrap();
    let mut jobs = Vec::new();
    for (k, p) in ["ROMEO:", "JULIET:", "First Citizen:"].iter().enumerate() {
        let ids = e.encode(p, true).unwrap();
        let mut c = cfg(40, 0.8, k as u64, 1.0);
        c.ignore_eos = false;
        if k == 1 {
            c.stop_strings = vec!["e".into()];
        }
        jobs.push((ids, c, None));
    }
    let want: Vec<Output> =
        jobs.iter().map(|(ids, c, _)| e.generate_ids(ids, c).unwrap()).collect();
    let (got, streamed) = run_all(&mut e, 2, &jobs);
    for k in 0..jobs.len() {
        assert_eq!(got[k].text, want[k].text, "job {k}");
        assert_eq!(streamed[k], want[k].text, "job {k}: the streamed pieces join to the text");
        assert_eq!(got[k].stop_reason, want[k].stop_reason, "job {k}");
    }
    assert_eq!(want[1].stop_reason, StopReason::StopString);
    assert!(!want[1].text.contains('e'));
}

#[test]
fn bad_admissions_are_errors_and_leave_the_scheduler_usable() {
    let mut e = Engine::builder().synthetic("tiny").threads(1).context_len(16).build().unwrap();
    let vocab = e.dims().vocab as u32;
    assert!(e.scheduler(0).is_err());
    let mut s = e.scheduler(1).unwrap();
    let ok = || -> Sink { Box::new(|_| true) };
    let c = cfg(4, 0.0, 0, 1.0);
    assert!(s.admit(&[], &c, ok()).is_err());
    assert!(s.admit(&[vocab], &c, ok()).is_err());
    assert!(s.admit(&[1; 17], &c, ok()).is_err());
    let mut bad = c.clone();
    bad.sampling.temperature = -1.0;
    assert!(s.admit(&[1], &bad, ok()).is_err());
    s.admit(&[1, 2], &c, ok()).unwrap();
    let err = s.admit(&[1, 2], &c, ok()).unwrap_err().to_string();
    assert!(err.contains("no free slot"), "{err}");
    while s.active() > 0 {
        s.step().unwrap();
    }
    assert_eq!(s.free_slots(), 1);
}

#[test]
fn a_long_prompt_runs_in_chunks_while_a_running_sequence_keeps_streaming() {
    let mut e = Engine::builder().synthetic("tiny").threads(2).context_len(96).build().unwrap();
    let vocab = e.dims().vocab as u32;
    let short = vec![3u32, 17, 29];
    let long: Vec<u32> = (0..50).map(|i| (i * 7 + 5) % vocab).collect();
    let c = |n| cfg(n, 0.0, 0, 1.0);
    let want_short = e.generate_ids(&short, &c(30)).unwrap().generated_ids;
    let want_long = e.generate_ids(&long, &c(8)).unwrap().generated_ids;
    // Steps from the long prompt's admission to its first token: one per chunk, then one.
    for (chunk, first_at) in [(7, 50usize.div_ceil(7) + 1), (0, 2), (64, 2)] {
        let counts = Arc::new(Mutex::new([0usize; 2]));
        let outs: Outputs = Arc::default();
        let sink = |i: usize| -> Sink {
            let (counts, outs) = (counts.clone(), outs.clone());
            Box::new(move |ev| {
                match ev {
                    SeqEvent::Token(_) => counts.lock().unwrap()[i] += 1,
                    SeqEvent::Done(o) => outs.lock().unwrap().push((i, o)),
                    SeqEvent::Failed(why) => panic!("sequence {i} failed: {why}"),
                }
                true
            })
        };
        let mut s = e.scheduler(2).unwrap();
        s.set_prefill_chunk(chunk);
        s.admit(&short, &c(30), sink(0)).unwrap();
        s.step().unwrap(); // the short prompt, alone: whole
        s.step().unwrap();
        assert_eq!(counts.lock().unwrap()[0], 1);
        s.admit(&long, &c(8), sink(1)).unwrap();
        assert_eq!(s.active(), 2);
        let mut steps = 0;
        while counts.lock().unwrap()[1] == 0 {
            let before = counts.lock().unwrap()[0];
            s.step().unwrap();
            steps += 1;
            assert_eq!(counts.lock().unwrap()[0], before + 1, "chunk {chunk}: streams on");
            assert!(steps < 100);
        }
        assert_eq!(steps, first_at, "chunk {chunk}");
        while s.active() > 0 {
            s.step().unwrap();
        }
        drop(s);
        let mut outs = std::mem::take(&mut *outs.lock().unwrap());
        outs.sort_by_key(|(i, _)| *i);
        assert_eq!(outs[0].1.generated_ids, want_short, "chunk {chunk}");
        assert_eq!(outs[1].1.generated_ids, want_long, "chunk {chunk}");
        assert_eq!(outs[1].1.timings.prompt_tokens, long.len());
    }
}

#[test]
fn a_kv_cache_too_large_for_memory_is_an_error_not_an_abort() {
    use bitnet_core::{Device, DeviceRequest};
    let cpu = || Engine::builder().synthetic("tiny").device(DeviceRequest::Exact(Device::Cpu));
    let err = cpu().context_len(1 << 40).build().err().expect("no memory for that").to_string();
    assert!(err.contains("KV cache") && err.contains("--ctx"), "{err}");
    let mut e = cpu().context_len(1 << 16).build().unwrap();
    let err = e.scheduler(1 << 24).err().expect("no memory for those slots").to_string();
    assert!(err.contains("KV cache") && err.contains("--parallel"), "{err}");
    assert!(e.scheduler(2).is_ok(), "the engine stays usable");
}

#[test]
fn a_kv_cache_larger_than_the_memory_available_is_refused_up_front() {
    // Keys and values of 1.5x the memory there is, each allocation below it: Linux would grant
    // both (pages are committed only when sequences write them) and kill the server later.
    use bitnet_core::{Device, DeviceRequest};
    let Some(avail) = bitnet_core::device::host_memory_available() else {
        eprintln!("skipped: this OS does not report the memory available");
        return;
    };
    let ctx = 1 << 12;
    let mut e = Engine::builder()
        .synthetic("tiny")
        .device(DeviceRequest::Exact(Device::Cpu))
        .context_len(ctx)
        .build()
        .unwrap();
    let d = e.dims().clone();
    let per_slot = (d.layers * d.kv_heads * d.head_dim * ctx * 8) as u64;
    let slots = (avail + avail / 2).div_ceil(per_slot) as usize;
    let err = e.scheduler(slots).err().expect("more than the memory available").to_string();
    assert!(err.contains("KV cache") && err.contains("GB available"), "{err}");
    assert!(e.scheduler(2).is_ok(), "the engine stays usable");
}
