"""Drafting tokens without the output head, and verifying them with one read of it.

Under a RAM budget, the output head is usually what streams: it claims the budget last, and
it is large (30% of qwen2.5-coder-0.5b's file; gemma3-270m's tied embeddings are 70% of its
file). Plain decode reads all of it for every token. A drafting engine instead sets aside part
of the budget for the head rows of the tokens most likely to come next (those of a calibration
text, then the lowest ids: BPE and SentencePiece vocabularies list their common pieces early),
and one round goes:

1. draft: the decode graph runs k times, its head cut down to those rows; each step's guess is
   the next step's input. Everything before the head is the model's own on the same kernels
   (streamed layers are read as decode reads them), so each step's final hidden state and KV
   entries are exactly the ones decode computes;
2. verify: the head streams from disk once for all k hidden states (on a stream of its own),
   through the very matvec kernel decode uses on the same row chunks, so the k rows of logits
   are bit-identical to decode's;
3. the caller samples those rows in order and keeps drafted tokens while its samples agree
   (generate.py); the cache is cut back after the first disagreement.

So each read of the head serves several tokens, and the output is exactly plain decode's, for
any sampler (one sample per emitted token, from the same logits, in the same order).

The rows claim the budget only where drafting is expected to read MIN_GAIN times fewer bytes
per token (`draft_pays`). The draft length k is chosen each round from measurements
(`DraftLength`): the seconds of a draft step, a verification and a plain step, and the rate at
which drafts are kept. Where layers stream, a draft step reads them too; k = 1 (plain decode)
wins when that costs more than drafting saves.
A draft that skipped streamed layers instead would agree with the model on only 70-86% of
tokens for each FFN skipped (measured on qwen2.5-coder-0.5b), and its hidden states would not
be the model's, so verification would have to recompute the layers.
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from ..quant import QTYPES
from .backends.cpu import quant_type, row_shape
from .backends.cpu_streaming import StreamingCpuBackend, row_chunks, streamed_matmul
from .draft_counts import DraftCounts, KeptRate, expected_tokens, moving_average
from .executor import Executor
from .graph import Graph, Op

MAX_DRAFT = 8             # tokens drafted per round, at most
DRAFT_ROWS = 32768        # head rows a draft keeps, at most: 95% of the next tokens of held-out
                          # prose are among them for qwen2.5-coder and gemma3, all for SmolLM2
DRAFT_BUDGET_SHARE = 8    # ... and at most 1/8 of the budget
MIN_DRAFT_ROWS = 1024     # fewer rows than this guess too rarely to pay for drafting
# The draft's rows are requantized to Q4_0 where that is smaller than the head's own type: a
# guess needs only the top token, and twice the rows in the same bytes guess right more often.
DRAFT_TYPE = GGMLQuantizationType.Q4_0
# They are converted with gguf-py's numpy dequantizer and quantizer (byte-identical to ours), a
# few rows at a time: loading a parallel Numba kernel the model does not otherwise use (the
# head type's dequantizer) cost the process 40 MiB, more than the draft's rows, which under a
# tight memory cap (an automatic budget) decides between running and being killed.
REQUANTIZE_ROWS = 256


def draft_row_type(head_ref):
    """The QuantType of a draft's head rows: DRAFT_TYPE where it is smaller and fits the rows."""
    own, small = quant_type(head_ref), QTYPES[DRAFT_TYPE]
    n = int(head_ref.shape[-1])
    fits = n % small.block_size == 0
    return small if fits and small.row_bytes(n) < own.row_bytes(n) else own


def draft_buffer_bytes(n_vocab: int) -> int:
    """Memory a draft holds besides its rows: the verified logits (MAX_DRAFT rows) and the
    draft head's scores."""
    return (MAX_DRAFT * n_vocab + DRAFT_ROWS) * 4


