//! A reader for SentencePiece's `ModelProto` (a `tokenizer.model` file): the pieces and the few
//! trainer and normalizer options a tokenizer needs, read straight from the protobuf wire format.
//! Unknown fields are skipped by wire type; malformed input is an [`Error`], never a panic.

use bitnet_core::{Error, Result};

/// `ModelProto.SentencePiece.Type` (the GGUF `tokenizer.ggml.token_type` codes are the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceType {
    /// 1: an ordinary piece.
    Normal,
    /// 2: the unknown piece (`<unk>`).
    Unknown,
    /// 3: a control piece (`<s>`, `</s>`): never produced from text by SentencePiece.
    Control,
    /// 4: a user-defined piece, always matched whole in text.
    UserDefined,
    /// 5: an unused piece.
    Unused,
    /// 6: a byte piece (`<0x0A>`), for byte fallback.
    Byte,
}

impl PieceType {
    /// The type of a protobuf / GGUF code (1 to 6).
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }

    /// The protobuf / GGUF code (1 to 6).
    pub fn code(self) -> i32 {
        match self {
            Self::Normal => 1,
            Self::Unknown => 2,
            Self::Control => 3,
            Self::UserDefined => 4,
            Self::Unused => 5,
            Self::Byte => 6,
        }
    }
}

/// `TrainerSpec.model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpmModelType {
    /// 1 (the protobuf default): a unigram language model.
    Unigram,
    /// 2: byte-pair encoding (Llama-1/2).
    Bpe,
    /// 3: whole words.
    Word,
    /// 4: characters.
    Char,
}

/// One vocabulary entry; its id is its index.
#[derive(Clone, Debug, PartialEq)]
pub struct SpmPiece {
    /// The piece text, `▁` standing for a space.
    pub piece: String,
    /// The score (a log-probability for Unigram, minus the merge rank for BPE).
    pub score: f32,
    /// The piece type.
    pub kind: PieceType,
}

/// What a tokenizer needs from a SentencePiece model.
#[derive(Clone, Debug, PartialEq)]
pub struct SpmModel {
    /// The vocabulary, in id order.
    pub pieces: Vec<SpmPiece>,
    /// `trainer_spec.model_type`.
    pub model_type: SpmModelType,
    /// `trainer_spec.byte_fallback`: characters outside the vocabulary become byte pieces.
    pub byte_fallback: bool,
    /// `trainer_spec.unk_id` (`None` when negative).
    pub unk_id: Option<u32>,
    /// `trainer_spec.bos_id` (`None` when negative).
    pub bos_id: Option<u32>,
    /// `trainer_spec.eos_id` (`None` when negative).
    pub eos_id: Option<u32>,
    /// `trainer_spec.pad_id` (`None` when negative).
    pub pad_id: Option<u32>,
    /// `normalizer_spec.add_dummy_prefix`: a `▁` is put before the text.
    pub add_dummy_prefix: bool,
    /// `normalizer_spec.remove_extra_whitespaces` (read, but HF's fast tokenizer ignores it).
    pub remove_extra_whitespaces: bool,
}

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

fn bad(msg: impl Into<String>) -> Error {
    Error::format("SentencePiece model", msg)
}

