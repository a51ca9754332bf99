//! Training data: a text corpus (a file, or a directory of `.txt` files), its held-out split
//! (the last 10%), a byte-level BPE tokenizer trained on the training split, and batches of
//! random windows.

use crate::params::Rng;
use bitnet_core::{Error, Result};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// Beginning of text: every training window starts with it, as every prompt does.
pub const BOS: &str = "<|begin_of_text|>";
/// End of text.
pub const EOS: &str = "<|end_of_text|>";
/// End of turn (chat).
pub const EOT: &str = "<|eot_id|>";

fn tok_err(what: &'static str) -> impl FnOnce(tokenizers::Error) -> Error {
    move |e| Error::format("tokenizer", format!("{what}: {e}"))
}

/// Reads a text file, or every `.txt` file of a directory (sorted by name, joined by a newline).
pub fn read_corpus(path: &Path) -> Result<String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io(p, e));
    if !path.is_dir() {
        return read(path);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::invalid(format!("{}: no .txt files in the directory", path.display())));
    }
    let texts = files.iter().map(|p| read(p)).collect::<Result<Vec<_>>>()?;
    Ok(texts.join("\n"))
}

/// Splits `text` into (training, held-out): the held-out part is the last 10% of the bytes,
/// moved forward to a character boundary.
pub fn split_held_out(text: &str) -> (&str, &str) {
    let mut at = text.len() - text.len() / 10;
    while !text.is_char_boundary(at) {
        at += 1;
    }
    text.split_at(at)
}

/// Trains a byte-level BPE tokenizer of `vocab_size` tokens on `text`: specials
/// `<|begin_of_text|>`, `<|end_of_text|>`, `<|eot_id|>` take ids 0, 1, 2, and encoding with
/// special tokens prepends `<|begin_of_text|>` (Llama-3 style).
pub fn train_tokenizer(text: &str, vocab_size: usize) -> Result<Tokenizer> {
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    let specials = [BOS, EOS, EOT].map(|s| AddedToken::from(s, true)).to_vec();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tok.train(&mut trainer, text.split_inclusive('\n')).map_err(tok_err("training BPE"))?;
    let bos = tok.token_to_id(BOS).ok_or_else(|| Error::invalid("BOS missing after training"))?;
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A"))
        .and_then(|b| b.try_pair(format!("{BOS} $A {BOS} $B")))
        .map_err(|e| Error::invalid(format!("BOS template: {e}")))?
        .special_tokens(vec![(BOS.to_string(), bos)])
        .build()
        .map_err(|e| Error::invalid(format!("BOS template: {e}")))?;
    tok.with_post_processor(Some(post));
    Ok(tok)
}

/// Encodes `text` without special tokens.
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok.encode_fast(text, false).map_err(tok_err("encoding the corpus"))?.get_ids().to_vec())
}

/// The id of `<|begin_of_text|>`.
pub fn bos_id(tok: &Tokenizer) -> Result<u32> {
    tok.token_to_id(BOS).ok_or_else(|| Error::invalid(format!("the tokenizer has no {BOS}")))
}

/// Windows of a token stream: inputs `[BOS, t_s, ..., t_{s+T-2}]`, targets `[t_s, ..., t_{s+T-1}]`.
#[derive(Debug, Clone)]
pub struct Windows {
    tokens: Vec<u32>,
    seq: usize,
    bos: u32,
}

/// A batch: `batch * seq` input ids and as many targets, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Input ids.
    pub inputs: Vec<u32>,
    /// Target ids.
    pub targets: Vec<u32>,
    /// Windows in the batch.
    pub rows: usize,
}

impl Windows {
    /// Windows of `seq` tokens over `tokens` (at least `seq` of them).
    pub fn new(tokens: Vec<u32>, seq: usize, bos: u32) -> Result<Self> {
        if seq < 2 || tokens.len() < seq {
            return Err(Error::invalid(format!(
                "{} tokens are too few for windows of {seq}",
                tokens.len()
            )));
        }
        Ok(Self { tokens, seq, bos })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no tokens (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    fn push(&self, start: usize, b: &mut Batch) {
        let w = &self.tokens[start..start + self.seq];
        b.inputs.push(self.bos);
        b.inputs.extend_from_slice(&w[..self.seq - 1]);
        b.targets.extend_from_slice(w);
        b.rows += 1;
    }

    fn empty(&self, rows: usize) -> Batch {
        let cap = rows * self.seq;
        Batch { inputs: Vec::with_capacity(cap), targets: Vec::with_capacity(cap), rows: 0 }
    }

    /// `rows` windows at uniformly random starts drawn from `rng`.
    pub fn random(&self, rows: usize, rng: &mut Rng) -> Batch {
        let mut b = self.empty(rows);
        for _ in 0..rows {
            self.push(rng.below(self.tokens.len() - self.seq + 1), &mut b);
        }
        b
    }

    /// Up to `max` evenly spaced, non-overlapping windows covering the stream (evaluation).
    pub fn spread(&self, max: usize) -> Batch {
        let fit = self.tokens.len() / self.seq;
        let n = max.min(fit).max(1);
        let stride = if n > 1 { (self.tokens.len() - self.seq) / (n - 1) } else { 0 };
        let mut b = self.empty(n);
        for i in 0..n {
            self.push(i * stride, &mut b);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_split_is_the_last_tenth_on_a_char_boundary() {
        let text = "é".repeat(55); // 110 bytes
        let (a, b) = split_held_out(&text);
        assert_eq!(a.len() + b.len(), 110);
        assert_eq!(b.len(), 10);
        let (a, b) = split_held_out("abcdefghijklmnopqrst");
        assert_eq!((a, b), ("abcdefghijklmnopqr", "st"));
    }

    #[test]
    fn a_directory_corpus_is_its_txt_files_in_name_order() {
        let dir = std::env::temp_dir().join(format!("bitnet-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.txt"), "second").unwrap();
        std::fs::write(dir.join("a.txt"), "first").unwrap();
        std::fs::write(dir.join("notes.md"), "ignored").unwrap();
        assert_eq!(read_corpus(&dir).unwrap(), "first\nsecond");
        assert_eq!(read_corpus(&dir.join("a.txt")).unwrap(), "first");
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read_corpus(&dir).is_err(), "an empty directory is an error");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn tokenizer_round_trips_and_has_specials_first() {
        let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n".repeat(20);
        let tok = train_tokenizer(&text, 300).unwrap();
        assert_eq!(tok.token_to_id(BOS), Some(0));
        assert_eq!(tok.token_to_id(EOT), Some(2));
        let ids = encode(&tok, "hear me speak, Citizen!").unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), "hear me speak, Citizen!");
        let with = tok.encode("hear", true).unwrap();
        assert_eq!(with.get_ids()[0], 0, "BOS is prepended");
    }

    #[test]
    fn windows_shift_targets_by_one_after_bos() {
        let w = Windows::new((10..30).collect(), 4, 0).unwrap();
        let b = w.random(3, &mut Rng::new(1));
        assert_eq!(b.rows, 3);
        for r in 0..3 {
            let (i, t) = (&b.inputs[r * 4..r * 4 + 4], &b.targets[r * 4..r * 4 + 4]);
            assert_eq!(i[0], 0);
            assert_eq!(&i[1..], &t[..3]);
        }
        let s = w.spread(100);
        assert_eq!(s.rows, 5);
        assert_eq!(s.targets[..4], [10, 11, 12, 13]);
        assert_eq!(s.targets[16..], [26, 27, 28, 29]);
        assert!(Windows::new(vec![1, 2], 4, 0).is_err());
    }
}
