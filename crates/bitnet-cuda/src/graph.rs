//! Deferred launches and CUDA graphs: while deferring, kernel launches are recorded (function,
//! geometry, argument bytes) instead of issued; [`Gpu::flush`] then replays a cached CUDA graph
//! whose recorded launches are identical, or captures a new one. A decode step issues the same
//! ~500 launches every token (values that change per token are read from device memory), so the
//! host pays one graph launch instead of ~500 kernel launches.

use crate::device::{dev_err, Gpu};
use bitnet_core::Result;
use cudarc::driver::{sys, CudaGraph};
use std::ffi::c_void;

/// One recorded kernel launch.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Record {
    func: usize,
    /// Grid, block and dynamic shared memory bytes.
    dims: (crate::ops::Dims, u32),
    /// Argument bytes, each argument at `offsets[i]`, 8-byte aligned.
    bytes: Vec<u64>,
    offsets: Vec<usize>,
}

/// The recorder state of a [`Gpu`]. Records are reused from step to step (`ops[..len]` is the
/// current step), so recording a step allocates nothing once warm.
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) active: bool,
    ops: Vec<Record>,
    len: usize,
    graphs: Vec<(Vec<Record>, CudaGraph)>,
    pub(crate) captures: usize,
    pub(crate) replays: usize,
}

// SAFETY: the CUDA handles inside (functions, graphs) are used only under the Gpu's mutex.
unsafe impl Send for Recorder {}

/// Most graphs kept (one per distinct step signature, e.g. per attention split count).
const MAX_GRAPHS: usize = 64;

/// Most arguments of a kernel (the launch copies argument pointers into a fixed array).
const MAX_ARGS: usize = 32;

impl Record {
    /// Overwrites this record with a launch of `func`, copying the arguments `params`
    /// (pointers to values of `sizes` bytes); the buffers' capacity is kept.
    ///
    /// # Safety
    /// Every `params[i]` points to `sizes[i]` readable bytes.
    unsafe fn fill(
        &mut self,
        func: sys::CUfunction,
        dims: (crate::ops::Dims, u32),
        params: &[*mut c_void],
        sizes: &[usize],
    ) {
        (self.func, self.dims) = (func as usize, dims);
        self.offsets.clear();
        self.bytes.clear();
        let total: usize = sizes.iter().map(|s| s.div_ceil(8)).sum();
        self.bytes.resize(total, 0);
        let mut at = 0;
        for (&p, &n) in params.iter().zip(sizes) {
            self.offsets.push(at);
            // SAFETY: `p` has `n` readable bytes (caller); `bytes` holds `total` u64 words, and
            // arguments are laid out one after another in whole words.
            std::ptr::copy_nonoverlapping(
                p as *const u8,
                self.bytes.as_mut_ptr().add(at).cast::<u8>(),
                n,
            );
            at += n.div_ceil(8);
        }
    }

    fn launch(&mut self, gpu: &Gpu) -> Result<()> {
        if self.offsets.len() > MAX_ARGS {
            return Err(bitnet_core::Error::invalid("a kernel with more than 32 arguments"));
        }
        let base = self.bytes.as_mut_ptr();
        let mut params = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (slot, &o) in params.iter_mut().zip(&self.offsets) {
            // SAFETY: every offset lies inside `bytes` (fill).
            *slot = unsafe { base.add(o) }.cast::<c_void>();
        }
        let n = self.offsets.len();
        // SAFETY: the arguments are byte copies of a launch that `launch_raw`'s caller checked;
        // the buffers they point to are kept alive by their owners until the stream passes them
        // (the owners flush before freeing or reallocating anything a deferred launch uses).
        unsafe {
            crate::ops::launch_on(gpu, self.func as sys::CUfunction, self.dims, &mut params[..n])
        }
    }
}

impl Recorder {
    /// Records a launch (reusing a record of an earlier step when there is one).
    ///
    /// # Safety
    /// As [`Record::fill`].
    pub(crate) unsafe fn record(
        &mut self,
        func: sys::CUfunction,
        dims: (crate::ops::Dims, u32),
        params: &[*mut c_void],
        sizes: &[usize],
    ) {
        if self.len == self.ops.len() {
            self.ops.push(Record::default());
        }
        self.ops[self.len].fill(func, dims, params, sizes);
        self.len += 1;
    }
}

impl Gpu {
    /// Starts deferring launches (see the module docs). No-op if already deferring.
    pub fn defer(&self) {
        self.recorder().active = true;
    }
    /// True while launches are deferred.
    pub fn deferring(&self) -> bool {
        self.recorder().active
    }
    /// (graphs captured, graph replays) so far.
    pub fn graph_stats(&self) -> (usize, usize) {
        let r = self.recorder();
        (r.captures, r.replays)
    }

    /// Ends deferring: issues the recorded launches, as a CUDA graph when `graph` is set (a cached
    /// one if an identical launch sequence was seen before), else one by one.
    pub fn flush(&self, graph: bool) -> Result<()> {
        let mut guard = self.recorder();
        let r = &mut *guard;
        r.active = false;
        let n = std::mem::take(&mut r.len);
        if n == 0 {
            return Ok(());
        }
        self.bind()?;
        let ops = &mut r.ops[..n];
        if !graph {
            return ops.iter_mut().try_for_each(|o| o.launch(self));
        }
        if let Some(i) = r.graphs.iter().position(|(k, _)| k[..] == ops[..]) {
            r.replays += 1;
            return r.graphs[i].1.launch().map_err(|e| dev_err("graph launch", e));
        }
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        self.stream().begin_capture(mode).map_err(|e| dev_err("begin capture", e))?;
        let launched = ops.iter_mut().try_for_each(|o| o.launch(self));
        let g = self.stream().end_capture(sys::CUgraphInstantiate_flags(0));
        launched?;
        let g = g.map_err(|e| dev_err("end capture", e))?;
        let Some(g) = g else {
            return Err(bitnet_core::Error::Device("graph capture produced no graph".into()));
        };
        g.launch().map_err(|e| dev_err("graph launch", e))?;
        r.captures += 1;
        if r.graphs.len() >= MAX_GRAPHS {
            r.graphs.remove(0);
        }
        r.graphs.push((ops.to_vec(), g));
        Ok(())
    }
}
