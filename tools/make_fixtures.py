#!/usr/bin/env python3
"""Generate the HF-transformers reference fixtures in tests/fixtures/.

Usage (from the repository root):

    python -m venv /root/venvs/bitnet-ref
    /root/venvs/bitnet-ref/bin/pip install torch "transformers>=5" safetensors tokenizers accelerate numpy
    /root/venvs/bitnet-ref/bin/python tools/make_fixtures.py [--out tests/fixtures]

(`accelerate` is required by transformers' BitNet quantizer at load time.)

What it does, deterministically (fixed seeds, single-threaded torch):

1. Trains one byte-level BPE tokenizer (vocab 384, specials <|begin_of_text|>,
   <|end_of_text|>, <|eot_id|>) on shared/data/tinyshakespeare.txt and copies it
   into every fixture.
2. Builds tiny random BitNetForCausalLM models (hidden 64, intermediate 160,
   2 layers, 4 heads of dim 16, relu2) and writes four HF model directories:
     online_f32_tied_gqa    latent f32 weights, autobitlinear/online, tied, GQA 4/2,
                            old-style config (top-level rope_theta, torch_dtype)
     online_bf16_untied_mha latent bf16 weights, autobitlinear/online, untied, MHA 4/4,
                            rope_parameters {rope_theta 500000, rope_type default}
     offline_autobitlinear  packed uint8 weights + weight_scale = mean|W| (multiplier),
                            same latent weights as online_f32_tied_gqa
     offline_bitlinear      packed uint8 weights + weight_scale = 1/mean|W| (divisor),
                            HF BitLinear class, untied, GQA 4/2
3. Loads every directory back with BitNetForCausalLM.from_pretrained (as a user
   would), checks the quantized linear classes are really in place, and writes
   reference.json (input_ids, float32 logits for all positions, 10 greedy ids,
   versions, notes).
4. Cross-checks: offline fixtures vs the online model built from the same latent
   weights, and an independent plain-torch re-implementation of the maths in
   shared/REFERENCE.md that reads the files directly (config.json + safetensors).
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import BitNetConfig, BitNetForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from transformers.integrations.bitnet import AutoBitLinear, BitLinear, pack_weights, unpack_weights  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("BITNET_SHARED", REPO.parent / "shared")) / "data" / "tinyshakespeare.txt"
if not DATA.exists():
    DATA = Path("/work/shared/data/tinyshakespeare.txt")

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
SPECIALS_PAD = 2  # id of <|eot_id|>; only silences generate(), never used (batch of 1)
VOCAB = 384
PROMPT = "First Citizen: Before we proceed any further, hear me speak."
SEQ = 12
NEW_TOKENS = 10

HIDDEN, INTER, LAYERS, HEADS = 64, 160, 2, 4
EMBED_STD = 0.5  # large so logits are far from flat (tied lm_head reuses it)
PROJ_STD = 0.4  # ternary output scale is mean|W|: this makes q.k/sqrt(d) O(1) (sharp attention)
MIN_GAP = 0.1  # seeds are chosen so every greedy step's top1-top2 logit gap is at least this
LM_HEAD_STD = 0.2  # untied lm_head (never quantized)
PROJS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


# ----------------------------------------------------------------------------- tokenizer
def train_tokenizer(workdir: Path) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(DATA)], trainer)
    bos = tok.token_to_id(SPECIALS[0])
    # Llama-3 style: add_special_tokens=True prepends <|begin_of_text|>.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS[0]} $A", pair=f"{SPECIALS[0]} $A {SPECIALS[0]} $B", special_tokens=[(SPECIALS[0], bos)]
    )
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[1])
    out = workdir / "tokenizer"
    fast.save_pretrained(out)
    # Portable class name (transformers 5 writes its internal "TokenizersBackend").
    tc = json.loads((out / "tokenizer_config.json").read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
    return out


def make_input_ids(tok_dir: Path) -> list:
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    bos = tok.token_to_id(SPECIALS[0])
    ids = [bos] + tok.encode(PROMPT, add_special_tokens=False).ids
    assert len(ids) >= SEQ, f"prompt too short: {len(ids)} tokens"
    ids = ids[:SEQ]
    assert tok.encode(PROMPT).ids[:SEQ] == ids  # post-processor adds bos
    return ids


# ----------------------------------------------------------------------------- models
def base_config(*, kv_heads, tied, vocab, bos, eos, rope_theta, hidden=None, inter=None):
    return BitNetConfig(
        vocab_size=vocab,
        hidden_size=hidden or HIDDEN,
        intermediate_size=inter or INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=kv_heads,
        hidden_act="relu2",
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=bos,
        eos_token_id=eos,
        tie_word_embeddings=tied,
        rope_parameters={"rope_theta": rope_theta, "rope_type": "default"},
    )


def random_latent_model(config, seed):
    """Plain (unquantized) BitNetForCausalLM with deterministic random weights."""
    torch.manual_seed(seed)
    model = BitNetForCausalLM(config).float().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head is not listed separately
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name == "model.embed_tokens.weight":
                p.copy_(EMBED_STD * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(LM_HEAD_STD * torch.randn(p.shape, generator=g))
            else:
                p.copy_(PROJ_STD * torch.randn(p.shape, generator=g))
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def patch_config(path: Path, *, quant, old_style=False, rope_theta=None):
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = quant
    if old_style:
        # As in microsoft/bitnet-b1.58-2B-4T: top-level rope_theta and torch_dtype.
        cfg.pop("rope_parameters", None)
        cfg["rope_theta"] = float(rope_theta)
        cfg["torch_dtype"] = cfg.pop("dtype")
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def save_online(model, path: Path, *, dtype, old_style, rope_theta):
    m = model.to(dtype)
    m.save_pretrained(path)
    model.float()
    patch_config(path, quant={"quant_method": "bitnet", "linear_class": "autobitlinear",
                              "quantization_mode": "online"}, old_style=old_style, rope_theta=rope_theta)


def weight_quant(w: torch.Tensor):
    """Exactly HF WeightQuant's ternary values, plus the scale it uses (1/mean|W|, f32)."""
    w = w.float()
    inv = 1.0 / w.abs().mean().clamp_(min=1e-5)
    q = (w * inv).round().clamp(-1, 1)
    return q, inv


