//! Tensor names: the HF names are canonical; GGUF names are mapped to them on load.
//!
//! | HF (canonical)                                   | GGUF (llama.cpp `bitnet`, bitnet.cpp `bitnet-b1.58`) |
//! |--------------------------------------------------|-------------------------------|
//! | `model.embed_tokens.weight`                      | `token_embd.weight`           |
//! | `model.norm.weight`                              | `output_norm.weight`          |
//! | `lm_head.weight`                                 | `output.weight` (absent = tied) |
//! | `model.layers.{i}.input_layernorm.weight`        | `blk.{i}.attn_norm.weight`    |
//! | `model.layers.{i}.post_attention_layernorm.weight` | `blk.{i}.ffn_norm.weight`   |
//! | `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight` | `blk.{i}.attn_{q,k,v,output}.weight` |
//! | `model.layers.{i}.self_attn.attn_sub_norm.weight`  | `blk.{i}.attn_sub_norm.weight` |
//! | `model.layers.{i}.mlp.{gate,up,down}_proj.weight`  | `blk.{i}.ffn_{gate,up,down}.weight` |
//! | `model.layers.{i}.mlp.ffn_sub_norm.weight`         | `blk.{i}.ffn_sub_norm.weight` |
//! | `model.layers.{i}.….weight_scale`                | `blk.{i}.….scale` (llama.cpp, optional) or `….weight_scale` |
//!
//! Sources: llama.cpp `llama-arch.cpp` (`LLM_ARCH_BITNET` has no `output` tensor: the
//! embedding is always the output matrix) and Microsoft's fork (`LLM_ARCH_BITNET_B158` /
//! `BITNET_25`: `output` optional, plus an unused `rope_freqs`).
//!
//! **RoPE / q-k permutation.** llama.cpp's `LlamaModel` converter permutes the q/k rows so
//! that its "normal" (adjacent-pair) RoPE matches HF's rotate_half. Neither BitNet
//! converter does: upstream `BitnetModel` derives from `TextModel` (not `LlamaModel`) and
//! only ternarizes; Microsoft's `convert-ms-to-gguf-bitnet.py` has the permute loop
//! commented out. Both runtimes list every BitNet arch under `LLAMA_ROPE_TYPE_NEOX`
//! ("pairs offset by n_rot/2", i.e. rotate_half). So GGUF q/k weights of the BitNet
//! architectures are in HF order and the model applies the same rotate_half RoPE to both
//! formats: no un-permute. Files of llama.cpp's `llama` architecture (Falcon3-*-1.58bit,
//! Llama3-8B-1.58) are permuted; `super::gguf_llama` moves their rows back on load.
//!
//! Names that match nothing here (e.g. `rope_freqs.weight`) are kept as they are.

/// Per-layer parts: (GGUF name, HF name).
const LAYER_PARTS: [(&str, &str); 11] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_norm", "input_layernorm"),
    ("attn_sub_norm", "self_attn.attn_sub_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_sub_norm", "mlp.ffn_sub_norm"),
];

/// Whole-model tensors: (GGUF name, HF name).
const GLOBAL: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Splits `{prefix}{N}.{rest}` where N is a canonical decimal (no sign or leading zero).
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let tail = name.strip_prefix(prefix)?;
    let (num, rest) = tail.split_once('.')?;
    let n: usize = num.parse().ok()?;
    (n.to_string() == num).then_some((n, rest))
}

/// The HF name of a GGUF tensor, or `None` when it is not a BitNet tensor we know.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    if let Some((_, hf)) = GLOBAL.iter().find(|(g, _)| *g == name) {
        return Some((*hf).to_string());
    }
    let (i, rest) = split_layer(name, "blk.")?;
    let (part, kind) = rest.rsplit_once('.')?;
    let suffix = match kind {
        "weight" => "weight",
        "scale" | "weight_scale" => "weight_scale",
        _ => return None,
    };
    let (_, hf) = LAYER_PARTS.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{i}.{hf}.{suffix}"))
}

