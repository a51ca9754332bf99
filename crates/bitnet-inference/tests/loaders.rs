//! GGUF loader tests: round trips, the upstream and Microsoft-fork type ids, files written by
//! llama.cpp's `gguf` package, and malformed inputs through both parsers (each must give an
//! `Err`, never a panic). Safetensors and HF directories: `loaders_hf.rs`.

mod common;

use bitnet_core::DType;
use bitnet_inference::formats::gguf::{parse_gguf, GgufValue, GgufValueType, GgufVocab};
use bitnet_inference::formats::gguf_write::GgufWriter;
use bitnet_inference::formats::{load, parse_safetensors, FileKind};
use common::files::{f32_bytes, sample_safetensors, tmp_dir};
use std::path::Path;

/// A small valid GGUF (upstream `bitnet`) with metadata of every type and three tensors.
fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new("bitnet");
    w.add("t.u8", GgufValue::U8(7)).unwrap();
    w.add("t.i8", GgufValue::I8(-7)).unwrap();
    w.add("t.u16", GgufValue::U16(65535)).unwrap();
    w.add("t.i16", GgufValue::I16(-300)).unwrap();
    w.add("t.i32", GgufValue::I32(-70000)).unwrap();
    w.add("t.u64", GgufValue::U64(1 << 40)).unwrap();
    w.add("t.i64", GgufValue::I64(-(1 << 40))).unwrap();
    w.add("t.f64", GgufValue::F64(0.125)).unwrap();
    w.add_bool("t.bool", true).unwrap();
    let nested = GgufValue::Array(
        GgufValueType::Array,
        vec![GgufValue::Array(GgufValueType::U8, vec![GgufValue::U8(1), GgufValue::U8(2)])],
    );
    w.add("t.nested", nested).unwrap();
    for (k, v) in [
        ("bitnet.embedding_length", 64),
        ("bitnet.block_count", 1),
        ("bitnet.feed_forward_length", 256),
        ("bitnet.attention.head_count", 4),
        ("bitnet.attention.head_count_kv", 2),
        ("bitnet.context_length", 128),
    ] {
        w.add_u32(k, v).unwrap();
    }
    w.add_f32("bitnet.rope.freq_base", 10000.0).unwrap();
    w.add_f32("bitnet.attention.layer_norm_rms_epsilon", 1e-5).unwrap();
    let vocab = GgufVocab {
        model: "gpt2".into(),
        pre: Some("llama-bpe".into()),
        tokens: (0..8).map(|i| format!("t{i}")).collect(),
        token_types: vec![1; 8],
        merges: vec!["t 0".into()],
        bos_token_id: Some(0),
        eos_token_id: Some(1),
        chat_template: Some("{{ messages }}".into()),
        ..Default::default()
    };
    w.add_vocab(&vocab).unwrap();
    let emb: Vec<f32> = (0..8 * 64).map(|i| i as f32 * 0.5).collect();
    w.add_tensor_bytes("token_embd.weight", DType::F32, &[8, 64], &f32_bytes(&emb)).unwrap();
    w.add_tensor_bytes("blk.0.attn_norm.weight", DType::F16, &[64], &[0x3c; 128]).unwrap();
    let tq2: Vec<u8> = (0..66 * 32).map(|i| (i * 7 % 251) as u8).collect();
    w.add_tensor_bytes("blk.0.ffn_up.weight", DType::TQ2_0, &[32, 256], &tq2).unwrap();
    w
}

