//! Load a BitNet model and stream a completion.
//!
//! ```sh
//! cargo run --release -p bitnet-inference --example generate -- tests/fixtures/online_f32_tied_gqa "First Citizen:"
//! ```

use bitnet_inference::sampling::SamplingParams;
use bitnet_inference::{Engine, GenerationConfig};
use std::io::Write;

fn main() -> Result<(), bitnet_core::Error> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(prompt)) = (args.next(), args.next()) else {
        eprintln!("usage: generate MODEL_PATH PROMPT");
        std::process::exit(2);
    };
    let mut engine = Engine::builder().model(&model).build()?;
    let cfg = GenerationConfig {
        max_tokens: 48,
        sampling: SamplingParams { temperature: 0.7, top_p: 0.9, seed: 1, ..Default::default() },
        ..Default::default()
    };
    print!("{prompt}");
    let out = engine.generate_stream(&prompt, &cfg, |t| {
        print!("{}", t.text);
        std::io::stdout().flush().is_ok()
    })?;
    println!(
        "\n[{} prompt tokens, {} generated at {:.1} tokens/s]",
        out.prompt_ids.len(),
        out.generated_ids.len(),
        out.timings.generate_tps()
    );
    Ok(())
}
