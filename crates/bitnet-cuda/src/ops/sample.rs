//! Token sampling on the device (`sample.cu`): one id per row of logits, so that only `rows`
//! ids travel to the host instead of `rows x vocab` logits.

use super::{dptr, launch, need, to_i32, zeros, Dims};
use crate::device::{dev_err, Gpu};
use bitnet_core::{Error, Result};
use cudarc::driver::{sys, CudaEvent, CudaSlice, PinnedHostSlice};

/// Threads per row (`SAMPLE_THREADS` in sample_search.cu; sample.cu's `__launch_bounds__`).
const THREADS: u32 = 1024;

/// How to pick a token (the host sampler's parameters, without the repetition penalty, which
/// stays on the host).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleConfig {
    /// Argmax (lowest index among ties); the other fields are then ignored.
    pub greedy: bool,
    /// Softmax temperature (> 0 unless `greedy`).
    pub temperature: f32,
    /// Keep the `top_k` largest logits; 0 = off.
    pub top_k: usize,
    /// Nucleus mass in (0, 1]; 1 = off.
    pub top_p: f32,
    /// Minimum weight relative to the top token, in [0, 1]; 0 = off.
    pub min_p: f32,
}

impl SampleConfig {
    fn check(&self) -> Result<()> {
        if self.greedy {
            return Ok(());
        }
        let (t, p, m) = (self.temperature, self.top_p, self.min_p);
        if !(t.is_finite() && t > 0.0 && p > 0.0 && p <= 1.0 && (0.0..=1.0).contains(&m)) {
            return Err(Error::invalid(format!(
                "device sampling: temperature {t}, top_p {p}, min_p {m} out of range"
            )));
        }
        Ok(())
    }
}

/// Where a device pick goes besides its `out` buffer: a host-mapped slot of an [`IdFetch`]
/// (none by default), and device (slot, position) pairs whose positions the pick advances by
/// one for the next decode step (none by default). Each holds at most so many rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickTo {
    args: PickArgs,
    host_rows: usize,
    advance_rows: usize,
}

/// The kernel's view of a [`PickTo`] (mirrors `PickTo` in sample.cu): the two addresses, 0
/// where unset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PickArgs {
    host: u64,
    advance: u64,
}

// SAFETY: plain `repr(C)` device addresses with the layout of the CUDA struct it mirrors.
unsafe impl cudarc::driver::DeviceRepr for PickArgs {}

impl Default for PickTo {
    fn default() -> Self {
        PickTo { args: PickArgs::default(), host_rows: usize::MAX, advance_rows: usize::MAX }
    }
}

impl PickTo {
    /// The picks also go to `slot`'s host memory.
    pub fn host(slot: IdSlot) -> Self {
        let args = PickArgs { host: slot.dev, advance: 0 };
        PickTo { args, host_rows: slot.rows, ..Self::default() }
    }
    /// And the positions of the pairs in `rows` (one pair per sampled row) go up by one.
    pub fn advancing(self, gpu: &Gpu, rows: &CudaSlice<i32>) -> Result<Self> {
        need(rows.len(), 2, "advanced rows")?;
        let args = PickArgs { advance: dptr(gpu, rows), ..self.args };
        Ok(PickTo { args, advance_rows: rows.len() / 2, ..self })
    }
    /// Errors unless both destinations hold `rows` rows.
    fn check(&self, rows: usize) -> Result<()> {
        if rows > self.host_rows || rows > self.advance_rows {
            return Err(Error::shape(format!(
                "{rows} picks into a host slot of {} and {} row pairs",
                self.host_rows, self.advance_rows
            )));
        }
        Ok(())
    }
}

/// Device buffers of [`sample`]: two candidate lists (weights and ids) of the padded vocabulary
/// per row (only for non-greedy sampling), the uniforms and the chosen ids. Grows on demand and
/// is reused.
#[derive(Default)]
pub struct SampleScratch {
    weights: Option<CudaSlice<f32>>,
    cand_ids: Option<CudaSlice<i32>>,
    uniforms: Option<CudaSlice<f64>>,
    ids: Option<CudaSlice<i32>>,
    /// Greedy: each block's best key (rows x parts), and one ticket word per row (zero between
    /// launches: the kernel resets it).
    parts: Option<CudaSlice<u64>>,
    tickets: Option<CudaSlice<u32>>,
}

