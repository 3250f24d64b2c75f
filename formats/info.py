"""`lantern info MODEL`: what a GGUF file holds, read from its header only."""
from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np

from .catalog import resolve
from .gguf import GGUFFile, read_gguf
from .metadata import read


def describe(g: GGUFFile) -> dict:
    """A plain-dict summary of a model file (what `lantern info --json` prints); metadata of the
    wrong type or out of range raises MetadataError naming the key."""
    kv = g.kv
    arch = read(kv, "general.architecture", "?")
    tokens = read(kv, "tokenizer.ggml.tokens", [])

    def token(key):
        i = read(kv, key, None)
        return None if i is None else {"id": i, "text": tokens[i] if 0 <= i < len(tokens) else None}

    types = Counter(t.type.name for t in g.tensors.values())
    return {
        "path": str(g.path),
        "file_size": os.path.getsize(g.path),
        "gguf_version": g.version,
        "architecture": arch,
        "name": read(kv, "general.name", None),
        "parameters": int(sum(int(np.prod(t.shape, dtype=np.int64)) for t in g.tensors.values())),
        "tensors": len(g.tensors),
        "tensor_types": dict(types.most_common()),
        "context_length": read(kv, f"{arch}.context_length", None),
        "embedding_length": read(kv, f"{arch}.embedding_length", None),
        "block_count": read(kv, f"{arch}.block_count", None),
        "experts": read(kv, f"{arch}.expert_count", None),
        "experts_used": read(kv, f"{arch}.expert_used_count", None),
        "tokenizer": read(kv, "tokenizer.ggml.model", None),
        "pre_tokenizer": read(kv, "tokenizer.ggml.pre", None),
        "vocab_size": len(tokens),
        "chat_template": "tokenizer.chat_template" in kv,
        "bos": token("tokenizer.ggml.bos_token_id"),
        "eos": token("tokenizer.ggml.eos_token_id"),
    }


def configure_parser(p) -> None:
    p.add_argument("model", help="GGUF path or catalog name")
    p.add_argument("--json", action="store_true", help="print the summary as one line of JSON")


def main(args) -> int:
    with read_gguf(resolve(args.model)) as g:
        info = describe(g)
    if args.json:
        # ASCII: JSON leaves U+2028, NEL and C1 controls from the file raw, which split lines
        # for some readers and reach the terminal
        print(json.dumps(info))
        return 0
    p = info["parameters"]
    rows = [
        ("file", f"{info['path']} ({info['file_size'] / 1e6:.1f} MB, GGUF v{info['gguf_version']})"),
        ("name", info["name"]),
        ("architecture", info["architecture"]),
        ("parameters", f"{p / 1e9:.2f} B" if p >= 1e9 else f"{p / 1e6:.1f} M"),
        ("layers / width", f"{info['block_count']} / {info['embedding_length']}"),
        ("context length", info["context_length"]),
        *([("experts", f"{info['experts']} ({info['experts_used']} per token)")] if info["experts"] else []),
        ("tensor types", ", ".join(f"{k} x{v}" for k, v in info["tensor_types"].items())),
        ("vocabulary", f"{info['vocab_size']} tokens ({info['tokenizer']}, pre: {info['pre_tokenizer']})"),
        ("chat template", "yes" if info["chat_template"] else "no"),
        ("BOS / EOS", f"{_tok(info['bos'])} / {_tok(info['eos'])}"),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {_printable(v)}")
    return 0


def _printable(value) -> str:
    """Text from the file as one line without terminal control characters (escaped instead)."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _tok(t) -> str:
    return "none" if t is None else f"{t['id']} {t['text']!r}"
