//! Text ↔ token ids: a thin wrapper over the `tokenizers` crate, built from a `tokenizer.json`,
//! a SentencePiece `tokenizer.model` (BPE, Llama-1/2 style: see [`spm`]) or the vocabulary
//! arrays of a GGUF file, plus an incremental detokenizer.

pub mod spm;
mod spm_proto;

use std::path::Path;

use crate::formats::GgufVocab;
use bitnet_core::{Error, Result};
use spm::PieceType;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// The Llama-3 pre-tokenizer regex (GGUF `tokenizer.ggml.pre` = `llama-bpe`).
pub const LLAMA3_PRE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen-2 pre-tokenizer regex (as Llama-3's, but digits one by one).
pub const QWEN2_PRE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The number of tokens of a GGUF vocabulary, after checking that the per-token arrays (types,
/// scores), where present, have one entry per token and that BOS / EOS are ids of the vocabulary.
fn checked_len(v: &GgufVocab) -> Result<usize> {
    let n = v.tokens.len();
    for (key, len) in [("token_type", v.token_types.len()), ("scores", v.scores.len())] {
        if len != 0 && len != n {
            return Err(Error::format(
                "GGUF",
                format!("tokenizer.ggml.{key} has {len} entries for {n} tokens"),
            ));
        }
    }
    for (name, id) in [("bos", v.bos_token_id), ("eos", v.eos_token_id)] {
        if let Some(id) = id.filter(|&id| id as usize >= n) {
            return Err(Error::format(
                "GGUF",
                format!("{name} id {id} outside a vocabulary of {n}"),
            ));
        }
    }
    Ok(n)
}

/// A loaded tokenizer with its special ids.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    /// Whether the model's tokenizer puts BOS before a text (see [`Tokenizer::adds_bos`]).
    bos_rule: BosRule,
}

/// What decides whether BOS goes before a text.
#[derive(Clone, Copy, Debug)]
enum BosRule {
    /// A setting (`add_bos_token`, or the format's default).
    Set(bool),
    /// A `tokenizer.json`'s post-processor: BOS where the first id it puts before any text (what
    /// transformers adds with `add_special_tokens=True`) is the BOS id.
    PostProcessor(Option<u32>),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("bos_rule", &self.bos_rule)
            .finish()
    }
}

fn tok_err(what: &str) -> impl FnOnce(tokenizers::Error) -> Error + '_ {
    move |e| Error::format("tokenizer", format!("{what}: {e}"))
}

/// Reads `bos_token` / `eos_token` of a `tokenizer_config.json` (a string or `{content: ...}`).
fn config_token(cfg: &serde_json::Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v => v.get("content")?.as_str().map(str::to_string),
    }
}

/// The first id a `tokenizer.json`'s post-processor puts before any text, if it adds one.
fn post_processor_first(inner: &tokenizers::Tokenizer) -> Option<u32> {
    let enc = inner.post_process(tokenizers::Encoding::default(), None, true).ok()?;
    enc.get_ids().first().copied()
}

