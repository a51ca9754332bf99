//! Opening a GPU: driver checks that never panic, the context and stream, and the kernels
//! (compiled once per process and device).

use crate::compile;
use crate::ops::GEMM_ROWS;
use bitnet_core::{Error, Result};
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What the driver says about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// CUDA ordinal.
    pub ordinal: usize,
    /// Marketing name (e.g. `NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Device memory in bytes.
    pub total_mem: usize,
    /// L2 cache in bytes.
    pub l2_bytes: usize,
}

impl DeviceInfo {
    /// The NVRTC architecture flag value, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.cc.0, self.cc.1)
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cuda:{} {} ({}, {} SMs)", self.ordinal, self.name, self.arch(), self.sms)
    }
}

pub(crate) fn dev_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

/// Checks that the CUDA driver library can be loaded (no panic when it cannot).
pub fn driver_available() -> Result<()> {
    // SAFETY: only tries to dlopen the driver library; nothing is called through it.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Device("no CUDA driver found (libcuda.so could not be loaded)".into()))
    }
}

fn open_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    driver_available()?;
    let n = CudaContext::device_count().map_err(|e| dev_err("cuDeviceGetCount", e))?;
    if ordinal >= n.max(0) as usize {
        return Err(Error::Device(format!("no CUDA device {ordinal} ({n} present)")));
    }
    CudaContext::new(ordinal).map_err(|e| dev_err("creating the CUDA context", e))
}

fn info_of(ctx: &CudaContext) -> Result<DeviceInfo> {
    use sys::CUdevice_attribute as A;
    let attr = |a| ctx.attribute(a).map_err(|e| dev_err("cuDeviceGetAttribute", e));
    Ok(DeviceInfo {
        ordinal: ctx.ordinal(),
        name: ctx.name().map_err(|e| dev_err("cuDeviceGetName", e))?,
        cc: ctx.compute_capability().map_err(|e| dev_err("compute capability", e))?,
        sms: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32,
        total_mem: ctx.total_mem().map_err(|e| dev_err("cuDeviceTotalMem", e))?,
        l2_bytes: attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?.max(0) as usize,
    })
}

/// Opens device `ordinal` and describes it, without compiling any kernel: the engine's device
/// probe. An error (never a panic) when there is no driver or no such device.
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    let ctx = open_context(ordinal)?;
    let info = info_of(&ctx)?;
    if info.cc.0 < 8 {
        return Err(Error::unsupported(format!(
            "{} has compute capability {}.{}; the kernels need 8.0 or newer (int8 mma m16n8k32)",
            info.name, info.cc.0, info.cc.1
        )));
    }
    Ok(info)
}

macro_rules! kernels {
    ($($field:ident : $name:literal),* $(,)?) => {
        /// Every kernel function of the program.
        pub(crate) struct Kernels { $(pub(crate) $field: CudaFunction,)* }
        impl Kernels {
            /// Each kernel from the first of `modules` that has it; when none has it, the error
            /// says what the driver answered for the last module asked.
            fn load(modules: &[Arc<CudaModule>]) -> Result<Self> {
                let f = |n: &str| {
                    let mut last = None;
                    for m in modules {
                        match m.load_function(n) {
                            Ok(func) => return Ok(func),
                            Err(e) => last = Some(e),
                        }
                    }
                    let why = last.map_or_else(|| "no modules".to_string(), |e| e.to_string());
                    Err(Error::Device(format!(
                        "kernel {n} is in none of the {} kernel modules (driver: {why})",
                        modules.len()
                    )))
                };
                Ok(Kernels { $($field: f($name)?,)* })
            }
        }
    };
}

