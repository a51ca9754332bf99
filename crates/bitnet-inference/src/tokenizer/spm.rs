//! SentencePiece BPE tokenizers (Llama-1/2 style), from a `tokenizer.model` or from the GGUF
//! `tokenizer.ggml.model == "llama"` arrays, built as the `tokenizers` pipeline of transformers'
//! `LlamaTokenizerFast` (transformers 4's conversion of a `tokenizer.model`):
//!
//! - `legacy` (the default): the normalizer of Llama-2's own `tokenizer.json` (transformers 4's
//!   legacy conversion), `Prepend("▁")` then `Replace(" ", "▁")`, so each stretch of text between
//!   added tokens gets a `▁`, also one that starts with a space: sentencepiece's (and llama.cpp's)
//!   tokenization. transformers 5 builds a `Metaspace` pre-tokenizer instead, which does not
//!   prepend to text that already starts with a space (`" Hello"` is `▁Hello`, not `▁` `▁Hello`);
//!   non-legacy: that `Metaspace("▁", prepend_scheme: first, split: false)`, a `▁` before the
//!   first stretch only; nothing is prepended when the model has `add_dummy_prefix` off;
//! - a BPE model over the pieces (piece → id), `fuse_unk`, byte fallback when the model has it,
//!   and merges generated from the vocabulary as transformers' `generate_merges` does: for each
//!   piece in id order, every split into two pieces of the vocabulary, shorter left half first;
//! - control and unknown pieces (`<s>`, `</s>`, `<unk>`) as special added tokens, user-defined
//!   pieces as plain added tokens, all matched on the raw text;
//! - decoder `Replace("▁", " ")`, `ByteFallback`, `Fuse`, `Strip(" ", 1, 0)` (the strip only
//!   with a dummy prefix).
//!
//! Unlike the `sentencepiece` library itself, this never collapses runs of spaces
//! (`remove_extra_whitespaces`) and matches `<s>` / `</s>` / `<unk>` written in the text as their
//! ids (transformers does the same).

use std::collections::HashMap;

