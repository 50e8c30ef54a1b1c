"""Shared fixtures: a small synthetic text, a corpus prepared from it, and a tiny trained model.

Unit tests never need the real novels; tests that do read the Austen bundled with JaneLM
(janelm.bundled), and raw Gutenberg files are made from it (gutenberg_like.py): nothing beside the
repository is read.
"""

from __future__ import annotations

import ctypes
import functools
import os
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Compiled decode steps go to a folder of this test run (every process of it and every janelm they
# run), never the user's cache: shared by the tests, so each model and batch size compiles once.
# pytest-xdist's workers inherit the controlling process's folder (it removes it at the end): a
# step one worker compiles, another finds, or waits for while it is compiled (janelm.decode_step).
if "JANELM_TEST_CACHE" not in os.environ:
    DECODE_CACHE = tempfile.TemporaryDirectory(prefix="janelm-test-cache-")
    os.environ["JANELM_TEST_CACHE"] = DECODE_CACHE.name
os.environ["JANELM_CACHE"] = os.environ["JANELM_TEST_CACHE"]
# Each pytest-xdist worker computes on one thread: the workers (one per core) fill the cores between
# them. With PyTorch's default, a thread per core in each worker, the suite ran twice as many threads
# as cores, and OpenMP's waiting threads slowed in-process training up to 16x (a time-budget test:
# 2 s alone, 9-32 s in the suite). Set before any worker imports PyTorch; tests that want more
# threads set them (torch.set_num_threads), and the CLI's children get one thread too (janelm()).
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# torch.compile's own cache: one folder for every worker of the suite (they run on one instruction
# set), as PyTorch's default is, not one per worker (janelm.device.use_compiler_cache).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "janelm-tests-inductor"))

WORDS = ("the a an her his their young lady gentleman sister mother house garden letter ball evening "
         "morning visit walk conversation fortune marriage regard opinion feeling heart manner "
         "was were had could would should must might said replied thought felt saw knew "
         "very quite most rather so too not never always soon again "
         "Elizabeth Jane Darcy Bingley Emma Knightley Anne Marianne Elinor Catherine").split()


def make_text(paragraphs: int = 60, seed: int = 0) -> str:
    """Deterministic Austen-shaped nonsense: sentences, quotes, paragraphs, a few non-ASCII marks."""
    rng = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(1, 4)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
            s = " ".join(words).capitalize() + rng.choice([".", ".", "!", "?", ";—"])
            if rng.random() < 0.3:
                s = "“" + s + "” said " + rng.choice(["Elizabeth", "Emma", "Mr. Darcy"]) + "."
            sentences.append(s)
        out.append(" ".join(sentences))
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "novel.txt"
    path.write_text(make_text(300))
    return path


def janelm(*args: str, cwd: Path | None = None, input: str | None = None, check: bool = True,
           timeout: float = 300, preexec_fn=None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would (`preexec_fn`: see file_size_limit; `env`:
    variables to add)."""
    # One thread: tiny models gain nothing from two, and tests stay fast on a busy machine.
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "janelm", *args], cwd=cwd, input=input, text=True,
                          capture_output=True, env=env, timeout=timeout, preexec_fn=preexec_fn)
    if check and proc.returncode != 0:
        raise AssertionError(f"janelm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def file_size_limit(size: int):
    """A preexec_fn: the child may write no file past `size` bytes. Python ignores SIGXFSZ, so a
    write past it fails with EFBIG, as on a full disk."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def obey_permissions() -> None:
    """A preexec_fn: root ignores a folder's missing write bit; dropping CAP_DAC_OVERRIDE from the
    child's capability bounding set makes chmod apply to it (a no-op for other users)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1  # <linux/prctl.h>, <linux/capability.h>


@functools.lru_cache(maxsize=None)
def read_only_folders_work() -> bool:
    """Whether a child started with obey_permissions fails to write into a folder without write bits."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ro"
        folder.mkdir(mode=0o555)
        try:
            proc = subprocess.run([sys.executable, "-c", f"open({str(folder / 'f')!r}, 'w')"],
                                  capture_output=True, text=True, preexec_fn=obey_permissions)
        except subprocess.SubprocessError:
            return False
        finally:
            folder.chmod(0o755)
        return "PermissionError" in proc.stderr


TINY = ["--preset", "tiny", "--n-embed", "32", "--n-head", "2", "--context", "32", "--batch-size", "4",
        "--max-iters", "30", "--eval-interval", "10", "--eval-batches", "2", "--warmup-iters", "3",
        "--dtype", "float32", "--quiet"]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, text_file) -> Path:
    """A corpus folder prepared from the synthetic text with a small BPE."""
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    janelm("prepare", str(text_file), "--out", str(out), "--vocab-size", "300")
    return out


QUICK = ["--vocab-size", "300", "--tokenizer-sample", "200000"]  # a small BPE, trained fast


@pytest.fixture(scope="session")
def mixed(tmp_path_factory) -> Path:
    """A folder with a corpus (corpus/) of a main text and an extra one that repeats part of the
    main text's training paragraphs (repeating training text is allowed; validation text is not);
    the corpus's own extra weight is 0.25."""
    from janelm.cli import main

    folder = tmp_path_factory.mktemp("mixed")
    main_text = make_text(300, seed=1)
    (folder / "main.txt").write_text(main_text)
    (folder / "extra.txt").write_text("\n".join(main_text.splitlines()[:100]) + "\n" + make_text(400, seed=2))
    assert main(["prepare", str(folder / "main.txt"), "--extra", str(folder / "extra.txt"), "--extra-weight", "0.25",
                 "--out", str(folder / "corpus"), *QUICK]) == 0
    return folder


@pytest.fixture(scope="session")
def trained(tmp_path_factory, prepared) -> Path:
    """A run folder with a tiny model trained for a few steps."""
    out = tmp_path_factory.mktemp("run") / "run"
    janelm("train", "--data", str(prepared), "--out", str(out), *TINY)
    return out


def decode_floors(checkpoint: Path, cache: Path, **floors: float) -> dict[str, str]:
    """Make `cache` (a JANELM_CACHE folder) hold `floors` as this machine's measured matmul floors
    for the checkpoint's matrices, as `janelm` subprocesses (one thread) look them up, so a test
    decides which weight format `--dtype auto` picks and whether int8 counts as fast. Returns the
    variables that point a subprocess at the folder, and an oneDNN cap below AMX: on an AMX CPU
    `auto` is bf16 whatever the floors (janelm.precision.auto_precision)."""
    import json

    env = {"JANELM_CACHE": str(cache), "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    code = ("import sys; from janelm.checkpoint import load_model; from janelm.precision import _machine_key, "
            "matrix_shapes; print(_machine_key(matrix_shapes(load_model(sys.argv[1])[0])))")
    key = subprocess.run([sys.executable, "-c", code, str(checkpoint)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}).stdout.strip()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "precision.json").write_text(json.dumps({key: {"floors": floors, "quiet": True}}))
    return env