kernels! {
    gemv1: "gemv_m1", gemv2: "gemv_m2", gemv3: "gemv_m3", gemv4: "gemv_m4",
    gemv5: "gemv_m5", gemv6: "gemv_m6", gemv7: "gemv_m7", gemv8: "gemv_m8",
    gemv_norm1_plain: "gemv_norm_m1_g1_plain", gemv_norm1_relu2: "gemv_norm_m1_g1_relu2",
    gemv_norm2_plain: "gemv_norm_m1_g2_plain", gemv_norm2_relu2: "gemv_norm_m1_g2_relu2",
    gemv_norm1_none: "gemv_norm_m1_g1_none", gemv_norm1_silu: "gemv_norm_m1_g1_silu",
    gemv_norm2_none: "gemv_norm_m1_g2_none", gemv_norm2_silu: "gemv_norm_m1_g2_silu",
    gemv_norm1_silu_normed: "gemv_norm_m1_g1_silu_normed", gemv_norm2_silu_normed: "gemv_norm_m1_g2_silu_normed",
    gemv_norm_wide_plain: "gemv_norm_wide_plain", gemv_norm_wide_relu2: "gemv_norm_wide_relu2",
    gemv_norm_wide_none: "gemv_norm_wide_none", gemv_norm_wide_silu: "gemv_norm_wide_silu",
    gemv_norm_wide_silu_normed: "gemv_norm_wide_silu_normed",
    gemm2: "gemm_mma_t2", gemm4: "gemm_mma_t4", gemm8: "gemm_mma_t8", gemm_reduce: "gemm_reduce",
    rms_norm_q: "rms_norm_q", rms_norm_q_wide: "rms_norm_q_wide", quantize_act: "quantize_act",
    embed_f16: "embed_f16", embed_f32: "embed_f32", rope: "rope", store_kv: "store_kv", rope_store: "rope_store",
    attn1: "attention_nd1", attn2: "attention_nd2", attn4: "attention_nd4", attn8: "attention_nd8",
    attn_rope1: "attention_rope_nd1", attn_rope2: "attention_rope_nd2",
    attn_rope4: "attention_rope_nd4", attn_rope8: "attention_rope_nd8",
    store_kv_h: "store_kv_h", rope_store_h: "rope_store_h",
    attn1_h: "attention_nd1_h", attn2_h: "attention_nd2_h", attn4_h: "attention_nd4_h", attn8_h: "attention_nd8_h",
    attn_rope1_h: "attention_rope_nd1_h", attn_rope2_h: "attention_rope_nd2_h",
    attn_rope4_h: "attention_rope_nd4_h", attn_rope8_h: "attention_rope_nd8_h",
    attn_combine: "attn_combine", relu2_mul: "relu2_mul", silu_mul: "silu_mul", add: "add_f32", copy: "copy_f32",
    read_xor: "read_xor",
    lm_i8_1: "lm_i8_m1", lm_i8_2: "lm_i8_m2", lm_i8_4: "lm_i8_m4", lm_i8_8: "lm_i8_m8",
    lmm1: "lm_i8_mma_t1", lmm2: "lm_i8_mma_t2", lmm4: "lm_i8_mma_t4", lmm8: "lm_i8_mma_t8",
    lm_f32_1: "lm_f32_m1", lm_f32_2: "lm_f32_m2", lm_f32_4: "lm_f32_m4", lm_f32_8: "lm_f32_m8",
    sample_rows: "sample_rows", sample_greedy: "sample_greedy",
}

impl Kernels {
    pub(crate) fn gemv(&self, m: usize) -> Option<&CudaFunction> {
        Some(match m {
            1 => &self.gemv1,
            2 => &self.gemv2,
            3 => &self.gemv3,
            4 => &self.gemv4,
            5 => &self.gemv5,
            6 => &self.gemv6,
            7 => &self.gemv7,
            8 => &self.gemv8,
            _ => return None,
        })
    }
}

/// The compiled program of one device, shared by every [`Gpu`] handle on it.
struct Program {
    ctx: Arc<CudaContext>,
    /// The loaded parts' modules (read for their globals: the timeline stamps of `impl Drop for
    /// Gpu`).
    modules: Vec<Arc<CudaModule>>,
    /// The one-kernel decode's module and kernel, compiled on first use (an error says why not).
    decode: OnceLock<std::result::Result<(Arc<CudaModule>, CudaFunction), String>>,
    /// Launch with programmatic dependent launch (sm_90+, unless `BITNET_CUDA_PDL=0`).
    pdl: bool,
    /// Most blocks of a thread-block cluster the attention kernels may be launched with (sm_90+:
    /// 16 where the driver allows the non-portable size, else 8; 1 below sm_90 or with
    /// `BITNET_CUDA_ATTN_CLUSTER=0`).
    cluster_max: u32,
    /// Launch-shape overrides from the environment.
    knobs: crate::ops::Knobs,
    k: Kernels,
    info: DeviceInfo,
    compile_s: f64,
}