#[test]
fn gguf_round_trip_keeps_metadata_and_tensor_bytes() {
    let w = sample_writer();
    let dir = tmp_dir("gguf-rt");
    let path = dir.join("m.gguf");
    w.write(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let f = parse_gguf(&bytes).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.metadata.entries(), w.metadata().entries());
    let ffn = f.tensors.iter().find(|t| t.name == "blk.0.ffn_up.weight").unwrap();
    assert_eq!(ffn.ne, vec![256, 32]);
    assert_eq!(ffn.dtype, DType::TQ2_0);
    assert_eq!(ffn.offset % 32, 0);

    let m = load(&path).unwrap();
    assert_eq!(m.kind, FileKind::Gguf);
    let t = m.tensors.require("model.layers.0.mlp.up_proj.weight").unwrap();
    assert_eq!((t.dtype(), t.dims()), (DType::TQ2_0, &[32usize, 256][..]));
    assert!(t.is_mapped());
    assert_eq!(t.bytes(), &bytes[ffn.offset..ffn.offset + 66 * 32]);
    let emb = m.tensors.require("model.embed_tokens.weight").unwrap();
    assert_eq!(emb.dims(), &[8, 64]);
    assert_eq!(emb.to_f32_vec().unwrap()[3], 1.5);
    assert_eq!(
        (m.config.hidden_size, m.config.num_key_value_heads, m.config.vocab_size),
        (64, 2, 8)
    );
    assert!(m.config.tie_word_embeddings);
    let v = m.gguf_vocab.unwrap();
    assert_eq!((v.tokens.len(), v.eos_token_id, v.pre.as_deref()), (8, Some(1), Some("llama-bpe")));
    assert!(m.metadata.iter().any(|(k, v)| k == "t.nested" && v.contains("Array")));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn i2s_is_read_only_from_microsoft_fork_files() {
    let mut w = GgufWriter::new("bitnet-b1.58");
    let mut i2s = vec![0x55u8; 128 * 128 / 4];
    i2s.extend(f32_bytes(&[0.25; 8]));
    w.add_tensor_bytes("blk.0.attn_q.weight", DType::I2S, &[128, 128], &i2s).unwrap();
    let bytes = w.to_bytes().unwrap();
    let f = parse_gguf(&bytes).unwrap();
    assert_eq!((f.tensors[0].dtype, f.tensors[0].len), (DType::I2S, 128 * 32 + 32));

    // The same bytes under the upstream architecture name: type 36 is not I2_S there.
    let upstream = replace_once(&bytes, b"bitnet-b1.58", b"bitnet-xxxxx");
    let e = parse_gguf(&upstream).unwrap_err().to_string();
    assert!(e.contains("36") && e.contains("bitnet-xxxxx"), "{e}");
    // ... unless general.file_type says MOSTLY_I2_S (40).
    let mut w = GgufWriter::new("bitnet-xxxxx");
    w.add_u32("general.file_type", 40).unwrap();
    w.add_tensor_bytes("w", DType::I2S, &[128, 128], &i2s).unwrap();
    assert_eq!(parse_gguf(&w.to_bytes().unwrap()).unwrap().tensors[0].dtype, DType::I2S);
    // ... and in bitnet.cpp's `llama` files (Falcon3-*-1.58bit) file_type 40 with an I2_S
    // tensor; file_type 40 alone is upstream's MOSTLY_Q1_0 there.
    let llama = |ftype: u32| {
        let mut w = GgufWriter::new("llama");
        w.add_u32("general.file_type", ftype).unwrap();
        w.add_tensor_bytes("w", DType::I2S, &[128, 128], &i2s).unwrap();
        w.to_bytes()
    };
    let bytes = llama(40).unwrap();
    assert_eq!(parse_gguf(&bytes).unwrap().tensors[0].dtype, DType::I2S);
    assert!(llama(1).is_err(), "the writer and the reader share the rule");
    let pos = bytes.windows(17).position(|w| w == b"general.file_type").unwrap();
    let mut other = bytes.clone(); // its u32 value follows the key and its type tag
    other[pos + 17 + 4..pos + 17 + 8].copy_from_slice(&1u32.to_le_bytes());
    assert!(parse_gguf(&other).unwrap_err().to_string().contains("36"));
    // The writer refuses I2_S where a reader would not take it.
    let mut w = GgufWriter::new("bitnet");
    w.add_tensor_bytes("w", DType::I2S, &[128, 128], &i2s).unwrap();
    assert!(w.to_bytes().is_err());
}

fn replace_once(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let i = hay.windows(from.len()).position(|w| w == from).unwrap();
    let mut out = hay.to_vec();
    out[i..i + to.len()].copy_from_slice(to);
    out
}

/// Byte position of the ggml type id of the tensor info named `name`.
fn type_field(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = bytes.windows(key.len()).position(|w| w == key.as_slice()).unwrap();
    at + key.len() + 4 + 8 * n_dims
}

#[test]
fn unknown_and_foreign_type_ids_name_the_type_and_arch() {
    let bytes = sample_writer().to_bytes().unwrap();
    let at = type_field(&bytes, "blk.0.attn_norm.weight", 1);
    for (id, want) in [(39u32, "MXFP4"), (99, "unknown ggml type id 99"), (12, "Q4_K")] {
        let mut b = bytes.clone();
        b[at..at + 4].copy_from_slice(&id.to_le_bytes());
        let e = parse_gguf(&b).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("`bitnet`"), "{id}: {e}");
    }
}

