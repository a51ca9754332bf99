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

/// One NVRTC program of the kernels: `common.cuh`, then `sources` in [`SOURCES`] order. Each
/// part is its own module; the parts compile in parallel, so startup waits for the slowest part
/// rather than for all of them in turn. A source whose device functions a part builds on comes
/// before it in that part; every kernel is meant to load from exactly one part.
pub(crate) struct Part {
    pub(crate) name: &'static str,
    sources: &'static [&'static str],
}

/// The parts every device loads.
pub(crate) const PARTS: [Part; 5] = [
    Part { name: "linear", sources: &["norm.cu", "gemv.cu", "gemv_norm.cu", "elementwise.cu"] },
    Part { name: "gemm", sources: &["gemm.cu"] },
    Part { name: "attention", sources: &["attention.cu"] },
    Part { name: "lm_head", sources: &["lm_head.cu"] },
    Part { name: "sample", sources: &["sample_search.cu", "sample.cu", "sample_greedy.cu"] },
];

/// The one-kernel decode (off by default), compiled on first use. It builds on the device code
/// of four other sources, so its module repeats their kernels; nothing loads them from it.
pub(crate) const DECODE_PART: Part = Part {
    name: "decode",
    sources: &["norm.cu", "gemv.cu", "gemv_norm.cu", "attention.cu", "decode.cu"],
};

impl Part {
    /// The program's source text.
    pub(crate) fn source(&self) -> String {
        let mut s = String::new();
        for (name, src) in SOURCES {
            if name == "common.cuh" || self.sources.contains(&name) {
                s.push_str(&format!("// ---- {name} ----\n"));
                s.push_str(src);
                s.push('\n');
            }
        }
        s
    }
}

/// The cubins of `parts` for `arch`, in order: each from the on-disk cache ([`crate::kcache`])
/// when it holds this exact build, else compiled (the misses in parallel threads) and stored.
pub(crate) fn part_cubins(parts: &[&Part], arch: &str) -> Result<Vec<Vec<u8>>> {
    nvrtc_present()?;
    let dir = crate::kcache::dir();
    let opts = options(arch, &[]);
    let version = nvrtc_version();
    std::thread::scope(|s| {
        let jobs: Vec<_> = parts
            .iter()
            .map(|part| {
                let (dir, opts, version) = (dir.as_deref(), &opts, &version);
                s.spawn(move || {
                    let src = part.source();
                    let key = crate::kcache::fnv64(&[
                        src.as_bytes(),
                        opts.join(" ").as_bytes(),
                        version.as_bytes(),
                    ]);
                    let file = dir.map(|d| crate::kcache::path(d, part.name, arch, key));
                    if let Some(cubin) = file.as_deref().and_then(crate::kcache::load) {
                        return Ok(cubin);
                    }
                    let (cubin, _) = compile_opts(&src, arch, opts)?;
                    if let Some(f) = &file {
                        // A cache that cannot be written only costs the next start its compile.
                        let _ = crate::kcache::store(f, &cubin);
                    }
                    Ok(cubin)
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join().unwrap_or_else(|_| Err(Error::Device("NVRTC thread panicked".into())))
            })
            .collect()
    })
}

/// NVRTC's version (`major.minor`), part of the cache key.
fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live integers; the library was checked to be present.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    match r {
        sys::nvrtcResult::NVRTC_SUCCESS => format!("nvrtc {major}.{minor}"),
        _ => "nvrtc unknown".into(),
    }
}

fn nvrtc_err(what: &str, e: result::NvrtcError) -> Error {
    Error::Device(format!("NVRTC {what}: {e:?}"))
}

fn nvrtc_present() -> Result<()> {
    // SAFETY: checks that the library can be opened; cudarc would panic on first use otherwise.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Device(
            "NVRTC (libnvrtc.so) not found: install the CUDA toolkit's NVRTC or add it to \
             LD_LIBRARY_PATH"
                .into(),
        ))
    }
}

/// The NVRTC options for `arch` (e.g. `sm_90`) with `extra` and `BITNET_NVRTC_OPTIONS`.
fn options(arch: &str, extra: &[&str]) -> Vec<String> {
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
        "--extra-device-vectorization".to_string(),
    ];
    opts.extend(extra.iter().map(|s| s.to_string()));
    // For experiments on the GPU machine (e.g. `-DGEMV1_U=2`); part of the cache key.
    if let Ok(more) = std::env::var("BITNET_NVRTC_OPTIONS") {
        opts.extend(more.split_whitespace().map(str::to_string));
    }
    opts
}