def save_offline(latent_dir: Path, path: Path, *, linear_class, old_style, rope_theta):
    """Quantize + pack the latent checkpoint in latent_dir into path (HF's pack_weights)."""
    path.mkdir(parents=True, exist_ok=True)
    sd = load_file(str(latent_dir / "model.safetensors"))
    out = {}
    for name, t in sd.items():
        if any(name.endswith(p + ".weight") for p in PROJS):
            q, inv = weight_quant(t)
            packed = pack_weights(q.to(torch.int8).clone())  # pack_weights adds 1 in place
            assert packed.dtype == torch.uint8 and packed.shape == (t.shape[0] // 4, t.shape[1])
            assert torch.equal(unpack_weights(packed, dtype=torch.float32), q)
            out[name] = packed.contiguous()
            base = name[: -len("weight")]
            if linear_class == "autobitlinear":
                scale = (1.0 / inv).reshape(1)  # multiplier: output * mean|W|
            else:
                scale = inv.reshape(1)  # BitLinear divides the output by weight_scale
            out[base + "weight_scale"] = scale.float().contiguous()
        else:
            out[name] = t.float().contiguous()
    save_file(out, str(path / "model.safetensors"), metadata={"format": "pt"})
    for f in ("config.json", "generation_config.json"):
        shutil.copy(latent_dir / f, path / f)
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("quantization_config", None)
    if "rope_theta" in cfg:  # normalise back to new style first
        cfg["rope_parameters"] = {"rope_theta": cfg.pop("rope_theta"), "rope_type": "default"}
        cfg["dtype"] = cfg.pop("torch_dtype")
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    patch_config(path, quant={"quant_method": "bitnet", "linear_class": linear_class,
                              "quantization_mode": "offline"}, old_style=old_style, rope_theta=rope_theta)


# ----------------------------------------------------------------------------- evaluation
def load(path: Path, **kw):
    model, info = BitNetForCausalLM.from_pretrained(str(path), output_loading_info=True, **kw)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(k), (path.name, k, info[k])
    model.eval()
    return model


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def greedy(model, ids):
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    with torch.no_grad():
        # Explicit all-ones attention_mask: otherwise generate() infers one from pad_token_id and
        # would mask the <|begin_of_text|> token whenever pad == bos.
        x = torch.tensor([ids])
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS,
                             do_sample=False, eos_token_id=None, pad_token_id=SPECIALS_PAD)
    gen = out[0, len(ids):].tolist()
    # Cross-check against a cache-less full-recompute argmax loop.
    seq = list(ids)
    for _ in range(NEW_TOKENS):
        seq.append(int(logits_of(model, seq)[-1].argmax()))
    assert seq[len(ids):] == gen, (gen, seq[len(ids):])
    assert len(gen) == NEW_TOKENS
    return gen


