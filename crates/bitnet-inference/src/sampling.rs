//! Token sampling (repetition penalty, temperature, top-k, top-p, min-p) and stop conditions.
//!
//! The processing order is the one of Hugging Face `generate`: repetition penalty →
//! temperature → top-k → top-p → min-p → softmax → draw. Draws come from a seeded
//! xoshiro256** generator, so a seed gives the same tokens on every platform.
//!
//! Non-finite logits never panic: NaN counts as `-inf`; if some logits are `+inf`, the lowest
//! such index is returned; if every logit is `-inf` or NaN, [`Sampler::sample`] returns an error.

use bitnet_core::{Error, Result};

mod stop;

pub use stop::{StopChecker, StopConditions, StopReason};

/// How to pick the next token from a row of logits.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax, lowest index among ties).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` turns it off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; `1` = off.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top probability; `0` = off.
    pub min_p: f32,
    /// CTRL/HF repetition penalty over tokens already in the context; `1` = off.
    pub repetition_penalty: f32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// A seed from the clock (nanoseconds since the Unix epoch), for runs that give none.
    pub fn clock_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// True when these parameters always pick the argmax (temperature 0 or top-k 1).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Checks every field; the error names the bad field and its accepted range.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(Error::invalid(format!(
                "temperature must be a finite number >= 0 (0 = greedy), got {t}"
            )));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(Error::invalid(format!("top_p must be in (0, 1] (1 = off), got {p}")));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return Err(Error::invalid(format!("min_p must be in [0, 1] (0 = off), got {m}")));
        }
        let r = self.repetition_penalty;
        if !r.is_finite() || r <= 0.0 {
            return Err(Error::invalid(format!(
                "repetition_penalty must be a finite number > 0 (1 = off), got {r}"
            )));
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self { s: [next(), next(), next(), next()] }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform number in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Draws tokens from logits; keeps its scratch buffers so that calls after the first do not allocate.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// (token id, logit) of the tokens still in the running.
    cand: Vec<(u32, f32)>,
    /// One bit per vocabulary entry: token already penalized in this call.
    seen: Vec<u64>,
}

