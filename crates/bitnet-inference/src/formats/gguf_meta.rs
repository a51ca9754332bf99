//! GGUF metadata values, the key/value store, and the tokenizer data ([`GgufVocab`]).

use bitnet_core::{Error, Result};
use std::collections::HashMap;
use std::fmt;

/// A GGUF metadata value type id (the `gguf_type` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufValueType {
    /// 0
    U8,
    /// 1
    I8,
    /// 2
    U16,
    /// 3
    I16,
    /// 4
    U32,
    /// 5
    I32,
    /// 6
    F32,
    /// 7
    Bool,
    /// 8
    String,
    /// 9
    Array,
    /// 10
    U64,
    /// 11
    I64,
    /// 12
    F64,
}

impl GgufValueType {
    /// The type for a wire id, or a format error.
    pub fn from_id(id: u32) -> Result<Self> {
        use GgufValueType::*;
        const ALL: [GgufValueType; 13] =
            [U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64];
        ALL.get(id as usize)
            .copied()
            .ok_or_else(|| Error::format("GGUF", format!("unknown metadata value type id {id}")))
    }
    /// The wire id.
    pub fn id(self) -> u32 {
        self as u32
    }
    /// Bytes of one value on the wire: exact for fixed-size types, the minimum otherwise.
    pub fn min_size(self) -> usize {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// uint8
    U8(u8),
    /// int8
    I8(i8),
    /// uint16
    U16(u16),
    /// int16
    I16(i16),
    /// uint32
    U32(u32),
    /// int32
    I32(i32),
    /// float32
    F32(f32),
    /// bool (one byte, 0 or 1)
    Bool(bool),
    /// UTF-8 string (invalid bytes are replaced when read)
    String(String),
    /// An array whose elements all have `elem_type`.
    Array(GgufValueType, Vec<GgufValue>),
    /// uint64
    U64(u64),
    /// int64
    I64(i64),
    /// float64
    F64(f64),
}

impl GgufValue {
    /// The value's type.
    pub fn value_type(&self) -> GgufValueType {
        use GgufValue as V;
        use GgufValueType as T;
        match self {
            V::U8(_) => T::U8,
            V::I8(_) => T::I8,
            V::U16(_) => T::U16,
            V::I16(_) => T::I16,
            V::U32(_) => T::U32,
            V::I32(_) => T::I32,
            V::F32(_) => T::F32,
            V::Bool(_) => T::Bool,
            V::String(_) => T::String,
            V::Array(..) => T::Array,
            V::U64(_) => T::U64,
            V::I64(_) => T::I64,
            V::F64(_) => T::F64,
        }
    }

