"""`lantern bench`: the measured work is exactly llama-bench's protocol (a warm-up, then per
repetition one p-token eval and n one-token evals, each from an empty cache, on the same seeded
ids), the JSON carries consistent figures, --vs-llama-cpp feeds llama.cpp the same ids with the
same settings, and a missing llama-cpp-python is one error line. Memory is read the same way for
both engines, private and file-backed pages apart; without -t, lantern runs its default thread
choice and says what it chose. Nothing asserts on speed."""
import json
import math
import sys
import types

import numpy as np
import pytest

from lanternlm import cli
from lanternlm.runtime import bench
from lanternlm.runtime.engine import Engine

P, N, R = 8, 4, 2
SMALL = ["-p", P, "-n", N, "-r", R, "-t", 1]


def run_bench(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(["bench", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def engine_calls(monkeypatch):
    """Every Engine.eval as (n_past before the call, ids)."""
    calls = []
    real_eval = Engine.eval

    def counting_eval(self, ids, all_logits=False):
        calls.append((self.n_past, [int(i) for i in ids]))
        return real_eval(self, ids, all_logits)

    monkeypatch.setattr(Engine, "eval", counting_eval)
    return calls


def expected_calls(prompt, gen, rounds):
    one_round = [(0, prompt)] + [(i, [tok]) for i, tok in enumerate(gen)]
    return one_round * rounds


def check_figures(d, n_prompt, n_gen, reps):
    for test, tokens in (("pp", n_prompt), ("tg", n_gen)):
        sub = d[test]
        assert sub["tokens"] == tokens and len(sub["seconds"]) == reps
        assert all(s > 0 and math.isfinite(s) for s in sub["seconds"])
        per_rep = [tokens / s for s in sub["seconds"]]
        assert d[f"{test}_tps"] == pytest.approx(np.mean(per_rep))
        assert d[f"{test}_std"] == pytest.approx(np.std(per_rep, ddof=1))
        assert d[f"{test}_best"] == pytest.approx(max(per_rep))
    assert d["load_s"] > 0 and math.isfinite(d["load_s"])
    mem = d["memory"]
    assert set(mem) == {"anon_mib", "file_mib", "peak_mib", "anon_growth_mib", "file_growth_mib"}
    assert mem["anon_mib"] > 0 and mem["file_mib"] > 0 and mem["peak_mib"] > 0
    assert mem["anon_growth_mib"] <= mem["anon_mib"] and mem["file_growth_mib"] <= mem["file_mib"]


def test_json_figures_and_the_work_measured(smollm2_path, engine_calls, capsys):
    rc, out, err = run_bench(capsys, smollm2_path, *SMALL, "--json", "--seed", 3)
    assert rc == 0, err
    d = json.loads(out)
    assert (d["n_prompt"], d["n_gen"], d["repetitions"], d["threads"]) == (P, N, R, 1)
    check_figures(d, P, N, R)
    assert "llama_cpp" not in d and "ratios" not in d
    # warm-up + R repetitions, each round from an empty cache, on the seeded ids
    prompt, gen = (ids.tolist() for ids in bench.bench_ids(49152, P, N, seed=3))
    assert engine_calls == expected_calls(prompt, gen, 1 + R)
    assert "warm-up" in err and f"repetition {R}/{R}" in err


def test_table_rows(smollm2_path, capsys):
    rc, out, err = run_bench(capsys, smollm2_path, *SMALL)
    assert rc == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| ") and "lantern cpu" in line]
    assert [r.split("|")[5].strip() for r in rows] == [f"pp{P}", f"tg{N}"]
    assert "load" in out and "private (anon)" in out and "file pages" in out and "peak" in out


class FakeLlama:
    """Stands in for llama_cpp.Llama: records its settings and every eval."""
    instances = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.n_tokens = 0
        self.calls = []
        FakeLlama.instances.append(self)

    def n_vocab(self):
        return 49152

    def reset(self):
        self.n_tokens = 0

    def eval(self, tokens):
        self.calls.append((self.n_tokens, list(tokens)))
        self.n_tokens += len(tokens)


def test_vs_llama_cpp_same_ids_and_settings(smollm2_path, engine_calls, monkeypatch, capsys):
    FakeLlama.instances.clear()
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=FakeLlama))
    rc, out, err = run_bench(capsys, smollm2_path, *SMALL, "--json", "--vs-llama-cpp")
    assert rc == 0, err
    d = json.loads(out)
    (llm,) = FakeLlama.instances
    assert llm.kwargs["model_path"] == str(smollm2_path)
    assert llm.kwargs["n_threads"] == llm.kwargs["n_threads_batch"] == 1
    assert llm.kwargs["n_ctx"] >= P + N and llm.kwargs["n_batch"] >= P
    assert llm.calls == engine_calls                    # the same protocol on the same ids
    check_figures(d["llama_cpp"], P, N, R)
    ratios = d["ratios"]
    assert ratios["pp"] == pytest.approx(d["pp_tps"] / d["llama_cpp"]["pp_tps"])
    assert ratios["tg"] == pytest.approx(d["tg_tps"] / d["llama_cpp"]["tg_tps"])
    assert ratios["load"] == pytest.approx(d["load_s"] / d["llama_cpp"]["load_s"])


def test_vs_llama_cpp_without_llama_cpp_python(smollm2_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)     # `import llama_cpp` raises ImportError
    rc, out, err = run_bench(capsys, smollm2_path, *SMALL, "--vs-llama-cpp")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "llama-cpp-python" in err and "not importable" in err


@pytest.mark.parametrize("flag", ["-p", "-n", "-r", "-t"])
def test_non_positive_counts_are_refused(smollm2_path, flag, capsys):
    argv = [str(a) for a in SMALL]
    argv[argv.index(flag) + 1] = "0"
    rc, out, err = run_bench(capsys, smollm2_path, *argv)
    assert rc == 1 and f"{flag}" in err and ">= 1" in err


def test_throughput_statistics_hand_computed():
    tp = bench.Throughput(10, (1.0, 2.0, 4.0))               # 10, 5, 2.5 tokens/s
    assert tp.mean == pytest.approx(17.5 / 3)
    assert tp.std == pytest.approx(math.sqrt(((10 - 17.5 / 3) ** 2 + (5 - 17.5 / 3) ** 2
                                              + (2.5 - 17.5 / 3) ** 2) / 2))
    assert tp.best == 10.0
    assert bench.Throughput(4, (2.0,)).std == 0.0



def test_ram_budget_adds_an_offload_report_with_greedy_decode(smollm2_path, engine_calls, capsys):
    """Under --ram-budget, tg is greedy generation after the prose prompt (the tokens fed back
    are the in-RAM engine's greedy choices, as dense streaming is bit-identical), and the
    offload report's bytes per token are what dense streaming reads: every streamed chunk's
    aligned span plus one row of each gathered table, recomputed here from the tensor offsets."""
    import os

    from lanternlm.formats.gguf import read_gguf
    from lanternlm.offload.direct_io import span_bytes
    from lanternlm.runtime.backends.cpu import row_shape
    from lanternlm.runtime.backends.cpu_streaming import chunk_rows

    rc, out, err = run_bench(capsys, smollm2_path, *SMALL, "--ram-budget", "40%", "--offload-plan", "none",
                             "--no-draft", "--json")
    assert rc == 0, err
    d = json.loads(out)
    check_figures(d, P, N, R)
    # the tg rounds: the prose prompt from an empty cache, then N single greedy tokens
    calls = list(engine_calls)
    starts = [i for i, (n_past, ids) in enumerate(calls) if n_past == 0 and len(ids) > P]
    assert len(starts) == 1 + R + 1                       # warm-up, repetitions, the offload run
    prompt = calls[starts[0]][1]
    assert len(prompt) == bench.PROSE_PROMPT_TOKENS
    fed = [ids[0] for _, ids in calls[starts[0] + 1:starts[0] + 1 + N]]
    ram = Engine.load(smollm2_path, n_ctx=96, n_batch=P, threads=1)
    want = [int(ram.eval(prompt).argmax())]
    for _ in range(N - 1):
        want.append(int(ram.eval([want[-1]]).argmax()))
    assert fed == want

    off = d["offload"]
    g = read_gguf(smollm2_path)
    assert off["ram_budget_bytes"] == int(os.path.getsize(smollm2_path) * 0.4)
    assert 0 < off["resident_bytes"] <= off["ram_budget_bytes"]
    eng = Engine.load(smollm2_path, n_ctx=96, n_batch=P, threads=1, ram_budget="40%", offload_plan=False,
                      draft=False)
    streamed, gathered = eng.backend.residency.streamed, eng.backend.residency.gathered
    assert streamed and gathered == ("token_embd.weight",)     # tied: the head streams, rows too
    spans = 0
    for name in streamed:
        ref = g.tensors[name]
        n_rows, row_bytes = row_shape(ref)
        step = chunk_rows(row_bytes)
        spans += sum(span_bytes(ref.offset + r0 * row_bytes, min(step, n_rows - r0) * row_bytes)
                     for r0 in range(0, n_rows, step))
    rows = [row_shape(g.tensors[n])[1] for n in gathered]
    assert off["dense_read_bytes_per_token"] == sum(g.tensors[n].nbytes for n in streamed) + sum(rows)
    # the reader runs up to N_SLOTS chunks ahead, so a window of N tokens may count that many
    # chunks more or fewer than N whole passes
    from lanternlm.runtime.backends.cpu_streaming import N_SLOTS

    ahead = N_SLOTS * max(span_bytes(0, min(chunk_rows(row_shape(g.tensors[n])[1]), row_shape(g.tensors[n])[0])
                                     * row_shape(g.tensors[n])[1]) for n in streamed) / N
    assert spans + sum(rows) - ahead <= off["read_bytes_per_token"] <= spans + sum(r + 2 * 4096 for r in rows) + ahead
    assert off["cache_hit_rate"] is None and off["predictor_recall"] is None
    assert off["read_gbps"] > 0
    assert off["draft"] is None


def test_ram_budget_reports_what_drafting_did(smollm2_path, capsys, monkeypatch):
    """With drafts (the default), the report counts the rounds and plain steps of the last
    greedy run: every generated token came from one of them, and a read of the head serves at
    least the one token a plain step gives."""
    from lanternlm.runtime import resident_draft
    from lanternlm.runtime.resident_draft import DraftLength

    monkeypatch.setattr(DraftLength, "next", lambda self: 4)       # draft every round
    monkeypatch.setattr(resident_draft, "MIN_GAIN", 0.0)           # even where it would not pay
    rc, out, err = run_bench(capsys, smollm2_path, *SMALL, "--ram-budget", "50%", "--offload-plan", "none", "--json")
    assert rc == 0, err
    off = json.loads(out)["offload"]
    d = off["draft"]
    reads = d["rounds"] + d["plain_steps"]
    assert d["head_rows"] > 0 and d["rounds"] > 0
    assert 0 <= d["kept"] <= d["drafted"] <= 4 * d["rounds"]
    # a round emits its kept drafts and at most one sample more; a plain step one token
    assert N <= d["kept"] + reads and d["tokens_per_pass"] == pytest.approx(N / reads)
    rc, out, err = run_bench(capsys, smollm2_path, *SMALL, "--ram-budget", "50%", "--offload-plan", "none")
    assert rc == 0 and "of drafted tokens kept" in out


def test_memory_read_from_proc_status(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  409600 kB\nVmRSS:\t  307200 kB\n"
                      "RssAnon:\t  102400 kB\nRssFile:\t  204800 kB\nRssShmem:\t       0 kB\n")
    assert bench.read_memory(str(status)) == bench.Memory(anon_mib=100.0, file_mib=200.0, peak_mib=400.0)
    status.write_text("Name:\tpython\n")            # not all fields: not reported rather than wrong
    assert bench.read_memory(str(status)) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_each_engine_reports_its_own_peak(smollm2_path, capsys):
    """A peak reached before the engine loaded is not its peak (the process-wide maximum was)."""
    big = np.ones(600 * 2**20 // 8)                 # 600 MiB, touched
    del big
    high_water = bench.read_memory().peak_mib
    rc, out, err = run_bench(capsys, smollm2_path, *SMALL, "--json")
    assert rc == 0, err
    assert json.loads(out)["memory"]["peak_mib"] < high_water - 300


def test_default_threads_are_lantern_s_own_choice(smollm2_path, monkeypatch, capsys):
    """Without -t: lantern as it runs by default (threads=None), its choice counted per phase over
    the measured repetitions; llama.cpp gets every core, as -t would give both."""
    import numba

    FakeLlama.instances.clear()
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=FakeLlama))
    argv = [a for a in SMALL if a not in ("-t", 1)]
    rc, out, err = run_bench(capsys, smollm2_path, *argv, "--json", "--vs-llama-cpp")
    assert rc == 0, err
    d = json.loads(out)
    assert d["threads"] == "auto" and d["llama_cpp"]["threads"] == numba.config.NUMBA_NUM_THREADS
    (llm,) = FakeLlama.instances
    assert llm.kwargs["n_threads"] == llm.kwargs["n_threads_batch"] == numba.config.NUMBA_NUM_THREADS
    used = d["threads_used"]
    assert sum(used["prefill"].values()) == P * R and sum(used["decode"].values()) == N * R
    assert set(d["llama_cpp"]["memory"]) == set(d["memory"])   # the same figures for both
    rc, out, err = run_bench(capsys, smollm2_path, *argv)
    assert rc == 0, err
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "lantern cpu" in line]
    assert [r[4].strip() for r in rows] == ["auto", "auto"]
    assert "threads chosen per phase, prefill" in out


def test_spec_reports_acceptance_mean_accepted_length_and_speedup(smollm2_path, capsys):
    """`--spec ngram`: tg is greedy after a prose prompt, and the report says what the drafts
    did and how fast the same run is without them."""
    rc = cli.main(["bench", str(smollm2_path), "-p", "16", "-n", "24", "-r", "1", "-t", "1", "--spec", "ngram",
                   "--json"])
    report = json.loads(capsys.readouterr().out)
    d = report["draft"]
    assert rc == 0 and d["kind"] == "ngram"
    assert 0 <= d["kept"] <= d["drafted"] and d["rounds"] + d["plain_steps"] > 0
    assert d["speedup"] == pytest.approx(d["tok_s"] / d["plain_tok_s"]) and d["plain_tok_s"] > 0
    assert (d["acceptance"] is None) == (d["drafted"] == 0)
