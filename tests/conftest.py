"""Shared fixtures: the catalog models (fetched once per machine through `lanternlm.pull`) and
llama.cpp's recorded outputs in ../shared/reference (CI clones the repo with ../shared beside it).
"""
import json
import sys
from pathlib import Path

import pytest

from lanternlm.formats.catalog import pull

TESTS = Path(__file__).resolve().parent
# Helper modules beside the tests (tiny_llama_gguf, tiny_hf_checkpoints) import by plain name.
sys.path.insert(0, str(TESTS))

REFERENCE_DIR = TESTS.parents[1] / "shared" / "reference"


@pytest.fixture(scope="session")
def smollm2_path():
    return pull("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="session")
def gemma3_path():
    return pull("gemma3-270m", progress=False)


@pytest.fixture(scope="session")
def qwen2_path():
    return pull("qwen2.5-coder-0.5b-instruct", progress=False)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"llama.cpp reference outputs not found at {REFERENCE_DIR} (../shared beside the repo)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def llama_cpp_reference(reference_dir) -> dict:
    """llama.cpp's outputs for SmolLM2-135M-Instruct Q4_1 (see ../shared/reference/README.md)."""
    return json.loads((reference_dir / "smollm2-135m-q4_1.llama_cpp.json").read_text(encoding="utf-8"))
