//! The on-disk cubin cache: a compiled part is kept under a key of everything that went into it
//! (its source, the architecture, the NVRTC options and version), so a later process loads it
//! instead of compiling again.
//!
//! `BITNET_KERNEL_CACHE`: `off` (or `0`) turns it off, any other value is the directory; unset,
//! it is `$XDG_CACHE_HOME/bitnet/kernels`, else `$HOME/.cache/bitnet/kernels`. A file that does
//! not check out (truncated, another format) is compiled again and replaced; a cache that cannot
//! be written is skipped. Both are never errors: the cache only saves time.

use bitnet_core::hash::Fnv64;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Files of one part and architecture kept (other builds' kernels, e.g. after an upgrade); the
/// oldest beyond it are removed when a new one is written.
const KEEP: usize = 4;
const MAGIC: &[u8; 8] = b"BNCUBIN1";
const HEADER: usize = 8 + 8 + 8;

/// The cache directory, `None` when off or when there is no home directory.
pub(crate) fn dir() -> Option<PathBuf> {
    dir_from(
        std::env::var_os("BITNET_KERNEL_CACHE"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn dir_from(
    set: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    if let Some(v) = set.filter(|v| !v.is_empty()) {
        return (v != "off" && v != "0").then(|| PathBuf::from(v));
    }
    let base = match xdg.filter(|x| !x.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".cache"),
    };
    Some(base.join("bitnet").join("kernels"))
}

/// FNV-1a of `parts`, each followed by a 0xff byte (so `["ab", "c"]` and `["a", "bc"]` differ):
/// stable across builds and platforms, as the key names files that outlive the process.
pub(crate) fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h = Fnv64::new();
    for p in parts {
        h.write(p);
        h.write(&[0xff]);
    }
    h.finish()
}

/// The file of `part` for `arch` under `key`.
pub(crate) fn path(dir: &Path, part: &str, arch: &str, key: u64) -> PathBuf {
    dir.join(format!("{part}-{arch}-{key:016x}.cubin"))
}

/// The cubin stored at `path`, if it is there and whole.
pub(crate) fn load(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let sum = u64::from_le_bytes(bytes[16..24].try_into().ok()?);
    let body = &bytes[HEADER..];
    (body.len() as u64 == len && fnv64(&[body]) == sum).then(|| body.to_vec())
}

/// Writes `cubin` to `path` (through a temporary file and a rename, so a reader never sees half
/// a file) and trims the part's older files; errors are returned for the caller to ignore.
pub(crate) fn store(path: &Path, cubin: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&(cubin.len() as u64).to_le_bytes())?;
        f.write_all(&fnv64(&[cubin]).to_le_bytes())?;
        f.write_all(cubin)?;
        f.sync_all()
    };
    if let Err(e) = write().and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    trim(path);
    Ok(())
}

/// Keeps the newest [`KEEP`] files of `path`'s part and architecture.
fn trim(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    // `{part}-{arch}-` (the key is the last 16 hex digits before `.cubin`).
    let Some(prefix) = name.len().checked_sub(16 + ".cubin".len()).map(|n| &name[..n]) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut same: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with(prefix) && n.ends_with(".cubin") && n.len() == name.len()
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    same.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, old) in same.into_iter().skip(KEEP) {
        if old != path {
            let _ = std::fs::remove_file(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bitnet-kcache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn directory_follows_the_variable_then_xdg_then_home() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(dir_from(s("off"), s("/x"), s("/h")), None);
        assert_eq!(dir_from(s("0"), None, s("/h")), None);
        assert_eq!(dir_from(s("/c"), s("/x"), s("/h")), Some(PathBuf::from("/c")));
        assert_eq!(dir_from(None, s("/x"), s("/h")), Some(PathBuf::from("/x/bitnet/kernels")));
        assert_eq!(
            dir_from(s(""), s(""), s("/h")),
            Some(PathBuf::from("/h/.cache/bitnet/kernels"))
        );
        assert_eq!(dir_from(None, None, None), None);
    }

    #[test]
    fn the_key_separates_its_parts() {
        assert_ne!(fnv64(&[b"ab", b"c"]), fnv64(&[b"a", b"bc"]));
        assert_ne!(fnv64(&[b"sm_90"]), fnv64(&[b"sm_80"]));
        assert_eq!(fnv64(&[b"x"]), fnv64(&[b"x"]));
        // Pinned: a change of the function would orphan every cached cubin.
        assert_eq!(fnv64(&[b"sm_90"]), 0x5907_2a67_49d1_cf08);
    }

    #[test]
    fn a_stored_cubin_loads_back_and_a_damaged_one_does_not() {
        let d = tmp_dir("roundtrip");
        let p = path(&d, "linear", "sm_90", 0x1234);
        assert_eq!(load(&p), None, "nothing there yet");
        let cubin: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        store(&p, &cubin).unwrap();
        assert_eq!(load(&p).as_deref(), Some(&cubin[..]));
        // Truncated, one byte flipped, another format: each is a miss, never a wrong cubin.
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 1]).unwrap();
        assert_eq!(load(&p), None);
        let mut flipped = full.clone();
        flipped[HEADER + 100] ^= 1;
        std::fs::write(&p, &flipped).unwrap();
        assert_eq!(load(&p), None);
        std::fs::write(&p, b"\x7fELF not ours").unwrap();
        assert_eq!(load(&p), None);
        // Storing again replaces it.
        store(&p, &cubin).unwrap();
        assert_eq!(load(&p).as_deref(), Some(&cubin[..]));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn old_builds_of_a_part_are_trimmed_and_other_parts_kept() {
        let d = tmp_dir("trim");
        let other = path(&d, "gemm", "sm_90", 1);
        store(&other, b"gemm").unwrap();
        let mut written = Vec::new();
        for key in 0..(KEEP as u64 + 3) {
            let p = path(&d, "linear", "sm_90", key);
            store(&p, b"linear").unwrap();
            // Distinct modification times, oldest first.
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 + key);
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
            written.push(p);
        }
        let last = path(&d, "linear", "sm_90", 99);
        store(&last, b"linear").unwrap();
        let kept: Vec<bool> = written.iter().map(|p| p.exists()).collect();
        let n = kept.iter().filter(|&&k| k).count();
        assert_eq!(n + 1, KEEP, "{kept:?}");
        assert!(kept[kept.len() - 1] && !kept[0], "the newest are kept: {kept:?}");
        assert!(last.exists() && other.exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
