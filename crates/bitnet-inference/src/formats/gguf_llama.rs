//! GGUF files of llama.cpp's `llama` architecture holding BitNet b1.58 models (Falcon3-*-1.58bit
//! as bitnet.cpp converts them, Llama3-8B-1.58 as llama.cpp's `convert_hf_to_gguf.py` does):
//! brought back to the HF order the model runs.
//!
//! - **q/k rows.** llama.cpp's `LlamaModel.permute` reorders the rows of each head of the q and k
//!   projections so that its adjacent-pair ("normal") RoPE computes HF's rotate_half: HF row
//!   `h·d + t·d/2 + j` (head `h` of `d` rows, half `t`, pair `j`) is stored as row
//!   `h·d + 2j + t` (k with the key/value head count). The rows are moved back here, as stored
//!   bytes (every GGUF type this loader reads keeps a row in whole blocks).
//! - **`rope_freqs.weight`**: llama.cpp's form of Llama-3 RoPE scaling, one divisor per pair,
//!   becomes [`BitNetConfig::rope_freq_factors`].
//!
//! (BitNet architectures need neither: their converters keep HF's row order, and llama.cpp runs
//! them with rotate_half RoPE; see [`super::names`].)

use super::TensorMap;
use crate::config::{BitNetConfig, Llama3Scaling};
use bitnet_core::{DType, Error, Result, ResultExt, Tensor};

/// Undoes the q/k row permutation and reads `rope_freqs` (see the module docs).
pub(super) fn to_hf_order(config: &mut BitNetConfig, tensors: &mut TensorMap) -> Result<()> {
    let hd = config.head_dim;
    for i in 0..config.num_hidden_layers {
        for (part, heads) in
            [("q_proj", config.num_attention_heads), ("k_proj", config.num_key_value_heads)]
        {
            let name = format!("model.layers.{i}.self_attn.{part}.weight");
            let Some(t) = tensors.remove(&name) else { continue };
            let fixed =
                unpermute_rows(&t, heads, hd).with_context(|| format!("tensor `{name}`"))?;
            tensors.insert(name, fixed)?;
        }
    }
    if let Some(f) = tensors.get("rope_freqs.weight") {
        let v = f.to_f32_vec().context("reading rope_freqs.weight")?;
        config.rope_freq_factors = Some(v);
        config.validate().context("rope_freqs.weight")?;
    }
    Ok(())
}

/// Where llama.cpp's converter puts HF row `r` of a q or k projection with heads of `hd` rows:
/// row `h·hd + t·hd/2 + j` goes to `h·hd + 2j + t`.
pub(crate) fn llama_cpp_row(r: usize, hd: usize) -> usize {
    let half = hd / 2;
    let (h, t, j) = (r / hd, r % hd / half, r % half);
    h * hd + 2 * j + t
}

/// Ternary rows (`rows x cols`, HF order) in llama.cpp's order: the inverse of the loader's move.
pub(crate) fn to_llama_cpp_order(values: &[i8], cols: usize, hd: usize) -> Vec<i8> {
    let mut out = vec![0i8; values.len()];
    for (r, row) in values.chunks_exact(cols).enumerate() {
        let dst = llama_cpp_row(r, hd);
        out[dst * cols..(dst + 1) * cols].copy_from_slice(row);
    }
    out
}

