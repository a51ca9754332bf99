#!/usr/bin/env python3
"""Check that HF transformers loads a directory written by `bitnet train`, and that its
logits equal bitnet-rust's (within 1e-2 of the max |logit|, the parity tolerance).

Usage (from the repository root; never a CI dependency):

    /root/venvs/bitnet-ref/bin/python tools/check_hf_load.py models/default \
        [--bitnet target/release/bitnet] [--prompt "ROMEO:"]

It loads the directory with BitNetForCausalLM.from_pretrained and AutoTokenizer, checks the
projections are transformers' AutoBitLinear in offline mode, encodes the prompt with both
tokenizers, compares the f32 logits at every position with `bitnet logits --json`
(lm_head f32), and compares 16 greedy tokens with `bitnet generate --temperature 0`.
"""

import argparse
import json
import subprocess
import sys

import torch
from transformers import AutoTokenizer, BitNetForCausalLM
from transformers.integrations.bitnet import AutoBitLinear


def bitnet_json(binary, args):
    out = subprocess.run([binary, *args, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--bitnet", default="target/release/bitnet")
    ap.add_argument("--prompt", default="ROMEO:\nWhat light through yonder window breaks?")
    args = ap.parse_args()
    torch.set_num_threads(1)

    model = BitNetForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, AutoBitLinear) and not q.online_quant, type(q)
    print(f"loaded: {type(model).__name__}, q_proj is {type(q).__name__} (offline), "
          f"{sum(p.numel() for p in model.parameters())} parameters in torch")

    ids = tok(args.prompt).input_ids
    ours = bitnet_json(args.bitnet, ["generate", "-m", args.model_dir, "-p", args.prompt,
                                     "-n", "16", "--temperature", "0", "--repeat-penalty", "1",
                                     "--lm-head", "f32"])
    assert ours["prompt_ids"] == ids, f"tokenizers differ: {ours['prompt_ids']} vs {ids}"
    print(f"tokenizer: {len(ids)} ids, identical")

    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float()
    got = torch.tensor(bitnet_json(args.bitnet, ["logits", "-m", args.model_dir, "--ids",
                                                 ",".join(map(str, ids))])["logits"])
    maxmag = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    print(f"logits: max |err| = {err:.3e}, max |logit| = {maxmag:.3f}, ratio {err / maxmag:.2e}")
    top_equal = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"top-1 agreement over {len(ids)} positions: {top_equal:.3f}")

    with torch.no_grad():
        gen = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                             pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()
    same = gen == ours["generated_ids"]
    print(f"greedy 16 tokens: {'identical' if same else 'DIFFER'}\n  hf:   {tok.decode(gen)!r}\n"
          f"  ours: {ours['text']!r}")
    if not same:
        # As the parity tests: a divergence only counts where HF's top-2 margin exceeds the
        # tolerance (otherwise it is a tie that rounding may break either way).
        k = next(i for i, (a, b) in enumerate(zip(gen, ours["generated_ids"])) if a != b)
        with torch.no_grad():
            row = model(torch.tensor([ids + gen[:k]])).logits[0, -1].float()
        top2 = row.topk(2).values
        margin = (top2[0] - top2[1]).item()
        print(f"  first difference at generated token {k}: HF top-2 margin {margin:.2e} "
              f"(tolerance {1e-2 * maxmag:.2e}) -> {'a tie' if margin <= 1e-2 * maxmag else 'REAL'}")
        same = margin <= 1e-2 * maxmag
    ok = err <= 1e-2 * maxmag and same
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
