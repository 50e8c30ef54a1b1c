"""Shared fixtures: a small synthetic text, a corpus prepared from it, and a tiny trained model.

Unit tests never need the real novels; tests that do read ../shared/corpus and skip without it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpus"

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
           timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    # One thread: tiny models gain nothing from two, and tests stay fast on a busy machine.
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "janelm", *args], cwd=cwd, input=input, text=True,
                          capture_output=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"janelm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


TINY = ["--preset", "tiny", "--n-embed", "32", "--n-head", "2", "--context", "32", "--batch-size", "4",
        "--max-iters", "30", "--eval-interval", "10", "--eval-batches", "2", "--warmup-iters", "3",
        "--dtype", "float32", "--quiet"]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, text_file) -> Path:
    """A corpus folder prepared from the synthetic text with a small BPE."""
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    janelm("prepare", str(text_file), "--out", str(out), "--vocab-size", "300")
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory, prepared) -> Path:
    """A run folder with a tiny model trained for a few steps."""
    out = tmp_path_factory.mktemp("run") / "run"
    janelm("train", "--data", str(prepared), "--out", str(out), *TINY)
    return out
