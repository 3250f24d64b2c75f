"""`make chat` installs only what running needs; `make test` the dev extras. Both are idempotent:
each set of extras is installed once (its own stamp) and again only when pyproject.toml
changes. Checked with `make -n` (print the commands, run nothing) on a copy of the Makefile."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.fixture
def tree(tmp_path):
    shutil.copy(MAKEFILE, tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return tmp_path


def planned(tree: Path, target: str) -> list[str]:
    """The commands `make TARGET` would run. Under `make test` (as CI runs the suite) the outer
    make's variables would make this one a sub-make printing "Entering directory" lines, so its
    environment drops them."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES")}
    result = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=tree, env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def installs(commands: list[str]) -> list[str]:
    return [c for c in commands if "pip install" in c and "--upgrade pip" not in c]


def built(tree: Path) -> None:
    """What a first `make` leaves: the venv's python and both stamps, newer than pyproject.toml."""
    (tree / ".venv" / "bin").mkdir(parents=True)
    for name in ("bin/python", ".installed-run", ".installed-dev"):
        (tree / ".venv" / name).touch()
    old = (tree / "pyproject.toml").stat().st_mtime - 10
    os.utime(tree / "pyproject.toml", (old, old))


def test_chat_installs_without_the_dev_extras(tree):
    commands = planned(tree, "chat")
    assert any("-m venv" in c for c in commands)
    assert installs(commands) == [".venv/bin/python -m pip install -q -e ."]
    assert commands[-1] == ".venv/bin/lantern chat"


def test_test_installs_the_dev_extras(tree):
    commands = planned(tree, "test")
    assert installs(commands) == [".venv/bin/python -m pip install -q -e '.[dev]'"]
    assert "pytest" in commands[-1]


def test_both_are_idempotent_until_pyproject_changes(tree):
    built(tree)
    assert planned(tree, "chat") == [".venv/bin/lantern chat"]
    assert installs(planned(tree, "test")) == []
    (tree / "pyproject.toml").touch()                   # newer than the stamps: install again
    assert len(installs(planned(tree, "chat"))) == 1 and len(installs(planned(tree, "test"))) == 1
    assert not any("-m venv" in c for c in planned(tree, "test"))   # the venv itself stays