/// An open GPU: the device's compiled kernels (shared per process), and this handle's own stream
/// (stream order is the only ordering the ops need) and launch recorder. Handles on one device
/// run independently: each backend opens its own.
pub struct Gpu {
    rec: Mutex<crate::graph::Recorder>,
    split: Mutex<Option<SplitScratch>>,
    stream: Arc<CudaStream>,
    prog: Arc<Program>,
    pub(crate) k: KernelsRef,
}

/// Access to the shared kernels (`gpu.k.gemm`, ...).
pub(crate) struct KernelsRef(Arc<Program>);

impl std::ops::Deref for KernelsRef {
    type Target = Kernels;
    fn deref(&self) -> &Kernels {
        &self.0.k
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.prog.info)
    }
}

static OPEN: OnceLock<Mutex<HashMap<usize, Arc<Program>>>> = OnceLock::new();

impl Gpu {
    /// Opens device `ordinal` with a new stream; the kernels are compiled on first use (once per
    /// process and device).
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        let prog = {
            let cache = OPEN.get_or_init(|| Mutex::new(HashMap::new()));
            let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&ordinal) {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(Program::create(ordinal)?);
                    map.insert(ordinal, p.clone());
                    p
                }
            }
        };
        prog.ctx.bind_to_thread().map_err(|e| dev_err("binding the CUDA context", e))?;
        let stream = prog.ctx.new_stream().map_err(|e| dev_err("creating a stream", e))?;
        let rec = Mutex::new(crate::graph::Recorder::default());
        let split = Mutex::new(None);
        Ok(Arc::new(Gpu { rec, split, stream, k: KernelsRef(prog.clone()), prog }))
    }
}

impl Drop for Gpu {
    /// With `BITNET_CUDA_STAMPS=<file>` and kernels built with `-DBITNET_STAMPS`
    /// (`BITNET_NVRTC_OPTIONS`): writes the per-block timeline rings (common.cuh) to the file,
    /// the eight kind tickets (u32) first, for `tools/stamps.py`.
    fn drop(&mut self) {
        let Some(path) = std::env::var_os("BITNET_CUDA_STAMPS") else { return };
        let dump = || -> std::result::Result<(), String> {
            self.stream.synchronize().map_err(|e| format!("{e:?}"))?;
            // Each module has its own rings; a kind's kernels all live in one module and the
            // others' rings stay zero, so adding them up merges the timelines.
            let decode = self.prog.decode.get().and_then(|d| d.as_ref().ok()).map(|d| &d.0);
            let (mut tickets, mut stamps) = (Vec::<u32>::new(), Vec::<u64>::new());
            for m in self.prog.modules.iter().chain(decode) {
                let read = |name: &str| -> std::result::Result<Vec<u8>, String> {
                    let g = m.get_global(name, &self.stream).map_err(|e| format!("{e:?}"))?;
                    self.stream.clone_dtoh(&g).map_err(|e| format!("{e:?}"))
                };
                add_words(&mut tickets, &read("g_stamp_ticket")?, u32::from_le_bytes);
                add_words(&mut stamps, &read("g_stamp")?, u64::from_le_bytes);
            }
            let mut bytes: Vec<u8> = tickets.iter().flat_map(|t| t.to_le_bytes()).collect();
            bytes.extend(stamps.iter().flat_map(|t| t.to_le_bytes()));
            std::fs::write(&path, bytes).map_err(|e| e.to_string())
        };
        match dump() {
            Ok(()) => eprintln!("stamps written to {}", path.to_string_lossy()),
            Err(e) => eprintln!("stamps not written (built without -DBITNET_STAMPS?): {e}"),
        }
    }
}