/// Compiles `src` for `arch` with `extra` options, bypassing the cache; returns the cubin and
/// NVRTC's log.
#[cfg(test)]
pub(crate) fn compile_cubin_with_log(
    src: &str,
    arch: &str,
    extra: &[&str],
) -> Result<(Vec<u8>, String)> {
    nvrtc_present()?;
    compile_opts(src, arch, &options(arch, extra))
}

fn compile_opts(src: &str, arch: &str, opts: &[String]) -> Result<(Vec<u8>, String)> {
    let csrc =
        std::ffi::CString::new(src).map_err(|_| Error::invalid("kernel source has a NUL"))?;
    let prog =
        result::create_program(&csrc, Some(c"bitnet.cu")).map_err(|e| nvrtc_err("create", e))?;
    // SAFETY: `prog` was just created and is destroyed once below; the option strings outlive
    // the call; the log and cubin buffers are sized by NVRTC's own size queries.
    let out = unsafe {
        let compiled = result::compile_program(prog, opts);
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

    /// Needs only NVRTC (no GPU): every part compiles on its own for the Hopper and Ampere
    /// targets.
    #[test]
    fn kernels_compile_with_nvrtc() {
        // SAFETY: only checks whether libnvrtc can be opened.
        if !unsafe { sys::is_culib_present() } {
            eprintln!("skipped: NVRTC (libnvrtc.so) not found");
            return;
        }
        for arch in ["sm_90", "sm_80"] {
            for part in PARTS.iter().chain([&DECODE_PART]) {
                let (cubin, log) =
                    compile_cubin_with_log(&part.source(), arch, &["--ptxas-options=-v"]).unwrap();
                assert!(!cubin.is_empty());
                if std::env::var_os("BITNET_NVRTC_LOG").is_some() {
                    eprintln!("{arch} {}:\n{log}", part.name);
                }
                // For disassembly elsewhere (`nvdisasm`, `cuobjdump -sass`).
                if let Some(dir) = std::env::var_os("BITNET_CUBIN_DIR") {
                    let file = format!("{}-{arch}.cubin", part.name);
                    std::fs::write(std::path::Path::new(&dir).join(file), &cubin).unwrap();
                }
            }
        }
    }

    /// The cached path: a second call loads what the first stored (no NVRTC needed for the
    /// part of the test that reads the files).
    #[test]
    fn compiled_parts_are_cached_and_reloaded() {
        // SAFETY: only checks whether libnvrtc can be opened.
        if !unsafe { sys::is_culib_present() } {
            eprintln!("skipped: NVRTC (libnvrtc.so) not found");
            return;
        }
        let Some(dir) = crate::kcache::dir() else {
            eprintln!("skipped: the kernel cache is off");
            return;
        };
        let gemm = &PARTS[1];
        let first = part_cubins(&[gemm], "sm_80").unwrap();
        let stored: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("gemm-sm_80-"))
            .filter_map(|e| crate::kcache::load(&e.path()))
            .collect();
        assert!(stored.contains(&first[0]), "the compiled cubin is in {}", dir.display());
        assert_eq!(part_cubins(&[gemm], "sm_80").unwrap(), first);
    }

    #[test]
    fn every_source_is_in_a_part_and_a_part_lists_its_sources_in_order() {
        for (name, _) in &SOURCES[1..] {
            let n = PARTS.iter().chain([&DECODE_PART]).filter(|p| p.sources.contains(name));
            assert!(n.count() > 0, "{name} is in no part");
        }
        for part in PARTS.iter().chain([&DECODE_PART]) {
            let at = |n: &str| SOURCES.iter().position(|(s, _)| *s == n);
            let pos: Vec<_> = part.sources.iter().map(|n| at(n).expect(n)).collect();
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "{}: {:?}", part.name, part.sources);
        }
        // No kernel source of the loaded parts in two of them: each kernel has one module.
        for (i, a) in PARTS.iter().enumerate() {
            for b in &PARTS[i + 1..] {
                assert!(
                    a.sources.iter().all(|s| !b.sources.contains(s)),
                    "{} / {}",
                    a.name,
                    b.name
                );
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
        let s: String = PARTS.iter().chain([&DECODE_PART]).map(|p| p.source()).collect();
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
