//! A naive sampling reference for the tests (full sorts, explicit walks) that also reports how
//! close the draw came to a decision boundary, so that device results, whose sums round
//! differently, are compared only where the choice is clear.
#![allow(dead_code)]

use bitnet_inference::sampling::SamplingParams;

/// Distance (relative to the total mass) between a running mass and its bar under which a
/// case counts as on a boundary. Device weights are within one f32 ulp (2^-23 relative) of the
/// host's, so running masses differ by at most that much of the total (plus f64 rounding):
/// 4 ulps is a safe bar. (1e-4 would skip nearly every pick of a flat 128K-token row, whose
/// candidates each hold about 1e-5 of the mass.)
pub const MARGIN: f64 = 5e-7;
/// Relative distance between a weight and the min-p bar under which a case counts as on a
/// boundary (weights computed elsewhere differ by an ulp or two, 1e-7 relative).
pub const WEIGHT_MARGIN: f64 = 1e-5;

/// The reference's token and its margin: the smallest relative distance (to the total mass)
/// between a running mass and the bar it is compared with, 0 when a weight is within
/// [`WEIGHT_MARGIN`] of the min-p bar or the order of near-equal weights decides;
/// `f64::INFINITY` for choices that compare nothing (greedy, `+inf`). The start of the walk
/// (running mass 0) is no boundary: every bar is positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub token: u32,
    pub margin: f64,
}

/// Which token `u` selects, following the documented semantics step by step; `None` when the
/// row has nothing to sample.
pub fn reference(p: &SamplingParams, logits: &[f32], u: f64) -> Option<Choice> {
    let l: Vec<f32> =
        logits.iter().map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x }).collect();
    let sure = |token: usize| Some(Choice { token: token as u32, margin: f64::INFINITY });
    if let Some(i) = l.iter().position(|&x| x == f32::INFINITY) {
        return sure(i);
    }
    let mut best = None::<(usize, f32)>;
    for (i, &x) in l.iter().enumerate() {
        if x > f32::NEG_INFINITY && best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    let (arg, max) = best?;
    if p.is_greedy() {
        return sure(arg);
    }
    // (id, logit, weight)
    let mut c: Vec<(u32, f32, f32)> = l
        .iter()
        .enumerate()
        .filter(|(_, &x)| x > f32::NEG_INFINITY)
        .map(|(i, &x)| (i as u32, x, 0.0))
        .collect();
    if p.top_k > 0 && p.top_k < l.len() {
        c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        c.truncate(p.top_k);
    }
    let inv_t = 1.0 / p.temperature;
    for x in c.iter_mut() {
        x.2 = ((x.1 - max) * inv_t).exp();
    }
    let desc = p.top_k > 0 || p.top_p < 1.0;
    if desc {
        c.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
    } else {
        c.sort_by_key(|x| x.0);
    }
    let mut margin = f64::INFINITY;
    if p.top_p < 1.0 {
        let total: f64 = c.iter().map(|x| x.2 as f64).sum();
        let target = p.top_p as f64 * total;
        let mut cum = 0.0;
        let mut keep = c.len();
        for (j, x) in c.iter().enumerate() {
            let before = cum;
            cum += x.2 as f64;
            if cum >= target {
                keep = j + 1;
                margin = margin.min((cum - target) / total);
                if before > 0.0 {
                    margin = margin.min((target - before) / total);
                }
                if ambiguous(&c, j) {
                    margin = 0.0;
                }
                break;
            }
        }
        c.truncate(keep);
    }
    if p.min_p > 0.0 {
        let m = p.min_p as f64;
        for x in c.iter().filter(|x| x.1 != max) {
            if ((x.2 as f64) - m).abs() < WEIGHT_MARGIN * m {
                margin = 0.0;
            }
        }
        c.retain(|x| x.2 >= p.min_p);
    }
    let total: f64 = c.iter().map(|x| x.2 as f64).sum();
    let r = u * total;
    let mut cum = 0.0;
    for (j, x) in c.iter().enumerate() {
        let before = cum;
        cum += x.2 as f64;
        if cum > r {
            margin = margin.min((cum - r) / total);
            if before > 0.0 {
                margin = margin.min((r - before) / total);
            }
            if desc && ambiguous(&c, j) {
                margin = 0.0;
            }
            return Some(Choice { token: x.0, margin });
        }
    }
    Some(Choice { token: c.last()?.0, margin: 0.0 })
}

/// True when candidate `j` has a neighbour in the walk order with a different logit but a
/// weight within two ulps, so that an exp rounded differently (f32 `expf` of glibc and the
/// device's exp differ by one ulp on about 1 input in 10^4) could tie or swap them.
fn ambiguous(c: &[(u32, f32, f32)], j: usize) -> bool {
    let close = |a: &(u32, f32, f32), b: &(u32, f32, f32)| {
        a.1 != b.1 && ((a.2 - b.2).abs() as f64) <= 2.5e-7 * (a.2.max(b.2) as f64)
    };
    (j > 0 && close(&c[j - 1], &c[j])) || c.get(j + 1).is_some_and(|n| close(&c[j], n))
}

/// Deterministic test data: xorshift64*.
pub struct Gen(pub u64);

impl Gen {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (sum of four uniforms), scaled.
    pub fn normal(&mut self, scale: f32) -> f32 {
        let s: f64 = (0..4).map(|_| self.unit()).sum::<f64>() - 2.0;
        (s * 1.7) as f32 * scale
    }
}

/// A row of `n` logits of one of several shapes (`kind` selects): spread, peaked, coarse (many
/// exact ties), with `-inf`/NaN sprinkled in.
pub fn logits_row(g: &mut Gen, n: usize, kind: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n)
        .map(|_| match kind % 4 {
            0 => g.normal(2.0),
            1 => g.normal(4.0) + if g.unit() < 0.001 { 12.0 } else { 0.0 },
            2 => (g.normal(2.0) * 4.0).round() / 4.0,
            _ => g.normal(1.0),
        })
        .collect();
    if kind % 4 == 3 {
        for x in v.iter_mut() {
            let t = g.unit();
            if t < 0.1 {
                *x = f32::NEG_INFINITY;
            } else if t < 0.15 {
                *x = f32::NAN;
            }
        }
    }
    v
}

/// The configurations every comparison runs.
pub fn configs() -> Vec<(&'static str, SamplingParams)> {
    let d = SamplingParams::default;
    vec![
        ("greedy", SamplingParams::greedy()),
        ("top_k=1", SamplingParams { top_k: 1, ..d() }),
        ("T=0.8", SamplingParams { temperature: 0.8, ..d() }),
        ("T=1.3 min_p=0.05", SamplingParams { temperature: 1.3, min_p: 0.05, ..d() }),
        ("top_k=40", SamplingParams { top_k: 40, ..d() }),
        ("top_k=5 T=0.5", SamplingParams { top_k: 5, temperature: 0.5, ..d() }),
        ("top_p=0.9", SamplingParams { top_p: 0.9, ..d() }),
        ("top_p=1e-6", SamplingParams { top_p: 1e-6, ..d() }),
        (
            "top_k=50 top_p=0.95 min_p=0.02 T=0.7",
            SamplingParams { top_k: 50, top_p: 0.95, min_p: 0.02, temperature: 0.7, ..d() },
        ),
        ("top_k=1000000", SamplingParams { top_k: 1_000_000, ..d() }),
        ("min_p=1", SamplingParams { min_p: 1.0, ..d() }),
    ]
}
