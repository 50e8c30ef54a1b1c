"""A real install, not only the editable one: the wheel built from this tree, installed into a new
virtual environment, runs the README's first block (prepare, train, sample) from an unrelated
folder. Package data or a module left out of the wheel fails here.

The environment sees the system's packages (torch is not installed again) but imports janelm from
the wheel alone: no PYTHONPATH, and the test checks where janelm was imported from.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, TINY
from janelm.bundled import bundled_works

WHEEL_LIMIT = 2 * 2**20  # bytes: the wheel stays small (README's install section gives its size)


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def build_wheel(tmp_path: Path) -> Path:
    """`pip wheel` on a copy of what a wheel is built from, as `pip install .` does (offline: no
    build isolation, setuptools from [test])."""
    src, dist = tmp_path / "src", tmp_path / "dist"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "janelm", src / "janelm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
        "--disable-pip-version-check", src, "--wheel-dir", dist)
    (wheel,) = dist.glob("janelm-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_installs_and_runs_the_first_block(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    assert wheel.stat().st_size < WHEEL_LIMIT
    packed = set(zipfile.ZipFile(wheel).namelist())
    assert {f"janelm/austen/{name}.txt.bz2" for name in bundled_works()} | {"janelm/austen/works.json"} <= packed

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv)
    python, bin = venv / "bin" / "python", venv / "bin"
    # The system's pip installs into the environment that runs it; --ignore-installed: the editable
    # janelm among the system's packages is neither a reason to skip nor one to uninstall.
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--quiet",
        "--disable-pip-version-check", wheel)

    elsewhere = tmp_path / "elsewhere"  # an unrelated folder: no janelm/ beside it to import by mistake
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PATH=f"{bin}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", COLUMNS="120")
    where = run(python, "-c", "import janelm; print(janelm.__file__)", cwd=elsewhere, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    assert shutil.which("janelm", path=env["PATH"]) == str(bin / "janelm")

    install, *commands = first_block()
    assert install == ["pip", "install", "-e", ".[test]"]  # the line test_cli checks .ci/run against
    assert [c[:2] for c in commands] == [["janelm", "prepare"], ["janelm", "train"], ["janelm", "sample"]]
    prepare, train, sample = commands
    proc = run(*prepare, cwd=elsewhere, env=env)
    assert proc.stderr.startswith("no text given: preparing the 7 works of Jane Austen bundled with JaneLM")
    run(*train, *TINY, "--max-iters", "20", cwd=elsewhere, env=env)  # a tiny model: seconds, not minutes
    assert (elsewhere / "checkpoints" / "best.pt").is_file()
    proc = run(*sample, cwd=elsewhere, env=env)
    assert len(proc.stdout.strip()) > 100 and proc.stderr == ""


def first_block() -> list[list[str]]:
    """The commands of the README's first code block, comments aside."""
    block = (REPO / "README.md").read_text().split("```\n", 2)[1]
    return [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.split("#")[0].strip()]
