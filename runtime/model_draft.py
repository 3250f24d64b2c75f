"""Drafts from a second, smaller model with the same vocabulary (`--spec draft:PATH`,
`Model.load(..., draft=PATH)`), as llama.cpp's --model-draft.

The draft model runs greedily on its own engine and KV cache, which follows the target's text:
before each round it keeps the longest prefix it shares with the history and evaluates the
rest (after a rejected draft, just the tokens the target took instead). The target verifies the
drafts exactly (verified_draft.py), so the output is the target's alone; the draft model only
changes the speed.

The vocabularies must be the same, as llama.cpp checks them: the same tokenizer model, BOS and
EOS, vocabulary sizes within 128 of each other and the same token text at every id both have.
A draft token the target does not have ends the proposal.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .verified_draft import VerifiedDraft

MAX_VOCAB_DIFFERENCE = 128      # llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE


class IncompatibleDraftError(ValueError):
    """The draft model's vocabulary is not the target's."""


def check_vocabularies(target_kv: dict, draft_kv: dict, draft_name: str) -> None:
    """IncompatibleDraftError naming the first difference between two files' vocabularies."""
    def differ(what: str) -> IncompatibleDraftError:
        return IncompatibleDraftError(f"the draft model {draft_name} cannot draft for this model: {what}")

    for key in ("tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        if target_kv.get(key) != draft_kv.get(key):
            raise differ(f"{key} is {draft_kv.get(key)!r}, the model's {target_kv.get(key)!r}")
    mine, theirs = target_kv["tokenizer.ggml.tokens"], draft_kv["tokenizer.ggml.tokens"]
    if abs(len(mine) - len(theirs)) > MAX_VOCAB_DIFFERENCE:
        raise differ(f"{len(theirs)} tokens against the model's {len(mine)}")
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if a != b:
            raise differ(f"token {i} is {b!r}, the model's {a!r}")


class ModelDraft(VerifiedDraft):
    """The engine's draft from a smaller model (Engine(draft=PATH))."""

    kind = "model"

    def __init__(self, target, draft_path: str | os.PathLike, max_draft: int):
        from ..formats.gguf import read_gguf
        from .engine import Engine

        super().__init__(max_draft)
        draft_file = read_gguf(draft_path)   # the header: the vocabulary is checked before any loading
        check_vocabularies(target.gguf.kv, draft_file.kv, os.path.basename(str(draft_path)))
        self.engine = Engine(draft_file, n_ctx=target.n_ctx, threads=target.threads if target.governor is None else None,
                             n_batch=target.n_batch, draft=False)
        self.n_vocab = target.cfg.n_vocab
        self.ids: list[int] = []        # the tokens in the draft engine's cache

    def _follow(self, history: Sequence[int]) -> None:
        """Make the draft cache hold `history`: keep the shared prefix, evaluate the rest."""
        n = min(len(self.ids), len(history))
        differs = np.nonzero(np.asarray(self.ids[:n]) != np.asarray(history[:n]))[0]
        n = int(differs[0]) if differs.size else n
        self.engine.truncate(n)
        del self.ids[n:]
        if len(history) > n:
            self.engine.eval(list(history[n:]))
            self.ids.extend(history[n:])

    def propose(self, history: Sequence[int], k: int) -> list[int]:
        """The draft model's greedy continuation of `history`, up to k tokens."""
        self._follow(history[:-1])
        drafts: list[int] = []
        token = history[-1]
        while True:
            logits = self.engine.eval([token])
            self.ids.append(token)
            token = int(np.argmax(logits))
            if token >= self.n_vocab:
                break
            drafts.append(token)
            if len(drafts) == k:
                break
        return drafts
