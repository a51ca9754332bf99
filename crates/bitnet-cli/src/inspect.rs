//! `bitnet inspect`: what is in a model file.

use anyhow::Result;
use bitnet_inference::backend::{CacheShape, KvType};
use bitnet_inference::config::{Architecture, BitNetConfig};
use bitnet_inference::engine::default_context;
use bitnet_inference::formats;
use clap::Args;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// `bitnet inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A Hugging Face directory or a GGUF file.
    path: PathBuf,
    /// List every tensor (default: a summary by type).
    #[arg(long)]
    tensors: bool,
    /// Print all metadata (default: the first 40 entries, long values cut).
    #[arg(long)]
    all_metadata: bool,
}

pub fn run(a: InspectArgs) -> Result<()> {
    let f = formats::load(&a.path)?;
    let mut out = std::io::stdout().lock();
    let c = &f.config;
    writeln!(out, "file: {} ({:?})", a.path.display(), f.kind)?;
    writeln!(
        out,
        "architecture: {} ({}, {}) | hidden {} | layers {} | heads {} (kv {}) x {} | ffn {} | vocab {} | ctx {}",
        match c.architecture {
            Architecture::BitNet => "BitNet b1.58",
            Architecture::Llama => "Llama with BitNet b1.58 projections",
        },
        match c.architecture {
            Architecture::BitNet => "sub-norms",
            Architecture::Llama => "no sub-norms",
        },
        c.hidden_act.name(),
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size,
        c.max_position_embeddings
    )?;
    writeln!(
        out,
        "rope_theta {}{} | rms_norm_eps {} | tied embeddings {} | quantization {:?}",
        c.rope_theta,
        c.rope_scaling.map_or(String::new(), |s| format!(
            " (llama3 scaling: factor {}, low/high freq factor {}/{}, original ctx {})",
            s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_positions
        )) + &c.rope_freq_factors.as_ref().map_or(String::new(), |f| format!(
            " (rope_freqs: {} per-pair divisors, {:.3} .. {:.3})",
            f.len(),
            f.iter().copied().fold(f32::INFINITY, f32::min),
            f.iter().copied().fold(0f32, f32::max)
        )),
        c.rms_norm_eps,
        c.tie_word_embeddings,
        c.quantization
    )?;
    kv_cache_line(&mut out, c)?;
    let mut by_type: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut total = 0usize;
    for (name, t) in f.tensors.iter() {
        let e = by_type.entry(t.dtype().name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.elem_count();
        e.2 += t.bytes().len();
        total += t.bytes().len();
        if a.tensors {
            writeln!(
                out,
                "  {name:<56} {:<8} {:<16} {:>12} bytes",
                t.dtype().name(),
                t.shape().to_string(),
                t.bytes().len()
            )?;
        }
    }
    writeln!(out, "tensors: {} ({:.1} MiB)", f.tensors.len(), total as f64 / (1 << 20) as f64)?;
    for (ty, (n, elems, bytes)) in &by_type {
        writeln!(
            out,
            "  {ty:<12} {n:>5} tensors {:>14} elements {:>10.1} MiB ({:.2} bits/element)",
            elems,
            *bytes as f64 / (1 << 20) as f64,
            *bytes as f64 * 8.0 / (*elems).max(1) as f64
        )?;
    }
    let shown = if a.all_metadata { f.metadata.len() } else { f.metadata.len().min(40) };
    writeln!(out, "metadata ({} entries):", f.metadata.len())?;
    for (k, v) in &f.metadata[..shown] {
        let v = if !a.all_metadata && v.chars().count() > 100 {
            format!("{}…", v.chars().take(100).collect::<String>())
        } else {
            v.clone()
        };
        writeln!(out, "  {k} = {v}")?;
    }
    if shown < f.metadata.len() {
        writeln!(out, "  … {} more (use --all-metadata)", f.metadata.len() - shown)?;
    }
    Ok(())
}

/// The KV cache's size per token and per sequence of the default context (`--ctx`:
/// [`default_context`]), for `--kv-cache f32` and `f16`: what sizing `--ctx` and `--parallel` needs.
fn kv_cache_line(out: &mut impl Write, c: &BitNetConfig) -> Result<()> {
    let ctx = default_context(c.max_position_embeddings);
    let bytes = |kv, max_seq| {
        let (layers, kv_heads, head_dim) = (c.num_hidden_layers, c.num_key_value_heads, c.head_dim);
        CacheShape { layers, slots: 1, max_seq, kv_heads, head_dim, kv }.bytes()
    };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    writeln!(
        out,
        "KV cache: {:.1} KiB per token in f32, {:.1} KiB in f16 (--kv-cache); a sequence of {ctx} \
         tokens {:.1} / {:.1} MiB",
        bytes(KvType::F32, 1)? as f64 / 1024.0,
        bytes(KvType::F16, 1)? as f64 / 1024.0,
        mib(bytes(KvType::F32, ctx)?),
        mib(bytes(KvType::F16, ctx)?)
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_cache_line_sizes_2b4t() {
        // BitNet b1.58 2B-4T: 30 layers x 5 kv heads x 128 x (K + V).
        let c = BitNetConfig::from_json_str(
            r#"{"model_type": "bitnet", "hidden_size": 2560, "intermediate_size": 6912,
                "num_hidden_layers": 30, "num_attention_heads": 20, "num_key_value_heads": 5,
                "vocab_size": 128256, "max_position_embeddings": 4096,
                "quantization_config": {"quant_method": "bitnet"}}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        kv_cache_line(&mut out, &c).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "KV cache: 150.0 KiB per token in f32, 75.0 KiB in f16 (--kv-cache); a sequence of \
             4096 tokens 600.0 / 300.0 MiB\n"
        );
    }
}