impl SampleScratch {
    /// Empty scratch (allocated by the first [`sample`] call).
    pub fn new() -> Self {
        Self::default()
    }
}

fn grow<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    gpu: &Gpu,
    slot: &mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<()> {
    if slot.as_ref().is_none_or(|s| s.len() < len) {
        *slot = Some(zeros(gpu, len)?);
    }
    Ok(())
}

/// One token id per row of `logits` (`rows x vocab`, row-major) into `out[..rows]`, drawn with
/// `uniforms[r]` in `[0, 1)` (ignored when greedy). `out[r] = -1` when row `r` has no finite and
/// no `+inf` logit (nothing to sample). Waits for the stream (the ids are downloaded); like
/// [`download`](super::download), call it outside deferred recording ([`Gpu::flush`] first).
#[allow(clippy::too_many_arguments)]
pub fn sample(
    gpu: &Gpu,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    cfg: &SampleConfig,
    uniforms: &[f64],
    scratch: &mut SampleScratch,
    out: &mut [i32],
) -> Result<()> {
    need(out.len(), rows, "sample output")?;
    if rows == 0 {
        return Ok(());
    }
    grow(gpu, &mut scratch.ids, rows)?;
    let mut ids = scratch.ids.take().ok_or_else(|| Error::invalid("sample ids"))?;
    let to = PickTo::default();
    let r = launch_sample(gpu, logits, rows, vocab, cfg, uniforms, scratch, &mut ids, to);
    scratch.ids = Some(ids);
    r?;
    let ids = scratch.ids.as_ref().ok_or_else(|| Error::invalid("sample ids"))?;
    super::download(gpu, ids, &mut out[..rows])
}

/// [`sample`] whose ids stay on the device: row `r`'s id written to `dst[r]` (`-1` when there
/// is nothing to sample) without waiting, for a later kernel to read (the next decode step's
/// tokens), and where `to` says (an [`IdFetch`] slot brings them back). Can be deferred into a
/// decode step's graph: its arguments change only with `to` and `rows`.
#[allow(clippy::too_many_arguments)]
pub fn sample_to_device(
    gpu: &Gpu,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    cfg: &SampleConfig,
    uniforms: &[f64],
    scratch: &mut SampleScratch,
    dst: &mut CudaSlice<i32>,
    to: PickTo,
) -> Result<()> {
    if rows == 0 {
        return Err(Error::invalid("device sampling: no rows"));
    }
    to.check(rows)?;
    launch_sample(gpu, logits, rows, vocab, cfg, uniforms, scratch, dst, to)
}

