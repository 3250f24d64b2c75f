"""`--json` output is a single line: every command that takes --json prints exactly one line on
stdout, and that line is standard JSON (no NaN or Infinity), so `lantern ... --json | jq` and
line-oriented log collectors read one record per run. Progress stays on stderr.

The commands run on the tiny "narrow" llama model of tiny_llama_gguf (F32 weights, a
SentencePiece vocabulary), which every one of them accepts; a command that gains --json
without a case here fails `test_every_json_command_is_covered`."""
import contextlib
import io
import re
import json

import pytest

from lanternlm import cli
from lanternlm.formats.writer import write_gguf
from tiny_llama_gguf import write_tiny_model

TEXT = "The cat sat on the mat. It was a sunny day, and the cat was happy to be in the sun. " * 2
ONE_THREAD = ["-t", "1"]


def perplexity(d, *more):
    return ["perplexity", d / "tiny.gguf", d / "text.txt", "--ctx", "16", *more, *ONE_THREAD]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The tiny model, a text, and the model's saved log-probabilities on it (base.npy)."""
    d = tmp_path_factory.mktemp("json")
    write_tiny_model(d / "tiny.gguf", "narrow")
    (d / "text.txt").write_text(TEXT, encoding="utf-8")
    rc, _, err = run_cli(perplexity(d, "--save-logits", d / "base.npy"))
    assert rc == 0, err
    return d


# command -> its arguments (without --json), given the working directory
CASES = {
    "info": lambda d: ["info", d / "tiny.gguf"],
    "perplexity": perplexity,
    "perplexity --save-logits": lambda d: perplexity(d, "--save-logits", d / "saved.npy"),
    "perplexity --kl-divergence": lambda d: ["perplexity", d / "tiny.gguf", "--kl-divergence", d / "base.npy",
                                             *ONE_THREAD],
    "bench": lambda d: ["bench", d / "tiny.gguf", "-p", "8", "-n", "4", "-r", "2", *ONE_THREAD],
    "offload": lambda d: ["offload", d / "tiny.gguf", "-o", d / "tiny.offload.gguf", "--ctx", "16",
                          *ONE_THREAD],
}


def run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def reject_constant(name):
    raise ValueError(f"{name} is not standard JSON")


@pytest.mark.parametrize("case", list(CASES))
def test_json_output_is_one_line_of_json(workdir, case):
    rc, out, err = run_cli([*CASES[case](workdir), "--json"])
    assert rc == 0, err
    assert out.endswith("\n") and out.count("\n") == 1, f"{case} --json printed {out.count(chr(10))} lines:\n{out}"
    record = json.loads(out, parse_constant=reject_constant)
    assert isinstance(record, dict) and record


def test_every_json_command_is_covered():
    """The commands whose help offers --json are exactly those tested above."""
    with_json = set()
    for name in cli.COMMANDS:
        rc, out, _ = help_text(name)
        assert rc == 0
        if re.search(r"--json(?![-\w])", out):      # --json itself, not --json-schema
            with_json.add(name)
    assert with_json == {case.split()[0] for case in CASES}


def help_text(name) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help"])
    return exit_.value.code, out.getvalue(), err.getvalue()


def test_info_json_is_one_ascii_line_whatever_the_file_holds(tmp_path):
    """Text from a model file may hold line separators a JSON encoder leaves raw (U+2028, NEL) and
    terminal controls: escaped, the record stays one line for any line reader, and round-trips."""
    name = "two\u2028lines\x85and a \x1b[31mcolour\x9b and a\nnewline, café"
    path = write_gguf(tmp_path / "named.gguf", {"general.architecture": "llama", "general.name": name})
    rc, out, err = run_cli(["info", path, "--json"])
    assert rc == 0, err
    assert out.isascii() and len(out.splitlines()) == 1
    assert json.loads(out)["name"] == name
