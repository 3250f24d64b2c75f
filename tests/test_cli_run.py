"""`lantern run`: greedy output equals llama.cpp's, seeds reproduce, --chat applies the
template, and bad input gives one error line and exit code 1 (never a traceback)."""
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from lanternlm import cli
from lanternlm.formats.gguf import read_gguf
from lanternlm.formats.tokenizer import load_tokenizer
from lanternlm.runtime.model import Model

ONE_THREAD = ["-t", "1"]        # the test machines are shared: one thread is the fastest there


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(["run", *map(str, argv), *ONE_THREAD])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def reference(llama_cpp_reference):
    return llama_cpp_reference


def test_greedy_from_prompt_file_matches_llama_cpp(smollm2_path, reference, tmp_path, capsys):
    case = next(g for g in reference["greedy"] if g["prompt"].startswith("Once upon a time"))
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(case["prompt"], encoding="utf-8")
    n = 12
    rc, out, err = run_cli(capsys, smollm2_path, "-f", prompt_file, "-n", n, "--temp", 0)
    assert rc == 0
    tok = load_tokenizer(read_gguf(smollm2_path).kv)
    assert out == tok.decode(case["generated_ids"][:n]) + "\n"
    assert f"[{n} tokens" in err and "prefill 10 tokens" in err     # len(prompt_ids) == 10


def test_seed_reproduces_the_library_sample(smollm2_path, capsys):
    args = [smollm2_path, "-p", "The capital of France is", "-n", 6, "--temp", 0.9, "--top-k", 0,
            "--min-p", 0, "--seed", 11, "-q"]
    first = run_cli(capsys, *args)
    second = run_cli(capsys, *args)
    assert first[0] == second[0] == 0 and first[2] == ""           # -q: nothing on stderr
    assert first[1] == second[1]
    model = Model.load(smollm2_path, n_ctx=2048, threads=1)
    expected = model.generate("The capital of France is", max_tokens=6, temperature=0.9, top_k=0,
                              top_p=0.95, min_p=0.0, seed=11)
    assert first[1] == expected + "\n"


def test_prompt_after_the_model_as_ollama_takes_it(smollm2_path, reference, capsys):
    france = next(g for g in reference["greedy"] if g["prompt"] == "The capital of France is")
    tok = load_tokenizer(read_gguf(smollm2_path).kv)
    rc, out, _ = run_cli(capsys, smollm2_path, "The capital of France is", "-n", 5, "--temp", 0, "-q")
    assert rc == 0 and out == tok.decode(france["generated_ids"][:5]) + "\n"   # llama.cpp's greedy text


def test_run_defaults_to_the_chat_default_model(smollm2_path, capsys):
    # smollm2_path made sure the default catalog model is in the cache
    rc, out, _ = run_cli(capsys, "-p", "The capital of France is", "-n", 5, "--temp", 0, "-q")
    assert rc == 0 and out == " Paris.\n\nThe\n"


