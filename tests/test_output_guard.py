"""`quantize` and `convert` never write over their input (by any name) nor into the model cache."""
import hashlib
import os
import shutil

import pytest

from lanternlm.cli import main as lantern
from lanternlm.formats import catalog
from lanternlm.formats.catalog import CatalogEntry
from lanternlm.formats.convert import convert_hf_to_gguf
from lanternlm.formats.output_guard import UnsafeOutputError
from lanternlm.quant.quantize_model import quantize_model
from tiny_llama_gguf import write_tiny_model


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", "wide")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty model cache of our own (never the user's)."""
    monkeypatch.setenv("LANTERN_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def model(tiny_source, tmp_path):
    return shutil.copy(tiny_source, tmp_path / "self.gguf")


def another_name(path, kind: str):
    """`path` itself, or a new hard or symbolic link to it."""
    if kind == "same path":
        return path
    alias = path.with_name(f"alias-{kind.replace(' ', '-')}.gguf")
    (os.link if kind == "hard link" else os.symlink)(path, alias)
    return alias


@pytest.mark.parametrize("kind", ["same path", "hard link", "symbolic link"])
def test_quantize_refuses_to_write_over_its_input(model, home, kind):
    before = digest(model)
    with pytest.raises(UnsafeOutputError, match="is the input file"):
        quantize_model(model, another_name(model, kind), "Q8_0")
    assert digest(model) == before


def test_quantize_writes_to_another_file(model, tmp_path, home):
    quantize_model(model, tmp_path / "q8.gguf", "Q8_0")            # the control
    assert (tmp_path / "q8.gguf").is_file()


@pytest.fixture
def cached_catalog_model(tiny_source, home, monkeypatch):
    """The tiny model as the cached download of a catalog entry."""
    entry = CatalogEntry("tiny-model", ("tiny-model==1.0",), ("tiny.gguf",), digest(tiny_source), "a test model")
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    return entry.name, shutil.copy(tiny_source, catalog.cached_path(entry.name))


def test_quantize_of_the_catalog_model_into_the_cache_is_refused(cached_catalog_model, home, tmp_path, capsys):
    # the report's command: `lantern quantize --allow-requantize NAME ~/.cache/lanternlm/NAME.gguf Q8_0`
    name, cached = cached_catalog_model
    before = digest(cached)
    assert lantern(["quantize", "-q", name, str(cached), "Q8_0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lantern: error: ") and err.count("\n") == 1 and "is the input file" in err
    os.symlink(home, tmp_path / "link-to-home")
    for out in (home / "other.gguf", tmp_path / "link-to-home" / "other.gguf"):
        assert lantern(["quantize", "-q", name, str(out), "Q8_0"]) == 1
        assert "is in the model cache" in capsys.readouterr().err
        assert not out.exists()
    assert digest(cached) == before


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tiny_hf_checkpoints import build_checkpoint

    return build_checkpoint("llama", tmp_path_factory.mktemp("hf") / "llama").path


@pytest.mark.parametrize("input_file", ["config.json", "model.safetensors", "tokenizer.json"])
def test_convert_refuses_to_write_over_a_checkpoint_file(checkpoint, tmp_path, home, input_file):
    src = shutil.copytree(checkpoint, tmp_path / "ckpt")
    before = digest(src / input_file)
    with pytest.raises(UnsafeOutputError, match="is the input file"):
        convert_hf_to_gguf(src, src / input_file)
    os.link(src / input_file, tmp_path / "alias")
    with pytest.raises(UnsafeOutputError, match="is the input file"):
        convert_hf_to_gguf(src, tmp_path / "alias")
    assert digest(src / input_file) == before
    assert convert_hf_to_gguf(src, src / "model.gguf").path.is_file()    # beside the inputs is fine


def test_convert_refuses_the_model_cache(checkpoint, home, capsys):
    assert lantern(["convert", str(checkpoint), str(home / "m.gguf"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lantern: error: ") and "is in the model cache" in err and err.count("\n") == 1
    assert list(home.iterdir()) == []