/// A cursor over one protobuf message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The message being read, for error messages.
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(bad(format!("{}: truncated varint at byte {}", self.what, self.pos)));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad(format!("{}: varint longer than 10 bytes at byte {}", self.what, self.pos)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            bad(format!(
                "{}: {n} bytes wanted at byte {} of {} (truncated)",
                self.what,
                self.pos,
                self.buf.len()
            ))
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field number and wire type, or `None` at the end of the message.
    fn key(&mut self) -> Result<Option<(u64, u8)>> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        let (field, wire) = (k >> 3, (k & 7) as u8);
        if field == 0 {
            return Err(bad(format!("{}: field number 0 at byte {}", self.what, self.pos)));
        }
        Ok(Some((field, wire)))
    }

    fn len_delimited(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| bad(format!("{}: length {n}", self.what)))?;
        self.take(n)
    }

    fn skip(&mut self, field: u64, wire: u8) -> Result<()> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_I64 => self.take(8).map(drop),
            WIRE_LEN => self.len_delimited().map(drop),
            WIRE_I32 => self.take(4).map(drop),
            _ => Err(bad(format!(
                "{}: field {field} has unsupported wire type {wire} (at byte {})",
                self.what, self.pos
            ))),
        }
    }

    /// Checks that a known field has the wire type its schema gives it.
    fn expect(&self, field: u64, wire: u8, want: u8, name: &str) -> Result<()> {
        if wire == want {
            return Ok(());
        }
        Err(bad(format!(
            "{}: field {field} ({name}) has wire type {wire}, expected {want} (at byte {})",
            self.what, self.pos
        )))
    }

    fn fixed32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A varint read as protobuf `int32` (negative values are sign-extended to 64 bits).
    fn int32(&mut self) -> Result<i32> {
        Ok(self.varint()? as i64 as i32)
    }
}

/// The trainer / normalizer options, with the protobuf defaults.
struct Spec {
    model_type: i32,
    byte_fallback: bool,
    ids: [i32; 4],
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            model_type: 1,
            byte_fallback: false,
            ids: [0, 1, 2, -1],
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
        }
    }
}

impl SpmModel {
    /// Parses the bytes of a `tokenizer.model`.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Err(bad("the file is empty"));
        }
        let mut r = Reader::new(bytes, "ModelProto");
        let (mut pieces, mut spec) = (Vec::new(), Spec::default());
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => {
                    r.expect(field, wire, WIRE_LEN, "pieces")?;
                    let id = pieces.len();
                    let piece = parse_piece(r.len_delimited()?)
                        .map_err(|e| e.context(format!("piece {id}")))?;
                    pieces.push(piece);
                }
                2 => {
                    r.expect(field, wire, WIRE_LEN, "trainer_spec")?;
                    parse_trainer_spec(r.len_delimited()?, &mut spec)?;
                }
                3 => {
                    r.expect(field, wire, WIRE_LEN, "normalizer_spec")?;
                    parse_normalizer_spec(r.len_delimited()?, &mut spec)?;
                }
                _ => r.skip(field, wire)?,
            }
        }
        if pieces.is_empty() {
            return Err(bad("no pieces (is this a SentencePiece tokenizer.model?)"));
        }
        let model_type = match spec.model_type {
            1 => SpmModelType::Unigram,
            2 => SpmModelType::Bpe,
            3 => SpmModelType::Word,
            4 => SpmModelType::Char,
            t => return Err(bad(format!("trainer_spec.model_type {t} is not 1 to 4"))),
        };
        let n = pieces.len();
        let names = ["unk_id", "bos_id", "eos_id", "pad_id"];
        let mut ids = [None; 4];
        for ((slot, &id), name) in ids.iter_mut().zip(&spec.ids).zip(names) {
            if id >= 0 {
                if id as usize >= n {
                    return Err(bad(format!(
                        "trainer_spec.{name} {id} is out of range for {n} pieces"
                    )));
                }
                *slot = Some(id as u32);
            }
        }
        Ok(Self {
            pieces,
            model_type,
            byte_fallback: spec.byte_fallback,
            unk_id: ids[0],
            bos_id: ids[1],
            eos_id: ids[2],
            pad_id: ids[3],
            add_dummy_prefix: spec.add_dummy_prefix,
            remove_extra_whitespaces: spec.remove_extra_whitespaces,
        })
    }
}

