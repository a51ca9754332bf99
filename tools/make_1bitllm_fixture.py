#!/usr/bin/env python3
"""Generate the reference fixture for 1bitLLM's bitnet_b1_58-* checkpoint format.

Usage (from the repository root, same venv as tools/make_fixtures.py):

    /root/venvs/bitnet-ref/bin/python tools/make_1bitllm_fixture.py [--out tests/fixtures]

1bitLLM/bitnet_b1_58-large and -3B (and the many fine-tunes derived from them) ship their own
modeling code (trust_remote_code; BitBLAS keeps a copy in integration/BitNet/): config
"architectures": ["BitnetForCausalLM"], "model_type": "llama", no quantization_config, "weight_bits": 1,
"input_bits": 8; latent float16 weights; every q/k/v/o/gate/up/down projection is a BitLinear that in
each forward pass fake-quantizes its weight per tensor (s = 1/mean|W| clamped at 1e-5,
round(W*s).clamp(-1, 1)/s) and its input per token (s = 127/max|x| clamped at 1e-5,
round(x*s).clamp(-128, 127)/s), then F.linear; an RMSNorm `inner_attn_ln` before o_proj and
`ffn_layernorm` before down_proj; down(ffn_layernorm(silu(gate) * up)); rotate_half RoPE; untied,
unquantized lm_head.

That is, block for block, HF transformers' BitNetForCausalLM with hidden_act "silu" and an online
AutoBitLinear quantization_config (WeightQuant / ActQuant compute the same expressions), so the
reference logits come from transformers itself: the same float16 latent weights saved as an HF BitNet
directory and loaded with BitNetForCausalLM.from_pretrained(dtype=float32). The fixture directory holds
the 1bitLLM format (their config keys, their sub-norm names); an independent plain-torch
re-implementation of 1bitLLM's forward (their fake-quant expressions, F.linear) reading the fixture's
files must agree with the reference.

Model: vocab 384 (the byte-level BPE of make_fixtures.py), hidden 64, intermediate 160, 2 layers,
4 heads of 16 (MHA, as 1bitLLM's models), rms_norm_eps 1e-5, rope_theta 10000, seeds chosen as in
make_fixtures.py (every greedy step's top1-top2 gap >= MIN_GAP).
"""

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (sets 1 torch thread + deterministic algorithms)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

NAME = "onebitllm_bitnet_b1_58"
# HF BitNet name -> 1bitLLM name (modeling_bitnet.py: BitnetAttention.inner_attn_ln, BitnetMLP.ffn_layernorm).
RENAMES = {"self_attn.attn_sub_norm.": "self_attn.inner_attn_ln.", "mlp.ffn_sub_norm.": "mlp.ffn_layernorm."}


