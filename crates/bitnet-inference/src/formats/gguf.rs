//! GGUF v2/v3 reader: header, metadata, tensor infos, and tensors as mmap views.
//!
//! Layout (little-endian): `"GGUF"`, `u32` version, `u64` tensor count, `u64` metadata
//! count, the metadata pairs (`string` key, `u32` type, value), the tensor infos (`string`
//! name, `u32` n_dims, `u64 ne[n_dims]` innermost first, `u32` ggml type, `u64` offset
//! relative to the data section), padding to `general.alignment` (default 32), the data.
//!
//! Every count, length and offset is checked against the bytes that are really there
//! before anything is allocated, so a lying header gives an error, never a huge
//! allocation or a panic. [`parse_gguf`] works on bytes (the fuzz target calls it).
//!
//! **Type ids are not global.** Upstream ggml: F32 0, F16 1, Q8_0 8, Q6_K 14, I8 24,
//! I32 26, BF16 30, TQ1_0 34, TQ2_0 35, (36-38 removed), MXFP4 39. Microsoft's bitnet.cpp
//! fork: TQ1_0 34, TQ2_0 35, I2_S 36, I8_S 37, TL1 38, TL2 39. A file is read as the
//! fork's when its architecture is `bitnet-b1.58` / `bitnet-25` / `bitnet-1.58` (the 2B-4T
//! GGUF is `bitnet-b1.58`), or when it is `bitnet*` with `general.file_type` 40 (the fork's
//! `LLAMA_FTYPE_MOSTLY_I2_S`; upstream reuses 40 for `MOSTLY_Q1_0`, hence the arch test), or
//! when it has file_type 40 and a tensor of type 36 (bitnet.cpp's `llama` files, e.g.
//! Falcon3-*-1.58bit's I2_S; upstream retired 36 long ago). Type 36 elsewhere, and every id
//! ≥ 37, is refused with an error naming the id and the architecture.
//!
//! I2_S tensors hold `n/4` packed bytes then a 32-byte tail whose first f32 is the scale
//! (the converter tiles the scale 8 times). Their layout is the x86 one; the fork's ARM
//! build packs differently and nothing in the file says which: we assume x86.

pub use super::gguf_meta::{GgufMetadata, GgufValue, GgufValueType, GgufVocab};
use super::{names, FileKind, ModelFile, TensorMap};
use crate::config::BitNetConfig;
use bitnet_core::{map_file, DType, Error, Result, ResultExt, Shape, Tensor};
use std::path::Path;

/// The GGUF magic, `"GGUF"` as bytes.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Largest tensor rank ggml supports.
const MAX_DIMS: usize = 4;
/// Deepest array nesting accepted.
const MAX_DEPTH: usize = 3;
/// `LLAMA_FTYPE_MOSTLY_I2_S` in Microsoft's fork.
pub const FTYPE_MOSTLY_I2_S: u64 = 40;

/// The ggml type id of I2_S in Microsoft's fork.
const GGML_I2S_ID: u32 = 36;

/// Which table of ggml type ids a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufDialect {
    /// Upstream ggml / llama.cpp.
    Upstream,
    /// Microsoft's bitnet.cpp fork (I2_S = 36, TL1/TL2 = 38/39).
    MicrosoftFork,
}

impl GgufDialect {
    /// Decides from `general.architecture` and `general.file_type`, and whether a tensor has
    /// type id 36 (`i2s_seen`: the fork's I2_S, an id upstream retired long ago).
    pub fn detect(meta: &GgufMetadata, i2s_seen: bool) -> Self {
        let arch = meta.get_str("general.architecture").ok().flatten().unwrap_or("");
        let ftype = meta.get_usize("general.file_type").ok().flatten();
        // Upstream now also uses file_type 40 (MOSTLY_Q1_0), so it only counts for a
        // `bitnet*` architecture (the fork's quantizer on its older `bitnet` conversions) or
        // with an I2_S tensor (bitnet.cpp's `llama` files: Falcon3-*-1.58bit).
        let fork_ftype =
            ftype == Some(FTYPE_MOSTLY_I2_S as usize) && (arch.starts_with("bitnet") || i2s_seen);
        if matches!(arch, "bitnet-b1.58" | "bitnet-25" | "bitnet-1.58") || fork_ftype {
            GgufDialect::MicrosoftFork
        } else {
            GgufDialect::Upstream
        }
    }
}