/// Adds the little-endian words of `bytes` into `acc` (which grows to their count).
fn add_words<T, const N: usize>(acc: &mut Vec<T>, bytes: &[u8], word: fn([u8; N]) -> T)
where
    T: Copy + Default + std::ops::Add<Output = T>,
{
    let words = bytes.chunks_exact(N).map(|c| word(c.try_into().expect("N bytes")));
    for (i, w) in words.enumerate() {
        if i == acc.len() {
            acc.push(T::default());
        }
        acc[i] = acc[i] + w;
    }
}

/// See `Program::cluster_max`: what the driver reports for every attention kernel at 128
/// threads (after allowing the non-portable size), at most 16.
fn cluster_max(info: &DeviceInfo, k: &Kernels) -> u32 {
    use cudarc::driver::sys;
    if info.cc.0 < 9 || std::env::var("BITNET_CUDA_ATTN_CLUSTER").is_ok_and(|v| v == "0") {
        return 1;
    }
    let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED;
    let mut most = 16;
    let f32_cache = [&k.attn_rope1, &k.attn_rope2, &k.attn_rope4, &k.attn_rope8];
    let f16_cache = [&k.attn_rope1_h, &k.attn_rope2_h, &k.attn_rope4_h, &k.attn_rope8_h];
    for f in f32_cache.into_iter().chain(f16_cache) {
        // Without it the driver reports the portable size (8).
        let _ = f.set_attribute(attr, 1);
        // SAFETY: a zeroed launch config is a valid value of this plain C struct.
        let mut cfg: sys::CUlaunchConfig = unsafe { std::mem::zeroed() };
        (cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ) = (16, 1, 1);
        (cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ) = (128, 1, 1);
        let mut n: std::ffi::c_int = 0;
        // SAFETY: `n` and `cfg` outlive the call; `f` is a loaded kernel of the current context.
        let r = unsafe { sys::cuOccupancyMaxPotentialClusterSize(&mut n, f.cu_function(), &cfg) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return 1;
        }
        most = most.min(n.max(1) as u32);
    }
    most
}

impl Program {
    fn create(ordinal: usize) -> Result<Program> {
        let info = probe(ordinal)?;
        let ctx = open_context(ordinal)?;
        // SAFETY: every buffer of this crate is used on the stream of the Gpu handle that made
        // it, whose order already serializes all reads and writes; per-buffer events would only
        // add overhead.
        unsafe { ctx.disable_event_tracking() };
        let t = std::time::Instant::now();
        let parts: Vec<_> = compile::PARTS.iter().collect();
        let modules = compile::part_cubins(&parts, &info.arch())?
            .into_iter()
            .map(|cubin| load_cubin(&ctx, cubin))
            .collect::<Result<Vec<_>>>()?;
        let k = Kernels::load(&modules)?;
        let pdl = info.cc.0 >= 9 && std::env::var("BITNET_CUDA_PDL").map_or(true, |v| v != "0");
        let knobs = crate::ops::Knobs::from_env();
        let cluster_max = cluster_max(&info, &k);
        let compile_s = t.elapsed().as_secs_f64();
        let decode = OnceLock::new();
        Ok(Program { ctx, modules, decode, pdl, cluster_max, knobs, k, info, compile_s })
    }
}

fn load_cubin(ctx: &Arc<CudaContext>, cubin: Vec<u8>) -> Result<Arc<CudaModule>> {
    ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
        .map_err(|e| dev_err("loading a kernel module", e))
}

/// The split-K GEMM's int32 partial sums (`SPLIT_SLOTS x stride`).
struct SplitScratch {
    ws: CudaSlice<i32>,
    stride: usize,
}