/// The GGUF name of an HF tensor (`weight_scale` → llama.cpp's `.scale`), or `None`.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    if let Some((g, _)) = GLOBAL.iter().find(|(_, h)| *h == name) {
        return Some((*g).to_string());
    }
    let (i, rest) = split_layer(name, "model.layers.")?;
    let (part, suffix) = if let Some(p) = rest.strip_suffix(".weight_scale") {
        (p, "scale")
    } else {
        (rest.strip_suffix(".weight")?, "weight")
    };
    let (g, _) = LAYER_PARTS.iter().find(|(_, h)| *h == part)?;
    Some(format!("blk.{i}.{g}.{suffix}"))
}

/// Sub-norm names of 1bitLLM's `bitnet_b1_58-*` checkpoints and their canonical (HF BitNet)
/// names: (their part, canonical part).
const ONE_BIT_LLM_PARTS: [(&str, &str); 2] = [
    ("self_attn.inner_attn_ln", "self_attn.attn_sub_norm"),
    ("mlp.ffn_layernorm", "mlp.ffn_sub_norm"),
];

/// The canonical name of an HF tensor saved under another checkpoint's name (1bitLLM's
/// `inner_attn_ln` and `ffn_layernorm` sub-norms), or `None` when it is canonical already.
pub fn hf_alias(name: &str) -> Option<String> {
    let (i, rest) = split_layer(name, "model.layers.")?;
    let (part, kind) = rest.rsplit_once('.')?;
    let (_, canon) = ONE_BIT_LLM_PARTS.iter().find(|(theirs, _)| *theirs == part)?;
    Some(format!("model.layers.{i}.{canon}.{kind}"))
}

/// The canonical name of a tensor of layer `layer`, e.g. `layer_tensor(3, "mlp.up_proj.weight")`.
pub fn layer_tensor(layer: usize, part: &str) -> String {
    format!("model.layers.{layer}.{part}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bitnet_tensor_maps_both_ways() {
        for (g, h) in GLOBAL {
            assert_eq!(gguf_to_hf(g).as_deref(), Some(h));
            assert_eq!(hf_to_gguf(h).as_deref(), Some(g));
        }
        for (g, h) in LAYER_PARTS {
            let gn = format!("blk.17.{g}.weight");
            let hn = format!("model.layers.17.{h}.weight");
            assert_eq!(gguf_to_hf(&gn).as_deref(), Some(hn.as_str()));
            assert_eq!(hf_to_gguf(&hn).as_deref(), Some(gn.as_str()));
        }
        assert_eq!(
            gguf_to_hf("blk.0.attn_q.scale").as_deref(),
            Some("model.layers.0.self_attn.q_proj.weight_scale")
        );
        assert_eq!(
            hf_to_gguf("model.layers.2.mlp.down_proj.weight_scale").as_deref(),
            Some("blk.2.ffn_down.scale")
        );
    }

    #[test]
    fn one_bit_llm_sub_norms_take_the_canonical_names() {
        assert_eq!(
            hf_alias("model.layers.3.self_attn.inner_attn_ln.weight").as_deref(),
            Some("model.layers.3.self_attn.attn_sub_norm.weight")
        );
        assert_eq!(
            hf_alias("model.layers.12.mlp.ffn_layernorm.weight").as_deref(),
            Some("model.layers.12.mlp.ffn_sub_norm.weight")
        );
        for n in [
            "model.layers.3.self_attn.attn_sub_norm.weight",
            "model.layers.3.mlp.up_proj.weight",
            "model.norm.weight",
            "model.layers.x.mlp.ffn_layernorm.weight",
        ] {
            assert_eq!(hf_alias(n), None, "{n}");
        }
    }

    #[test]
    fn odd_names_map_to_nothing() {
        for n in [
            "rope_freqs.weight",
            "blk.01.attn_q.weight",
            "blk.x.attn_q.weight",
            "blk.1.attn_q.bias",
            "blk.1.foo.weight",
            "blk.-1.attn_q.weight",
        ] {
            assert_eq!(gguf_to_hf(n), None, "{n}");
        }
        assert_eq!(hf_to_gguf("model.layers.1.self_attn.rotary_emb.inv_freq"), None);
    }
}
