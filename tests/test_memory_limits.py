"""runtime/memory_limits.py against hand-built /proc and cgroup trees (v1 and v2), and the
engine's use of it: a KV cache that does not fit is refused before it is allocated, saying what
it needed; a context beyond the trained one warns."""
import warnings

import pytest
from gguf import GGMLQuantizationType as T

from lanternlm import cli
from lanternlm.runtime.backends import CpuBackend
from lanternlm.runtime.engine import ContextBeyondTrainingWarning, Engine
from lanternlm.runtime.memory_limits import (AvailableMemory, InsufficientMemoryError,
                                             available_memory, ensure_available, format_bytes)
from memory_guard import bounded_memory
from tiny_llama_gguf import TinyModelSpec, write_tiny_model

GiB, MiB = 1 << 30, 1 << 20


def fake_proc(tmp_path, mem_available_kb, cgroup_lines, mount_lines):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal:       99999999 kB\nMemAvailable:   {mem_available_kb} kB\n")
    (proc / "self" / "cgroup").write_text("".join(line + "\n" for line in cgroup_lines))
    (proc / "self" / "mountinfo").write_text("".join(line + "\n" for line in mount_lines))
    return proc


def cgroup_dir(root, path, **files):
    directory = root / path
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text)
    return directory


def test_without_a_cgroup_limit_it_is_memavailable(tmp_path):
    proc = fake_proc(tmp_path, 8 * 1024 * 1024, ["0::/"], [])
    assert available_memory(proc) == AvailableMemory(8 * GiB, "MemAvailable")


def test_cgroup_v2_limit_minus_the_working_set(tmp_path):
    cg = tmp_path / "cg"
    cgroup_dir(cg, ".", **{"cgroup__controllers": "memory"})           # the root has no memory.max
    cgroup_dir(cg, "user.slice", memory__max="max", memory__current=str(3 * GiB))
    app = cgroup_dir(cg, "user.slice/app.scope", memory__max=str(2 * GiB),
                     memory__current=str(1536 * MiB), memory__stat="anon 1\ninactive_file 268435456\n")
    proc = fake_proc(tmp_path, 8 * 1024 * 1024, ["0::/user.slice/app.scope"],
                     [f"30 25 0:26 / /sys/fs/whatever rw - tmpfs tmpfs rw",
                      f"31 25 0:27 / {cg} rw,nosuid - cgroup2 cgroup2 rw"])
    # 2 GiB - (1.5 GiB used - 256 MiB of inactive file pages) = 768 MiB
    assert available_memory(proc) == AvailableMemory(768 * MiB, f"cgroup v2 limit 2.0 GiB in {app}")
    # a tighter limit further up the tree wins: 1 GiB - 900 MiB
    (cg / "user.slice" / "memory.max").write_text(str(GiB))
    (cg / "user.slice" / "memory.current").write_text(str(900 * MiB))
    assert available_memory(proc).bytes == 124 * MiB
    # and MemAvailable where it is smaller still
    (proc / "meminfo").write_text("MemAvailable:   1024 kB\n")
    assert available_memory(proc) == AvailableMemory(MiB, "MemAvailable")


def test_cgroup_v1_memory_controller(tmp_path):
    mem = tmp_path / "memory"
    cgroup_dir(mem, ".", memory__limit_in_bytes="9223372036854771712", memory__usage_in_bytes=str(5 * GiB))
    docker = cgroup_dir(mem, "docker/abc", memory__limit_in_bytes=str(4 * GiB),
                        memory__usage_in_bytes=str(GiB), memory__stat="cache 5\ntotal_inactive_file 1048576\n")
    proc = fake_proc(tmp_path, 64 * 1024 * 1024, ["5:cpu,cpuacct:/docker/abc", "4:memory:/docker/abc", "0::/"],
                     [f"40 30 0:35 / {mem} rw,nosuid - cgroup cgroup rw,memory"])
    # 4 GiB - (1 GiB - 1 MiB)
    assert available_memory(proc) == AvailableMemory(3 * GiB + MiB, f"cgroup v1 limit 4.0 GiB in {docker}")


def test_cgroup_v1_inside_a_container_sees_its_own_cgroup_at_the_mount(tmp_path):
    # the mount's root is the container's cgroup, so its files sit at the mount point itself
    mem = cgroup_dir(tmp_path, "memory", memory__limit_in_bytes=str(512 * MiB),
                     memory__usage_in_bytes=str(128 * MiB))
    proc = fake_proc(tmp_path, 64 * 1024 * 1024, ["4:memory:/docker/abc"],
                     [f"40 30 0:35 /docker/abc {mem} rw - cgroup cgroup rw,memory"])
    assert available_memory(proc).bytes == 384 * MiB


