//! Hugging Face model directories: `config.json` + `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), tensors as mmap views.
//!
//! A safetensors file is a `u64` header length `N`, `N` bytes of JSON
//! (`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}`), then the
//! data; offsets are relative to the data. [`parse_safetensors`] checks the header length
//! against the file, every offset range against the data, that ranges do not overlap, and
//! that `dtype size × shape == end − begin`; the fuzz target calls it on raw bytes.

use super::{names, FileKind, ModelFile, TensorMap};
use crate::config::BitNetConfig;
use bitnet_core::{map_file, DType, Error, Result, ResultExt, Shape, Tensor};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Component, Path};

/// Largest accepted JSON header (the reference implementation's limit).
const MAX_HEADER: usize = 100 << 20;
/// The single-file weights name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor entry of a safetensors header, checked against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsEntry {
    /// The tensor name.
    pub name: String,
    /// Its dtype.
    pub dtype: DType,
    /// Row-major shape, outermost first.
    pub shape: Vec<usize>,
    /// Absolute byte offset in the file.
    pub offset: usize,
    /// Byte length.
    pub len: usize,
}

/// A parsed safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsHeader {
    /// The tensors, sorted by offset.
    pub tensors: Vec<SafetensorsEntry>,
    /// The `__metadata__` string pairs.
    pub metadata: BTreeMap<String, String>,
    /// Absolute offset of the data section (`8 + N`).
    pub data_offset: usize,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::format("safetensors", msg)
}

/// Our dtype for a safetensors dtype name; other names are an error naming them.
pub fn dtype_from_safetensors(name: &str) -> Result<DType> {
    Ok(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "U8" => DType::U8,
        "I8" => DType::I8,
        "F64" | "I16" | "I32" | "I64" | "U16" | "U32" | "U64" | "BOOL" | "F8_E4M3" | "F8_E5M2"
        | "F8_E8M0" | "F4" | "F6_E2M3" | "F6_E3M2" | "C64" => {
            return Err(Error::unsupported(format!("safetensors dtype `{name}`")))
        }
        _ => return Err(bad(format!("unknown dtype `{name}`"))),
    })
}

fn parse_entry(v: &Value, data_len: usize) -> Result<(DType, Vec<usize>, usize, usize)> {
    let obj = v.as_object().ok_or_else(|| bad("entry is not an object"))?;
    let dtype = match obj.get("dtype") {
        Some(Value::String(s)) => dtype_from_safetensors(s)?,
        _ => return Err(bad("missing or non-string `dtype`")),
    };
    let as_usize = |x: &Value| x.as_u64().and_then(|u| usize::try_from(u).ok());
    let shape: Vec<usize> = match obj.get("shape") {
        Some(Value::Array(a)) => a.iter().map(as_usize).collect::<Option<_>>(),
        _ => None,
    }
    .ok_or_else(|| bad("`shape` must be a list of non-negative integers"))?;
    let (begin, end) = match obj.get("data_offsets") {
        Some(Value::Array(a)) if a.len() == 2 => match (as_usize(&a[0]), as_usize(&a[1])) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(bad("`data_offsets` must be two non-negative integers")),
        },
        _ => return Err(bad("`data_offsets` must be [begin, end]")),
    };
    if begin > end || end > data_len {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] lie outside the {data_len}-byte data section"
        )));
    }
    let n = Shape::new(shape.clone()).checked_elem_count()?;
    let want = dtype.storage_bytes(n)?;
    if want != end - begin {
        return Err(bad(format!(
            "a {dtype} tensor of shape {shape:?} needs {want} bytes, data_offsets give {}",
            end - begin
        )));
    }
    Ok((dtype, shape, begin, end - begin))
}