/// llama.cpp's rule for a GGUF file without `tokenizer.ggml.add_bos_token`: SentencePiece
/// vocabularies add BOS, byte-level BPE ones only with the Llama-3 family's pre-tokenizers.
fn gguf_default_adds_bos(model: &str, pre: Option<&str>) -> bool {
    model == "llama"
        || matches!(pre, Some("llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "falcon_e"))
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer; special ids are found by their Llama-3 names, and BOS is
    /// added to a text where the tokenizer's post-processor adds it (as transformers does).
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        let vocab_size =
            inner.get_vocab(true).values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let bos_rule = BosRule::PostProcessor(post_processor_first(&inner));
        let mut t = Self { inner, vocab_size, bos: None, eos: None, eot: None, bos_rule };
        t.bos = t.token_to_id("<|begin_of_text|>");
        t.eos = t.token_to_id("<|end_of_text|>");
        t.eot = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>"]
            .iter()
            .find_map(|s| t.token_to_id(s));
        t
    }

    /// Loads a `tokenizer.json`; a `tokenizer_config.json` beside it, if any, names BOS and EOS.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let t = Self::from_bytes(&bytes)
            .map_err(|e| e.context(format!("loading {}", path.display())))?;
        let cfg = read_tokenizer_config(path)?;
        Ok(t.with_config_specials(cfg.as_ref()))
    }

    /// Loads a SentencePiece BPE `tokenizer.model` (Llama-1/2). A `tokenizer_config.json`
    /// beside it, if any, names BOS and EOS and may set `legacy` (absent: true), as it does
    /// for transformers' `LlamaTokenizerFast`.
    pub fn from_spm_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let cfg = read_tokenizer_config(path)?;
        let legacy = cfg.as_ref().and_then(|c| c.get("legacy")?.as_bool()).unwrap_or(true);
        let t = Self::from_spm_bytes(&bytes, legacy)
            .map_err(|e| e.context(format!("loading {}", path.display())))?;
        Ok(t.with_config_specials(cfg.as_ref()))
    }

    /// BOS / EOS named by a `tokenizer_config.json`, where it names tokens this one has, and its
    /// `add_bos_token`, where it has one.
    fn with_config_specials(mut self, cfg: Option<&serde_json::Value>) -> Self {
        let Some(cfg) = cfg else { return self };
        let bos = config_token(cfg, "bos_token").and_then(|s| self.token_to_id(&s));
        let eos = config_token(cfg, "eos_token").and_then(|s| self.token_to_id(&s));
        if let Some(add) = cfg.get("add_bos_token").and_then(serde_json::Value::as_bool) {
            self.bos_rule = BosRule::Set(add);
        }
        let (bos, eos) = (bos.or(self.bos), eos.or(self.eos));
        self.with_special_ids(bos, eos)
    }

    /// Parses the JSON text of a `tokenizer.json`.
    pub fn from_bytes(json: &[u8]) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(json).map_err(tok_err("parsing tokenizer.json"))?;
        Ok(Self::from_inner(inner))
    }

    /// Builds a tokenizer from GGUF vocabulary arrays: byte-level BPE for `gpt2`, SentencePiece
    /// BPE for `llama` (see [`spm`]). Control tokens become special added tokens, user-defined
    /// ones plain added tokens; both are matched in text before BPE runs.
    ///
    /// BOS is added to a text as `tokenizer.ggml.add_bos_token` says; without it, as llama.cpp
    /// does (SentencePiece vocabularies and the Llama-3 family's pre-tokenizers add it).
    pub fn from_gguf_vocab(input: &GgufVocab) -> Result<Self> {
        let n = checked_len(input)?;
        let mut t = match input.model.as_str() {
            "llama" => Self::from_gguf_llama(input)?,
            _ => Self::from_gguf_bpe(input, n)?,
        };
        let add = input.add_bos_token;
        t.bos_rule = BosRule::Set(
            add.unwrap_or_else(|| gguf_default_adds_bos(&input.model, input.pre.as_deref())),
        );
        Ok(t)
    }

    /// The GGUF `tokenizer.ggml.model == "gpt2"` case: byte-level BPE.
    fn from_gguf_bpe(input: &GgufVocab, n: usize) -> Result<Self> {
        match input.model.as_str() {
            "gpt2" => {}
            other => {
                return Err(Error::unsupported(format!(
                    "GGUF tokenizer model {other:?} (only \"gpt2\", byte-level BPE, and \"llama\", \
                     SentencePiece BPE, are supported)"
                )))
            }
        }
        let (pre, ignore_merges) = gguf_pre_tokenizer(input.pre.as_deref())?;
        let merges = parse_merges(&input.merges)?;
        let vocab: Vocab =
            input.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(tok_err("building the BPE model from GGUF"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
        let added = |ty: i32, special: bool| -> Vec<AddedToken> {
            input
                .token_types
                .iter()
                .zip(&input.tokens)
                .filter(|(&t, _)| t == ty)
                .map(|(_, s)| AddedToken::from(s.clone(), special).normalized(false))
                .collect()
        };
        let add_err = |e: tokenizers::Error| Error::format("GGUF", format!("vocabulary: {e}"));
        inner.add_special_tokens(added(PieceType::Control.code(), true)).map_err(add_err)?;
        inner.add_tokens(added(PieceType::UserDefined.code(), false)).map_err(add_err)?;
        let mut t = Self::from_inner(inner);
        t.vocab_size = t.vocab_size.max(n);
        let (bos, eos) = (input.bos_token_id.or(t.bos), input.eos_token_id.or(t.eos));
        Ok(t.with_special_ids(bos, eos))
    }

    /// Replaces the BOS/EOS ids (e.g. with `config.json` values); EOT falls back to EOS.
    pub fn with_special_ids(mut self, bos: Option<u32>, eos: Option<u32>) -> Self {
        self.bos = bos;
        self.eos = eos;
        self
    }

    /// Encodes `text`; special-token strings in it (e.g. `<|eot_id|>`) become their ids.
    /// With `add_bos`, BOS is put first if the model's tokenizer adds one ([`Self::adds_bos`])
    /// and the text did not start with it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::invalid(format!("encoding text: {e}")))?;
        let ids = enc.get_ids();
        match self.bos {
            Some(bos) if add_bos && self.adds_bos() && ids.first() != Some(&bos) => {
                let mut out = Vec::with_capacity(ids.len() + 1);
                out.push(bos);
                out.extend_from_slice(ids);
                Ok(out)
            }
            _ => Ok(ids.to_vec()),
        }
    }

    /// Decodes ids to text, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, false)
    }

    /// Decodes ids to text, leaving special tokens out when `skip_special` is set.
    pub fn decode_with(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.vocab_size
            )));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::invalid(format!("decoding ids: {e}")))
    }

    /// Number of ids (largest id + 1, added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Beginning-of-text id (`<|begin_of_text|>` or the configured one).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether the model's tokenizer puts BOS before a text: `add_bos_token` of a
    /// `tokenizer_config.json` or a GGUF file where one says; otherwise a `tokenizer.json`'s
    /// post-processor (as transformers), true for a SentencePiece `tokenizer.model` (as Llama's
    /// tokenizer), llama.cpp's rule for a GGUF file.
    pub fn adds_bos(&self) -> bool {
        self.bos.is_some()
            && match self.bos_rule {
                BosRule::Set(add) => add,
                BosRule::PostProcessor(first) => first == self.bos,
            }
    }

    /// End-of-text id (`<|end_of_text|>` or the configured one).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn id (`<|eot_id|>` and kin), else the EOS id.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot.or(self.eos)
    }

    /// The ids that end a chat reply: EOT and EOS, without duplicates.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.eot.into_iter().chain(self.eos).collect();
        v.dedup();
        v
    }

    /// Id of a token given by its string (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// String of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The `tokenizer_config.json` beside `path`, if there is one.
