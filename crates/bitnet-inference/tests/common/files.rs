//! Test-file builders shared by the loader tests: temporary directories and small safetensors
//! files.

use std::path::PathBuf;

pub fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bitnet-loaders-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Builds a safetensors file from (name, dtype, shape, bytes).
/// One safetensors entry for the test builder: (name, dtype, shape, bytes).
pub type StEntry<'a> = (&'a str, &'a str, Vec<usize>, Vec<u8>);

pub fn safetensors_bytes(tensors: &[StEntry]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let b = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [b, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

pub fn sample_safetensors() -> Vec<u8> {
    safetensors_bytes(&[
        ("a", "F32", vec![2, 3], f32_bytes(&[1., 2., 3., 4., 5., 6.])),
        ("b", "BF16", vec![4], vec![0x80, 0x3f, 0, 0x40, 0, 0, 0, 0]),
        ("c", "U8", vec![2, 2], vec![1, 2, 3, 4]),
    ])
}
