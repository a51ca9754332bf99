//! SentencePiece BPE tokenizers (Llama-1/2 style) against transformers' `LlamaTokenizerFast`:
//! `tests/fixtures/spm/` holds a tiny trained `tokenizer.model` and the ids of sentencepiece, of
//! Llama-2's tokenizer.json recipe (`legacy`: transformers 4's conversion, which we match) and of
//! transformers 5's conversion (`hf`, `hf_non_legacy`) (`tools/make_spm_fixture.py`). Checked: the `tokenizer.model` loader, the GGUF
//! `tokenizer.ggml.model == "llama"` arrays, streaming detokenization, and the engine's loader.

mod common;

use bitnet_inference::formats::GgufVocab;
use bitnet_inference::tokenizer::spm::{PieceType, SpmModel};
use bitnet_inference::tokenizer::{StreamDecoder, Tokenizer};
use bitnet_inference::Engine;
use serde_json::Value;

struct Case {
    text: String,
    legacy: Vec<u32>,
    legacy_pieces: Vec<String>,
    legacy_decoded: String,
    legacy_decoded_skip_special: String,
    hf: Vec<u32>,
    hf_non_legacy: Vec<u32>,
    sentencepiece: Vec<u32>,
    hf_pieces: Vec<String>,
}

fn expected() -> Value {
    let path = common::fixture_dir("spm").join("expected.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn cases() -> Vec<Case> {
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let cases: Vec<Case> = expected()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: s(&c["text"]),
            legacy: ids(&c["legacy"]),
            legacy_pieces: c["legacy_pieces"].as_array().unwrap().iter().map(s).collect(),
            legacy_decoded: s(&c["legacy_decoded"]),
            legacy_decoded_skip_special: s(&c["legacy_decoded_skip_special"]),
            hf: ids(&c["hf"]),
            hf_non_legacy: ids(&c["hf_non_legacy"]),
            sentencepiece: ids(&c["sentencepiece"]),
            hf_pieces: c["hf_pieces"].as_array().unwrap().iter().map(s).collect(),
        })
        .collect();
    assert!(cases.len() >= 20);
    cases
}

fn model_bytes() -> Vec<u8> {
    std::fs::read(common::fixture_dir("spm").join("tokenizer.model")).unwrap()
}

fn spm_tokenizer() -> Tokenizer {
    Tokenizer::from_spm_file(common::fixture_dir("spm").join("tokenizer.model")).unwrap()
}

/// Encodes every case and compares with the legacy (Llama-2 tokenizer.json) ids, decodes and
/// compares with its text.
fn check_against_hf(name: &str, tok: &Tokenizer) {
    let e = expected();
    assert_eq!(tok.vocab_size() as u64, e["vocab_size"].as_u64().unwrap(), "{name}");
    assert_eq!(tok.bos_id().map(u64::from), e["hf_bos_id"].as_u64(), "{name}");
    assert_eq!(tok.eos_id().map(u64::from), e["hf_eos_id"].as_u64(), "{name}");
    for c in cases() {
        let ids = tok.encode(&c.text, false).unwrap();
        let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        let want = (&c.legacy, &c.legacy_pieces);
        assert_eq!(ids, c.legacy, "{name}: {:?}\n got {pieces:?}\nwant {:?}", c.text, want.1);
        assert_eq!(tok.decode(&ids).unwrap(), c.legacy_decoded, "{name}: {:?}", c.text);
        assert_eq!(tok.decode_with(&ids, true).unwrap(), c.legacy_decoded_skip_special);
        let with_bos = tok.encode(&c.text, true).unwrap();
        let bos = tok.bos_id().unwrap();
        if ids.first() == Some(&bos) {
            assert_eq!(with_bos, ids, "{name}: BOS doubled");
        } else {
            assert_eq!((with_bos[0], &with_bos[1..]), (bos, &ids[..]), "{name}: {:?}", c.text);
        }
    }
}

#[test]
fn tokenizer_model_encodes_every_string_as_transformers_llama_fast_does() {
    check_against_hf("tokenizer.model", &spm_tokenizer());
}

#[test]
fn merges_generated_from_the_vocabulary_are_transformers_merges_in_order() {
    let json: Value =
        serde_json::from_str(&spm_tokenizer().inner().to_string(false).unwrap()).unwrap();
    let got = &json["model"]["merges"];
    let want = &expected()["hf_merges"];
    assert!(want.as_array().unwrap().len() > 200);
    assert_eq!(got, want);
    assert_eq!(json["model"]["byte_fallback"], true);
    assert_eq!(json["model"]["fuse_unk"], true);
}

