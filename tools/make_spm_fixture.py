#!/usr/bin/env python3
"""Writes tests/fixtures/spm/: a tiny Llama-2-style SentencePiece BPE model and reference ids.

`tokenizer.model` is trained here (BPE, byte fallback, identity normalization, no whitespace
collapsing, digits split: the options of Llama-2's tokenizer.model) on the first lines of
shared/data/tinyshakespeare.txt plus a few accented lines. `expected.json` holds, per test
string, the ids of (a) the `sentencepiece` processor and (b) transformers' `LlamaTokenizerFast`
loaded from a directory holding only that tokenizer.model, with `legacy=True` (and, as
`hf_non_legacy`, with `legacy=False`), both with `add_bos_token=False`, plus decode round trips.

    /root/venvs/bitnet-ref/bin/pip install sentencepiece protobuf
    /root/venvs/bitnet-ref/bin/python tools/make_spm_fixture.py
"""

import io
import json
import os
import shutil
import sys
import tempfile

import sentencepiece as spm
import tokenizers
import transformers
from transformers import LlamaTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "spm")
DATA = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
if not os.path.exists(DATA):
    DATA = "/work/shared/data/tinyshakespeare.txt"

TEXTS = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "Hello world",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "multiple   inner    spaces",
    "line one\nline two\n\nafter a blank line",
    "tab\tseparated\tcolumns",
    "\n starts with a newline",
    "digits 0123456789 and 3.14159, 1,000,000!",
    "punctuation: (a) [b] {c} <d> \"e\" 'f' -- g; h? i! j... k/l\\m @#$%^&*_+=|~`",
    "accents: café naïve résumé déjà vu, Zürich, Ångström, smørrebrød",
    "CJK: 中文字符测试，日本語のテキスト、한국어",
    "emoji 🤖🎉👍🏽 and flags 🇫🇷 and ∑∫√ maths",
    "",
    " ",
    "text with <s> inside a sentence and </s> too",
    "<s>at the start",
    "a user-defined<sep>piece and <sep> spaced",
    "<unk> literal",
    "ALL CAPS AND MiXeD cAsE",
]


def corpus():
    with open(DATA, encoding="utf-8") as f:
        lines = f.read()[:6000].split("\n")
    accented = [
        "Le café est naïve, à Zürich, un résumé déjà vu.",
        "Él está aquí; the résumé of the café was naïve.",
    ]
    return [l for l in lines + accented * 4 if l.strip()]


def train():
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=560,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        character_coverage=1.0,
        user_defined_symbols=["<sep>"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return buf.getvalue()


def main():
    model = train()
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "tokenizer.model"), "wb") as f:
        f.write(model)
    sp = spm.SentencePieceProcessor(model_proto=model)

    tmp = tempfile.mkdtemp()
    try:
        shutil.copy(os.path.join(OUT, "tokenizer.model"), tmp)
        hf = LlamaTokenizerFast.from_pretrained(tmp, legacy=True, add_bos_token=False)
        hf_nl = LlamaTokenizerFast.from_pretrained(tmp, legacy=False, add_bos_token=False)
    finally:
        shutil.rmtree(tmp)
    backend = json.loads(hf.backend_tokenizer.to_str())
    assert backend["model"]["byte_fallback"] and backend["model"]["fuse_unk"], backend["model"]
    assert backend["pre_tokenizer"]["prepend_scheme"] == "always", backend["pre_tokenizer"]
    assert json.loads(hf_nl.backend_tokenizer.to_str())["pre_tokenizer"]["prepend_scheme"] == "first"

    # The recipe of transformers 4's LlamaConverter (legacy), which is also what Llama-2's own
    # tokenizer.json holds: normalizer Prepend("▁") + Replace(" ", "▁") and no pre-tokenizer, on the same
    # vocabulary and merges. This is what we match in legacy mode: unlike transformers 5's Metaspace
    # pre-tokenizer it always prepends, as sentencepiece (which trained the models) and llama.cpp do.
    v4 = dict(backend)
    v4["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    v4["pre_tokenizer"] = None
    v4 = tokenizers.Tokenizer.from_str(json.dumps(v4))

    specials = ("<s>", "</s>", "<unk>", "<sep>")
    cases, differ, differ_v4 = [], [], []
    for text in TEXTS:
        ids_sp = sp.encode(text)
        ids_hf = hf.encode(text, add_special_tokens=False)
        assert ids_hf == hf.encode(text), "add_bos_token=False: no post-processor ids"
        ids_nl = hf_nl.encode(text, add_special_tokens=False)
        ids_v4 = v4.encode(text, add_special_tokens=False).ids
        if not any(t in text for t in specials):
            assert ids_v4 == ids_sp, (text, ids_v4, ids_sp)  # the legacy recipe is sentencepiece's tokenization
        case = {
            "text": text,
            "sentencepiece": ids_sp,
            "sentencepiece_decoded": sp.decode(ids_sp),
            "hf": ids_hf,
            "hf_pieces": hf.convert_ids_to_tokens(ids_hf),
            "hf_decoded": hf.decode(ids_hf),
            "hf_decoded_skip_special": hf.decode(ids_hf, skip_special_tokens=True),
            "hf_non_legacy": ids_nl,
            "legacy": ids_v4,
            "legacy_pieces": [v4.id_to_token(i) for i in ids_v4],
            "legacy_decoded": v4.decode(ids_v4, skip_special_tokens=False),
            "legacy_decoded_skip_special": v4.decode(ids_v4, skip_special_tokens=True),
        }
        cases.append(case)
        if ids_sp != ids_hf:
            differ.append(text)
        if ids_v4 != ids_hf:
            differ_v4.append(text)

    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    expected = {
        "notes": (
            "hf = transformers LlamaTokenizerFast.from_pretrained(dir with only tokenizer.model, "
            "legacy=True, add_bos_token=False).encode(text, add_special_tokens=False); "
            "hf_non_legacy = the same with legacy=False; sentencepiece = SentencePieceProcessor.encode(text). "
            "texts_where_sentencepiece_differs lists where sentencepiece and hf disagree; "
            "legacy = transformers 4's legacy LlamaConverter recipe, which Llama-2's own tokenizer.json also "
            "holds (normalizer Prepend + Replace, no pre-tokenizer) on the same vocabulary and merges, built with "
            "the tokenizers library: equal to sentencepiece on every text without special-token strings (asserted); "
            "texts_where_v4_normalizer_recipe_differs lists where it disagrees with hf (transformers 5 uses a "
            "Metaspace pre-tokenizer that does not prepend to text already starting with a space)."
        ),
        "versions": {
            "python": sys.version.split()[0],
            "sentencepiece": spm.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "vocab_size": sp.get_piece_size(),
        "unk_id": sp.unk_id(),
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "hf_bos_id": hf.bos_token_id,
        "hf_eos_id": hf.eos_token_id,
        "hf_backend": {k: backend[k] for k in ("normalizer", "pre_tokenizer", "decoder")},
        "hf_merges": backend["model"]["merges"],
        "byte_pieces": sum(1 for p in pieces if p.startswith("<0x") and len(p) == 6),
        "texts_where_sentencepiece_differs": differ,
        "texts_where_v4_normalizer_recipe_differs": differ_v4,
        "cases": cases,
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"tokenizer.model: {len(model)} bytes, {sp.get_piece_size()} pieces; "
          f"{len(differ)} of {len(TEXTS)} texts differ between sentencepiece and HF")
    for t in differ:
        print("  sentencepiece differs:", repr(t))
    for t in differ_v4:
        print("  v4 normalizer recipe differs:", repr(t))


if __name__ == "__main__":
    main()
