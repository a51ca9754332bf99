#!/usr/bin/env python3
"""Generate HF-transformers reference fixtures for LLaMA-architecture BitNet checkpoints.

Usage (from the repository root, same venv as tools/make_fixtures.py):

    /root/venvs/bitnet-ref/bin/python tools/make_llama_fixtures.py [--out tests/fixtures]

The checkpoint format is that of tiiuae/Falcon3-*-1.58bit and HF1BitLLM/Llama3-8B-1.58-100B-tokens:
model_type "llama", LlamaForCausalLM, silu-gated MLP, no sub-norms, and
quantization_config {"quant_method": "bitnet", "modules_to_not_convert": null} (HF defaults:
linear_class bitlinear, quantization_mode offline). Every q/k/v/o/gate/up/down projection is stored
packed uint8 [out/4, in] (HF pack_weights) + weight_scale f32 [1] = 1/mean|W|, and HF's BitLinear
DIVIDES its output by it. lm_head and the embeddings are not quantized.

What it does, deterministically (fixed seeds, single-threaded torch), reusing make_fixtures.py
(tokenizer, input ids, weight quantization, greedy decoding, reference.json format):

1. Builds tiny random latent LlamaForCausalLM models (vocab 384, hidden 64, intermediate 160,
   2 layers, 4 heads of dim 16, 2 KV heads), quantizes + packs the projections and writes:
     llama_offline_bitlinear  Falcon3-like: f32, untied, rope_theta 1000042.0, rope_scaling null,
                              rms_norm_eps 1e-6
     llama3_rope_scaling      rope_scaling {rope_type llama3, factor 8, low/high_freq_factor 1/4,
                              original_max_position_embeddings 64}, rope_theta 500000.0, tied,
                              bf16 non-packed tensors, rms_norm_eps 1e-5
2. Loads each directory back with LlamaForCausalLM.from_pretrained (as a user would), asserts the
   projections are transformers' BitLinear (lm_head stays nn.Linear), no missing/unexpected keys,
   seeds chosen so every greedy step has a top1-top2 logit gap >= MIN_GAP, writes reference.json.
3. Cross-checks: an independent plain-torch re-implementation reading config.json +
   model.safetensors directly; controls without quantization (latent weights as nn.Linear) and
   without activation quantization (dequantized ternary weights as nn.Linear).
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
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.integrations.bitnet import BitLinear, pack_weights, unpack_weights  # noqa: E402

QUANT = {"quant_method": "bitnet", "modules_to_not_convert": None}  # as in the Falcon3 1.58bit configs
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def llama_config(*, vocab, bos, eos, tied, eps, rope):
    return LlamaConfig(vocab_size=vocab, hidden_size=mf.HIDDEN, intermediate_size=mf.INTER,
                       num_hidden_layers=mf.LAYERS, num_attention_heads=mf.HEADS, num_key_value_heads=2,
                       head_dim=mf.HIDDEN // mf.HEADS, hidden_act="silu", max_position_embeddings=128,
                       rms_norm_eps=eps, bos_token_id=bos, eos_token_id=eos, tie_word_embeddings=tied,
                       attention_bias=False, mlp_bias=False, rope_parameters=dict(rope))


def random_latent(config, seed):
    """Plain LlamaForCausalLM with make_fixtures.py's deterministic random weights."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is not listed separately
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name == "model.embed_tokens.weight":
                p.copy_(mf.EMBED_STD * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(mf.LM_HEAD_STD * torch.randn(p.shape, generator=g))
            else:
                p.copy_(mf.PROJ_STD * torch.randn(p.shape, generator=g))
    return model


def hub_style(cfg):
    """transformers-5 native keys (rope_parameters, dtype) -> hub keys (rope_theta, rope_scaling, torch_dtype)."""
    rp = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = float(rp.pop("rope_theta"))
    cfg["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    cfg["torch_dtype"] = cfg.pop("dtype")
    return cfg


def write_packed(latent_dir: Path, path: Path, dtype):
    """Quantize + pack latent_dir's projections into path (linear_class bitlinear: weight_scale = 1/mean|W|)."""
    path.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, t in load_file(str(latent_dir / "model.safetensors")).items():
        if any(name.endswith(p + ".weight") for p in mf.PROJS):
            q, inv = mf.weight_quant(t)
            packed = pack_weights(q.to(torch.int8).clone())  # pack_weights adds 1 in place
            assert packed.dtype == torch.uint8 and packed.shape == (t.shape[0] // 4, t.shape[1])
            assert torch.equal(unpack_weights(packed, dtype=torch.float32), q)
            out[name] = packed.contiguous()
            out[name[: -len("weight")] + "weight_scale"] = inv.reshape(1).float().contiguous()
        else:
            assert t.dtype == dtype, (name, t.dtype)
            out[name] = t.contiguous()
    save_file(out, str(path / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(latent_dir / "generation_config.json", path / "generation_config.json")
    cfg = json.loads((latent_dir / "config.json").read_text())
    cfg["quantization_config"] = dict(QUANT)
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load(path: Path, dtype=torch.float32):
    model, info = LlamaForCausalLM.from_pretrained(str(path), output_loading_info=True, dtype=dtype)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(k), (path.name, k, info[k])
    return model.eval()


def llama3_inv_freq(theta, hd, rs):
    """inv_freq of the Llama-3.1 rule, independent of HF; also returns the three band masks."""
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
    if not rs:
        return inv, None
    old, lo, hi, fac = (rs["original_max_position_embeddings"], rs["low_freq_factor"], rs["high_freq_factor"],
                        rs["factor"])
    wavelen = 2 * math.pi / inv
    high = wavelen < old / hi  # untouched
    low = wavelen > old / lo  # divided by factor
    mid = ~high & ~low  # smoothed between the two
    smooth = (old / wavelen - lo) / (hi - lo)
    out = torch.where(low, inv / fac, inv)
    out = torch.where(mid, (1 - smooth) * inv / fac + smooth * inv, out)
    return out, (high, mid, low)


def spec_forward(path: Path, ids):
    """Independent plain-torch LLaMA + BitLinear forward, reading the files directly."""
    cfg = json.loads((path / "config.json").read_text())
    sd = load_file(str(path / "model.safetensors"))
    eps, nh, nkv = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    inv_freq, _ = llama3_inv_freq(cfg["rope_theta"], hd, cfg["rope_scaling"])

    def lin(x, prefix):  # BitLinear: y = (xq . Wq) / (act_scale * weight_scale)
        w = sd[prefix + ".weight"]
        assert w.dtype == torch.uint8
        s_a = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        xq = (x * s_a).round().clamp(-128, 127)
        q = torch.cat([((w >> (2 * i)) & 3).float() - 1 for i in range(4)], 0)  # row i*rows + r
        return (xq @ q.T) / (s_a * sd[prefix + ".weight_scale"].float())

    f = lambda k: sd[k].float()  # noqa: E731
    x = f("model.embed_tokens.weight")[torch.tensor(ids)]
    T = len(ids)
    ang = torch.arange(T).float()[:, None] * inv_freq[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(t):  # [heads, T, hd], rotate_half convention
        t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        n = mf.rms_norm(x, f(p + "input_layernorm.weight"), eps)
        q = rope(lin(n, p + "self_attn.q_proj").view(T, nh, hd).transpose(0, 1))
        k = rope(lin(n, p + "self_attn.k_proj").view(T, nkv, hd).transpose(0, 1)).repeat_interleave(nh // nkv, 0)
        v = lin(n, p + "self_attn.v_proj").view(T, nkv, hd).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, -1) @ v
        x = x + lin(a.transpose(0, 1).reshape(T, nh * hd), p + "self_attn.o_proj")  # no sub-norm
        n = mf.rms_norm(x, f(p + "post_attention_layernorm.weight"), eps)
        x = x + lin(F.silu(lin(n, p + "mlp.gate_proj")) * lin(n, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = mf.rms_norm(x, f("model.norm.weight"), eps)
    head = f("lm_head.weight") if "lm_head.weight" in sd else f("model.embed_tokens.weight")
    return x @ head.T


def build(name, out: Path, work: Path, ids, tok_dir, tok_files, *, cfg, dtype, seed, notes):
    path = out / name
    shutil.rmtree(path, ignore_errors=True)
    for k in range(50):  # first seed in seed, seed+1000, ... with a robust, varied greedy path
        s = seed + 1000 * k
        latent = work / f"{name}_latent_{s}"
        random_latent(cfg, s).to(dtype).save_pretrained(latent)
        (latent / "config.json").write_text(json.dumps(hub_style(json.loads((latent / "config.json").read_text())),
                                                       indent=2, sort_keys=True) + "\n")
        write_packed(latent, path, dtype)
        model = load(path)
        gen, gap = mf.greedy_margin(model, ids)
        if gap >= mf.MIN_GAP and len(set(gen)) >= 4:
            break
    else:
        raise SystemExit(f"{name}: no suitable seed found")
    for f in tok_files:
        shutil.copy(tok_dir / f, path / f)
    sd = load_file(str(path / "model.safetensors"))
    assert ("lm_head.weight" in sd) == (not cfg.tie_word_embeddings)
    assert all(t.dtype == (torch.uint8 if n.endswith("_proj.weight") else torch.float32 if "scale" in n else dtype)
               for n, t in sd.items())
    # Reload (as a user would) and check what transformers built.
    model = load(path)
    layer = model.model.layers[0]
    for m in (layer.self_attn.q_proj, layer.mlp.down_proj):
        assert type(m) is BitLinear and m.rms_norm is None and m.weight.dtype == torch.uint8, m
    assert type(model.lm_head) is torch.nn.Linear and model.model.embed_tokens.weight.dtype == torch.float32
    assert layer.self_attn.q_proj.weight_scale.dtype == torch.float32
    not_conv = sorted(model.hf_quantizer.modules_to_not_convert)
    rp = model.config.rope_parameters
    file_cfg = json.loads((path / "config.json").read_text())
    assert rp["rope_theta"] == file_cfg["rope_theta"] and rp["rope_type"] == (file_cfg["rope_scaling"] or
                                                                               {"rope_type": "default"})["rope_type"]
    inv_spec, bands = llama3_inv_freq(file_cfg["rope_theta"], cfg.head_dim, file_cfg["rope_scaling"])
    inv_hf = model.model.rotary_emb.inv_freq.float()
    assert torch.allclose(inv_hf, inv_spec, rtol=1e-6, atol=0), (inv_hf, inv_spec)
    band_txt = ""
    if bands is not None:
        plain, _ = llama3_inv_freq(file_cfg["rope_theta"], cfg.head_dim, None)
        high, mid, low = bands
        assert high.any() and mid.any() and low.any(), bands  # all three bands exercised
        assert torch.equal(inv_hf[high], plain[high]) and not torch.isclose(inv_hf[~high], plain[~high]).any()
        band_txt = (f" Llama-3 RoPE bands at head_dim {cfg.head_dim} (wavelength 2*pi/inv_freq vs"
                    f" original_max_position_embeddings/high_freq_factor and /low_freq_factor): untouched pairs"
                    f" {high.nonzero().flatten().tolist()}, smoothed {mid.nonzero().flatten().tolist()}, divided by"
                    f" factor {low.nonzero().flatten().tolist()}; HF inv_freq matches the independent rule"
                    f" (max rel diff {float(((inv_hf - inv_spec) / inv_spec).abs().max()):.2g}).")
    lg = mf.logits_of(model, ids)
    gen = mf.greedy(model, ids)
    gen2, gap = mf.greedy_margin(model, ids)
    assert gen2 == gen
    spec_diff = float((spec_forward(path, ids) - lg).abs().max())
    assert spec_diff <= 1e-4, spec_diff
    # transformers-5 native config keys (rope_parameters, dtype) must give the same logits.
    native = work / f"{name}_native"
    shutil.copytree(path, native)
    c = dict(file_cfg, dtype=file_cfg["torch_dtype"],
             rope_parameters=dict(file_cfg["rope_scaling"] or {"rope_type": "default"}, rope_theta=file_cfg["rope_theta"]))
    for key in ("torch_dtype", "rope_theta", "rope_scaling"):
        del c[key]
    (native / "config.json").write_text(json.dumps(c))
    assert torch.equal(mf.logits_of(load(native), ids), lg)
    # Controls: no quantization at all (latent weights, plain nn.Linear) and no activation quantization
    # (dequantized ternary weights Wq / weight_scale in plain nn.Linear).
    ctrl = load(latent)
    assert type(ctrl.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    ctrl_diff = float((mf.logits_of(ctrl, ids) - lg).abs().max())
    with torch.no_grad():
        for pname, p in ctrl.named_parameters():
            if any(pname.endswith(pp + ".weight") for pp in mf.PROJS):
                p.copy_(unpack_weights(sd[pname], dtype=torch.float32) / sd[pname + "_scale"])
    deq_diff = float((mf.logits_of(ctrl, ids) - lg).abs().max())
    assert ctrl_diff > 1.0 and deq_diff > 1e-2, (ctrl_diff, deq_diff)
    bf16_txt = ""
    if dtype == torch.bfloat16:  # what a default (dtype "auto") load does instead
        mb = load(path, dtype="auto")
        ws = mb.model.layers[0].self_attn.q_proj.weight_scale
        assert mb.model.embed_tokens.weight.dtype == torch.bfloat16 and ws.dtype == torch.bfloat16
        bf16_txt = (f" A default load (dtype auto -> bfloat16) makes BitLinear's weight_scale buffer bf16 (layer 0"
                    f" q_proj: {float(sd['model.layers.0.self_attn.q_proj.weight_scale']):.6g} in the file ->"
                    f" {float(ws):.6g}) and runs the matmuls in bf16; its logits deviate from this reference by"
                    f" up to {float((mf.logits_of(mb, ids) - lg).abs().max()):.3g}.")
    print(f"[{name}] seed {s} greedy {gen} min gap {gap:.3g} spec diff {spec_diff:.3g} "
          f"no-quant diff {ctrl_diff:.3g} no-act-quant diff {deq_diff:.3g} not converted {not_conv}")
    full = (f"{notes} Loaded with LlamaForCausalLM.from_pretrained(dir, dtype=torch.float32): q_proj/down_proj"
            f" class {type(layer.self_attn.q_proj).__name__} (transformers.integrations.bitnet, no extra RMSNorm),"
            f" weight_scale buffer float32; the quantizer's modules_to_not_convert resolved to {not_conv};"
            f" lm_head {type(model.lm_head).__name__} (not quantized); attention"
            f" '{model.config._attn_implementation}'; logits computed in float32. HF maps the config to"
            f" rope_parameters {json.dumps(rp, sort_keys=True)}; the same directory with transformers-5 native"
            f" keys (rope_parameters, dtype) gives bit-identical logits.{band_txt} Independent plain-torch"
            f" re-implementation (RMSNorm, per-token absmax int8 activations, ternary unpack, y = xq.Wq /"
            f" (act_scale * weight_scale), rotate_half RoPE, GQA causal attention, down(silu(gate) * up), no"
            f" sub-norms) reading the files: max |diff| {spec_diff:.3g}. Controls: the latent weights as plain"
            f" nn.Linear (no quantization_config) differ by up to {ctrl_diff:.3g}; the dequantized ternary weights"
            f" (Wq / weight_scale) as plain nn.Linear, i.e. without activation quantization, differ by up to"
            f" {deq_diff:.3g}. Smallest top1-top2 logit gap along the greedy path: {gap:.3g} (seed {s})."
            f" Tokenizer: byte-level BPE (vocab {mf.VOCAB}) trained on tinyshakespeare; input_ids ="
            f" <|begin_of_text|> + encode(prompt) truncated to {mf.SEQ} tokens.{bf16_txt}")
    mf.write_reference(path, ids, lg, gen, full)
    size = sum(p.stat().st_size for p in path.iterdir())
    assert size < 300_000, size
    return {"seed": s, "greedy": gen, "min_gap": gap, "spec_diff": spec_diff, "no_quant_diff": ctrl_diff,
            "no_act_quant_diff": deq_diff, "not_converted": not_conv, "rope_parameters": rp, "bytes": size}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(mf.REPO / "tests" / "fixtures"))
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bitnet-llama-fixtures-"))
    tok_dir = mf.train_tokenizer(work)
    tok_files = sorted(p.name for p in tok_dir.iterdir())
    ids = mf.make_input_ids(tok_dir)
    tk = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    bos, eos = tk.bos_token_id, tk.eos_token_id
    assert (bos, eos) == (0, 1) and tk(mf.PROMPT)["input_ids"][: mf.SEQ] == ids
    print("input_ids:", ids)
    report = {}

    cfg1 = llama_config(vocab=mf.VOCAB, bos=bos, eos=eos, tied=False, eps=1e-6,
                        rope={"rope_type": "default", "rope_theta": 1000042.0})
    report["llama_offline_bitlinear"] = build(
        "llama_offline_bitlinear", out, work, ids, tok_dir, tok_files, cfg=cfg1, dtype=torch.float32, seed=21,
        notes="Falcon3-1.58bit-like LLaMA checkpoint: model_type llama, LlamaForCausalLM, silu-gated MLP, no"
              " sub-norms, quantization_config {quant_method: bitnet, modules_to_not_convert: null} (HF defaults"
              " linear_class bitlinear, quantization_mode offline). Each q/k/v/o/gate/up/down 'weight' is uint8"
              " [out/4, in] packed with HF pack_weights, plus 'weight_scale' f32 [1] = 1/mean|W| (BitLinear"
              " DIVIDES the output by it). Non-packed tensors float32 (torch_dtype float32); untied lm_head;"
              " GQA 4 heads / 2 KV heads, explicit head_dim 16; rms_norm_eps 1e-6; hub-style config: top-level"
              " rope_theta 1000042.0 and rope_scaling null.")

    cfg2 = llama_config(vocab=mf.VOCAB, bos=bos, eos=eos, tied=True, eps=1e-5, rope=dict(LLAMA3, rope_theta=500000.0))
    report["llama3_rope_scaling"] = build(
        "llama3_rope_scaling", out, work, ids, tok_dir, tok_files, cfg=cfg2, dtype=torch.bfloat16, seed=22,
        notes="LLaMA BitNet checkpoint (same packing and quantization_config as llama_offline_bitlinear) with"
              " Llama-3.1-style RoPE scaling: rope_theta 500000.0, rope_scaling {rope_type llama3, factor 8.0,"
              " low_freq_factor 1.0, high_freq_factor 4.0, original_max_position_embeddings 64} (64, not 32: at"
              " head_dim 16 and theta 500000 the second wavelength is 32.4, so 32 would leave the smoothed band"
              " empty). Tied embeddings (no lm_head.weight in the file); non-packed tensors bfloat16"
              " (torch_dtype bfloat16), weight_scale float32; rms_norm_eps 1e-5; GQA 4/2. The reference is float32"
              " maths on the bf16 weights: loaded with from_pretrained(dir, dtype=torch.float32) (bf16 -> f32 is"
              " exact).")

    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