def draft_rows(head_ref, budget: int) -> tuple[int, int]:
    """(rows, bytes): how many head rows a draft keeps under `budget` bytes of weights, and
    their size ((0, 0): no draft)."""
    row_bytes = draft_row_type(head_ref).row_bytes(int(head_ref.shape[-1]))
    rows = min(DRAFT_ROWS, row_shape(head_ref)[0], budget // DRAFT_BUDGET_SHARE // row_bytes)
    return (rows, rows * row_bytes) if rows >= MIN_DRAFT_ROWS else (0, 0)


# Before anything is measured: the rate at which a drafted token is kept when tested (measured
# on held-out prose: 0.73-0.95 over the catalog models and budgets), and the factor by which
# drafting must be expected to cut the bytes read per token for its rows to claim the budget:
# each draft step has costs besides its reads (SmolLM2 at 70%, 1.10x fewer bytes expected,
# decoded 30% slower with drafts; qwen2.5-coder at 30%, 1.17x, 1.5x faster).
ASSUMED_ACCEPTANCE = 0.8
MIN_GAIN = 1.15


def draft_pays(body: int, body_with_draft: int, head: int) -> bool:
    """Whether drafting is expected to read MIN_GAIN times fewer bytes per token. Plain decode
    reads the streamed body and the head for each token; with the draft's rows resident the body
    that streams grows to body_with_draft, read at every draft step, and a round of k steps reads
    the head once for 1 + a + ... + a^(k-1) tokens."""
    best = min((k * body_with_draft + head) / expected_tokens(ASSUMED_ACCEPTANCE, k)
               for k in range(2, MAX_DRAFT + 1))
    return best * MIN_GAIN < body + head


def draft_token_order(tokenizer, text: str, n_vocab: int) -> np.ndarray:
    """Every token id, most likely first: those of `text` by count, then the rest by id."""
    counts = Counter(int(t) for t in tokenizer.encode(text, add_special=False))
    seen = np.asarray([t for t, _ in counts.most_common() if 0 <= t < n_vocab], dtype=np.int64)
    rest = np.setdiff1d(np.arange(n_vocab, dtype=np.int64), seen)
    return np.concatenate([seen, rest])


def likely_tokens(engine, n_vocab: int) -> np.ndarray:
    """draft_token_order on the offload module's calibration text, or plain id order for a
    file whose tokenizer lanternlm cannot build (the engine runs token ids without one)."""
    from ..offload.texts import read_text

    try:
        tokenizer = engine.tokenizer
    except ValueError:
        return np.arange(n_vocab, dtype=np.int64)
    return draft_token_order(tokenizer, read_text("calibration"), n_vocab)


def head_node(graph: Graph):
    """The graph's output head: the MUL_MAT that writes its output, or None."""
    for node in graph.nodes:
        if node.op is Op.MUL_MAT and node.out is graph.output:
            return node
    return None


class DraftLength:
    """Chooses k, the tokens drafted per round, to minimise the expected seconds per token:

        k = 1 (plain decode):  plain
        k >= 2:                (k * step + verify) / (1 + a + ... + a^(k-1))

    plain, step and verify are measured seconds (moving averages) of a plain decode step, a
    draft step and a verification; a is the measured rate at which the caller keeps a drafted
    token it tests. Every PROBE_EVERY-th round runs the choice not taken (plain decode, or a
    draft of 2), so that its estimate keeps up with the machine."""

    PROBE_EVERY = 16

    def __init__(self, max_draft: int, first: int = 4):
        self.max_draft = max_draft
        self.first = min(first, max_draft)
        self.plain = self.step = self.verify = None      # seconds
        self.rate = KeptRate()
        self._rounds = 0

    @property
    def acceptance(self) -> float | None:
        return self.rate.value

    def timed_plain(self, seconds: float) -> None:
        self.plain = moving_average(self.plain, seconds)

    def timed(self, k: int, draft_seconds: float, verify_seconds: float) -> None:
        self.step = moving_average(self.step, draft_seconds / k)
        self.verify = moving_average(self.verify, verify_seconds)

    def kept_of(self, tested: int, kept: int) -> None:
        self.rate.add(tested, kept)

    def expected_seconds(self, k: int) -> float:
        if k == 1:
            return self.plain
        return (k * self.step + self.verify) / expected_tokens(self.acceptance, k)

    def next(self) -> int:
        self._rounds += 1
        if self.step is None or self.acceptance is None:
            return self.first
        if self.plain is None:
            return 1
        k = min(range(1, self.max_draft + 1), key=self.expected_seconds)
        if self._rounds % self.PROBE_EVERY == 0:
            return 2 if k == 1 else 1
        return k


class _DraftBinder:
    """Binds the decode graph as the backend does, except the head: its matvec runs on the
    draft's rows only, and its input (the final hidden state) is remembered."""

    def __init__(self, backend, draft: ResidentDraft):
        self.backend = backend
        self.draft = draft
        self.zeros = backend.zeros

    def bind(self, node, out, srcs, t):
        draft = self.draft
        if node.op is Op.MUL_MAT and node.weights[0] == draft.head:
            draft.head_input = srcs[0]
            return [(draft.row_type.matvec, (draft.scores, draft.head_rows, srcs[0][0]))]
        return self.backend.bind(node, out, srcs, t)


class ResidentDraft(DraftCounts):
    """Draft steps with a few head rows; verification of k steps with one read of the streamed
    head. See the module docstring; Engine.speculate runs a round."""

    def __init__(self, backend: StreamingCpuBackend, decode_graph: Graph, head: str, token_ids: np.ndarray,
                 max_draft: int = MAX_DRAFT):
        """token_ids: the head rows the draft keeps (sorted ids); the head must stream on a
        stream of its own (weight_residency._placement arranges it)."""
        ref = backend.tensors[head]
        self.backend = backend
        self.head = head
        self.token_ids = np.asarray(token_ids, dtype=np.int64)
        self.row_type = draft_row_type(ref)
        self.head_rows = self._read_rows(backend, ref, self.token_ids, self.row_type)
        self.matmul = quant_type(ref).row_exact_matmul   # verification: rows exactly decode's
        self.scores = np.empty(self.token_ids.shape[0], dtype=np.float32)
        self.max_draft = max_draft
        n_vocab, n_embd = int(ref.shape[0]), int(ref.shape[1])
        self.hidden = np.empty((max_draft, n_embd), dtype=np.float32)
        self.logits = np.empty((max_draft, n_vocab), dtype=np.float32)
        self.head_input: np.ndarray | None = None      # set when the draft program is bound
        self.executor = Executor(_DraftBinder(backend, self), {"decode": decode_graph}, 1)
        self.program = self.executor.program("decode", 1)
        self._verify_calls: dict[int, list] = {}
        self.length = DraftLength(max_draft)
        super().__init__()

    @property
    def nbytes(self) -> int:
        """Weights the draft holds in RAM (its head rows)."""
        return self.head_rows.nbytes

    @staticmethod
    def _read_rows(backend, ref, token_ids, row_type) -> np.ndarray:
        """The head rows of `token_ids` as `row_type`, read chunk by chunk at the disk's
        sequential rate (and requantized a few rows at a time)."""
        own = quant_type(ref)
        n = int(ref.shape[-1])
        _, row_bytes = row_shape(ref)
        rows = np.empty((token_ids.shape[0], row_type.row_bytes(n)), dtype=np.uint8)
        for r0, r1 in row_chunks(ref):
            lo, hi = np.searchsorted(token_ids, [r0, r1])
            if lo == hi:
                continue
            chunk = backend.reader.read_copy(ref.offset + r0 * row_bytes, (r1 - r0) * row_bytes)
            picked = chunk.reshape(r1 - r0, row_bytes)[token_ids[lo:hi] - r0]
            if row_type is own:
                rows[lo:hi] = picked
                continue
            for i in range(0, hi - lo, REQUANTIZE_ROWS):
                values = gguf_quants.dequantize(picked[i:i + REQUANTIZE_ROWS], own.qtype)
                rows[lo + i:lo + i + values.shape[0]] = gguf_quants.quantize(values, row_type.qtype)
        return rows

    # ---- one round -----------------------------------------------------------------------------
    def guess(self, j: int) -> int:
        """After the draft program ran for the round's position j: keep its hidden state and
        return its guess of the next token."""
        self.hidden[j] = self.head_input[0]
        return int(self.token_ids[int(np.argmax(self.scores))])

    def verify(self, k: int) -> np.ndarray:
        """f32 (k, n_vocab): the model's logits at the round's first k positions (an internal
        buffer, valid until the next round)."""
        calls = self._verify_calls.get(k)
        if calls is None:
            calls = self._verify_calls[k] = self._bind_verify(k)
        for fn, args in calls:
            fn(*args)
        return self.logits[:k]

    def _bind_verify(self, k: int) -> list:
        ref = self.backend.tensors[self.head]
        _, row_bytes = row_shape(ref)
        chunks = row_chunks(ref)
        scratch = np.empty(k * max(r1 - r0 for r0, r1 in chunks), dtype=np.float32)  # a chunk's k rows
        return [(streamed_matmul, (*self.backend.stream_item(self.head, r0), self.matmul, self.logits[:k, r0:r1],
                                    self.hidden[:k], (r1 - r0, row_bytes), scratch))
                for r0, r1 in chunks]

    def speculate(self, engine, token: int, k: int, history=()):
        """Run a round from `token` (appended to the cache with k - 1 drafts): (k drafts, their
        k rows of logits). The history is not needed: the model guesses."""
        prog, drafts = self.program, []
        start = time.perf_counter()
        for j in range(k):
            prog.ids[0] = drafts[-1] if drafts else token
            prog.place(engine.kv.n_past + j)
            engine._run(prog, "decode")
            drafts.append(self.guess(j))
        drafted = time.perf_counter()
        logits = self.verify(k)
        self.length.timed(k, drafted - start, time.perf_counter() - drafted)
        engine.kv.n_past += k
        return drafts, logits

    # ---- what the caller did with a round --------------------------------------------------------
    def next_length(self) -> int:
        return self.length.next()

    def timed_plain(self, seconds: float) -> None:
        """A round of plain decode (k = 1) took `seconds`."""
        self.counted_plain()
        self.length.timed_plain(seconds)

    def record(self, drafted: int, emitted: int, kept: int) -> None:
        super().record(drafted, emitted, kept)
        self.length.kept_of(emitted, kept)


def resident_draft(engine) -> ResidentDraft | None:
    """The draft of an engine whose backend was placed with draft rows (weight_residency:
    `backend.draft_rows`), or None."""
    backend = engine.backend
    n = getattr(backend, "draft_rows", 0)
    if not n or type(backend) is not StreamingCpuBackend:
        return None
    decode = engine.graphs["decode"]
    head = head_node(decode).weights[0]
    order = likely_tokens(engine, row_shape(backend.tensors[head])[0])
    draft = ResidentDraft(backend, decode, head, np.sort(order[:n]))
    backend.resident_bytes += draft.nbytes
    return draft
