"""Writes gguf_py_bitnet.gguf with llama.cpp's own `gguf` package (PyPI `gguf`, 0.19.0).

It is the reference our GGUF reader (and bitnet-quant's TQ1_0/TQ2_0 unpacking) is tested
against in tests/loaders.rs. Usage:

    python3 -m venv /tmp/ggufpy && /tmp/ggufpy/bin/pip install gguf==0.19.0
    /tmp/ggufpy/bin/python crates/bitnet-inference/tests/data/make_gguf_py_fixture.py
"""
from pathlib import Path

import gguf
import numpy as np

OUT = Path(__file__).with_name("gguf_py_bitnet.gguf")


def ternary(rows, cols, k):
    """A fixed ternary pattern: ((r*7 + c*3 + k) % 3) - 1."""
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    return (((r * 7 + c * 3 + k) % 3) - 1).astype(np.float32)


w = gguf.GGUFWriter(str(OUT), "bitnet")
w.add_name("gguf-py reference")
w.add_context_length(128)
w.add_embedding_length(256)
w.add_block_count(1)
w.add_feed_forward_length(64)
w.add_head_count(4)
w.add_head_count_kv(2)
w.add_rope_freq_base(500000.0)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_dimension_count(64)
w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
w.add_rope_scaling_factor(1.0)
w.add_file_type(gguf.LlamaFileType.MOSTLY_TQ2_0)
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("llama-bpe")
w.add_token_list(["<s>", "</s>", "a", "b"])
w.add_token_types([3, 3, 1, 1])
w.add_token_merges(["a b"])
w.add_bos_token_id(0)
w.add_eos_token_id(1)
w.add_chat_template("{{ bos_token }}")
w.add_tensor("token_embd.weight", np.arange(4 * 256, dtype=np.float32).reshape(4, 256) / 8)
w.add_tensor("blk.0.attn_norm.weight", np.full(256, 1.5, dtype=np.float16))
up = gguf.quants.quantize(ternary(64, 256, 0) * 0.5, gguf.GGMLQuantizationType.TQ2_0)
w.add_tensor("blk.0.ffn_up.weight", up, raw_dtype=gguf.GGMLQuantizationType.TQ2_0)
gate = gguf.quants.quantize(ternary(64, 256, 1) * 0.25, gguf.GGMLQuantizationType.TQ1_0)
w.add_tensor("blk.0.ffn_gate.weight", gate, raw_dtype=gguf.GGMLQuantizationType.TQ1_0)
w.add_tensor("blk.0.ffn_gate.scale", np.array([0.25], dtype=np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(OUT, OUT.stat().st_size)