/// llama.cpp's `rope_freqs` for HF's Llama-3 RoPE scaling, as its converter computes them
/// (`LlamaModel.generate_extra_tensors`, f32 torch arithmetic: 1 for short wavelengths,
/// `factor` for long ones, `1 / ((1 - smooth) / factor + smooth)` between).
pub(crate) fn llama3_rope_freqs(theta: f32, hd: usize, s: &Llama3Scaling) -> Vec<f32> {
    let plain = crate::backend::Rope::new(theta);
    let (factor, low, high, old) = (
        s.factor as f32,
        s.low_freq_factor as f32,
        s.high_freq_factor as f32,
        s.original_max_positions as f32,
    );
    (0..hd / 2)
        .map(|i| {
            let wavelen = 2.0 * std::f32::consts::PI / plain.inv_freq(i, hd);
            if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// The rows of `t` (`[heads · hd, cols]`) in HF order.
fn unpermute_rows(t: &Tensor, heads: usize, hd: usize) -> Result<Tensor> {
    let &[rows, cols] = t.dims() else {
        return Err(Error::shape(format!("expected a matrix, found {}", t.shape())));
    };
    let dt = t.dtype();
    if rows != heads * hd || !hd.is_multiple_of(2) {
        return Err(Error::shape(format!("{rows} rows are not {heads} heads of {hd}")));
    }
    if !matches!(
        dt,
        DType::F32 | DType::F16 | DType::BF16 | DType::I2S | DType::TQ1_0 | DType::TQ2_0
    ) {
        return Err(Error::unsupported(format!(
            "{dt} projections in a `llama` GGUF file (a BitNet b1.58 model stores ternary \
             i2_s / tq1_0 / tq2_0, or f32/f16 ternary values)"
        )));
    }
    if !cols.is_multiple_of(dt.block_len()) {
        return Err(Error::shape(format!(
            "rows of {cols} {dt} values are not whole blocks of {}",
            dt.block_len()
        )));
    }
    let row_bytes = cols / dt.block_len() * dt.block_bytes();
    let bytes = t.bytes();
    let body = rows * row_bytes;
    let mut out = Vec::with_capacity(bytes.len());
    for r in 0..rows {
        let src = llama_cpp_row(r, hd);
        out.extend_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
    }
    // I2_S's scale tail stays at the end.
    out.extend_from_slice(&bytes[body..]);
    Tensor::from_bytes(dt, t.shape().clone(), &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's permutation, as its converter writes it (`LlamaModel.permute`:
    /// `reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2)`), undone.
    #[test]
    fn rows_permuted_as_llama_cpp_does_come_back_in_hf_order() {
        let (heads, hd, cols) = (3, 8, 5);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0f32; rows * cols];
        for h in 0..heads {
            for t in 0..2 {
                for j in 0..hd / 2 {
                    // Source index [h][t][j] lands at [h][j][t].
                    let (src, dst) = (h * hd + t * hd / 2 + j, h * hd + j * 2 + t);
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(gguf, hf);
        let t = Tensor::from_f32([rows, cols], &gguf).unwrap();
        let back = unpermute_rows(&t, heads, hd).unwrap();
        assert_eq!(back.to_f32_vec().unwrap(), hf);
    }

    #[test]
    fn i2s_rows_move_as_whole_blocks_and_the_scale_tail_stays() {
        let (heads, hd, cols) = (2, 4, 128);
        let rows = heads * hd;
        let w: Vec<i8> = (0..rows * cols).map(|i| ((i / cols + i) % 3) as i8 - 1).collect();
        let bytes = bitnet_quant::formats::i2s::pack(&w, rows, cols, 0.75).unwrap();
        let t = Tensor::from_bytes(DType::I2S, [rows, cols], &bytes).unwrap();
        let back = unpermute_rows(&t, heads, hd).unwrap();
        let (v, s) = bitnet_quant::formats::i2s::unpack(back.bytes(), rows, cols).unwrap();
        assert_eq!(s, 0.75);
        // HF row 1 (head 0, half 0, pair 1) was stored as row 2.
        assert_eq!(&v[cols..2 * cols], &w[2 * cols..3 * cols]);
        assert_eq!(&v[..cols], &w[..cols]);
    }

    /// `bitnet convert`'s order is the one the loader undoes.
    #[test]
    fn converting_then_loading_gives_the_rows_back() {
        let (heads, hd, cols) = (2, 6, 3);
        let rows = heads * hd;
        let w: Vec<i8> = (0..rows * cols).map(|i| ((i / cols + i / 5) % 3) as i8 - 1).collect();
        let stored = to_llama_cpp_order(&w, cols, hd);
        assert_ne!(stored, w);
        let f: Vec<f32> = stored.iter().map(|&v| f32::from(v)).collect();
        let back = unpermute_rows(&Tensor::from_f32([rows, cols], &f).unwrap(), heads, hd).unwrap();
        let back: Vec<i8> = back.to_f32_vec().unwrap().iter().map(|&v| v as i8).collect();
        assert_eq!(back, w);
    }

    #[test]
    fn other_types_and_shapes_are_clear_errors() {
        let q8 = Tensor::from_bytes(DType::Q8_0, [8, 32], &[0u8; 8 * 34]).unwrap();
        let e = unpermute_rows(&q8, 2, 4).unwrap_err().to_string();
        assert!(e.contains("q8_0") && e.contains("ternary"), "{e}");
        let f = Tensor::from_f32([6, 4], &[0.0; 24]).unwrap();
        assert!(unpermute_rows(&f, 2, 4).unwrap_err().to_string().contains("heads"));
    }
}
