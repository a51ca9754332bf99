//! NVRTC: the embedded `.cu` sources compiled to a cubin for the device's architecture.

use bitnet_core::{Error, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::CStr;

/// Every kernel source, in order (`common.cuh` first: the others use its definitions).
pub(crate) const SOURCES: [(&str, &str); 12] = [
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("norm.cu", include_str!("../kernels/norm.cu")),
    ("gemv.cu", include_str!("../kernels/gemv.cu")),
    ("gemv_norm.cu", include_str!("../kernels/gemv_norm.cu")),
    ("gemm.cu", include_str!("../kernels/gemm.cu")),
    ("elementwise.cu", include_str!("../kernels/elementwise.cu")),
    ("attention.cu", include_str!("../kernels/attention.cu")),
    ("lm_head.cu", include_str!("../kernels/lm_head.cu")),
    ("sample_search.cu", include_str!("../kernels/sample_search.cu")),
    ("sample.cu", include_str!("../kernels/sample.cu")),
    ("sample_greedy.cu", include_str!("../kernels/sample_greedy.cu")),
    ("decode.cu", include_str!("../kernels/decode.cu")),
];

/// The whole program: every source concatenated.
pub(crate) fn program_source() -> String {
    let mut s = String::new();
    for (name, src) in SOURCES {
        s.push_str(&format!("// ---- {name} ----\n"));
        s.push_str(src);
        s.push('\n');
    }
    s
}

fn nvrtc_err(what: &str, e: result::NvrtcError) -> Error {
    Error::Device(format!("NVRTC {what}: {e:?}"))
}

/// Compiles `src` for `arch` (e.g. `sm_90`) and returns the cubin.
pub(crate) fn compile_cubin(src: &str, arch: &str) -> Result<Vec<u8>> {
    compile_cubin_with_log(src, arch, &[]).map(|(c, _)| c)
}

/// Compiles with `extra` options; returns the cubin and NVRTC's log.
pub(crate) fn compile_cubin_with_log(
    src: &str,
    arch: &str,
    extra: &[&str],
) -> Result<(Vec<u8>, String)> {
    // SAFETY: checks that the library can be opened; cudarc would panic on first use otherwise.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Device(
            "NVRTC (libnvrtc.so) not found: install the CUDA toolkit's NVRTC or add it to \
             LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let csrc =
        std::ffi::CString::new(src).map_err(|_| Error::invalid("kernel source has a NUL"))?;
    let prog =
        result::create_program(&csrc, Some(c"bitnet.cu")).map_err(|e| nvrtc_err("create", e))?;
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
        "--extra-device-vectorization".to_string(),
    ];
    opts.extend(extra.iter().map(|s| s.to_string()));
    // For experiments on the GPU machine (e.g. `-DGEMV1_U=2`); read once per program build.
    if let Ok(more) = std::env::var("BITNET_NVRTC_OPTIONS") {
        opts.extend(more.split_whitespace().map(str::to_string));
    }
    // SAFETY: `prog` was just created and is destroyed once below; the option strings outlive
    // the call; the log and cubin buffers are sized by NVRTC's own size queries.
    let out = unsafe {
        let compiled = result::compile_program(prog, &opts);
        let log = result::get_program_log(prog)
            .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
            .unwrap_or_default();
        let r = match compiled {
            Ok(()) => cubin(prog).map(|c| (c, log)),
            Err(e) => {
                Err(Error::Device(format!("NVRTC compile for {arch} failed ({e:?}):\n{log}")))
            }
        };
        let _ = result::destroy_program(prog);
        r
    };
    out
}

/// # Safety
/// `prog` must be a successfully compiled program.
unsafe fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>> {
    let mut size = 0usize;
    sys::nvrtcGetCUBINSize(prog, &mut size).result().map_err(|e| nvrtc_err("cubin size", e))?;
    let mut buf = vec![0u8; size];
    sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast())
        .result()
        .map_err(|e| nvrtc_err("cubin", e))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs only NVRTC (no GPU): compiles for the Hopper and Ampere targets.
    #[test]
    fn kernels_compile_with_nvrtc() {
        // SAFETY: only checks whether libnvrtc can be opened.
        if !unsafe { sys::is_culib_present() } {
            eprintln!("skipped: NVRTC (libnvrtc.so) not found");
            return;
        }
        for arch in ["sm_90", "sm_80"] {
            let (cubin, log) =
                compile_cubin_with_log(&program_source(), arch, &["--ptxas-options=-v"]).unwrap();
            assert!(!cubin.is_empty());
            if std::env::var_os("BITNET_NVRTC_LOG").is_some() {
                eprintln!("{arch}:\n{log}");
            }
            // For disassembly elsewhere (`cuobjdump -sass`).
            if let Some(dir) = std::env::var_os("BITNET_CUBIN_DIR") {
                std::fs::write(std::path::Path::new(&dir).join(format!("{arch}.cubin")), &cubin)
                    .unwrap();
            }
        }
    }

    /// Every kernel is launched with programmatic dependent launch, so each must wait for its
    /// predecessor (`PDL_WAIT`, or `PDL_ENTER`) before touching activations.
    #[test]
    fn every_kernel_source_waits_for_its_predecessor() {
        for (name, src) in SOURCES {
            let kernels = src.matches("__global__").count();
            let waits = src.matches("PDL_WAIT()").count() + src.matches("PDL_ENTER()").count();
            assert!(kernels == 0 || waits > 0, "{name}: {kernels} kernels, no PDL wait");
        }
    }

    #[test]
    fn every_source_is_embedded_and_common_comes_first() {
        let s = program_source();
        assert!(s.find("struct RowsArg").unwrap() < s.find("rms_norm_q").unwrap());
        for k in [
            "GEMV_KERNEL(8)",
            "GEMV_NORM_KERNEL(1, NORM_RELU2",
            "gemm_mma",
            "ATTN_KERNEL(8, float, )",
            "ATTN_KERNEL(8, u16, _h)",
            "KV_STORE_KERNELS(u16, _h)",
            "attn_combine",
            "LM_KERNELS(8)",
            "embed_f16",
            "sample_rows",
            "sample_greedy",
        ] {
            assert!(s.contains(k), "{k} missing");
        }
    }
}