/// The ggml type name of an id, for messages.
fn ggml_type_name(id: u32, dialect: GgufDialect) -> &'static str {
    const NAMES: [&str; 36] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2 (removed)",
        "Q4_3 (removed)",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4 (removed)",
        "Q4_0_4_8 (removed)",
        "Q4_0_8_8 (removed)",
        "TQ1_0",
        "TQ2_0",
    ];
    match (id, dialect) {
        (36, GgufDialect::MicrosoftFork) => "I2_S",
        (37, GgufDialect::MicrosoftFork) => "I8_S",
        (38, GgufDialect::MicrosoftFork) => "TL1",
        (39, GgufDialect::MicrosoftFork) => "TL2",
        (36..=38, GgufDialect::Upstream) => "IQ4_NL_x_x (removed upstream)",
        (39, GgufDialect::Upstream) => "MXFP4",
        (40, GgufDialect::Upstream) => "NVFP4",
        (41, GgufDialect::Upstream) => "Q1_0",
        _ => NAMES.get(id as usize).copied().unwrap_or("unknown"),
    }
}

/// Maps a ggml type id to our dtype, or an error naming the type and the architecture.
pub fn dtype_from_ggml(id: u32, dialect: GgufDialect, arch: &str) -> Result<DType> {
    Ok(match id {
        0 => DType::F32,
        1 => DType::F16,
        8 => DType::Q8_0,
        14 => DType::Q6K,
        24 => DType::I8,
        26 => DType::I32,
        30 => DType::BF16,
        34 => DType::TQ1_0,
        35 => DType::TQ2_0,
        GGML_I2S_ID if dialect == GgufDialect::MicrosoftFork => DType::I2S,
        _ => {
            let name = ggml_type_name(id, dialect);
            let msg = format!(
                "ggml type id {id} ({name}) in a GGUF file of architecture `{arch}` ({dialect:?} type table)"
            );
            return Err(if name == "unknown" {
                Error::format("GGUF", format!("unknown {msg}"))
            } else {
                Error::unsupported(msg)
            });
        }
    })
}

/// The ggml type id for a dtype in `dialect`, for the writer.
pub fn ggml_from_dtype(dtype: DType, dialect: GgufDialect) -> Result<u32> {
    Ok(match (dtype, dialect) {
        (DType::F32, _) => 0,
        (DType::F16, _) => 1,
        (DType::Q8_0, _) => 8,
        (DType::Q6K, _) => 14,
        (DType::I8, _) => 24,
        (DType::I32, _) => 26,
        (DType::BF16, _) => 30,
        (DType::TQ1_0, _) => 34,
        (DType::TQ2_0, _) => 35,
        (DType::I2S, GgufDialect::MicrosoftFork) => 36,
        (d, dl) => {
            return Err(Error::unsupported(format!(
                "writing a {d} tensor to a GGUF file in the {dl:?} type table"
            )))
        }
    })
}

/// One tensor's header entry, checked against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// The name as stored in the file.
    pub name: String,
    /// ggml `ne[]`: innermost dimension first.
    pub ne: Vec<usize>,
    /// The ggml type id.
    pub ggml_type: u32,
    /// Our dtype for it.
    pub dtype: DType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data.
    pub len: usize,
}

impl GgufTensorInfo {
    /// Row-major shape, outermost first (`ne` reversed).
    pub fn shape(&self) -> Shape {
        Shape::new(self.ne.iter().rev().copied().collect::<Vec<_>>())
    }
}

/// A parsed GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufFile {
    /// 2 or 3.
    pub version: u32,
    /// The metadata pairs.
    pub metadata: GgufMetadata,
    /// The tensor infos, in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// Data alignment.
    pub alignment: usize,
    /// Absolute offset of the data section.
    pub data_offset: usize,
    /// Which type-id table the file uses.
    pub dialect: GgufDialect,
}

/// A bounds-checked little-endian reader over the header bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::format(
                "GGUF",
                format!(
                    "truncated at byte {}: {what} needs {n} bytes, {} left",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A count that must fit `min_each` bytes per item in what is left.
    fn count(&mut self, min_each: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.checked_mul(min_each).is_some_and(|b| b <= self.remaining()));
        fits.ok_or_else(|| {
            Error::format(
                "GGUF",
                format!(
                    "{what} = {n} at byte {} cannot fit in the {} bytes left",
                    self.pos - 8,
                    self.remaining()
                ),
            )
        })
    }
    fn bytes_string(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.count(1, what)?;
        self.take(n, what)
    }
    /// A string that must be valid UTF-8 (keys and tensor names).
    fn strict_string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let b = self.bytes_string(what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::format("GGUF", format!("{what} at byte {at} is not valid UTF-8")))
    }
}

