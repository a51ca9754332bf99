//! `bitnet convert`: write a model as GGUF with I2_S, TQ2_0 or TQ1_0 projections.

use crate::generate::progress_bar;
use anyhow::Result;
use bitnet_inference::convert::convert;
use bitnet_quant::formats::TernaryFormat;
use clap::Args;
use std::path::PathBuf;

/// `bitnet convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input: a Hugging Face BitNet directory or a GGUF file.
    input: PathBuf,
    /// Output GGUF file (written to a temporary name first, then renamed).
    output: PathBuf,
    /// Projection weight type: i2_s (bitnet.cpp), tq2_0 or tq1_0 (llama.cpp). LLaMA-architecture
    /// models (Falcon3, Llama3-8B-1.58) are written as architecture `llama` in any type.
    #[arg(long = "type", short = 't', default_value = "i2_s")]
    ty: String,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let ty: TernaryFormat = a.ty.parse()?;
    let bar = progress_bar("converting");
    let rep = convert(&a.input, &a.output, ty, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let rep = rep?;
    println!(
        "wrote {} ({} tensors, architecture {}, {:.1} MiB)",
        a.output.display(),
        rep.tensors,
        rep.arch,
        rep.bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