fn parse_piece(buf: &[u8]) -> Result<SpmPiece> {
    let mut r = Reader::new(buf, "SentencePiece");
    let mut p = SpmPiece { piece: String::new(), score: 0.0, kind: PieceType::Normal };
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => {
                r.expect(field, wire, WIRE_LEN, "piece")?;
                p.piece = String::from_utf8(r.len_delimited()?.to_vec())
                    .map_err(|e| bad(format!("piece text is not UTF-8: {e}")))?;
            }
            2 => {
                r.expect(field, wire, WIRE_I32, "score")?;
                p.score = f32::from_bits(r.fixed32()?);
            }
            3 => {
                r.expect(field, wire, WIRE_VARINT, "type")?;
                let code = r.int32()?;
                p.kind = PieceType::from_code(code.into())
                    .ok_or_else(|| bad(format!("piece type {code} is not 1 to 6")))?;
            }
            _ => r.skip(field, wire)?,
        }
    }
    Ok(p)
}

fn parse_trainer_spec(buf: &[u8], spec: &mut Spec) -> Result<()> {
    let mut r = Reader::new(buf, "TrainerSpec");
    while let Some((field, wire)) = r.key()? {
        match field {
            3 => {
                r.expect(field, wire, WIRE_VARINT, "model_type")?;
                spec.model_type = r.int32()?;
            }
            35 => {
                r.expect(field, wire, WIRE_VARINT, "byte_fallback")?;
                spec.byte_fallback = r.varint()? != 0;
            }
            40..=43 => {
                r.expect(field, wire, WIRE_VARINT, "a special id")?;
                spec.ids[(field - 40) as usize] = r.int32()?;
            }
            _ => r.skip(field, wire)?,
        }
    }
    Ok(())
}