fn read_value(c: &mut Cursor, ty: GgufValueType, depth: usize) -> Result<GgufValue> {
    use GgufValue as V;
    use GgufValueType as T;
    Ok(match ty {
        T::U8 => V::U8(c.array::<1>("u8")?[0]),
        T::I8 => V::I8(i8::from_le_bytes(c.array("i8")?)),
        T::U16 => V::U16(u16::from_le_bytes(c.array("u16")?)),
        T::I16 => V::I16(i16::from_le_bytes(c.array("i16")?)),
        T::U32 => V::U32(c.u32("u32")?),
        T::I32 => V::I32(i32::from_le_bytes(c.array("i32")?)),
        T::F32 => V::F32(f32::from_le_bytes(c.array("f32")?)),
        T::U64 => V::U64(c.u64("u64")?),
        T::I64 => V::I64(i64::from_le_bytes(c.array("i64")?)),
        T::F64 => V::F64(f64::from_le_bytes(c.array("f64")?)),
        T::Bool => match c.array::<1>("bool")?[0] {
            0 => V::Bool(false),
            1 => V::Bool(true),
            b => {
                return Err(Error::format("GGUF", format!("bool value {b} at byte {}", c.pos - 1)))
            }
        },
        T::String => {
            V::String(String::from_utf8_lossy(c.bytes_string("string length")?).into_owned())
        }
        T::Array => {
            if depth >= MAX_DEPTH {
                return Err(Error::format(
                    "GGUF",
                    format!("arrays nested deeper than {MAX_DEPTH}"),
                ));
            }
            let et = GgufValueType::from_id(c.u32("array element type")?)?;
            let n = c.count(et.min_size(), "array length")?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(c, et, depth + 1)?);
            }
            V::Array(et, items)
        }
    })
}

fn read_metadata(c: &mut Cursor, n_kv: usize) -> Result<GgufMetadata> {
    let mut meta = GgufMetadata::new();
    for i in 0..n_kv {
        let key = c.strict_string("metadata key")?;
        let ty = GgufValueType::from_id(c.u32("metadata value type")?)
            .with_context(|| format!("metadata pair {i} (`{key}`)"))?;
        let v = read_value(c, ty, 0).with_context(|| format!("metadata `{key}`"))?;
        meta.insert(key, v)?;
    }
    Ok(meta)
}

/// Reads one tensor info; `offset` is still relative to the data section, `dtype` and `len`
/// are set by [`typed`] once the type table is known.
fn read_tensor_info(c: &mut Cursor) -> Result<GgufTensorInfo> {
    let name = c.strict_string("tensor name")?;
    let info = (|| {
        let n_dims = c.u32("n_dims")? as usize;
        if n_dims > MAX_DIMS {
            return Err(Error::format("GGUF", format!("{n_dims} dimensions (max {MAX_DIMS})")));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = c.u64("dimension")?;
            ne.push(
                usize::try_from(d)
                    .map_err(|_| Error::format("GGUF", format!("dimension {d} too large")))?,
            );
        }
        let ggml_type = c.u32("tensor type")?;
        let offset = usize::try_from(c.u64("tensor offset")?)
            .map_err(|_| Error::format("GGUF", "tensor offset too large"))?;
        Ok(GgufTensorInfo { name: String::new(), ne, ggml_type, dtype: DType::U8, offset, len: 0 })
    })()
    .with_context(|| format!("tensor `{name}`"))?;
    Ok(GgufTensorInfo { name, ..info })
}

/// `t` with its dtype and byte length from its ggml type id in `dialect`.
fn typed(t: GgufTensorInfo, dialect: GgufDialect, arch: &str) -> Result<GgufTensorInfo> {
    let (ne, ggml_type) = (&t.ne, t.ggml_type);
    let info = (|| {
        let dtype = dtype_from_ggml(ggml_type, dialect, arch)?;
        let n = Shape::new(ne.clone()).checked_elem_count()?;
        if dtype != DType::I2S && ne.first().is_some_and(|&r| r % dtype.block_len() != 0) {
            return Err(Error::format(
                "GGUF",
                format!(
                    "row length {} is not a multiple of the {dtype} block of {}",
                    ne[0],
                    dtype.block_len()
                ),
            ));
        }
        Ok((dtype, dtype.storage_bytes(n)?))
    })()
    .with_context(|| format!("tensor `{}`", t.name))?;
    Ok(GgufTensorInfo { dtype: info.0, len: info.1, ..t })
}