    /// Any integer type as a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        use GgufValue as V;
        match *self {
            V::U8(v) => Some(v.into()),
            V::U16(v) => Some(v.into()),
            V::U32(v) => Some(v.into()),
            V::U64(v) => Some(v),
            V::I8(v) => u64::try_from(v).ok(),
            V::I16(v) => u64::try_from(v).ok(),
            V::I32(v) => u64::try_from(v).ok(),
            V::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type as i64 (for token types).
    pub fn as_i64(&self) -> Option<i64> {
        use GgufValue as V;
        match *self {
            V::I8(v) => Some(v.into()),
            V::I16(v) => Some(v.into()),
            V::I32(v) => Some(v.into()),
            V::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any float or integer type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The string, for string values.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Shortens `s` to at most `max` characters for display.
fn clip(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        s.to_string()
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head}… ({n} chars)")
    }
}

impl fmt::Display for GgufValue {
    /// A one-line rendering for `inspect`: long strings are clipped, arrays summarized.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufValue as V;
        match self {
            V::U8(v) => write!(f, "{v}"),
            V::I8(v) => write!(f, "{v}"),
            V::U16(v) => write!(f, "{v}"),
            V::I16(v) => write!(f, "{v}"),
            V::U32(v) => write!(f, "{v}"),
            V::I32(v) => write!(f, "{v}"),
            V::F32(v) => write!(f, "{v}"),
            V::Bool(v) => write!(f, "{v}"),
            V::String(s) => write!(f, "{:?}", clip(s, 120)),
            V::U64(v) => write!(f, "{v}"),
            V::I64(v) => write!(f, "{v}"),
            V::F64(v) => write!(f, "{v}"),
            V::Array(t, items) => {
                write!(f, "[{t:?}; {}]", items.len())?;
                if !items.is_empty() {
                    let shown: Vec<String> = items.iter().take(4).map(|v| v.to_string()).collect();
                    let more = if items.len() > 4 { ", …" } else { "" };
                    write!(f, " [{}{more}]", shown.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// The metadata key/value pairs of a GGUF file, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufMetadata {
    entries: Vec<(String, GgufValue)>,
    index: HashMap<String, usize>,
}

impl GgufMetadata {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a pair; a duplicate key is an error (as in llama.cpp's reader).
    pub fn insert(&mut self, key: String, value: GgufValue) -> Result<()> {
        if self.index.contains_key(&key) {
            return Err(Error::format("GGUF", format!("duplicate metadata key `{key}`")));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }
    /// All pairs in file order.
    pub fn entries(&self) -> &[(String, GgufValue)] {
        &self.entries
    }
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn wrong(key: &str, want: &str, v: &GgufValue) -> Error {
        Error::format(
            "GGUF",
            format!("metadata `{key}` should be {want}, found {:?} {v}", v.value_type()),
        )
    }
    /// A string value; absent is `Ok(None)`, another type an error naming the key.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| Self::wrong(key, "a string", v))).transpose()
    }
    /// A non-negative integer value of any integer type.
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| Self::wrong(key, "a non-negative integer", v))
            })
            .transpose()
    }
    /// A number of any numeric type.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| Self::wrong(key, "a number", v))).transpose()
    }
    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| match v {
                GgufValue::Bool(b) => Ok(*b),
                _ => Err(Self::wrong(key, "a bool", v)),
            })
            .transpose()
    }
    /// The length of an array value, if `key` is an array.
    pub fn array_len(&self, key: &str) -> Option<usize> {
        match self.get(key)? {
            GgufValue::Array(_, items) => Some(items.len()),
            _ => None,
        }
    }
    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v {
            GgufValue::Array(GgufValueType::String, items) => {
                Ok(Some(items.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()))
            }
            _ => Err(Self::wrong(key, "an array of strings", v)),
        }
    }
    /// An array of numbers converted with `conv`.
    fn get_num_array<T>(
        &self,
        key: &str,
        want: &str,
        conv: impl Fn(&GgufValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v {
            GgufValue::Array(_, items) => items
                .iter()
                .map(|x| conv(x).ok_or_else(|| Self::wrong(key, want, v)))
                .collect::<Result<Vec<T>>>()
                .map(Some),
            _ => Err(Self::wrong(key, want, v)),
        }
    }
    /// `general.architecture`, which every GGUF model file must have.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")?
            .ok_or_else(|| Error::format("GGUF", "missing `general.architecture`"))
    }
    /// The pairs rendered as text for `inspect` (arrays summarized).
    pub fn to_display_pairs(&self) -> Vec<(String, String)> {
        self.entries.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
    }
}