#[test]
fn fixture_covers_byte_fallback_specials_and_spaces() {
    let cases = cases();
    let with_bytes = cases.iter().filter(|c| c.hf_pieces.iter().any(|p| p.starts_with("<0x")));
    assert!(with_bytes.count() >= 3, "byte fallback must be exercised");
    let spm = model_bytes();
    let m = SpmModel::parse(&spm).unwrap();
    assert_eq!(m.pieces.iter().filter(|p| p.kind == PieceType::Byte).count(), 256);
    assert!(m.byte_fallback && m.add_dummy_prefix && !m.remove_extra_whitespaces);
    let kinds = |k: PieceType| m.pieces.iter().filter(|p| p.kind == k).count();
    assert_eq!((kinds(PieceType::Control), kinds(PieceType::UserDefined)), (2, 1));
    // The places where transformers and sentencepiece disagree are in the fixture, and those
    // are the ones the generator listed.
    let listed: Vec<String> =
        serde_json::from_value(expected()["texts_where_sentencepiece_differs"].clone()).unwrap();
    let differ: Vec<String> =
        cases.iter().filter(|c| c.hf != c.sentencepiece).map(|c| c.text.clone()).collect();
    assert_eq!(differ, listed);
    assert!(
        differ.iter().any(|t| t == " leading space") && differ.iter().any(|t| t == "<unk> literal")
    );
    // What we match (Llama-2's tokenizer.json recipe) is sentencepiece's tokenization wherever the
    // text spells no special token, also where transformers 5 is not (leading spaces).
    for c in cases
        .iter()
        .filter(|c| !["<s>", "</s>", "<unk>", "<sep>"].iter().any(|t| c.text.contains(t)))
    {
        assert_eq!(c.legacy, c.sentencepiece, "{:?}", c.text);
    }
    assert!(cases.iter().any(|c| c.text == " leading space" && c.legacy != c.hf));
}