/// Checks alignment, bounds and overlap, and makes the offsets absolute.
fn place_tensors(
    tensors: &mut [GgufTensorInfo],
    data_offset: usize,
    alignment: usize,
    file_len: usize,
) -> Result<()> {
    for t in tensors.iter_mut() {
        let rel = t.offset;
        if rel % alignment != 0 {
            return Err(Error::format(
                "GGUF",
                format!(
                    "tensor `{}` offset {rel} is not a multiple of the alignment {alignment}",
                    t.name
                ),
            ));
        }
        let end = data_offset.checked_add(rel).and_then(|s| s.checked_add(t.len));
        match end {
            Some(end) if end <= file_len => t.offset = data_offset + rel,
            _ => {
                return Err(Error::format(
                    "GGUF",
                    format!("tensor `{}` data ({} bytes at data offset {rel}) lies outside the {file_len}-byte file", t.name, t.len),
                ))
            }
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.len > b.offset {
            return Err(Error::format(
                "GGUF",
                format!("tensors `{}` and `{}` overlap", a.name, b.name),
            ));
        }
    }
    Ok(())
}

/// Parses and validates a whole GGUF file held in `bytes` (header and tensor bounds).
pub fn parse_gguf(bytes: &[u8]) -> Result<GgufFile> {
    let mut c = Cursor { buf: bytes, pos: 0 };
    let magic = c.array::<4>("magic")?;
    if magic != GGUF_MAGIC {
        return Err(Error::format("GGUF", format!("bad magic {magic:02x?} (expected \"GGUF\")")));
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err(Error::unsupported("GGUF version 1 (32-bit counts)")),
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(Error::unsupported("big-endian GGUF files"))
        }
        v => return Err(Error::format("GGUF", format!("unknown version {v}"))),
    }
    // Each tensor info takes at least 24 bytes, each metadata pair at least 13.
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.count(13, "metadata count")?;
    let metadata = read_metadata(&mut c, n_kv)?;
    let n_tensors = usize::try_from(n_tensors)
        .ok()
        .filter(|&n| n.checked_mul(24).is_some_and(|b| b <= c.remaining()))
        .ok_or_else(|| {
            Error::format(
                "GGUF",
                format!("tensor count {n_tensors} cannot fit in the {} bytes left", c.remaining()),
            )
        })?;
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if a.is_power_of_two() => *a as usize,
        Some(v) => {
            return Err(Error::format(
                "GGUF",
                format!("general.alignment must be a power-of-two u32, got {v}"),
            ))
        }
    };
    let arch =
        metadata.get_str("general.architecture").ok().flatten().unwrap_or("(none)").to_string();
    let mut raw = Vec::with_capacity(n_tensors);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n_tensors {
        let t = read_tensor_info(&mut c)?;
        if !seen.insert(t.name.clone()) {
            return Err(Error::format("GGUF", format!("duplicate tensor name `{}`", t.name)));
        }
        raw.push(t);
    }
    let dialect = GgufDialect::detect(&metadata, raw.iter().any(|t| t.ggml_type == GGML_I2S_ID));
    let mut tensors =
        raw.into_iter().map(|t| typed(t, dialect, &arch)).collect::<Result<Vec<_>>>()?;
    let data_offset = c.pos.div_ceil(alignment) * alignment;
    place_tensors(&mut tensors, data_offset, alignment, bytes.len())?;
    Ok(GgufFile { version, metadata, tensors, alignment, data_offset, dialect })
}

/// Whether `bytes` start with the GGUF magic.
pub fn has_gguf_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&GGUF_MAGIC)
}

/// Loads a GGUF BitNet model: config from metadata, tensors as mmap views under HF names.
pub fn load_gguf(path: &Path) -> Result<ModelFile> {
    let ctx = || format!("loading GGUF file {}", path.display());
    let map = map_file(path).with_context(ctx)?;
    let file = parse_gguf(&map).with_context(ctx)?;
    let mut config = BitNetConfig::from_gguf_metadata(&file.metadata).with_context(ctx)?;
    let mut tensors = TensorMap::new();
    for t in &file.tensors {
        let name = names::gguf_to_hf(&t.name).unwrap_or_else(|| t.name.clone());
        let tensor = Tensor::from_mmap(t.dtype, t.shape(), map.clone(), t.offset, t.len)
            .with_context(|| format!("tensor `{}`", t.name))
            .with_context(ctx)?;
        tensors.insert(name, tensor).with_context(ctx)?;
    }
    config.tie_word_embeddings = !tensors.contains("lm_head.weight");
    if config.architecture == crate::config::Architecture::Llama {
        super::gguf_llama::to_hf_order(&mut config, &mut tensors).with_context(ctx)?;
    }
    let mut metadata = vec![
        ("gguf.version".to_string(), file.version.to_string()),
        ("gguf.type_table".to_string(), format!("{:?}", file.dialect)),
    ];
    metadata.extend(file.metadata.to_display_pairs());
    let gguf_vocab = GgufVocab::from_metadata(&file.metadata).with_context(ctx)?;
    Ok(ModelFile { kind: FileKind::Gguf, config, tensors, metadata, gguf_vocab })
}