#[test]
fn gguf_truncated_anywhere_is_an_error() {
    let bytes = sample_writer().to_bytes().unwrap();
    let f = parse_gguf(&bytes).unwrap();
    let data_end = f.tensors.iter().map(|t| t.offset + t.len).max().unwrap();
    for cut in 0..data_end {
        assert!(parse_gguf(&bytes[..cut]).is_err(), "cut at {cut} parsed");
    }
}

#[test]
fn gguf_header_lies_are_errors() {
    let good = sample_writer().to_bytes().unwrap();
    let patch = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        parse_gguf(&b).unwrap_err().to_string()
    };
    assert!(patch(0, b"GGML").contains("magic"));
    assert!(patch(4, &1u32.to_le_bytes()).contains("version 1"));
    assert!(patch(4, &9u32.to_le_bytes()).contains("version 9"));
    assert!(patch(4, &3u32.to_be_bytes()).contains("big-endian"));
    assert!(patch(8, &(1u64 << 62).to_le_bytes()).contains("tensor count"));
    assert!(patch(16, &u64::MAX.to_le_bytes()).contains("metadata count"));
    // First key's string length.
    assert!(patch(24, &(1u64 << 60).to_le_bytes()).contains("cannot fit"));
    // First value type (after the 8-byte length and "general.architecture").
    assert!(patch(24 + 8 + 20, &77u32.to_le_bytes()).contains("value type id 77"));
    // A tensor's dims, n_dims and offset.
    let at = type_field(&good, "blk.0.ffn_up.weight", 2);
    assert!(patch(at - 16, &u64::MAX.to_le_bytes()).contains("ffn_up"));
    assert!(patch(at - 20, &9u32.to_le_bytes()).contains("9 dimensions"));
    assert!(patch(at + 4, &(1u64 << 40).to_le_bytes()).contains("outside"));
    assert!(patch(at + 4, &8u64.to_le_bytes()).contains("alignment"));
    assert!(patch(at + 4, &0u64.to_le_bytes()).contains("overlap"));
    // A row that is not whole TQ2_0 blocks.
    assert!(patch(at - 16, &128u64.to_le_bytes()).contains("block"));
    // Array length of the nested array.
    let mut w = GgufWriter::new("x");
    w.add("a", GgufValue::Array(GgufValueType::U32, vec![GgufValue::U32(1)])).unwrap();
    let mut b = w.to_bytes().unwrap();
    let pos = b.windows(4).rposition(|w| w == 4u32.to_le_bytes()).unwrap(); // element type U32
    b[pos + 4..pos + 12].copy_from_slice(&(1u64 << 61).to_le_bytes());
    assert!(parse_gguf(&b).unwrap_err().to_string().contains("array length"));
}

#[test]
fn gguf_duplicates_and_bad_alignment_are_errors() {
    let mut w = GgufWriter::new("bitnet");
    assert!(w.add_u32("general.architecture", 1).is_err());
    w.add_tensor_bytes("a", DType::F32, &[8], &[0; 32]).unwrap();
    assert!(w.add_tensor_bytes("a", DType::F32, &[8], &[0; 32]).is_err());
    let bytes = w.to_bytes().unwrap();
    let renamed = {
        let mut w = GgufWriter::new("bitnet");
        w.add_tensor_bytes("a", DType::F32, &[8], &[0; 32]).unwrap();
        w.add_tensor_bytes("b", DType::F32, &[8], &[0; 32]).unwrap();
        w.to_bytes().unwrap()
    };
    let dup =
        replace_once(&renamed, &[1, 0, 0, 0, 0, 0, 0, 0, b'b'], &[1, 0, 0, 0, 0, 0, 0, 0, b'a']);
    assert!(parse_gguf(&dup).unwrap_err().to_string().contains("duplicate tensor"));
    assert!(parse_gguf(&bytes).is_ok());
    let mut w = GgufWriter::new("bitnet");
    w.add_u32("general.alignment", 3).unwrap();
    assert!(w.to_bytes().is_err());
}