use bitnet_core::{Error, Result};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{NormalizerWrapper, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::AddedToken;

pub use super::spm_proto::{PieceType, SpmModel, SpmModelType, SpmPiece};
use super::{tok_err, Tokenizer};
use crate::formats::GgufVocab;

/// The SentencePiece space marker.
const SPACE: char = '▁';

/// Builds the `tokenizers` pipeline of a SentencePiece BPE model (see the module docs);
/// `legacy` puts the dummy prefix after every added token, not only at the start of the text.
pub fn build(model: &SpmModel, legacy: bool) -> Result<tokenizers::Tokenizer> {
    match model.model_type {
        SpmModelType::Bpe => {}
        SpmModelType::Unigram => {
            return Err(Error::unsupported(
                "Unigram SentencePiece models (only BPE ones, as Llama-1/2 use, are supported)",
            ))
        }
        t => return Err(Error::unsupported(format!("{t:?} SentencePiece models"))),
    }
    let vocab = piece_ids(&model.pieces)?;
    let merges = generate_merges(&model.pieces, &vocab);
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .fuse_unk(true)
        .byte_fallback(model.byte_fallback);
    if let Some(unk) = model.unk_id {
        let piece = model.pieces.get(unk as usize).ok_or_else(|| {
            Error::format("SentencePiece model", format!("unk_id {unk} is not a piece"))
        })?;
        bpe = bpe.unk_token(piece.piece.clone());
    }
    let bpe = bpe.build().map_err(tok_err("building the SentencePiece BPE model"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    match (model.add_dummy_prefix, legacy) {
        // Llama-2's own tokenizer.json (transformers 4's legacy conversion): every stretch of
        // text between added tokens gets a `▁`, also one that starts with a space, as
        // sentencepiece and llama.cpp tokenize.
        (true, true) => {
            let replace =
                Replace::new(" ", SPACE.to_string()).map_err(tok_err("the normalizer"))?;
            let norm = NormalizerSequence::new(vec![
                NormalizerWrapper::Prepend(Prepend::new(SPACE.to_string())),
                NormalizerWrapper::Replace(replace),
            ]);
            inner
                .with_normalizer(Some(NormalizerWrapper::Sequence(norm)))
                .map_err(tok_err("the normalizer"))?;
        }
        (true, false) => {
            inner.with_pre_tokenizer(Some(Metaspace::new(SPACE, PrependScheme::First, false)));
        }
        (false, _) => {
            inner.with_pre_tokenizer(Some(Metaspace::new(SPACE, PrependScheme::Never, false)));
        }
    }
    let mut decoders = vec![
        DecoderWrapper::Replace(
            Replace::new(SPACE.to_string(), " ").map_err(tok_err("the decoder"))?,
        ),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if model.add_dummy_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    inner.with_decoder(Some(DecoderWrapper::Sequence(Sequence::new(decoders))));
    let added = |special: bool| -> Vec<AddedToken> {
        let wanted = |k: PieceType| match k {
            PieceType::Control | PieceType::Unknown => special,
            PieceType::UserDefined => !special,
            _ => false,
        };
        model
            .pieces
            .iter()
            .filter(|p| wanted(p.kind) && !p.piece.is_empty())
            .map(|p| AddedToken::from(p.piece.clone(), special).normalized(false))
            .collect()
    };
    let add_err = |e| Error::format("SentencePiece model", format!("added pieces: {e}"));
    inner.add_special_tokens(added(true)).map_err(add_err)?;
    inner.add_tokens(added(false)).map_err(add_err)?;
    Ok(inner)
}

/// Piece → id; a piece listed twice is an error (SentencePiece refuses such models too).
fn piece_ids(pieces: &[SpmPiece]) -> Result<HashMap<String, u32>> {
    let mut vocab = HashMap::with_capacity(pieces.len());
    for (id, p) in pieces.iter().enumerate() {
        if let Some(first) = vocab.insert(p.piece.clone(), id as u32) {
            return Err(Error::format(
                "SentencePiece model",
                format!("piece {:?} is both id {first} and id {id}", p.piece),
            ));
        }
    }
    Ok(vocab)
}

/// Every split of every piece into two vocabulary pieces, as merges: ordered by the merged
/// piece's score, highest first (SentencePiece's BPE merge order: Llama's whitespace pieces
/// `▁▁`, `▁▁▁▁`, … score -1e9 and merge last), ties by the merged piece's id, then by the
/// length of the left half (transformers' `generate_merges` order, which is the score order when
/// scores fall with the id, as in a freshly trained model).
fn generate_merges(pieces: &[SpmPiece], vocab: &HashMap<String, u32>) -> Vec<(String, String)> {
    let mut merges = Vec::new();
    for p in pieces {
        let s = p.piece.as_str();
        for (at, _) in s.char_indices().skip(1) {
            let (l, r) = s.split_at(at);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                merges.push((p.score, l.to_string(), r.to_string()));
            }
        }
    }
    // Stable: equal scores keep the id / left-length order they were generated in.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges.into_iter().map(|(_, l, r)| (l, r)).collect()
}

impl Tokenizer {
    /// Builds a tokenizer from a parsed SentencePiece BPE model; BOS and EOS are its
    /// `bos_id` / `eos_id`, and BOS is added to a text. `legacy`: see [`build`].
    pub fn from_spm(model: &SpmModel, legacy: bool) -> Result<Self> {
        let inner = build(model, legacy)?;
        let mut t = Self::from_inner(inner);
        t.vocab_size = t.vocab_size.max(model.pieces.len());
        // Llama's SentencePiece tokenizer adds BOS (transformers' `add_bos_token` default).
        t.bos_rule = super::BosRule::Set(true);
        Ok(t.with_special_ids(model.bos_id, model.eos_id))
    }

    /// Builds a tokenizer from the bytes of a `tokenizer.model` (SentencePiece BPE).
    pub fn from_spm_bytes(bytes: &[u8], legacy: bool) -> Result<Self> {
        Self::from_spm(&SpmModel::parse(bytes)?, legacy)
    }

    /// The GGUF `tokenizer.ggml.model == "llama"` case: tokens, scores and token types as a
    /// SentencePiece BPE model (byte fallback when there are byte pieces, type 6); the arrays'
    /// lengths and BOS / EOS are checked by the caller.
    pub(super) fn from_gguf_llama(input: &GgufVocab) -> Result<Self> {
        let n = input.tokens.len();
        if n == 0 {
            return Err(Error::format("GGUF", "tokenizer.ggml.tokens is empty"));
        }
        let mut pieces = Vec::with_capacity(n);
        for (i, tok) in input.tokens.iter().enumerate() {
            let code = input.token_types.get(i).copied().unwrap_or(1);
            let kind = PieceType::from_code(code.into()).ok_or_else(|| {
                Error::format("GGUF", format!("token {i} ({tok:?}) has token_type {code}"))
            })?;
            let score = input.scores.get(i).copied().unwrap_or(0.0);
            pieces.push(SpmPiece { piece: tok.clone(), score, kind });
        }
        let find = |k: PieceType| pieces.iter().position(|p| p.kind == k).map(|i| i as u32);
        let model = SpmModel {
            model_type: SpmModelType::Bpe,
            byte_fallback: find(PieceType::Byte).is_some(),
            unk_id: find(PieceType::Unknown),
            bos_id: input.bos_token_id,
            eos_id: input.eos_token_id,
            pad_id: None,
            add_dummy_prefix: input.add_space_prefix.unwrap_or(true),
            remove_extra_whitespaces: false,
            pieces,
        };
        Self::from_spm(&model, true).map_err(|e| e.context("GGUF tokenizer \"llama\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(list: &[(&str, PieceType)]) -> Vec<SpmPiece> {
        list.iter().map(|&(p, kind)| SpmPiece { piece: p.into(), score: 0.0, kind }).collect()
    }

    fn model(list: &[(&str, PieceType)]) -> SpmModel {
        SpmModel {
            pieces: pieces(list),
            model_type: SpmModelType::Bpe,
            byte_fallback: true,
            unk_id: Some(0),
            bos_id: Some(1),
            eos_id: Some(2),
            pad_id: None,
            add_dummy_prefix: true,
            remove_extra_whitespaces: false,
        }
    }

    use PieceType::{Byte, Control, Normal, Unknown};

    #[test]
    fn merges_follow_merged_piece_id_then_left_length() {
        let p = pieces(&[
            ("a", Normal),
            ("b", Normal),
            ("c", Normal),
            ("abc", Normal),
            ("ab", Normal),
            ("bc", Normal),
        ]);
        let v = piece_ids(&p).unwrap();
        let m = generate_merges(&p, &v);
        let m: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(m, [("a", "bc"), ("ab", "c"), ("a", "b"), ("b", "c")]);
    }

    #[test]
    fn merges_follow_the_merged_pieces_score_first() {
        // Llama's vocabulary: `▁▁` has a low id but scores -1e9, so it merges last and
        // " hi" (`▁▁hi` after the dummy prefix) is `▁` `▁hi`, as sentencepiece splits it.
        let mut m = model(&[
            ("<unk>", Unknown),
            ("<s>", Control),
            ("</s>", Control),
            ("▁▁", Normal),
            ("▁h", Normal),
            ("▁hi", Normal),
            ("▁", Normal),
            ("h", Normal),
            ("i", Normal),
        ]);
        for (i, p) in m.pieces.iter_mut().enumerate().skip(3) {
            p.score = if p.piece == "▁▁" { -1e9 } else { -(i as f32) };
        }
        let v = piece_ids(&m.pieces).unwrap();
        let merges = generate_merges(&m.pieces, &v);
        let last = merges.last().map(|(l, r)| (l.as_str(), r.as_str()));
        assert_eq!(last, Some(("▁", "▁")));
        let t = Tokenizer::from_spm(&m, true).unwrap();
        let id = |p: &str| t.token_to_id(p).unwrap();
        assert_eq!(t.encode(" hi", false).unwrap(), [id("▁"), id("▁hi")]);
        assert_eq!(t.encode("  hi", false).unwrap(), [id("▁▁"), id("▁hi")]);
        assert_eq!(t.decode(&t.encode(" hi", false).unwrap()).unwrap(), " hi");
    }

    #[test]
    fn duplicate_pieces_and_unigram_models_are_refused() {
        let dup =
            model(&[("<unk>", Unknown), ("<s>", Control), ("</s>", Control), ("<s>", Normal)]);
        let e = build(&dup, true).unwrap_err().to_string();
        assert!(e.contains("\"<s>\" is both id 1 and id 3"), "{e}");
        let ok = model(&[("<unk>", Unknown), ("<s>", Control), ("</s>", Control)]);
        let e = build(&SpmModel { unk_id: Some(99), ..ok }, true).unwrap_err().to_string();
        assert!(e.contains("unk_id 99 is not a piece"), "{e}");
        let uni = SpmModel { model_type: SpmModelType::Unigram, ..dup };
        let e = build(&uni, true).unwrap_err().to_string();
        assert!(e.contains("Unigram SentencePiece models"), "{e}");
    }

    #[test]
    fn byte_fallback_spells_unknown_characters_in_bytes() {
        let mut list = vec![("<unk>", Unknown), ("<s>", Control), ("</s>", Control)];
        let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        list.extend(bytes.iter().map(|b| (b.as_str(), Byte)));
        list.extend([("▁", Normal), ("h", Normal), ("i", Normal), ("▁h", Normal), ("▁hi", Normal)]);
        let t = Tokenizer::from_spm(&model(&list), true).unwrap();
        let hi = t.token_to_id("▁hi").unwrap();
        let e = |b: u32| 3 + b;
        assert_eq!(
            t.encode("hi é", true).unwrap(),
            [1, hi, t.token_to_id("▁").unwrap(), e(0xC3), e(0xA9)]
        );
        assert_eq!(t.decode(&t.encode("hi é", false).unwrap()).unwrap(), "hi é");
        let no_fallback = SpmModel { byte_fallback: false, ..model(&list) };
        let t = Tokenizer::from_spm(&no_fallback, true).unwrap();
        assert_eq!(t.encode("é", false).unwrap(), [t.token_to_id("▁").unwrap(), 0]);
    }
}