#[test]
fn non_legacy_prefixes_only_the_start_of_the_text() {
    let tok = Tokenizer::from_spm_bytes(&model_bytes(), false).unwrap();
    let mut differs = 0;
    for c in cases() {
        assert_eq!(tok.encode(&c.text, false).unwrap(), c.hf_non_legacy, "{:?}", c.text);
        differs += usize::from(c.hf_non_legacy != c.legacy);
    }
    assert!(differs >= 1, "the fixture must tell legacy from non-legacy");
    // tokenizer_config.json beside the model sets `legacy` and may rename BOS / EOS.
    let dir = common::files::tmp_dir("spm-config");
    std::fs::write(dir.join("tokenizer.model"), model_bytes()).unwrap();
    let cfg = r#"{"legacy": false, "eos_token": {"content": "<sep>"}, "bos_token": "<nope>"}"#;
    std::fs::write(dir.join("tokenizer_config.json"), cfg).unwrap();
    let tok = Tokenizer::from_spm_file(dir.join("tokenizer.model")).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), tok.token_to_id("<sep>")));
    for c in cases() {
        assert_eq!(tok.encode(&c.text, false).unwrap(), c.hf_non_legacy, "{:?}", c.text);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The GGUF form (`tokenizer.ggml.*`, model `llama`) of the fixture's pieces.
fn gguf_input(m: &SpmModel) -> GgufVocab {
    GgufVocab {
        model: "llama".into(),
        tokens: m.pieces.iter().map(|p| p.piece.clone()).collect(),
        scores: m.pieces.iter().map(|p| p.score).collect(),
        token_types: m.pieces.iter().map(|p| p.kind.code()).collect(),
        bos_token_id: m.bos_id,
        eos_token_id: m.eos_id,
        ..Default::default()
    }
}

#[test]
fn gguf_llama_vocab_encodes_like_the_tokenizer_model() {
    let m = SpmModel::parse(&model_bytes()).unwrap();
    let tok = Tokenizer::from_gguf_vocab(&gguf_input(&m)).unwrap();
    check_against_hf("GGUF llama", &tok);

    // add_space_prefix = false: no `▁` is put before the text.
    let no_prefix = GgufVocab { add_space_prefix: Some(false), ..gguf_input(&m) };
    let np = Tokenizer::from_gguf_vocab(&no_prefix).unwrap();
    for c in cases()
        .iter()
        .filter(|c| !c.text.is_empty() && !c.text.starts_with(' ') && !c.text.contains('<'))
    {
        let spaced = format!(" {}", c.text);
        assert_eq!(np.encode(&spaced, false).unwrap(), c.legacy, "{:?}", c.text);
        assert_ne!(np.encode(&c.text, false).unwrap(), c.legacy, "{:?}", c.text);
        assert_eq!(np.decode(&np.encode(&c.text, false).unwrap()).unwrap(), c.text);
    }

    // Without byte pieces (type 6) there is no byte fallback: unknown characters become <unk>.
    let mut no_bytes = gguf_input(&m);
    for t in no_bytes.token_types.iter_mut().filter(|t| **t == 6) {
        *t = 1;
    }
    let nb = Tokenizer::from_gguf_vocab(&no_bytes).unwrap();
    let ids = nb.encode("CJK: 中文", false).unwrap();
    assert!(ids.contains(&m.unk_id.unwrap()), "{ids:?}");
    assert!(!tok.encode("CJK: 中文", false).unwrap().contains(&m.unk_id.unwrap()));
}

#[test]
fn gguf_metadata_carries_scores_types_and_space_prefix_to_the_tokenizer() {
    use bitnet_inference::formats::gguf_meta::GgufMetadata;
    let m = SpmModel::parse(&model_bytes()).unwrap();
    let input = gguf_input(&m);
    let vocab = GgufVocab {
        model: "llama".into(),
        tokens: input.tokens.clone(),
        token_types: input.token_types.clone(),
        scores: input.scores.clone(),
        bos_token_id: m.bos_id,
        eos_token_id: m.eos_id,
        unknown_token_id: m.unk_id,
        add_space_prefix: Some(false),
        ..Default::default()
    };
    let mut meta = GgufMetadata::new();
    for (k, v) in vocab.to_metadata() {
        meta.insert(k, v).unwrap();
    }
    let back = GgufVocab::from_metadata(&meta).unwrap().unwrap();
    assert_eq!(back, vocab);
    assert!(back.scores.iter().zip(&m.pieces).all(|(s, p)| *s == p.score));
    assert!(back.scores.iter().any(|&s| s != 0.0), "scores are real data");
    // What the engine's loader hands over.
    let tok = Tokenizer::from_gguf_vocab(&back).unwrap();
    let hello = tok.encode("Hello", false).unwrap();
    assert_ne!(tok.id_to_token(hello[0]).unwrap().chars().next(), Some('▁'));
}

#[test]
fn bad_gguf_llama_vocab_gives_clear_errors() {
    let m = SpmModel::parse(&model_bytes()).unwrap();
    let ok = gguf_input(&m);
    let mut dup = ok.clone();
    dup.tokens[10] = dup.tokens[11].clone();
    let mut bad_type = ok.clone();
    bad_type.token_types[5] = 9;
    let cases = [
        (GgufVocab { scores: vec![0.0; 3], ..ok.clone() }, "scores has 3 entries"),
        (GgufVocab { token_types: vec![1], ..ok.clone() }, "token_type has 1 entries"),
        (GgufVocab { bos_token_id: Some(100_000), ..ok.clone() }, "bos id 100000"),
        (GgufVocab { tokens: vec![], ..ok.clone() }, "token_type has 560 entries for 0"),
        (
            GgufVocab {
                model: "llama".into(),
                bos_token_id: None,
                eos_token_id: None,
                ..Default::default()
            },
            "tokens is empty",
        ),
        (dup, "is both id 10 and id 11"),
        (bad_type, "token_type 9"),
        (GgufVocab { model: "bert".into(), ..ok.clone() }, "not supported yet"),
    ];
    for (input, msg) in cases {
        let e = Tokenizer::from_gguf_vocab(&input).unwrap_err().to_string();
        assert!(e.contains(msg), "{e:?} should mention {msg:?}");
    }
}

#[test]
fn unigram_and_malformed_models_are_refused_with_clear_errors() {
    let mut bytes = model_bytes();
    let e = Tokenizer::from_spm_bytes(&bytes[..bytes.len() - 5], true).unwrap_err().to_string();
    assert!(e.contains("SentencePiece model") && e.contains("truncated"), "{e}");
    // A trainer_spec appended later wins (protobuf merge): model_type 1 = Unigram.
    bytes.extend([0x12, 0x02, 0x18, 0x01]);
    let e = Tokenizer::from_spm_bytes(&bytes, true).unwrap_err().to_string();
    assert!(e.contains("not supported yet") && e.contains("Unigram"), "{e}");
    let e = Tokenizer::from_spm_file(common::fixture_dir("spm").join("missing.model"));
    assert!(e.unwrap_err().to_string().contains("missing.model"));
}

#[test]
fn stream_decoder_never_splits_a_byte_fallback_character() {
    let tok = spm_tokenizer();
    let cases = cases();
    let mut split_chars = 0;
    for c in &cases {
        // A character spelt in two or more byte pieces in a row.
        split_chars +=
            c.hf_pieces.windows(2).filter(|w| w.iter().all(|p| p.starts_with("<0x"))).count();
        for skip in [false, true] {
            let ids = tok.encode(&c.text, true).unwrap();
            let mut dec = StreamDecoder::new(skip);
            let mut out: Vec<String> = ids.iter().map(|&id| dec.push(&tok, id).unwrap()).collect();
            out.push(dec.finish(&tok).unwrap());
            assert!(out.iter().all(|p| !p.contains('\u{FFFD}')), "{:?}: {out:?}", c.text);
            assert_eq!(out.concat(), tok.decode_with(&ids, skip).unwrap(), "{:?}", c.text);
        }
    }
    assert!(split_chars >= 5, "the fixture must spread characters over byte pieces");
    // "€" is E2 82 AC: nothing comes out until its last byte.
    let [e2, x82, xac] = ["<0xE2>", "<0x82>", "<0xAC>"].map(|b| tok.token_to_id(b).unwrap());
    let the = tok.encode("the", false).unwrap();
    let mut dec = StreamDecoder::new(false);
    let mut out = Vec::new();
    for &id in the.iter().chain(&[e2, x82, xac]) {
        out.push(dec.push(&tok, id).unwrap());
    }
    assert_eq!(&out[the.len()..], ["", "", "€"]);
    assert_eq!(out.concat(), "the€");
}

#[test]
fn engine_uses_tokenizer_model_when_there_is_no_tokenizer_json() {
    let src = common::fixture_dir("online_f32_tied_gqa");
    if !src.join("model.safetensors").is_file() {
        return;
    }
    let dir = common::files::tmp_dir("spm-engine");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("tokenizer.model"), model_bytes()).unwrap();
    let e = Engine::builder().model(&dir).threads(1).build().unwrap();
    let tok = e.tokenizer().expect("a tokenizer from tokenizer.model");
    assert_eq!((tok.vocab_size(), tok.bos_id(), tok.eos_id()), (560, Some(1), Some(2)));
    // With a tokenizer.json beside it, the tokenizer.json wins.
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let e = Engine::builder().model(&dir).threads(1).build().unwrap();
    assert_eq!(e.tokenizer().unwrap().vocab_size(), 384);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn convert_writes_a_tokenizer_model_as_a_gguf_llama_vocabulary() {
    use bitnet_inference::config::BitNetConfig;
    use bitnet_inference::convert::vocab_from_tokenizer_model;
    use bitnet_inference::formats::gguf_meta::GgufMetadata;
    // A model whose embedding has 40 rows past the tokenizer's 560 pieces (as 1bitLLM's 32002
    // rows over 32000 pieces).
    let cfg = BitNetConfig::from_json_str(
        r#"{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":1,
            "num_attention_heads":4,"vocab_size":600}"#,
    )
    .unwrap();
    let v = vocab_from_tokenizer_model(&model_bytes(), &cfg).unwrap();
    assert_eq!(
        (v.model.as_str(), v.tokens.len(), v.scores.len(), v.token_types.len()),
        ("llama", 600, 600, 600)
    );
    assert!(v.tokens[560..].iter().zip(560..).all(|(t, i)| *t == format!("[PAD{i}]")));
    assert!(v.token_types[560..].iter().all(|&t| t == PieceType::Unused.code()));
    assert_eq!((v.bos_token_id, v.eos_token_id, v.unknown_token_id), (Some(1), Some(2), Some(0)));
    // Through GGUF metadata and the loader's path: the tokenizer.model's ids.
    let mut meta = GgufMetadata::new();
    for (k, val) in v.to_metadata() {
        meta.insert(k, val).unwrap();
    }
    let back = GgufVocab::from_metadata(&meta).unwrap().unwrap();
    let tok = Tokenizer::from_gguf_vocab(&GgufVocab {
        model: back.model,
        tokens: back.tokens,
        token_types: back.token_types,
        scores: back.scores,
        add_space_prefix: back.add_space_prefix,
        bos_token_id: back.bos_token_id,
        eos_token_id: back.eos_token_id,
        ..Default::default()
    })
    .unwrap();
    let want = spm_tokenizer();
    for c in cases() {
        assert_eq!(tok.encode(&c.text, true).unwrap(), want.encode(&c.text, true).unwrap());
    }
    // Unigram models are refused by name.
    let mut uni = model_bytes();
    uni.extend([0x12, 0x02, 0x18, 0x01]);
    let e = vocab_from_tokenizer_model(&uni, &cfg).unwrap_err().to_string();
    assert!(e.contains("Unigram") && e.contains("not supported yet"), "{e}");
}
