"""`lantern perplexity`: llama.cpp's perplexity of SmolLM2 on the reference text, the saved
log-probability file, KL divergence (math checked against torch, end to end against the model
itself), chunking, and one-line errors."""
import contextlib
import io
import json

import numpy as np
import pytest

from llama_cpp_tolerances import PPL_RTOL
import torch

from lanternlm import cli
from lanternlm.runtime.kl_divergence import kl_rows, log_softmax, open_logits_file
from lanternlm.runtime.perplexity import make_chunks

ONE_THREAD = ["-t", "1"]


@pytest.fixture(scope="module")
def reference(llama_cpp_reference):
    return llama_cpp_reference["perplexity"]


@pytest.fixture(scope="module")
def essay(reference_dir):
    return reference_dir / "mlsys_essay.txt"


def perplexity_json(capsys, *argv) -> dict:
    rc = cli.main(["perplexity", *map(str, argv), "--json", *ONE_THREAD])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def base_run(smollm2_path, reference, essay, tmp_path_factory):
    """One evaluation of the first 256 tokens, with its log-probabilities saved."""
    saved = tmp_path_factory.mktemp("ppl") / "base.npy"
    out = io.StringIO()             # a module-scoped fixture cannot use capsys
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = cli.main(["perplexity", str(smollm2_path), str(essay), "--ctx", "256", "--chunks", "1",
                       "--json", "--save-logits", str(saved), *ONE_THREAD])
    assert rc == 0
    return json.loads(out.getvalue()), saved


def test_perplexity_matches_llama_cpp(base_run, reference):
    report, saved = base_run
    # SmolLM2 adds no BOS, so the reference's "BOS added" ids start with the text's first token.
    records = open_logits_file(saved)
    assert records.shape == (1,)
    assert records["tokens"][0].tolist() == reference["ids"]
    assert report["tokens"] == len(reference["nll"]) == 255 and report["chunks"] == 1
    assert report["ppl"] == pytest.approx(reference["ppl"], rel=PPL_RTOL)   # see llama_cpp_tolerances
    assert report["seconds"] > 0

    # The saved log-probabilities are the scored ones: -logprob of each next token is
    # llama.cpp's per-token NLL, up to the engines' arithmetic (and float16 storage).
    logprobs = records[0]["logprobs"].astype(np.float64)
    ids = np.array(reference["ids"])
    nll = -logprobs[np.arange(255), ids[1:]]
    assert np.mean(np.abs(nll - np.array(reference["nll"]))) < 0.15
    assert np.exp(nll.mean()) == pytest.approx(report["ppl"], rel=1e-3)


def test_kl_divergence_of_a_model_to_itself_is_zero(smollm2_path, base_run, essay, capsys):
    base_report, saved = base_run
    report = perplexity_json(capsys, smollm2_path, essay, "--kl-divergence", saved)
    assert report["ctx"] == 256 and report["chunks"] == 1 and report["tokens"] == 255
    assert report["ppl"] == pytest.approx(base_report["ppl"], rel=1e-6)
    assert report["kl_mean"] < 1e-4 and report["kl_max"] < 1e-3      # float16 storage only
    assert report["same_top_percent"] == 100.0
    assert report["ppl_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert report["ppl_base"] == pytest.approx(base_report["ppl"], rel=1e-3)


def test_kl_rows_and_log_softmax_match_torch():
    rng = np.random.default_rng(0)
    base_logits = rng.normal(0, 4, size=(5, 300)).astype(np.float32)
    logits = base_logits + rng.normal(0, 0.5, size=(5, 300)).astype(np.float32)
    logits[3] = base_logits[3]                                    # one identical row
    logits[4, int(np.argmax(base_logits[4]))] -= 50.0             # one row whose top token moves
    base_lp, lp = log_softmax(base_logits), log_softmax(logits)
    np.testing.assert_allclose(lp, torch.log_softmax(torch.from_numpy(logits).double(), -1).numpy(),
                               rtol=0, atol=1e-12)
    kl, same_top = kl_rows(base_lp, lp)
    expected = torch.nn.functional.kl_div(torch.from_numpy(lp), torch.from_numpy(base_lp),
                                          reduction="none", log_target=True).sum(-1).numpy()
    np.testing.assert_allclose(kl, expected, rtol=1e-9, atol=1e-12)
    assert kl[3] == 0.0 and kl[4] > 1.0
    assert same_top[3] and not same_top[4]


def test_log_softmax_is_stable_for_large_logits():
    # exp(1000) overflows float64: a naive softmax gives nan here.
    lp = log_softmax(np.array([[1000.0, 999.0, 0.0]], dtype=np.float32))
    tail = np.log1p(np.exp(-1.0))                                 # log(1 + e^-1), by hand
    np.testing.assert_allclose(lp[0], [-tail, -1.0 - tail, -1000.0 - tail], rtol=1e-12)


def test_make_chunks_cuts_whole_chunks_and_substitutes_bos():
    ids = list(range(10, 33))                                     # 23 tokens
    chunks = make_chunks(ids, ctx=5, max_chunks=None, bos_id=1)
    assert chunks.tolist() == [[1, 11, 12, 13, 14], [1, 16, 17, 18, 19], [1, 21, 22, 23, 24],
                               [1, 26, 27, 28, 29]]
    assert make_chunks(ids, ctx=5, max_chunks=2, bos_id=None).tolist() == [[10, 11, 12, 13, 14],
                                                                          [15, 16, 17, 18, 19]]
    with pytest.raises(ValueError, match="fewer than one chunk"):
        make_chunks(ids, ctx=24, max_chunks=None, bos_id=None)


@pytest.mark.parametrize("argv, message", [
    (["{model}", "{missing}"], "text file not found"),
    (["{model}"], "a TEXTFILE is needed"),
    (["{model}", "{essay}", "--ctx", "1"], "--ctx must be at least 2"),
    (["{model}", "{essay}", "--chunks", "0"], "--chunks must be >= 1"),
    (["{model}", "{short}"], "fewer than one chunk of 512"),
    (["{model}", "{binary}"], "is not UTF-8 text"),
    (["{model}", "--kl-divergence", "{short}"], "is not a .npy file"),
    (["{model}", "--kl-divergence", "{missing}"], "logits file not found"),
    (["{model}", "--kl-divergence", "{base}", "--ctx", "128"], "differs from the logits file's chunks of 256"),
    (["{model}", "{short}", "--kl-divergence", "{base}"], "fewer than one chunk of 256"),
    (["{model}", "{other}", "--kl-divergence", "{base}"], "does not tokenize to the tokens of the logits file"),
])
def test_bad_input_is_one_error_line(smollm2_path, base_run, essay, tmp_path, capsys, argv, message):
    (tmp_path / "short.txt").write_text("Too short to score.")
    (tmp_path / "other.txt").write_text("A different text. " * 200)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00 not utf-8")
    paths = {"model": smollm2_path, "missing": tmp_path / "missing.txt", "essay": essay,
             "short": tmp_path / "short.txt", "other": tmp_path / "other.txt",
             "binary": tmp_path / "binary.txt", "base": base_run[1]}
    rc = cli.main(["perplexity", *[a.format(**paths) for a in argv], *ONE_THREAD])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.startswith("lantern: error: ") and err.count("\n") == 1, err
    assert message in err
