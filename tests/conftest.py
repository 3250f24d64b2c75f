"""Shared fixtures: the catalog models, fetched once per machine through `lanternlm.pull`."""
import pytest

from lanternlm.formats.catalog import pull


@pytest.fixture(scope="session")
def smollm2_path():
    return pull("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="session")
def gemma3_path():
    return pull("gemma3-270m", progress=False)


@pytest.fixture(scope="session")
def qwen2_path():
    return pull("qwen2.5-coder-0.5b-instruct", progress=False)