impl Gpu {
    /// Makes the split-K scratch hold rows up to `rows_padded` (grows it; call outside deferred
    /// steps, e.g. when uploading weights).
    pub(crate) fn ensure_split_scratch(&self, rows_padded: usize) -> Result<()> {
        let mut s = self.split.lock().unwrap_or_else(|e| e.into_inner());
        if s.as_ref().is_some_and(|s| s.stride >= rows_padded) {
            return Ok(());
        }
        let tokens = crate::ops::SPLIT_SLOTS;
        let stride = rows_padded.div_ceil(GEMM_ROWS) * GEMM_ROWS;
        *s = Some(SplitScratch { ws: crate::ops::zeros(self, tokens * stride)?, stride });
        Ok(())
    }
    /// (partial sums, stride) of the split-K scratch; stride 0 when there is none yet.
    pub(crate) fn split_scratch(&self) -> (u64, usize) {
        let s = self.split.lock().unwrap_or_else(|e| e.into_inner());
        match s.as_ref() {
            Some(s) => (crate::ops::dptr(self, &s.ws), s.stride),
            None => (0, 0),
        }
    }
}

impl Gpu {
    /// The device description.
    pub fn info(&self) -> &DeviceInfo {
        &self.prog.info
    }
    /// Launch-shape overrides (read from the environment when the program was built).
    pub(crate) fn knobs(&self) -> &crate::ops::Knobs {
        &self.prog.knobs
    }
    /// True when one token's RMSNorm runs inside the GEMV of `weights` weights that reads it
    /// ([`crate::ops::norm_ternary_gemv`]; off with `BITNET_CUDA_FUSE_NORM=0`).
    pub fn fuse_norm(&self, weights: usize) -> bool {
        self.prog.knobs.fuse_norm(weights)
    }
    /// True when a decode step's RoPE and KV store run inside attention
    /// ([`crate::ops::rope_attention`]; off with `BITNET_CUDA_FUSE_ROPE=0`).
    pub fn fuse_rope(&self) -> bool {
        self.prog.knobs.fuse_rope()
    }
    /// True when a one-token step may run every layer in one kernel
    /// ([`crate::ops::decode_layers`]; on with `BITNET_CUDA_ONE_KERNEL=1`, off by default).
    pub fn one_kernel_decode(&self) -> bool {
        self.prog.knobs.one_kernel()
    }
    /// Fewest positions per attention split that [`crate::ops::attention_splits`] is given by
    /// default (`BITNET_ATTN_SPLIT_LEN`, a power of two; 64 unless set).
    pub fn attention_split_len(&self) -> usize {
        self.prog.knobs.attn_split_len()
    }
    /// True when kernels are launched with programmatic dependent launch.
    pub fn pdl(&self) -> bool {
        self.prog.pdl
    }
    /// Most blocks per thread-block cluster of the attention kernels (1: no clusters).
    pub(crate) fn cluster_max(&self) -> u32 {
        self.prog.cluster_max
    }
    /// The one-kernel decode's kernel ([`crate::ops::decode_layers`]), compiled on the first call
    /// (once per process and device, several seconds; then from the on-disk cache).
    pub(crate) fn decode_kernel(&self) -> Result<CudaFunction> {
        let made = self.prog.decode.get_or_init(|| {
            let cubin = compile::part_cubins(&[&compile::DECODE_PART], &self.info().arch())
                .and_then(|mut c| c.pop().ok_or_else(|| Error::Device("no cubin".into())))
                .map_err(|e| e.to_string())?;
            let m = load_cubin(&self.prog.ctx, cubin).map_err(|e| e.to_string())?;
            let f = m.load_function("decode_layers").map_err(|e| format!("{e:?}"))?;
            Ok((m, f))
        });
        match made {
            Ok((_, f)) => Ok(f.clone()),
            Err(e) => Err(Error::Device(format!("the one-kernel decode: {e}"))),
        }
    }
    /// Seconds NVRTC (or the kernel cache) and module loading took.
    pub fn compile_seconds(&self) -> f64 {
        self.prog.compile_s
    }
    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.prog.ctx
    }
    /// The stream every op runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// Makes the context current on the calling thread (cheap when it already is).
    pub fn bind(&self) -> Result<()> {
        self.prog.ctx.bind_to_thread().map_err(|e| dev_err("binding the CUDA context", e))
    }
    pub(crate) fn recorder(&self) -> std::sync::MutexGuard<'_, crate::graph::Recorder> {
        self.rec.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Waits for all queued work; reports asynchronous kernel errors.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| dev_err("CUDA stream synchronize", e))
    }
}