fn parse_normalizer_spec(buf: &[u8], spec: &mut Spec) -> Result<()> {
    let mut r = Reader::new(buf, "NormalizerSpec");
    while let Some((field, wire)) = r.key()? {
        match field {
            3 => {
                r.expect(field, wire, WIRE_VARINT, "add_dummy_prefix")?;
                spec.add_dummy_prefix = r.varint()? != 0;
            }
            4 => {
                r.expect(field, wire, WIRE_VARINT, "remove_extra_whitespaces")?;
                spec.remove_extra_whitespaces = r.varint()? != 0;
            }
            _ => r.skip(field, wire)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(field: u64, wire: u8, out: &mut Vec<u8>) {
        varint(field << 3 | u64::from(wire), out);
    }

    fn len_field(field: u64, body: &[u8], out: &mut Vec<u8>) {
        key(field, WIRE_LEN, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    fn piece(text: &str, score: f32, kind: Option<u64>) -> Vec<u8> {
        let mut p = Vec::new();
        len_field(1, text.as_bytes(), &mut p);
        key(2, WIRE_I32, &mut p);
        p.extend_from_slice(&score.to_le_bytes());
        if let Some(k) = kind {
            key(3, WIRE_VARINT, &mut p);
            varint(k, &mut p);
        }
        p
    }

    /// `<unk>` `<s>` `</s>` `a`, BPE, byte fallback, pad_id -1, add_dummy_prefix false, plus
    /// unknown fields of every wire type.
    fn model() -> Vec<u8> {
        let mut m = Vec::new();
        for (t, s, k) in [("<unk>", 0.0, Some(2)), ("<s>", 0.0, Some(3)), ("</s>", 0.0, Some(3))] {
            len_field(1, &piece(t, s, k), &mut m);
        }
        len_field(1, &piece("a", -1.5, None), &mut m);
        let mut ts = Vec::new();
        key(3, WIRE_VARINT, &mut ts);
        varint(2, &mut ts);
        key(35, WIRE_VARINT, &mut ts);
        varint(1, &mut ts);
        key(43, WIRE_VARINT, &mut ts);
        varint(-1i64 as u64, &mut ts);
        key(10, WIRE_I32, &mut ts); // character_coverage: skipped
        ts.extend_from_slice(&1f32.to_le_bytes());
        key(99, WIRE_I64, &mut ts);
        ts.extend_from_slice(&[0; 8]);
        len_field(2, &ts, &mut m);
        let mut ns = Vec::new();
        len_field(1, b"identity", &mut ns);
        key(3, WIRE_VARINT, &mut ns);
        varint(0, &mut ns);
        len_field(3, &ns, &mut m);
        len_field(5, b"denormalizer, skipped", &mut m);
        m
    }

    #[test]
    fn reads_pieces_types_and_specs_and_skips_unknown_fields() {
        let m = SpmModel::parse(&model()).unwrap();
        let kinds: Vec<_> = m.pieces.iter().map(|p| p.kind).collect();
        use PieceType::*;
        assert_eq!(kinds, [Unknown, Control, Control, Normal]);
        assert_eq!((m.pieces[3].piece.as_str(), m.pieces[3].score), ("a", -1.5));
        assert_eq!(m.model_type, SpmModelType::Bpe);
        assert!(m.byte_fallback);
        assert_eq!((m.unk_id, m.bos_id, m.eos_id, m.pad_id), (Some(0), Some(1), Some(2), None));
        assert!(!m.add_dummy_prefix);
        assert!(m.remove_extra_whitespaces, "default true when absent");
    }

    #[test]
    fn absent_specs_take_protobuf_defaults() {
        let mut m = Vec::new();
        len_field(1, &piece("<unk>", 0.0, Some(2)), &mut m);
        for t in ["<s>", "</s>"] {
            len_field(1, &piece(t, 0.0, Some(3)), &mut m);
        }
        let m = SpmModel::parse(&m).unwrap();
        assert_eq!(m.model_type, SpmModelType::Unigram);
        assert!(!m.byte_fallback && m.add_dummy_prefix);
        assert_eq!((m.unk_id, m.bos_id, m.eos_id, m.pad_id), (Some(0), Some(1), Some(2), None));
    }

    fn err(bytes: &[u8]) -> String {
        SpmModel::parse(bytes).unwrap_err().to_string()
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let m = model();
        for n in 1..m.len() {
            // Cutting a message short either ends it cleanly between fields (then something
            // later is missing or it still parses) or gives an error; it never panics.
            let _ = SpmModel::parse(&m[..n]);
        }
        let e = err(&m[..m.len() - 3]);
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn malformed_input_gives_clear_errors() {
        let good = model();
        let mut wrong_wire = Vec::new();
        key(1, WIRE_VARINT, &mut wrong_wire);
        varint(5, &mut wrong_wire);
        let mut bad_type = Vec::new();
        len_field(1, &piece("x", 0.0, Some(9)), &mut bad_type);
        let mut out_of_range = good.clone();
        let mut ts = Vec::new();
        key(42, WIRE_VARINT, &mut ts);
        varint(7, &mut ts);
        len_field(2, &ts, &mut out_of_range);
        let mut bad_utf8 = Vec::new();
        len_field(1, &[0x0a, 0x02, 0xff, 0xfe], &mut bad_utf8);
        let mut long_varint = vec![0x48]; // field 9, varint
        long_varint.extend([0xff; 11]);
        let mut group = good.clone();
        key(7, 3, &mut group);
        let mut score_as_varint = Vec::new();
        let mut p = Vec::new();
        key(2, WIRE_VARINT, &mut p);
        varint(1, &mut p);
        len_field(1, &p, &mut score_as_varint);
        let cases: [(&[u8], &str); 10] = [
            (&[], "empty"),
            (&[0x0a, 0x05, 0x0a], "truncated"),
            (&[0x0a, 0x80], "truncated varint"),
            (&wrong_wire, "field 1 (pieces) has wire type 0, expected 2"),
            (&bad_type, "piece type 9"),
            (&out_of_range, "eos_id 7 is out of range for 4 pieces"),
            (&bad_utf8, "not UTF-8"),
            (&long_varint, "longer than 10 bytes"),
            (&group, "unsupported wire type 3"),
            (&score_as_varint, "field 2 (score) has wire type 0, expected 5"),
        ];
        for (bytes, want) in cases {
            let e = err(bytes);
            assert!(e.contains(want), "{e:?} should mention {want:?}");
            assert!(e.contains("SentencePiece model"), "{e}");
        }
        assert!(err(&[0x12, 0x00]).contains("no pieces"), "a trainer_spec alone");
        assert!(err(&[0x00]).contains("field number 0"));
    }
}