def greedy_margin(model, ids):
    """Greedy ids (full recompute) and the smallest top1-top2 logit gap along the way."""
    seq, gap = list(ids), float("inf")
    for _ in range(NEW_TOKENS):
        last = logits_of(model, seq)[-1]
        top = last.topk(2).values
        gap = min(gap, float(top[0] - top[1]))
        seq.append(int(last.argmax()))
    return seq[len(ids):], gap


def choose_latent(config, seed, ids, workdir: Path, dtype=torch.float32):
    """First seed in seed, seed+1000, ... whose online model has a robust, varied greedy path."""
    for k in range(50):
        s = seed + 1000 * k
        latent = random_latent_model(config, s)
        tmp = workdir / f"probe_{s}"
        save_online(latent, tmp, dtype=dtype, old_style=False, rope_theta=None)
        gen, gap = greedy_margin(load(tmp, dtype=torch.float32), ids)
        shutil.rmtree(tmp)
        if gap >= MIN_GAP and len(set(gen)) >= 4:
            print(f"seed {s}: greedy {gen} min gap {gap:.3f}")
            return latent, s
    raise SystemExit("no suitable seed found")


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def spec_forward(path: Path, ids):
    """Independent re-implementation from shared/REFERENCE.md, reading the files directly."""
    cfg = json.loads((path / "config.json").read_text())
    sd = {k: v for k, v in load_file(str(path / "model.safetensors")).items()}
    qc = cfg["quantization_config"]
    eps = cfg["rms_norm_eps"]
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    theta = cfg["rope_theta"] if "rope_theta" in cfg else cfg["rope_parameters"]["rope_theta"]

    def lin(x, prefix):
        w = sd[prefix + ".weight"]
        s_a = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        xq = (x * s_a).round().clamp(-128, 127)
        if w.dtype == torch.uint8:
            rows = w.shape[0]
            q = torch.cat([((w >> (2 * i)) & 3).float() - 1 for i in range(4)], 0)  # row i*rows + r
            assert q.shape[0] == 4 * rows
            ws = sd[prefix + ".weight_scale"].float()
            s_w = ws if qc["linear_class"] == "autobitlinear" else 1.0 / ws
        else:
            wf = w.float()
            s_w = wf.abs().mean().clamp(min=1e-5)
            q = (wf / s_w).round().clamp(-1, 1)
        return (xq @ q.T) * (s_w / s_a)

    f = lambda k: sd[k].float()  # noqa: E731
    x = f("model.embed_tokens.weight")[torch.tensor(ids)]
    T = len(ids)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
    ang = torch.arange(T).float()[:, None] * inv_freq[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(t):  # t: [heads, T, hd], rotate_half convention
        t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        n = rms_norm(x, f(p + "input_layernorm.weight"), eps)
        q = rope(lin(n, p + "self_attn.q_proj").view(T, nh, hd).transpose(0, 1))
        k = rope(lin(n, p + "self_attn.k_proj").view(T, nkv, hd).transpose(0, 1))
        v = lin(n, p + "self_attn.v_proj").view(T, nkv, hd).transpose(0, 1)
        k = k.repeat_interleave(nh // nkv, 0)
        v = v.repeat_interleave(nh // nkv, 0)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, -1) @ v
        a = a.transpose(0, 1).reshape(T, nh * hd)
        x = x + lin(rms_norm(a, f(p + "self_attn.attn_sub_norm.weight"), eps), p + "self_attn.o_proj")
        n = rms_norm(x, f(p + "post_attention_layernorm.weight"), eps)
        h = torch.relu(lin(n, p + "mlp.gate_proj")).square() * lin(n, p + "mlp.up_proj")
        x = x + lin(rms_norm(h, f(p + "mlp.ffn_sub_norm.weight"), eps), p + "mlp.down_proj")
    x = rms_norm(x, f("model.norm.weight"), eps)
    head = f("lm_head.weight") if "lm_head.weight" in sd else f("model.embed_tokens.weight")
    return x @ head.T


def sig6(x: float) -> float:
    return float(f"{x:.6g}")


def describe(model):
    attn = model.model.layers[0].self_attn
    return {
        "q_proj": type(attn.q_proj).__name__,
        "down_proj": type(model.model.layers[0].mlp.down_proj).__name__,
        "lm_head": type(model.lm_head).__name__,
        "online_quant": getattr(attn.q_proj, "online_quant", None),
        "param_dtype": str(model.model.embed_tokens.weight.dtype),
        "rope_theta": float(model.config.rope_parameters["rope_theta"]),
        "inv_freq[1]": float(model.model.rotary_emb.inv_freq[1]),
        "attn_implementation": model.config._attn_implementation,
    }


def write_reference(path: Path, ids, logits, gen, notes):
    ref = {
        "input_ids": ids,
        "logits": [[sig6(v) for v in row] for row in logits.tolist()],
        "greedy_ids": gen,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "prompt": PROMPT,
        "notes": notes,
    }
    (path / "reference.json").write_text(json.dumps(ref, separators=(",", ":")) + "\n")


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bitnet-fixtures-"))
    report = {}

    tok_dir = train_tokenizer(work)
    tok_files = sorted(p.name for p in tok_dir.iterdir())
    vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size()
    tk = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    bos, eos = tk.token_to_id(SPECIALS[0]), tk.token_to_id(SPECIALS[1])
    ids = make_input_ids(tok_dir)
    print("tokenizer files:", tok_files, "vocab", vocab, "bos/eos", bos, eos)
    print("input_ids:", ids, repr(tk.decode(ids, skip_special_tokens=False)))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    assert hf_tok(PROMPT)["input_ids"][:SEQ] == ids, hf_tok(PROMPT)["input_ids"]
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id) == (bos, eos)

    def finish(name, path, notes, *, expect, model=None):
        for f in tok_files:
            shutil.copy(tok_dir / f, path / f)
        if model is None:
            model = load(path)
        d = describe(model)
        print(f"[{name}]", d)
        assert d["q_proj"] == expect and d["down_proj"] == expect, d
        assert d["lm_head"] == "Linear"
        assert model.model.embed_tokens.weight.dtype == torch.float32
        lg = logits_of(model, ids)
        gen = greedy(model, ids)
        gen2, gap = greedy_margin(model, ids)
        assert gen2 == gen
        spec = spec_forward(path, ids)
        spec_diff = float((spec - lg).abs().max())
        print(f"[{name}] logits std/pos {lg.std(-1).mean():.3f}  max|logit| {lg.abs().max():.3f}  "
              f"greedy {gen}  spec max|diff| {spec_diff:.3g}")
        assert spec_diff < 1e-2 * max(1.0, float(lg.abs().max())), spec_diff
        full = f"{notes} Loaded with BitNetForCausalLM.from_pretrained: q_proj class {d['q_proj']}" \
               f" (online_quant={d['online_quant']}), lm_head {d['lm_head']} (not quantized), attention" \
               f" '{d['attn_implementation']}', logits computed in float32. Independent plain-torch" \
               f" re-implementation of shared/REFERENCE.md from the files: max |diff| {spec_diff:.3g}." \
               f" Smallest top1-top2 logit gap along the greedy path: {gap:.3g}." \
               f" Tokenizer: byte-level BPE (vocab {VOCAB}) trained on tinyshakespeare; input_ids ="\
               f" <|begin_of_text|> + encode(prompt) truncated to {SEQ} tokens."
        write_reference(path, ids, lg, gen, full)
        report[name] = {"class": d, "greedy": gen, "spec_diff": spec_diff, "min_gap": gap}
        return lg

    # 1. online_f32_tied_gqa -------------------------------------------------
    name = "online_f32_tied_gqa"
    p1 = out / name
    shutil.rmtree(p1, ignore_errors=True)
    cfg1 = base_config(kv_heads=2, tied=True, vocab=vocab, bos=bos, eos=eos, rope_theta=10000.0)
    latent1, seed1 = choose_latent(cfg1, 1, ids, work)
    save_online(latent1, p1, dtype=torch.float32, old_style=True, rope_theta=10000.0)
    m1 = load(p1)
    assert m1.config.rope_parameters["rope_theta"] == 10000.0, m1.config.rope_parameters
    # Control: the same directory WITHOUT quantization_config builds plain nn.Linear (no quantization).
    ctrl = work / "no_quant_config"
    shutil.copytree(p1, ctrl)
    c = json.loads((ctrl / "config.json").read_text())
    del c["quantization_config"]
    (ctrl / "config.json").write_text(json.dumps(c))
    mc = load(ctrl)
    assert type(mc.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    ctrl_diff = float((logits_of(mc, ids) - logits_of(m1, ids)).abs().max())
    print(f"[control] no quantization_config -> nn.Linear, max |logit diff| {ctrl_diff:.3g}")
    lg1 = finish(name, p1, "Online quantization (AutoBitLinear, quantization_mode online) of latent float32"
                 " weights; tied embeddings (no lm_head.weight in the file); GQA 4 heads / 2 KV heads,"
                 " head_dim 16; old-style config: top-level rope_theta 10000.0 and torch_dtype float32"
                 " (HF maps it to rope_parameters.rope_theta=10000.0, verified). Control: the same directory"
                 " without quantization_config loads as plain nn.Linear (no quantization) and its logits"
                 f" differ by up to {ctrl_diff:.3g}.", expect="AutoBitLinear", model=m1)

    # 2. online_bf16_untied_mha ----------------------------------------------
    name = "online_bf16_untied_mha"
    p2 = out / name
    shutil.rmtree(p2, ignore_errors=True)
    cfg2 = base_config(kv_heads=4, tied=False, vocab=vocab, bos=bos, eos=eos, rope_theta=500000.0)
    latent2, seed2 = choose_latent(cfg2, 2, ids, work, dtype=torch.bfloat16)
    save_online(latent2, p2, dtype=torch.bfloat16, old_style=False, rope_theta=None)
    sd2 = load_file(str(p2 / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in sd2.values())
    m2_bf16 = load(p2)
    assert m2_bf16.model.embed_tokens.weight.dtype == torch.bfloat16  # dtype "auto" honours config
    lg2_bf16 = logits_of(m2_bf16, ids)
    # HF refuses model.float() on a quantized model; load the bf16 checkpoint as float32 instead
    # (bf16 -> f32 is exact) and check it equals nn.Module.float() applied to the bf16 model.
    m2 = load(p2, dtype=torch.float32)
    lg2_mod_float = logits_of(torch.nn.Module.float(m2_bf16), ids)
    assert torch.equal(logits_of(m2, ids), lg2_mod_float)
    bf16_dev = float((lg2_bf16 - lg2_mod_float).abs().max())
    finish(name, p2, "Online quantization of latent bfloat16 weights (all tensors bf16 in the file,"
           " config dtype bfloat16); untied lm_head; MHA 4 heads / 4 KV heads; rope_parameters"
           " {rope_theta 500000.0, rope_type default}. The reference was computed by loading the bf16"
           " checkpoint and then calling model.float(): float32 maths on the bf16-rounded latent weights"
           " (weight quantization, activation quantization, norms, attention all in f32). HF refuses"
           " model.float() on a quantized model, so it was loaded with from_pretrained(dir,"
           " dtype=torch.float32), checked bit-identical to torch.nn.Module.float() of the bf16 model."
           f" (Running HF in bf16 instead deviates by up to {bf16_dev:.3g} in the logits.)",
           expect="AutoBitLinear", model=m2)

    # 3. offline_autobitlinear (same latent weights as fixture 1) -------------
    name = "offline_autobitlinear"
    p3 = out / name
    shutil.rmtree(p3, ignore_errors=True)
    save_offline(p1, p3, linear_class="autobitlinear", old_style=False, rope_theta=None)
    m3 = load(p3)
    lg3 = logits_of(m3, ids)
    diff3 = float((lg3 - lg1).abs().max())
    print(f"[{name}] max|offline - online(same latent)| = {diff3:.3g}")
    assert diff3 < 1e-3, diff3
    finish(name, p3, "Offline packed checkpoint, linear_class autobitlinear: each q/k/v/o/gate/up/down"
           " 'weight' is uint8 [out/4, in] packed with HF pack_weights (value+1 in bits 2i..2i+1 of byte"
           " [r,c] = row i*(out/4)+r), plus 'weight_scale' f32 [1] = mean|W| (a multiplier: output ="
           " linear(ActQuant(x), Wq) * weight_scale). Same latent weights and architecture as"
           " online_f32_tied_gqa (tied, GQA 4/2, rope_theta 10000 but written as rope_parameters); max"
           f" |logit diff| vs the online model from those latent weights: {diff3:.3g}.",
           expect="AutoBitLinear", model=m3)
    report[name]["vs_online"] = diff3

    # 4. offline_bitlinear ----------------------------------------------------
    name = "offline_bitlinear"
    p4 = out / name
    shutil.rmtree(p4, ignore_errors=True)
    cfg4 = base_config(kv_heads=2, tied=False, vocab=vocab, bos=bos, eos=eos, rope_theta=500000.0)
    latent4, seed4 = choose_latent(cfg4, 4, ids, work)
    tmp4 = work / "offline_bitlinear_latent"
    save_online(latent4, tmp4, dtype=torch.float32, old_style=True, rope_theta=500000.0)
    lg4_online = logits_of(load(tmp4), ids)
    save_offline(tmp4, p4, linear_class="bitlinear", old_style=True, rope_theta=500000.0)
    m4 = load(p4)
    lg4 = logits_of(m4, ids)
    diff4 = float((lg4 - lg4_online).abs().max())
    print(f"[{name}] max|offline - online(same latent)| = {diff4:.3g}")
    assert diff4 < 1e-3, diff4
    finish(name, p4, "Offline packed checkpoint, linear_class bitlinear (HF BitLinear class): 'weight' uint8"
           " [out/4, in] (same packing as autobitlinear) plus 'weight_scale' f32 [1] = 1/mean|W|; verified"
           " in transformers' source: BitLinear.forward computes y = linear(int8 xq, Wq) / (weight_scale *"
           " act_scale), act_scale = 127/max|x| per token, i.e. it DIVIDES by weight_scale, so the stored"
           " value is the inverse of autobitlinear's. Untied lm_head (f32, not quantized); GQA 4/2;"
           " old-style config (top-level rope_theta 500000.0, torch_dtype float32). Max |logit diff| vs"
           f" the online AutoBitLinear model from the same latent weights: {diff4:.3g}.",
           expect="BitLinear", model=m4)
    report[name]["vs_online"] = diff4

    # 5. offline_autobitlinear_256: dims that every GGUF ternary type can hold -------------
    # (hidden 256 and intermediate 512 are multiples of the 256-weight TQ blocks and of I2_S's
    # 128), so `bitnet convert` round trips (I2_S, TQ2_0, TQ1_0) are tested on a real fixture.
    name = "offline_autobitlinear_256"
    p5 = out / name
    shutil.rmtree(p5, ignore_errors=True)
    cfg5 = base_config(kv_heads=2, tied=True, vocab=vocab, bos=bos, eos=eos, rope_theta=10000.0,
                       hidden=256, inter=512)
    latent5, seed5 = choose_latent(cfg5, 5, ids, work)
    tmp5 = work / "offline_256_latent"
    save_online(latent5, tmp5, dtype=torch.float32, old_style=False, rope_theta=None)
    lg5_online = logits_of(load(tmp5), ids)
    save_offline(tmp5, p5, linear_class="autobitlinear", old_style=False, rope_theta=None)
    m5 = load(p5)
    diff5 = float((logits_of(m5, ids) - lg5_online).abs().max())
    assert diff5 < 1e-3, diff5
    finish(name, p5, "Offline packed autobitlinear like offline_autobitlinear, but hidden 256,"
           " intermediate 512, 4 heads (head_dim 64) / 2 KV heads, tied: dimensions that I2_S (128-blocks)"
           " and TQ1_0/TQ2_0 (256-blocks) can hold, for the GGUF conversion round-trip tests. Max |logit"
           f" diff| vs the online model from the same latent weights: {diff5:.3g}.",
           expect="AutoBitLinear", model=m5)
    report[name]["vs_online"] = diff5

    shutil.rmtree(work, ignore_errors=True)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"total fixture size: {total / 1e6:.3f} MB")
    assert total < 3e6
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