@pytest.mark.parametrize("argv, message", [
    (["m.gguf", "a prompt", "-p", "another"], "argument -p/--prompt: not allowed with argument PROMPT"),
    (["m.gguf"], "one of the arguments PROMPT -p/--prompt -f/--file is required"),
])
def test_prompt_is_given_exactly_once(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_chat_flag_renders_the_chatml_template(smollm2_path, capsys):
    # SmolLM2's template, written out by hand: --chat must produce exactly this prompt.
    by_hand = ("<|im_start|>system\nYou are terse.<|im_end|>\n"
               "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    rc1, chat_out, _ = run_cli(capsys, smollm2_path, "--chat", "--system", "You are terse.",
                               "-p", "What is 2+2?", "-n", 6, "--temp", 0)
    rc2, plain_out, _ = run_cli(capsys, smollm2_path, "-p", by_hand, "-n", 6, "--temp", 0)
    assert rc1 == rc2 == 0
    assert chat_out.strip() and chat_out == plain_out


def _write_gguf(path: Path, arch: str) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _with_unknown_tensor_type(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    name = b"token_embd.weight"
    # tensor info: name, n_dims (u32), 2 dims (u64 each), then the type (u32)
    type_at = data.index(name) + len(name) + 4 + 2 * 8
    data[type_at:type_at + 4] = (99).to_bytes(4, "little")
    dst.write_bytes(data)
    return dst


@pytest.fixture
def bad_files(tmp_path):
    mamba = _write_gguf(tmp_path / "mamba.gguf", "mamba")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model file " * 8)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Ol\u00e1, caf\u00e9".encode("latin-1"))      # 0xe1 is no UTF-8 sequence
    (tmp_path / "a-folder").mkdir()
    return {"mamba": mamba, "junk": junk,
            "bad_type": _with_unknown_tensor_type(mamba, tmp_path / "badtype.gguf"),
            "missing": tmp_path / "missing.gguf", "latin1": latin1, "folder": tmp_path / "a-folder"}


@pytest.mark.parametrize("argv, message", [
    (["{missing}", "-p", "hi"], "no such file, and not a catalog model"),
    (["no-such-catalog-model", "-p", "hi"], "not a catalog model"),
    (["{junk}", "-p", "hi"], "not a GGUF file"),
    (["{bad_type}", "-p", "hi"], "unknown tensor type 99"),
    (["{mamba}", "-p", "hi"], "unsupported model architecture 'mamba'"),
    (["{mamba}", "-f", "{missing}"], "prompt file not found"),
    (["{mamba}", "-p", "hi", "--top-p", "2"], "top_p must be in [0, 1]"),
    (["{mamba}", "-p", "hi", "-n", "-5"], "-n/--max-tokens must be >= 0"),
    (["{mamba}", "-p", "hi", "--system", "x"], "--system only applies with --chat"),
    (["{mamba}", "-p", "hi", "--ctx", "0"], "--ctx must be a positive number"),
    (["{folder}", "-p", "hi"], "a-folder: is a directory, not a GGUF model file"),
    (["{mamba}", "-f", "{latin1}"], "latin1.txt: not valid UTF-8 text (byte 0xe1 at offset 2)"),
    # "caf\xe9" in argv reaches Python as "caf\udce9"; the model (missing) is never looked at
    (["{missing}", "-p", "caf\udce9"], "-p/--prompt is not valid UTF-8 text (byte 0xe9 at character 3)"),
    (["{missing}", "--chat", "-p", "hi", "--system", "\udcff"], "--system is not valid UTF-8 text"),
    (["{mamba}", "-p", "hi", "--seed", "-2"], "--seed must be >= 0, or -1 for a random seed"),
])
def test_bad_input_is_one_error_line(bad_files, capsys, argv, message):
    argv = [a.format(**bad_files) for a in argv]
    rc = cli.main(["run", *argv])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.startswith("lantern: error: ") and err.count("\n") == 1, err
    assert message in err


def test_invalid_utf8_prompt_bytes_fail_before_the_model_loads(bad_files):
    # real bytes in argv and on stdin, as a shell passes them
    proc = subprocess.run([sys.executable, "-m", "lanternlm.cli", "run", str(bad_files["missing"]), "-p", b"caf\xe9"],
                          capture_output=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.decode() == "lantern: error: -p/--prompt is not valid UTF-8 text (byte 0xe9 at character 3)\n"
    proc = subprocess.run([sys.executable, "-m", "lanternlm.cli", "run", str(bad_files["missing"]), "-f", "-"],
                          input=b"caf\xe9", capture_output=True, timeout=120)
    assert proc.stderr.decode() == "lantern: error: standard input: not valid UTF-8 text (byte 0xe9 at offset 3)\n"


def test_seed_minus_one_means_random_as_in_llama_cpp():
    from lanternlm.runtime.cli_common import SETTINGS, sampling_options

    def seed_of(*flags):
        return sampling_options(cli.build_parser("run").parse_args(["run", "m.gguf", "-p", "hi", *flags]))["seed"]

    assert seed_of("--seed", "-1") is None and seed_of() is None    # None: the library draws a seed
    assert seed_of("--seed", "0") == 0 and seed_of("--seed", "7") == 7
    read = SETTINGS["seed"][1]                                       # /set seed in the chat
    assert read("-1") is None and read("none") is None and read("5") == 5


def test_module_entry_point_exits_nonzero_without_traceback(bad_files):
    proc = subprocess.run([sys.executable, "-m", "lanternlm.cli", "run", str(bad_files["junk"]), "-p", "hi"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("lantern: error: not a GGUF file") and "Traceback" not in proc.stderr
