//! Model file loaders: Hugging Face safetensors directories and GGUF files, into one
//! neutral [`ModelFile`] (typed config, tensors under the HF names, metadata for `inspect`).
//!
//! Tensors are zero-copy views of the memory-mapped files, with their stored dtype and a
//! row-major shape (outermost first: GGUF's `ne[]` is reversed). Repacking into a
//! backend's layout happens later, in the model loader.
//!
//! ```no_run
//! let m = bitnet_inference::formats::load(std::path::Path::new("models/bitnet-2b")).unwrap();
//! let emb = m.tensors.require("model.embed_tokens.weight").unwrap();
//! assert_eq!(emb.dims(), &[m.config.vocab_size, m.config.hidden_size]);
//! ```

pub mod gguf;
pub(crate) mod gguf_llama;
pub mod gguf_meta;
pub mod gguf_write;
pub mod names;
pub mod safetensors;

use crate::config::BitNetConfig;
use bitnet_core::{Error, Result, Tensor};
pub use gguf::{parse_gguf, GgufVocab};
pub use gguf_write::GgufWriter;
pub use safetensors::parse_safetensors;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Which kind of file a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A Hugging Face directory (`config.json` + safetensors).
    HfDir,
    /// A GGUF file (llama.cpp or bitnet.cpp).
    Gguf,
}

/// Named tensors, sorted by name.
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    map: BTreeMap<String, Tensor>,
}

impl TensorMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a tensor; a name seen before is an error.
    pub fn insert(&mut self, name: String, t: Tensor) -> Result<()> {
        if self.map.contains_key(&name) {
            return Err(Error::invalid(format!("tensor `{name}` appears twice")));
        }
        self.map.insert(name, t);
        Ok(())
    }
    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name)
    }
    /// The tensor called `name`, or an error naming it.
    pub fn require(&self, name: &str) -> Result<&Tensor> {
        self.map
            .get(name)
            .ok_or_else(|| Error::invalid(format!("the model file has no tensor `{name}`")))
    }
    /// Removes and returns a tensor.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.map.remove(name)
    }
    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
    /// The names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
    /// (name, tensor) pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A loaded model file, before any repacking.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// Where it came from.
    pub kind: FileKind,
    /// The validated hyper-parameters.
    pub config: BitNetConfig,
    /// The tensors, under HF names (unknown GGUF names are kept as they are).
    pub tensors: TensorMap,
    /// Key/value pairs to show in `inspect` (config.json entries or GGUF metadata).
    pub metadata: Vec<(String, String)>,
    /// The tokenizer stored in a GGUF file, if any.
    pub gguf_vocab: Option<GgufVocab>,
}

impl ModelFile {
    /// The output projection: `lm_head.weight`, or the embedding when tied.
    pub fn lm_head(&self) -> Result<&Tensor> {
        if self.config.tie_word_embeddings {
            self.tensors.require("model.embed_tokens.weight")
        } else {
            self.tensors.require("lm_head.weight")
        }
    }
}

/// Loads a model: a directory with `config.json` (HF) or a file starting with the GGUF magic.
///
/// A path to a file inside an HF directory (`config.json`, `*.safetensors`, the index)
/// loads that directory.
pub fn load(path: &Path) -> Result<ModelFile> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(Error::invalid(format!(
                "{} is a directory without config.json (not a Hugging Face model directory)",
                path.display()
            )));
        }
        return safetensors::load_hf_dir(path);
    }
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Error::io(path, e))?;
    if gguf::has_gguf_magic(&head[..n]) {
        return gguf::load_gguf(path);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let in_hf_dir =
        name == "config.json" || name.ends_with(".safetensors") || name == safetensors::INDEX_FILE;
    if let (true, Some(dir)) = (in_hf_dir, path.parent()) {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if dir.join("config.json").is_file() {
            return safetensors::load_hf_dir(dir);
        }
    }
    Err(Error::invalid(format!(
        "{} is neither a GGUF file (it starts with {:02x?}, not \"GGUF\") nor a Hugging Face model directory",
        path.display(),
        &head[..n]
    )))
}