/// The tokenizer stored in a GGUF file (`tokenizer.ggml.*`, `tokenizer.chat_template`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE), `llama` (SentencePiece), ...
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (`llama-bpe`, ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` (SentencePiece).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges`: BPE merges, `"a b"` each.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unknown_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos_token: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece's `add_dummy_prefix`; absent means true).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads the tokenizer keys; `Ok(None)` when the file has no `tokenizer.ggml.model`.
    pub fn from_metadata(meta: &GgufMetadata) -> Result<Option<Self>> {
        let Some(model) = meta.get_str("tokenizer.ggml.model")? else { return Ok(None) };
        let tokens = meta.get_str_array("tokenizer.ggml.tokens")?.ok_or_else(|| {
            Error::format(
                "GGUF",
                "`tokenizer.ggml.model` is set but `tokenizer.ggml.tokens` is missing",
            )
        })?;
        let n = tokens.len();
        let token_types = meta
            .get_num_array("tokenizer.ggml.token_type", "an array of integers", |v| {
                v.as_i64().and_then(|x| i32::try_from(x).ok())
            })?
            .unwrap_or_default();
        let scores = meta
            .get_num_array("tokenizer.ggml.scores", "an array of numbers", |v| {
                v.as_f64().map(|x| x as f32)
            })?
            .unwrap_or_default();
        for (key, len) in [("token_type", token_types.len()), ("scores", scores.len())] {
            if len != 0 && len != n {
                return Err(Error::format(
                    "GGUF",
                    format!("tokenizer.ggml.{key} has {len} entries for {n} tokens"),
                ));
            }
        }
        let id = |k: &str| -> Result<Option<u32>> {
            let key = format!("tokenizer.ggml.{k}");
            match meta.get_usize(&key)? {
                None => Ok(None),
                Some(v) if v < n => Ok(Some(v as u32)),
                Some(v) => Err(Error::format(
                    "GGUF",
                    format!("`{key}` = {v} is outside the vocabulary of {n} tokens"),
                )),
            }
        };
        Ok(Some(GgufVocab {
            model: model.to_string(),
            pre: meta.get_str("tokenizer.ggml.pre")?.map(str::to_string),
            merges: meta.get_str_array("tokenizer.ggml.merges")?.unwrap_or_default(),
            bos_token_id: id("bos_token_id")?,
            eos_token_id: id("eos_token_id")?,
            eot_token_id: id("eot_token_id")?,
            padding_token_id: id("padding_token_id")?,
            unknown_token_id: id("unknown_token_id")?,
            add_bos_token: meta.get_bool("tokenizer.ggml.add_bos_token")?,
            add_eos_token: meta.get_bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: meta.get_bool("tokenizer.ggml.add_space_prefix")?,
            chat_template: meta.get_str("tokenizer.chat_template")?.map(str::to_string),
            tokens,
            token_types,
            scores,
        }))
    }

    /// The metadata pairs that store this vocabulary (for the GGUF writer).
    pub fn to_metadata(&self) -> Vec<(String, GgufValue)> {
        let k = |s: &str| format!("tokenizer.ggml.{s}");
        let strings = |v: &[String]| {
            GgufValue::Array(
                GgufValueType::String,
                v.iter().map(|s| GgufValue::String(s.clone())).collect(),
            )
        };
        let mut out = vec![
            (k("model"), GgufValue::String(self.model.clone())),
            (k("tokens"), strings(&self.tokens)),
        ];
        if let Some(p) = &self.pre {
            out.push((k("pre"), GgufValue::String(p.clone())));
        }
        if !self.token_types.is_empty() {
            let v = self.token_types.iter().map(|&t| GgufValue::I32(t)).collect();
            out.push((k("token_type"), GgufValue::Array(GgufValueType::I32, v)));
        }
        if !self.scores.is_empty() {
            let v = self.scores.iter().map(|&s| GgufValue::F32(s)).collect();
            out.push((k("scores"), GgufValue::Array(GgufValueType::F32, v)));
        }
        if !self.merges.is_empty() {
            out.push((k("merges"), strings(&self.merges)));
        }
        let ids = [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("eot_token_id", self.eot_token_id),
            ("padding_token_id", self.padding_token_id),
            ("unknown_token_id", self.unknown_token_id),
        ];
        for (name, id) in ids {
            if let Some(id) = id {
                out.push((k(name), GgufValue::U32(id)));
            }
        }
        let flags = [
            ("add_bos_token", self.add_bos_token),
            ("add_eos_token", self.add_eos_token),
            ("add_space_prefix", self.add_space_prefix),
        ];
        for (name, b) in flags {
            if let Some(b) = b {
                out.push((k(name), GgufValue::Bool(b)));
            }
        }
        if let Some(t) = &self.chat_template {
            out.push(("tokenizer.chat_template".into(), GgufValue::String(t.clone())));
        }
        out
    }
}
