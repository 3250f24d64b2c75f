"""The README's example outputs are what the commands print, on any CPU.

Greedy text can differ between CPUs where the two likeliest tokens are nearly tied (llama.cpp's
own logits for one batch and for one token at a time differ by up to NEAR_TIE, issue 12), so
each greedy example must also lead the runner-up by more than that at every token, the end
of the answer included. The examples are read from README.md itself, so an edited example is
checked as it stands. The perplexity example must run from a clone (its text is in the
repository) and print the README's figure.
"""
import ast
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from lanternlm import cli
from lanternlm.runtime.model import Model

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
NEAR_TIE = 0.35     # logits; llama.cpp's batch-vs-decode differences stay below it
from llama_cpp_tolerances import PPL_RTOL  # noqa: E402 (the figure's CPU-to-CPU spread, as against llama.cpp)


def code_blocks() -> list[list[str]]:
    """The lines of each fenced code block of README.md."""
    blocks, current = [], None
    for line in README.splitlines():
        if line.startswith("```"):
            if current is not None:
                blocks.append(current)
            current = [] if current is None else None
        elif current is not None:
            current.append(line)
    return blocks


def shell_examples(tool: str) -> list[tuple[list[str], list[str]]]:
    """(arguments after `lantern`, output lines) of each `$ lantern TOOL ...` in README code blocks."""
    found = []
    for lines in code_blocks():
        for i, line in enumerate(lines):
            argv = shlex.split(line[2:]) if line.startswith("$ lantern ") else []
            if argv[1:2] == [tool]:
                out = []
                for following in lines[i + 1:]:
                    if following.startswith("$ "):
                        break
                    out.append(following)
                found.append((argv[1:], out))
    assert found, f"no `$ lantern {tool}` example in README.md"
    return found


@pytest.fixture(scope="module")
def model(smollm2_path):
    return Model.load(smollm2_path, n_ctx=2048, threads=1)


def greedy(model: Model, prompt_ids: list[int], max_tokens: int) -> tuple[str, float]:
    """The greedy continuation and its smallest top-1/top-2 logit margin over the steps taken
    (the end-of-answer token included), from one teacher-forced evaluation."""
    tokens, pieces, reason = [], [], None
    for chunk in model.stream_generate(prompt_ids, max_tokens=max_tokens, temperature=0):
        if chunk.token is not None:
            tokens.append(chunk.token)
        pieces.append(chunk.text)
        reason = chunk.finish_reason
    steps = len(tokens) + (reason == "stop")      # the end token is chosen too, but not returned
    logits = model.logits(prompt_ids + tokens)[len(prompt_ids) - 1:][:steps]
    top2 = np.sort(logits, axis=1)[:, -2:]
    return "".join(pieces), float((top2[:, 1] - top2[:, 0]).min())


def test_library_generate_example(model):
    match = re.search(r"^m\.generate\((\".*?\"), max_tokens=(\d+), temperature=0\)\s+# (.+)$", README, re.M)
    assert match, "the README's m.generate(..., temperature=0) example"
    prompt, max_tokens, shown = ast.literal_eval(match[1]), int(match[2]), ast.literal_eval(match[3])
    text, margin = greedy(model, model.tokenize(prompt), max_tokens)
    assert text == shown
    assert margin > NEAR_TIE, f"{prompt!r} continues at a near-tie (margin {margin:.3f})"


def test_chat_example(model):
    [(argv, transcript)] = shell_examples("chat")
    assert argv == ["chat", "--temp", "0"], "the chat example is greedy, with the default model"
    turns = [(line[4:], transcript[i + 1]) for i, line in enumerate(transcript)
             if line.startswith(">>> ") and not line.startswith(">>> /")]
    assert len(turns) >= 2
    messages = []                                   # as ChatSession keeps them
    for question, shown in turns:
        messages.append({"role": "user", "content": question})
        text, margin = greedy(model, model.chat_prompt_ids(messages), 64)
        messages.append({"role": "assistant", "content": text})
        assert text == shown
        assert margin > NEAR_TIE, f"the answer to {question!r} passes a near-tie (margin {margin:.3f})"
    assert f"saved {len(messages)} messages to trip.json" in transcript


def test_run_example(model, capsys):
    [(argv, out)] = shell_examples("run")
    args = cli.build_parser("run").parse_args(argv)
    assert args.temperature == 0 and args.chat
    assert cli.main([*argv, "-t", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == out[:len(printed)] and len(out) == len(printed) + 1 and out[-1].startswith("[")
    prompt_ids = model.chat_prompt_ids([{"role": "user", "content": args.prompt}])
    text, margin = greedy(model, prompt_ids, args.max_tokens)
    assert text.splitlines() == printed
    assert margin > NEAR_TIE, f"{args.prompt!r} is answered through a near-tie (margin {margin:.3f})"


def test_perplexity_example_runs_from_a_clone(tmp_path, monkeypatch, capsys):
    argv, out = next((a, o) for a, o in shell_examples("perplexity") if "--json" in a)
    text_file = Path(argv[2])
    inside = not text_file.is_absolute() and ".." not in text_file.parts
    assert inside and (REPO / text_file).is_file(), f"{text_file} is not a file of the repository"
    shown = json.loads(out[0])
    monkeypatch.chdir(tmp_path)                     # --save-logits writes where the user stands
    argv[2] = str(REPO / text_file)
    assert cli.main([*argv, "-t", "1"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["tokens"], got["chunks"], got["ctx"]) == (shown["tokens"], shown["chunks"], shown["ctx"])
    assert got["ppl"] == pytest.approx(shown["ppl"], rel=PPL_RTOL)