def test_ensure_available_says_what_was_needed():
    ensure_available(GiB, "a buffer", AvailableMemory(GiB, "test"))
    ensure_available(10 * GiB, "a buffer", None)   # nothing known: nothing refused
    with pytest.raises(InsufficientMemoryError) as caught:
        ensure_available(GiB + 1, "a buffer", AvailableMemory(GiB, "test"), advice="ask for less")
    assert str(caught.value) == ("a buffer needs 1.0 GiB, but only 1.0 GiB of memory is available "
                                 "(test); ask for less")
    assert isinstance(caught.value, MemoryError) and isinstance(caught.value, ValueError)
    assert [format_bytes(n) for n in (512, 2048, 3 * MiB // 2, 35.8 * GiB, 3 << 40)] == \
        ["512 B", "2.0 KiB", "1.5 MiB", "35.8 GiB", "3.0 TiB"]


# ---- the engine -------------------------------------------------------------------------------

# 2 layers x 1 KV head x (16 key + 16 value dims) x 2 bytes (f16 cache) = 128 bytes per token
SPEC = TinyModelSpec("kv", "llama", n_embd=32, n_ff=64, n_layer=2, n_head=2, n_head_kv=1,
                     weight_type=T.F32, tied_embeddings=True, seed=3)
KV_BYTES_PER_TOKEN = 128
TRAINED_CONTEXT = 256  # tiny_llama_gguf's context_length


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("kv") / "tiny.gguf", SPEC)


@pytest.mark.filterwarnings("ignore::lanternlm.runtime.engine.ContextBeyondTrainingWarning")
def test_a_kv_cache_larger_than_the_memory_left_is_refused_before_allocating(tiny_path, monkeypatch):
    monkeypatch.setattr(CpuBackend, "available_memory", staticmethod(lambda: AvailableMemory(MiB, "test")))
    assert Engine.load(tiny_path, n_ctx=MiB // KV_BYTES_PER_TOKEN, threads=1).kv.nbytes == MiB
    with pytest.raises(InsufficientMemoryError) as caught:
        Engine.load(tiny_path, n_ctx=2 * MiB // KV_BYTES_PER_TOKEN, threads=1)
    assert str(caught.value) == ("the KV cache for a context of 16384 tokens needs 2.0 MiB, but only "
                                 "1.0 MiB of memory is available (test); use a smaller context (--ctx, n_ctx)")


def test_a_context_twice_the_memory_of_this_machine_is_one_line(tiny_path, capsys):
    # the issue's `--ctx 100000000` (a 35.8 GiB first allocation there), sized for any machine
    n_ctx = 2 * available_memory().bytes // KV_BYTES_PER_TOKEN
    with bounded_memory(256 * MiB), warnings.catch_warnings():
        warnings.simplefilter("ignore", ContextBeyondTrainingWarning)
        assert cli.main(["run", str(tiny_path), "--ctx", str(n_ctx), "-p", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lantern: error: the KV cache for a context of {n_ctx} tokens needs "
                          f"{format_bytes(n_ctx * KV_BYTES_PER_TOKEN)}, but only ")
    assert err.count("\n") == 1


def test_a_context_beyond_the_trained_one_warns_once(tiny_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Engine.load(tiny_path, n_ctx=TRAINED_CONTEXT, threads=1)
        assert not caught
        Engine.load(tiny_path, n_ctx=TRAINED_CONTEXT + 1, threads=1)
    assert [w.category for w in caught] == [ContextBeyondTrainingWarning]
    assert str(caught[0].message).startswith(f"a context of {TRAINED_CONTEXT + 1} tokens is longer "
                                             f"than the {TRAINED_CONTEXT} this model was trained on "
                                             f"(llama.context_length)")


def test_the_cli_shows_the_warning_as_one_line(tiny_path, capsys):
    assert cli.main(["run", str(tiny_path), "--ctx", str(TRAINED_CONTEXT + 1), "-p", "hi", "-n", "0",
                     "-q"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning == [f"lantern: warning: a context of {TRAINED_CONTEXT + 1} tokens is longer than "
                       f"the {TRAINED_CONTEXT} this model was trained on (llama.context_length); text "
                       f"past that is likely to degrade"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_the_torch_backend_checks_the_memory_of_its_device(tiny_path, device):
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    from lanternlm.runtime.backends import get_backend

    available = get_backend("torch", device=device).available_memory()
    assert available.source == ("free memory of cuda:0" if device == "cuda" else available_memory().source)
    # the torch backend keeps a float32 cache: 256 bytes per token of the tiny model
    n_ctx = 2 * available.bytes // (2 * KV_BYTES_PER_TOKEN)
    with bounded_memory(512 * MiB), warnings.catch_warnings(), \
            pytest.raises(InsufficientMemoryError, match=f"context of {n_ctx} tokens needs"):
        warnings.simplefilter("ignore", ContextBeyondTrainingWarning)
        Engine.load(tiny_path, n_ctx=n_ctx, threads=1, backend="torch", device=device)
