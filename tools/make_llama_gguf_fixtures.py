"""Writes `ggml-model-f16.gguf` into the two LLaMA-architecture fixtures with llama.cpp's own
converter (`convert_hf_to_gguf.py`), as llama.cpp users make GGUF files of
HF1BitLLM/Llama3-8B-1.58 and tiiuae/Falcon3-*-1.58bit: it dequantizes the packed BitLinear
weights (`quant_method: bitnet`), permutes the q/k rows for llama.cpp's RoPE, and writes
`rope_freqs` for Llama-3 scaling. tests/loaders_llama_gguf.rs checks our loader against each
fixture's `reference.json` (HF transformers' logits) through these files.

The one change to the converter: the fixtures' small BPE tokenizer is not one of llama.cpp's
known pre-tokenizers (it hashes the tokens of a test string), so `get_vocab_base_pre` is made
to answer `gpt2`, which is what the tokenizer's ByteLevel pre-tokenizer is.

Usage (a llama.cpp checkout, e.g. the `vendor/llama.cpp` of the llama-cpp-python 0.3.9 sdist,
and a Python with torch, transformers, numpy, sentencepiece):

    /root/venvs/bitnet-ref/bin/python tools/make_llama_gguf_fixtures.py /path/to/llama.cpp
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTTYPE = "f32"
FIXTURES = ["llama_offline_bitlinear", "llama3_rope_scaling"]


def main():
    llama_cpp = Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(llama_cpp))
    sys.path.insert(1, str(llama_cpp / "gguf-py"))
    import convert_hf_to_gguf as conv
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt2"
    for name in FIXTURES:
        src = ROOT / "tests" / "fixtures" / name
        out = src / f"ggml-model-{OUTTYPE}.gguf"
        # --no-lazy: the lazy (meta-device) path fails in the bitnet dequantization with torch 2.15.
        sys.argv = ["convert_hf_to_gguf.py", str(src), "--outtype", OUTTYPE, "--no-lazy",
                    "--outfile", str(out)]
        conv.main()
        print(out, out.stat().st_size)


if __name__ == "__main__":
    main()