/// Parses and validates a whole safetensors file held in `bytes`.
pub fn parse_safetensors(bytes: &[u8]) -> Result<SafetensorsHeader> {
    let head: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| {
        bad(format!("file of {} bytes is too short for the header length", bytes.len()))
    })?;
    let n = u64::from_le_bytes(head);
    let avail = bytes.len() - 8;
    let n =
        usize::try_from(n).ok().filter(|&n| n <= avail && n <= MAX_HEADER).ok_or_else(|| {
            bad(format!("header length {n} exceeds the {avail} bytes after it (or {MAX_HEADER})"))
        })?;
    let json: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let data_offset = 8 + n;
    let data_len = bytes.len() - data_offset;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(json.len());
    for (name, v) in &json {
        if name == "__metadata__" {
            let m = v.as_object().ok_or_else(|| bad("`__metadata__` is not an object"))?;
            for (k, s) in m {
                let s =
                    s.as_str().ok_or_else(|| bad(format!("__metadata__ `{k}` is not a string")))?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let (dtype, shape, begin, len) =
            parse_entry(v, data_len).with_context(|| format!("tensor `{name}`"))?;
        tensors.push(SafetensorsEntry {
            name: name.clone(),
            dtype,
            shape,
            offset: data_offset + begin,
            len,
        });
    }
    tensors.sort_by_key(|t| (t.offset, t.len));
    for w in tensors.windows(2) {
        if w[0].offset + w[0].len > w[1].offset {
            return Err(bad(format!("tensors `{}` and `{}` overlap", w[0].name, w[1].name)));
        }
    }
    Ok(SafetensorsHeader { tensors, metadata, data_offset })
}

/// Maps one safetensors file and adds its tensors (mmap views) to `out`.
pub fn load_safetensors_file(path: &Path, out: &mut TensorMap) -> Result<BTreeMap<String, String>> {
    let ctx = || format!("loading {}", path.display());
    let map = map_file(path).with_context(ctx)?;
    let header = parse_safetensors(&map).with_context(ctx)?;
    for e in header.tensors {
        let t = Tensor::from_mmap(e.dtype, Shape::new(e.shape), map.clone(), e.offset, e.len)
            .with_context(ctx)?;
        out.insert(e.name, t).with_context(ctx)?;
    }
    Ok(header.metadata)
}

/// A shard file name from the index must be a plain relative path inside the directory.
fn check_shard_name(name: &str) -> Result<()> {
    let mut comps = Path::new(name).components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(_)), None) => Ok(()),
        _ => {
            Err(bad(format!("shard file `{name}` is not a plain file name in the model directory")))
        }
    }
}

/// Reads `model.safetensors.index.json`: tensor name → shard file.
fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("index is not JSON: {e}")))?;
    let wm = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("index has no `weight_map` object"))?;
    let mut out = BTreeMap::new();
    for (name, file) in wm {
        let file =
            file.as_str().ok_or_else(|| bad(format!("weight_map[`{name}`] is not a string")))?;
        check_shard_name(file)?;
        out.insert(name.clone(), file.to_string());
    }
    Ok(out)
}

/// Loads the weights of an HF directory: sharded when the index exists, else the single file.
fn load_weights(dir: &Path, tensors: &mut TensorMap) -> Result<BTreeMap<String, String>> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let ctx = || format!("sharded checkpoint {}", index.display());
        let weight_map = read_index(&index).with_context(ctx)?;
        let shards: std::collections::BTreeSet<&String> = weight_map.values().collect();
        let mut meta = BTreeMap::new();
        for shard in shards {
            let p = dir.join(shard);
            if !p.is_file() {
                return Err(bad(format!("the index names shard `{shard}`, which does not exist"))
                    .context(ctx()));
            }
            meta.extend(load_safetensors_file(&p, tensors)?);
        }
        for (name, shard) in &weight_map {
            if !tensors.contains(name) {
                return Err(
                    bad(format!("tensor `{name}` is not in its shard `{shard}`")).context(ctx())
                );
            }
        }
        return Ok(meta);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return load_safetensors_file(&single, tensors);
    }
    Err(Error::invalid(format!("{} has neither {SINGLE_FILE} nor {INDEX_FILE}", dir.display())))
}

/// Renames tensors saved under another checkpoint's names ([`names::hf_alias`]) to ours.
fn canonical_names(tensors: &mut TensorMap) -> Result<()> {
    let renames: Vec<(String, String)> = tensors
        .names()
        .filter_map(|n| names::hf_alias(n).map(|canon| (n.to_string(), canon)))
        .collect();
    for (from, to) in renames {
        if tensors.contains(&to) {
            return Err(bad(format!("both `{from}` and `{to}` are present")));
        }
        if let Some(t) = tensors.remove(&from) {
            tensors.insert(to, t)?;
        }
    }
    Ok(())
}

/// Loads a Hugging Face model directory (`config.json` + safetensors weights).
pub fn load_hf_dir(dir: &Path) -> Result<ModelFile> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let config = BitNetConfig::from_json_str(&text)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let mut tensors = TensorMap::new();
    let st_meta = load_weights(dir, &mut tensors)?;
    canonical_names(&mut tensors)?;
    let mut metadata = Vec::new();
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&text) {
        metadata.extend(obj.into_iter().map(|(k, v)| (format!("config.{k}"), v.to_string())));
    }
    metadata.extend(st_meta.into_iter().map(|(k, v)| (format!("safetensors.{k}"), v)));
    Ok(ModelFile { kind: FileKind::HfDir, config, tensors, metadata, gguf_vocab: None })
}