/// Descending by logit (or weight), then ascending by id, so ties resolve to the lowest index.
fn by_weight_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl Sampler {
    /// A sampler for `params` (validated), with its generator seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = Rng::new(params.seed);
        Ok(Self { params, rng, cand: Vec::new(), seen: Vec::new() })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Restarts the random stream from `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.params.seed = seed;
        self.rng = Rng::new(seed);
    }

    /// Picks the next token id. `logits` is modified in place (NaN → -inf, repetition penalty);
    /// `context` holds the ids already in the sequence (ids outside the vocabulary are ignored).
    /// Errors on an empty row and on a row with no finite or `+inf` logit.
    ///
    /// Same as [`Sampler::draw`] then [`Sampler::pick`] after the repetition penalty: one number
    /// of the stream per call unless greedy, so device sampling with the same draws (see
    /// `Backend::sample`) continues the same stream.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::invalid("cannot sample from an empty logits row"));
        }
        for l in logits.iter_mut() {
            if l.is_nan() {
                *l = f32::NEG_INFINITY;
            }
        }
        self.apply_repetition_penalty(logits, context);
        let u = self.draw();
        self.pick(logits, u)
    }

    /// The uniform number in `[0, 1)` for the next pick: the next of the seeded stream, or `0`
    /// without touching the stream when the parameters are greedy (greedy picks draw nothing).
    pub fn draw(&mut self) -> f64 {
        if self.params.is_greedy() {
            0.0
        } else {
            self.rng.next_f64()
        }
    }

    /// The token that the uniform `u` (in `[0, 1)`) selects from `logits` under these parameters,
    /// without repetition penalty: the host reference of device sampling. NaN counts as `-inf`
    /// (rewritten in place); the first `+inf` wins; greedy is the argmax (lowest index among
    /// ties). Otherwise weights `exp((l - max) / T)`, top-k by logit, top-p, min-p, then the
    /// candidates are walked with `r = u * mass` — in (weight desc, id asc) order when top-k or
    /// top-p is on, in id order otherwise — and the first whose running mass exceeds `r` wins.
    /// Errors on an empty row and on a row with no finite or `+inf` logit.
    pub fn pick(&mut self, logits: &mut [f32], u: f64) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::invalid("cannot sample from an empty logits row"));
        }
        for l in logits.iter_mut() {
            if l.is_nan() {
                *l = f32::NEG_INFINITY;
            }
        }
        if let Some(i) = logits.iter().position(|&l| l == f32::INFINITY) {
            return Ok(i as u32);
        }
        let (best, max) = argmax(logits);
        if max == f32::NEG_INFINITY {
            return Err(nothing_to_sample(logits.len()));
        }
        if self.params.is_greedy() {
            return Ok(best);
        }
        Ok(self.sample_filtered(logits, max, u))
    }

    /// HF/CTRL rule on each distinct context token: a positive logit is divided by the
    /// penalty, a negative one multiplied.
    fn apply_repetition_penalty(&mut self, logits: &mut [f32], context: &[u32]) {
        let p = self.params.repetition_penalty;
        if p == 1.0 || context.is_empty() {
            return;
        }
        let words = logits.len().div_ceil(64);
        if self.seen.len() < words {
            self.seen.resize(words, 0);
        }
        for &id in context {
            let i = id as usize;
            if i >= logits.len() {
                continue;
            }
            let (w, bit) = (i / 64, 1u64 << (i % 64));
            if self.seen[w] & bit != 0 {
                continue;
            }
            self.seen[w] |= bit;
            let l = &mut logits[i];
            *l = if *l > 0.0 { *l / p } else { *l * p };
        }
        for &id in context {
            if let Some(w) = self.seen.get_mut(id as usize / 64) {
                *w = 0;
            }
        }
    }

    /// Temperature, top-k, top-p, min-p, then the draw `u`. `max` is the largest (finite) logit.
    fn sample_filtered(&mut self, logits: &[f32], max: f32, u: f64) -> u32 {
        let inv_t = 1.0 / self.params.temperature;
        let k = self.params.top_k;
        if k > 0 && k < logits.len() {
            collect_top_k(logits, k, &mut self.cand);
        } else {
            self.cand.clear();
            let finite = logits.iter().enumerate().filter(|(_, &l)| l > f32::NEG_INFINITY);
            self.cand.extend(finite.map(|(i, &l)| (i as u32, l)));
        }
        // Logits become unnormalized probabilities relative to the top token (weight 1);
        // exp is monotonic, so the order (and the top-k set) is unchanged.
        for c in self.cand.iter_mut() {
            c.1 = ((c.1 - max) * inv_t).exp();
        }
        let (top_p, min_p) = (self.params.top_p, self.params.min_p);
        if k > 0 && top_p >= 1.0 {
            // Selection left the order to std's algorithm: make the draw order canonical.
            self.cand.sort_unstable_by(by_weight_desc);
        }
        if top_p < 1.0 {
            let keep = nucleus_len(&mut self.cand, top_p);
            self.cand.truncate(keep);
            if min_p > 0.0 {
                // Sorted: the tokens above the min-p threshold form a prefix (the top one stays).
                let keep = self.cand.iter().take_while(|c| c.1 >= min_p).count();
                self.cand.truncate(keep.max(1));
            }
        } else if min_p > 0.0 {
            // The top token always passes (weight 1 >= min_p), so the set never empties.
            self.cand.retain(|c| c.1 >= min_p);
        }
        let total: f64 = self.cand.iter().map(|c| c.1 as f64).sum();
        let mut r = u * total;
        for c in &self.cand {
            r -= c.1 as f64;
            if r < 0.0 {
                return c.0;
            }
        }
        // Rounding left a sliver of mass: it belongs to the last candidate.
        self.cand.last().map_or(0, |c| c.0)
    }
}

/// The error of a row with nothing to sample (every one of its `n` logits `-inf` or NaN).
pub fn nothing_to_sample(n: usize) -> Error {
    Error::invalid(format!("all {n} logits are -inf or NaN: nothing to sample"))
}

/// Index of the largest value (lowest index among ties) and that value; NaN never wins.
pub fn argmax(xs: &[f32]) -> (u32, f32) {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (i, &x) in xs.iter().enumerate() {
        if x > best.1 {
            best = (i as u32, x);
        }
    }
    best
}

/// Puts the `k` largest finite logits (lowest ids among ties) into `cand`, in one scan: a
/// buffer of up to `2k` entries is cut back to the best `k` whenever it fills, and its k-th
/// value becomes the bar a new logit must beat, so most logits cost one comparison.
fn collect_top_k(logits: &[f32], k: usize, cand: &mut Vec<(u32, f32)>) {
    let cap = (2 * k).max(k + 256);
    cand.clear();
    cand.reserve(cap);
    let mut bar = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        // Equal to the bar is not enough: the kept entry with that value has a lower id.
        if l > bar {
            cand.push((i as u32, l));
            if cand.len() == cap {
                cand.select_nth_unstable_by(k - 1, by_weight_desc);
                cand.truncate(k);
                bar = cand[k - 1].1;
            }
        }
    }
    if cand.len() > k {
        cand.select_nth_unstable_by(k - 1, by_weight_desc);
        cand.truncate(k);
    }
}

/// Sorts a growing prefix of `cand` (id, weight) in descending order until it holds `top_p`
/// of the total weight, and returns the length of that nucleus. Avoids sorting the whole
/// vocabulary: a peaked distribution needs only the first 64.
fn nucleus_len(cand: &mut [(u32, f32)], top_p: f32) -> usize {
    let total: f64 = cand.iter().map(|c| c.1 as f64).sum();
    let target = top_p as f64 * total;
    // A nucleus token i has more than (1 - top_p) of the mass at or below its weight, spread
    // over at most n tokens: w_i > (1 - top_p) * total / n. Move the rest out of the way.
    let floor = ((1.0 - top_p as f64) * total / cand.len() as f64 * 0.999) as f32;
    let mut n = 0;
    for i in 0..cand.len() {
        if cand[i].1 > floor {
            cand.swap(n, i);
            n += 1;
        }
    }
    let n = n.max(1); // the top token (weight 1 > floor) always passes
    let cand = &mut cand[..n];
    let mut k = n.min(64);
    loop {
        if k < n {
            cand.select_nth_unstable_by(k - 1, by_weight_desc);
        }
        cand[..k].sort_unstable_by(by_weight_desc);
        let mut cum = 0.0f64;
        for (j, c) in cand[..k].iter().enumerate() {
            cum += c.1 as f64;
            if cum >= target {
                return j + 1;
            }
        }
        if k == n {
            return n;
        }
        k = n.min(k * 8);
    }
}