/// Launches `sample_rows` for `rows >= 1` rows, ids into `out[..rows]`.
#[allow(clippy::too_many_arguments)]
fn launch_sample(
    gpu: &Gpu,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    cfg: &SampleConfig,
    uniforms: &[f64],
    scratch: &mut SampleScratch,
    out: &mut CudaSlice<i32>,
    to: PickTo,
) -> Result<()> {
    to.check(rows)?;
    let to = to.args;
    cfg.check()?;
    if vocab == 0 {
        return Err(Error::invalid("device sampling: empty logits rows"));
    }
    need(logits.len(), rows * vocab, "sample logits")?;
    need(out.len(), rows, "sample output")?;
    let grid = u32::try_from(rows).map_err(|_| Error::invalid("device sampling: too many rows"))?;
    let n = to_i32(vocab, "vocabulary")?;
    // Candidate lists are read 16 bytes at a time: rows of a multiple of 4 entries.
    let stride = vocab.next_multiple_of(4);
    to_i32(rows * 2 * stride, "rows x 2 x padded vocabulary")?;
    let st = to_i32(stride, "padded vocabulary")?;
    let (mut wp, mut cp, mut up) = (0u64, 0u64, 0u64);
    if !cfg.greedy {
        need(uniforms.len(), rows, "sample uniforms")?;
        if let Some(&u) = uniforms[..rows].iter().find(|u| !(0.0..1.0).contains(*u)) {
            return Err(Error::invalid(format!("device sampling: uniform {u} is not in [0, 1)")));
        }
        grow(gpu, &mut scratch.weights, rows * 2 * stride)?;
        grow(gpu, &mut scratch.cand_ids, rows * 2 * stride)?;
        grow(gpu, &mut scratch.uniforms, rows)?;
        let ubuf = scratch.uniforms.as_mut().ok_or_else(|| Error::invalid("uniforms"))?;
        super::write(gpu, &uniforms[..rows], ubuf)?;
        up = dptr(gpu, ubuf);
        wp = dptr(gpu, scratch.weights.as_ref().ok_or_else(|| Error::invalid("weights"))?);
        cp = dptr(gpu, scratch.cand_ids.as_ref().ok_or_else(|| Error::invalid("ids"))?);
    }
    let (lp, ip) = (dptr(gpu, logits), dptr(gpu, out));
    // Greedy rows go over several blocks each (grid y holds at most 65,535 rows).
    if cfg.greedy && rows <= 65_535 {
        return launch_greedy(gpu, lp, ip, to, rows, vocab, scratch);
    }
    let greedy = i32::from(cfg.greedy);
    let inv_t = if cfg.greedy { 1.0 } else { 1.0 / cfg.temperature };
    let top_k = to_i32(cfg.top_k.min(vocab), "top_k")?;
    let (top_p, min_p) = (cfg.top_p, cfg.min_p);
    let dims = Dims::line(grid, THREADS);
    // Kernel: sample_rows(logits, wbuf, ibuf, uniforms, out, to, n, stride, greedy, inv_t, top_k,
    // top_p, min_p); logits hold rows * n values and out rows ids (checked); `to` as the caller
    // says; wbuf and ibuf (rows * 2 * stride, stride >= n a multiple of 4, 16-byte aligned
    // allocations) and uniforms (rows) are allocated unless greedy, when the kernel returns
    // before touching them.
    launch!(gpu, &gpu.k.sample_rows, dims;
        lp, wp, cp, up, ip, to, n, st, greedy, inv_t, top_k, top_p, min_p)
}

/// Logits per block of `sample_greedy` (about): 2B-4T's 128,256-token rows take 63 blocks.
const GREEDY_CHUNK: usize = 2048;
/// Threads per block of `sample_greedy` (`GREEDY_THREADS`).
const GREEDY_THREADS: u32 = 256;

/// Greedy picks of `rows` rows of `vocab` logits at `lp` into the ids at `ip`, each row split
/// over up to 64 blocks (`sample_greedy`).
fn launch_greedy(
    gpu: &Gpu,
    lp: u64,
    ip: u64,
    to: PickArgs,
    rows: usize,
    vocab: usize,
    scratch: &mut SampleScratch,
) -> Result<()> {
    let parts = vocab.div_ceil(GREEDY_CHUNK).clamp(1, 64);
    let chunk = vocab.div_ceil(parts).next_multiple_of(4);
    grow(gpu, &mut scratch.parts, rows * parts)?;
    grow(gpu, &mut scratch.tickets, rows)?;
    let pp = dptr(gpu, scratch.parts.as_ref().ok_or_else(|| Error::invalid("greedy parts"))?);
    let tp = dptr(gpu, scratch.tickets.as_ref().ok_or_else(|| Error::invalid("tickets"))?);
    let (n, c) = (to_i32(vocab, "vocabulary")?, to_i32(chunk, "greedy chunk")?);
    let dims = Dims::new((parts as u32, rows as u32, 1), GREEDY_THREADS);
    // Kernel: sample_greedy(logits, parts, tickets, out, to, n, chunk); logits hold rows * n
    // values and out rows ids (checked by the caller), `to` as the caller says, parts rows *
    // parts words, tickets rows zeroed words; parts * chunk >= n.
    launch!(gpu, &gpu.k.sample_greedy, dims; lp, pp, tp, ip, to, n, c)
}

/// Brings ids back from the device with no copy in the stream: the sampling kernel writes the
/// ids into page-locked host memory mapped into the device ([`PickTo::host`]; one of two slots,
/// so that one step's picks and the next's can both be in flight), and an event recorded after
/// it ([`IdFetch::mark`]) tells when they are there. [`IdFetch::wait`] waits for that event
/// only, not for work queued after it.
#[derive(Default)]
pub struct IdFetch {
    slots: Vec<HostSlot>,
    next: usize,
}