fn read_tokenizer_config(path: &Path) -> Result<Option<serde_json::Value>> {
    let cfg_path = path.with_file_name("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&cfg_path) else { return Ok(None) };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format("tokenizer_config.json", format!("{}: {e}", cfg_path.display())))
}

/// Pre-tokenizer and `ignore_merges` flag for a GGUF `tokenizer.ggml.pre` value.
fn gguf_pre_tokenizer(pre: Option<&str>) -> Result<(PreTokenizerWrapper, bool)> {
    let regex = match pre {
        None | Some("gpt2" | "default") => {
            return Ok((PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)), false))
        }
        // llama.cpp runs Falcon3's and Falcon-E's vocabularies with the Llama-3 pre-tokenizer.
        Some("llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" | "falcon3" | "falcon_e") => {
            LLAMA3_PRE_REGEX
        }
        Some("qwen2") => QWEN2_PRE_REGEX,
        Some(other) => {
            return Err(Error::unsupported(format!("GGUF pre-tokenizer {other:?}")));
        }
    };
    let split =
        Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(tok_err("compiling the pre-tokenizer regex"))?;
    let seq = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ]);
    let ignore_merges = regex == LLAMA3_PRE_REGEX;
    Ok((PreTokenizerWrapper::Sequence(seq), ignore_merges))
}

/// Splits GGUF merges `"a b"` at the first space after the first character.
fn parse_merges(merges: &[String]) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(at, _)| at);
            match at {
                Some(at) if at + 1 < m.len() => Ok((m[..at].to_string(), m[at + 1..].to_string())),
                _ => Err(Error::format("GGUF", format!("merge {i} ({m:?}) is not \"left right\""))),
            }
        })
        .collect()
}

/// Turns a growing sequence of ids into text deltas, never splitting a UTF-8 character that
/// byte-level BPE or SentencePiece byte fallback (`<0xE2>` `<0x82>` `<0xAC>`) spread over several
/// tokens: a delta is released once the text decoded so far no longer ends in U+FFFD (or after
/// 8 pending tokens, which no valid character needs). Each step decodes a window that starts at
/// an already released token that shows some text, so a decoder that strips the text's first
/// space (SentencePiece) strips the same space from both sides of the difference.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    skip_special: bool,
}

impl StreamDecoder {
    /// Most tokens held back waiting for a character to complete.
    const MAX_PENDING: usize = 8;

    /// An empty decoder; `skip_special` leaves special tokens out of the text.
    pub fn new(skip_special: bool) -> Self {
        Self { skip_special, ..Self::default() }
    }

    /// Appends `id`; returns the new text (empty while a character is incomplete).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prev = tok.decode_with(&self.ids[self.prefix..self.read], self.skip_special)?;
        let cur = tok.decode_with(&self.ids[self.prefix..], self.skip_special)?;
        let pending = self.ids.len() - self.read;
        let complete = !cur.ends_with('\u{FFFD}') || pending >= Self::MAX_PENDING;
        if complete && cur.len() >= prev.len() && cur.is_char_boundary(prev.len()) {
            let delta = cur[prev.len()..].to_string();
            // Tokens that show nothing (skipped special tokens) make a bad window start: a
            // decoder that strips the text's first space (SentencePiece) would strip the next
            // token's space. The window keeps its old start until something shows.
            if !delta.is_empty() {
                self.prefix = self.read;
            }
            self.read = self.ids.len();
            return Ok(delta);
        }
        Ok(String::new())
    }

    /// Releases what is held back (an incomplete character comes out as U+FFFD).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let prev = tok.decode_with(&self.ids[self.prefix..self.read], self.skip_special)?;
        let cur = tok.decode_with(&self.ids[self.prefix..], self.skip_special)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(cur.get(prev.len()..).unwrap_or(&cur).to_string())
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