#[test]
fn writer_leaves_no_file_when_it_fails() {
    let dir = tmp_dir("atomic");
    let path = dir.join("bad.gguf");
    let mut w = GgufWriter::new("bitnet");
    w.add_tensor_bytes("w", DType::I2S, &[128], &[0; 64]).unwrap();
    assert!(w.write(&path).is_err());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(dir).ok();
}

/// xorshift64*, for reproducible mutations without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Random bytes and mutated valid files through both parsers: errors, never panics.
#[test]
fn parsers_survive_random_and_mutated_inputs() {
    let seeds = [sample_writer().to_bytes().unwrap(), sample_safetensors()];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..20_000u64 {
        let mut b = seeds[(i % 2) as usize].clone();
        match rng.next() % 4 {
            0 => {
                let n = (rng.next() % 256) as usize;
                b = (0..n).map(|_| rng.next() as u8).collect();
                if i % 3 == 0 && b.len() >= 4 {
                    b[..4].copy_from_slice(b"GGUF");
                }
            }
            1 => {
                for _ in 0..1 + rng.next() % 8 {
                    let at = (rng.next() as usize) % b.len();
                    b[at] = rng.next() as u8;
                }
            }
            2 => {
                let at = (rng.next() as usize) % (b.len() - 8);
                let v = [0u64, 1, 31, 32, u32::MAX as u64, u64::MAX, 1 << 62]
                    [(rng.next() % 7) as usize];
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => b.truncate((rng.next() as usize) % b.len()),
        }
        let _ = parse_gguf(&b);
        let _ = parse_safetensors(&b);
    }
}

/// `tests/data/gguf_py_bitnet.gguf` was written by llama.cpp's own `gguf` Python package
/// (see `make_gguf_py_fixture.py`): our reader and bitnet-quant's TQ1_0/TQ2_0 unpacking
/// must agree with the reference writer and quantizer.
#[test]
fn gguf_written_by_llama_cpp_gguf_py_loads() {
    use bitnet_quant::formats::{tq1, tq2};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf_py_bitnet.gguf");
    let m = load(&path).unwrap();
    let c = &m.config;
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads),
        (256, 64, 1, 4)
    );
    assert_eq!(
        (c.num_key_value_heads, c.head_dim, c.vocab_size, c.max_position_embeddings),
        (2, 64, 4, 128)
    );
    assert_eq!((c.rope_theta, c.tie_word_embeddings, c.bos_token_id), (500000.0, true, Some(0)));
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
    let emb = m.tensors.require("model.embed_tokens.weight").unwrap();
    assert_eq!(emb.dims(), &[4, 256]);
    assert_eq!(emb.to_f32_vec().unwrap()[256 + 3], 259.0 / 8.0);
    let norm = m.tensors.require("model.layers.0.input_layernorm.weight").unwrap();
    assert_eq!((norm.dtype(), norm.to_f32_vec().unwrap()), (DType::F16, vec![1.5; 256]));
    let pattern = |k: usize| -> Vec<i8> {
        (0..64 * 256).map(|i| ((i / 256 * 7 + i % 256 * 3 + k) % 3) as i8 - 1).collect()
    };
    let up = m.tensors.require("model.layers.0.mlp.up_proj.weight").unwrap();
    assert_eq!((up.dtype(), up.dims()), (DType::TQ2_0, &[64usize, 256][..]));
    assert_eq!(tq2::unpack(up.bytes(), 64, 256).unwrap(), (pattern(0), 0.5));
    let gate = m.tensors.require("model.layers.0.mlp.gate_proj.weight").unwrap();
    assert_eq!((gate.dtype(), gate.dims()), (DType::TQ1_0, &[64usize, 256][..]));
    assert_eq!(tq1::unpack(gate.bytes(), 64, 256).unwrap(), (pattern(1), 0.25));
    let s = m.tensors.require("model.layers.0.mlp.gate_proj.weight_scale").unwrap();
    assert_eq!(s.to_f32_vec().unwrap(), vec![0.25]);
    let v = m.gguf_vocab.as_ref().unwrap();
    assert_eq!(
        (v.model.as_str(), v.pre.as_deref(), v.tokens.len()),
        ("gpt2", Some("llama-bpe"), 4)
    );
    assert_eq!(
        (v.token_types.as_slice(), v.merges.as_slice()),
        (&[3, 3, 1, 1][..], &["a b".to_string()][..])
    );
    assert_eq!((v.eos_token_id, v.chat_template.as_deref()), (Some(1), Some("{{ bos_token }}")));
}