/// Mapped host words (one per row) and the event after their last write.
struct HostSlot {
    mem: PinnedHostSlice<i32>,
    /// Its host address (read with volatile loads: the device writes it).
    host: usize,
    /// Its address in the device's address space.
    dev: u64,
    done: CudaEvent,
}

/// A slot of an [`IdFetch`] picks are sent to ([`PickTo::host`]), of `rows` words.
#[derive(Clone, Copy, Debug)]
pub struct IdSlot {
    slot: usize,
    dev: u64,
    rows: usize,
}

impl HostSlot {
    fn new(gpu: &Gpu, rows: usize) -> Result<Self> {
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP;
        // SAFETY: the words are written below before anything reads them.
        let mut mem = unsafe { gpu.context().alloc_pinned_with_flags::<i32>(rows, flags) }
            .map_err(|e| dev_err("cuMemHostAlloc", e))?;
        let p = mem.as_mut_ptr().map_err(|e| dev_err("pinned memory", e))?;
        let mut dev: sys::CUdeviceptr = 0;
        // SAFETY: `p` is `rows` i32 of page-locked memory that live as long as `mem`, mapped
        // into the device (DEVICEMAP) of the context the allocation just made current.
        unsafe {
            for r in 0..rows {
                p.add(r).write_volatile(-1);
            }
            sys::cuMemHostGetDevicePointer_v2(&mut dev, p.cast(), 0)
                .result()
                .map_err(|e| dev_err("cuMemHostGetDevicePointer", e))?;
        }
        let ev = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;
        let done = gpu.context().new_event(Some(ev)).map_err(|e| dev_err("event", e))?;
        Ok(HostSlot { host: p as usize, mem, dev, done })
    }
}

impl IdFetch {
    /// The next slot, of at least `rows` words (the older of the two; its last picks must have
    /// been waited for or dropped). A slot too small for `rows` replaces both, after waiting
    /// for the picks queued into them: tickets from before are no longer valid.
    pub fn reserve(&mut self, gpu: &Gpu, rows: usize) -> Result<IdSlot> {
        if rows == 0 {
            return Err(Error::invalid("id fetch: no rows"));
        }
        if self.slots.first().is_some_and(|s| s.mem.len() < rows) {
            for s in &self.slots {
                // The device must be done writing a slot before it is freed.
                s.done.synchronize().map_err(|e| dev_err("id fetch", e))?;
            }
            self.slots.clear();
        }
        while self.slots.len() < 2 {
            let slot = HostSlot::new(gpu, rows.next_power_of_two().max(8))?;
            self.slots.push(slot);
        }
        let slot = self.next;
        self.next ^= 1;
        Ok(IdSlot { slot, dev: self.slots[slot].dev, rows: self.slots[slot].mem.len() })
    }
    /// Marks the stream after the kernel that writes `s` (queued or in a flushed graph);
    /// returns the ticket to [`IdFetch::wait`] on.
    pub fn mark(&mut self, gpu: &Gpu, s: IdSlot) -> Result<usize> {
        let slot = self.slots.get(s.slot).ok_or_else(|| Error::invalid("id fetch: no slot"))?;
        slot.done.record(gpu.stream()).map_err(|e| dev_err("event record", e))?;
        Ok(s.slot)
    }
    /// The ids picked into slot `ticket`, `out.len()` rows of them (waits for those picks).
    pub fn wait(&self, ticket: usize, out: &mut [i32]) -> Result<()> {
        let slot =
            self.slots.get(ticket).ok_or_else(|| Error::invalid("id fetch: no such slot"))?;
        need(slot.mem.len(), out.len(), "id fetch slot")?;
        slot.done.synchronize().map_err(|e| dev_err("id fetch", e))?;
        let host = slot.host as *const i32;
        for (r, o) in out.iter_mut().enumerate() {
            // SAFETY: `host` is the live allocation of `mem`, which holds more than `r` words
            // (checked above); the kernel that wrote them has finished (the event above), and
            // nothing writes them until the next pick is queued, which needs `&mut self`.
            *o = unsafe { host.add(r).read_volatile() };
        }
        Ok(())
    }
}