def onebit_config(hf_cfg, *, bos, eos):
    """config.json in the shape of 1bitLLM/bitnet_b1_58-large's (their BitnetConfig)."""
    return {
        "architectures": ["BitnetForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "hidden_size": hf_cfg.hidden_size,
        "initializer_range": 0.02,
        "input_bits": 8,
        "intermediate_size": hf_cfg.intermediate_size,
        "max_position_embeddings": hf_cfg.max_position_embeddings,
        "model_type": "llama",
        "num_attention_heads": hf_cfg.num_attention_heads,
        "num_hidden_layers": hf_cfg.num_hidden_layers,
        "num_key_value_heads": hf_cfg.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": hf_cfg.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": hf_cfg.vocab_size,
        "weight_bits": 1,
    }


def onebit_forward(path: Path, ids):
    """1bitLLM's forward (utils_quant.BitLinear + modeling_bitnet.py) in float32 from the fixture files."""
    cfg = json.loads((path / "config.json").read_text())
    sd = load_file(str(path / "model.safetensors"))
    eps, nh, nkv = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // nh

    def weight_quant(w):
        s = 1 / w.abs().mean().clamp(min=1e-5)
        return (w * s).round().clamp(-1, 1) / s

    def activation_quant(x):
        s = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
        return (x * s).round().clamp(-128, 127) / s

    def lin(x, prefix):
        return F.linear(activation_quant(x), weight_quant(sd[prefix + ".weight"].float()))

    def norm(x, key):  # BitnetRMSNorm
        return sd[key].float() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    x = sd["model.embed_tokens.weight"].float()[torch.tensor(ids)]
    T = len(ids)
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    ang = torch.arange(T).float()[:, None] * inv_freq[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(t):  # rotate_half
        return t * cos + torch.cat([-t[..., hd // 2:], t[..., : hd // 2]], -1) * sin

    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        n = norm(x, p + "input_layernorm.weight")
        q = rope(lin(n, p + "self_attn.q_proj").view(T, nh, hd).transpose(0, 1))
        k = rope(lin(n, p + "self_attn.k_proj").view(T, nkv, hd).transpose(0, 1)).repeat_interleave(nh // nkv, 0)
        v = lin(n, p + "self_attn.v_proj").view(T, nkv, hd).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, -1) @ v
        a = norm(a.transpose(0, 1).reshape(T, nh * hd), p + "self_attn.inner_attn_ln.weight")
        x = x + lin(a, p + "self_attn.o_proj")
        n = norm(x, p + "post_attention_layernorm.weight")
        h = F.silu(lin(n, p + "mlp.gate_proj")) * lin(n, p + "mlp.up_proj")
        x = x + lin(norm(h, p + "mlp.ffn_layernorm.weight"), p + "mlp.down_proj")
    x = norm(x, "model.norm.weight")
    return x @ sd["lm_head.weight"].float().T


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(mf.REPO / "tests" / "fixtures"))
    out = Path(ap.parse_args().out)
    work = Path(tempfile.mkdtemp(prefix="bitnet-1bitllm-fixture-"))
    tok_dir = mf.train_tokenizer(work)
    tok_files = sorted(p.name for p in tok_dir.iterdir())
    ids = mf.make_input_ids(tok_dir)
    tk = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    bos, eos = tk.bos_token_id, tk.eos_token_id
    print("input_ids:", ids)

    cfg = mf.base_config(kv_heads=mf.HEADS, tied=False, vocab=mf.VOCAB, bos=bos, eos=eos, rope_theta=10000.0)
    cfg.hidden_act = "silu"
    latent, seed = mf.choose_latent(cfg, 31, ids, work, dtype=torch.float16)
    hf_dir = work / "hf_bitnet"
    mf.save_online(latent, hf_dir, dtype=torch.float16, old_style=False, rope_theta=None)
    model = mf.load(hf_dir, dtype=torch.float32)
    d = mf.describe(model)
    assert d["q_proj"] == "AutoBitLinear" and d["online_quant"] and d["lm_head"] == "Linear", d
    assert model.config.hidden_act == "silu" and not model.config.tie_word_embeddings
    lg = mf.logits_of(model, ids)
    gen = mf.greedy(model, ids)
    gen2, gap = mf.greedy_margin(model, ids)
    assert gen2 == gen

    path = out / NAME
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    sd = load_file(str(hf_dir / "model.safetensors"))
    renamed = {}
    for k, t in sd.items():
        assert t.dtype == torch.float16, (k, t.dtype)
        for ours, theirs in RENAMES.items():
            k = k.replace(ours, theirs)
        renamed[k] = t.contiguous()
    assert sum("inner_attn_ln" in k or "ffn_layernorm" in k for k in renamed) == 2 * mf.LAYERS
    save_file(renamed, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(onebit_config(cfg, bos=bos, eos=eos), indent=2, sort_keys=True) + "\n")
    for f in tok_files:
        shutil.copy(tok_dir / f, path / f)

    spec = onebit_forward(path, ids)
    spec_diff = float((spec - lg).abs().max())
    assert spec_diff <= 1e-4, spec_diff
    # Controls: relu² instead of SiLU (the HF BitNet default) and no sub-norms must both move the logits.
    relu_dir = work / "relu2"
    shutil.copytree(hf_dir, relu_dir)
    c = json.loads((relu_dir / "config.json").read_text())
    c["hidden_act"] = "relu2"
    (relu_dir / "config.json").write_text(json.dumps(c))
    relu_diff = float((mf.logits_of(mf.load(relu_dir, dtype=torch.float32), ids) - lg).abs().max())
    assert relu_diff > 1.0, relu_diff
    print(f"[{NAME}] seed {seed} greedy {gen} min gap {gap:.3g} 1bitLLM-forward diff {spec_diff:.3g} "
          f"relu2 control diff {relu_diff:.3g}")
    notes = (
        "1bitLLM bitnet_b1_58-* checkpoint format: config architectures [BitnetForCausalLM], model_type llama,"
        " no quantization_config, weight_bits 1, input_bits 8, hidden_act silu, rms_norm_eps 1e-5, rope_theta"
        " 10000, untied lm_head; latent float16 weights (torch_dtype float16); sub-norms named"
        " self_attn.inner_attn_ln and mlp.ffn_layernorm. Reference: the same float16 weights as an HF"
        " BitNetForCausalLM directory (hidden_act silu, quantization_config autobitlinear/online, sub-norms"
        " renamed attn_sub_norm / ffn_sub_norm) loaded with from_pretrained(dtype=torch.float32): q_proj class"
        f" {d['q_proj']} (online_quant={d['online_quant']}), lm_head {d['lm_head']} (not quantized), attention"
        f" '{d['attn_implementation']}', logits in float32. An independent plain-torch re-implementation of"
        " 1bitLLM's forward (utils_quant weight_quant / activation_quant fake quantization, F.linear,"
        " BitnetRMSNorm, down(ffn_layernorm(silu(gate) * up)), o(inner_attn_ln(attn))) reading this directory's"
        f" files: max |diff| {spec_diff:.3g}. Control: relu2 instead of silu moves the logits by up to"
        f" {relu_diff:.3g}. MHA 4 heads of 16. Smallest top1-top2 logit gap along the greedy path: {gap:.3g}"
        f" (seed {seed}). Tokenizer: byte-level BPE (vocab {mf.VOCAB}) trained on tinyshakespeare (1bitLLM's"
        f" own checkpoints carry a SentencePiece tokenizer.model); input_ids = <|begin_of_text|> +"
        f" encode(prompt) truncated to {mf.SEQ} tokens."
    )
    mf.write_reference(path, ids, lg, gen, notes)
    size = sum(p.stat().st_size for p in path.iterdir())
    assert size < 400_000, size  # the untied lm_head adds 49 KB
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"seed": seed, "greedy": gen, "min_gap": gap, "spec_diff": spec_diff, "relu2_diff": relu_diff,
                      "bytes": size}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
