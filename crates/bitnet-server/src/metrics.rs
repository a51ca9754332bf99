//! Counters for `/metrics`, in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Server counters (all monotonic except the gauges `queued`, `active`).
#[derive(Default)]
pub(crate) struct Metrics {
    pub completions: AtomicU64,
    pub chat_completions: AtomicU64,
    /// Responses with a 4xx or 5xx status (and streams that ended in an error).
    pub errors: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Generations stopped because the client went away.
    pub cancelled: AtomicU64,
    /// Microseconds spent on prompts and on generating.
    prompt_us: AtomicU64,
    generate_us: AtomicU64,
    /// Jobs waiting for the engine.
    pub queued: AtomicU64,
    /// Sequences the engine is generating.
    pub active: AtomicU64,
    /// 1 once the engine's thread has ended (a panic).
    pub engine_failed: AtomicU64,
}

impl Metrics {
    pub fn add_seconds(&self, prompt_s: f64, generate_s: f64) {
        self.prompt_us.fetch_add((prompt_s * 1e6) as u64, Relaxed);
        self.generate_us.fetch_add((generate_s * 1e6) as u64, Relaxed);
    }

    /// The Prometheus exposition of every counter.
    pub fn render(&self) -> String {
        let n = |a: &AtomicU64| a.load(Relaxed).to_string();
        let secs = |a: &AtomicU64| format!("{:.6}", a.load(Relaxed) as f64 / 1e6);
        let mut s = String::new();
        metric(
            &mut s,
            ("bitnet_requests_total", "counter", "Generation requests received, by endpoint."),
            &[
                ("{endpoint=\"completions\"}", n(&self.completions)),
                ("{endpoint=\"chat_completions\"}", n(&self.chat_completions)),
            ],
        );
        let plain: [(&str, &str, &str, String); 8] = [
            (
                "bitnet_request_errors_total",
                "counter",
                "Requests answered with an error.",
                n(&self.errors),
            ),
            (
                "bitnet_prompt_tokens_total",
                "counter",
                "Prompt tokens of finished generations.",
                n(&self.prompt_tokens),
            ),
            (
                "bitnet_generated_tokens_total",
                "counter",
                "Tokens generated.",
                n(&self.completion_tokens),
            ),
            (
                "bitnet_cancelled_total",
                "counter",
                "Generations stopped because the client disconnected.",
                n(&self.cancelled),
            ),
            (
                "bitnet_prompt_seconds_total",
                "counter",
                "Seconds spent on prompts.",
                secs(&self.prompt_us),
            ),
            (
                "bitnet_generate_seconds_total",
                "counter",
                "Seconds spent generating tokens.",
                secs(&self.generate_us),
            ),
            ("bitnet_queue_depth", "gauge", "Requests waiting for the engine.", n(&self.queued)),
            ("bitnet_active_sequences", "gauge", "Requests being generated.", n(&self.active)),
        ];
        for (name, kind, help, v) in plain {
            metric(&mut s, (name, kind, help), &[("", v)]);
        }
        s
    }
}

/// One metric: its HELP and TYPE lines, then a sample per label set.
fn metric(s: &mut String, (name, kind, help): (&str, &str, &str), samples: &[(&str, String)]) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(s, "{name}{labels} {v}");
    }
}
