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
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    func: usize,
    grid: (u32, u32, u32),
    block: u32,
    /// Argument bytes, each argument at `offsets[i]`, 8-byte aligned.
    bytes: Vec<u64>,
    offsets: Vec<usize>,
}

/// The recorder state of a [`Gpu`].
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) active: bool,
    ops: Vec<Record>,
    graphs: Vec<(Vec<Record>, CudaGraph)>,
    pub(crate) captures: usize,
    pub(crate) replays: usize,
}

// SAFETY: the CUDA handles inside (functions, graphs) are used only under the Gpu's mutex.
unsafe impl Send for Recorder {}

/// Most graphs kept (one per distinct step signature, e.g. per attention split count).
const MAX_GRAPHS: usize = 64;

impl Record {
    /// Copies the arguments `params` (pointers to values of `sizes` bytes).
    ///
    /// # Safety
    /// Each `params[i]` must point to `sizes[i]` readable bytes.
    pub(crate) unsafe fn new(
        func: sys::CUfunction,
        grid: (u32, u32, u32),
        block: u32,
        params: &[*mut c_void],
        sizes: &[usize],
    ) -> Record {
        let mut offsets = Vec::with_capacity(params.len());
        let total: usize = sizes.iter().map(|s| s.div_ceil(8)).sum();
        let mut bytes = vec![0u64; total];
        let mut at = 0;
        for (&p, &n) in params.iter().zip(sizes) {
            offsets.push(at);
            std::ptr::copy_nonoverlapping(
                p as *const u8,
                bytes.as_mut_ptr().add(at).cast::<u8>(),
                n,
            );
            at += n.div_ceil(8);
        }
        Record { func: func as usize, grid, block, bytes, offsets }
    }

    fn launch(&mut self, gpu: &Gpu) -> Result<()> {
        let base = self.bytes.as_mut_ptr();
        // SAFETY: every offset is inside `bytes` (built by `new`).
        let mut params: Vec<*mut c_void> =
            self.offsets.iter().map(|&o| unsafe { base.add(o) }.cast::<c_void>()).collect();
        // SAFETY: the arguments are byte copies of a launch that `launch_raw`'s caller checked;
        // the buffers they point to are kept alive by their owners until the stream passes them
        // (the owners flush before freeing or reallocating anything a deferred launch uses).
        unsafe {
            crate::ops::launch_on(
                gpu,
                self.func as sys::CUfunction,
                self.grid,
                self.block,
                &mut params,
            )
        }
    }
}

impl Recorder {
    pub(crate) fn push(&mut self, r: Record) {
        self.ops.push(r);
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
        let mut r = self.recorder();
        r.active = false;
        let mut ops = std::mem::take(&mut r.ops);
        if ops.is_empty() {
            return Ok(());
        }
        self.bind()?;
        if !graph {
            return ops.iter_mut().try_for_each(|o| o.launch(self));
        }
        if let Some(i) = r.graphs.iter().position(|(k, _)| *k == ops) {
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
        r.graphs.push((ops, g));
        Ok(())
    }
}
