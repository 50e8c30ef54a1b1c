"""A run folder you can trust: one process at a time, clear write failures with the earlier
checkpoints intact, `--resume` with the run's own flags, and a resume after kill -9 anywhere."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY, file_size_limit, janelm, obey_permissions, read_only_folders_work
from janelm.checkpoint import load_checkpoint
from janelm.cli import main
from janelm.files import LOCK_FILE, acquire_lock, locked_folder, release_lock

sys.path.insert(0, str(REPO / "benchmarks"))
from kill_resume import check_after_kill, kill_and_resume, metrics_steps  # noqa: E402


@pytest.fixture
def run(tmp_path: Path, trained: Path) -> Path:
    """A copy of the tiny trained run (30 steps, evaluated every 10), free to change."""
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def test_a_folder_in_training_refuses_train_but_not_sample_or_eval(run: Path, prepared: Path, capsys) -> None:
    fd = acquire_lock(run, "train")  # as a training process would
    try:
        for extra in ([], ["--force"], ["--resume"]):
            assert main(["train", "--data", str(prepared), "--out", str(run), *TINY, *extra]) == 1
            assert capsys.readouterr().err == (f"janelm train: error: {run}/ is in use by janelm process {os.getpid()} "
                                               f"(a train writing there): wait for it to finish or stop it, or choose another --out\n")
        assert main(["sample", "-c", str(run), "-n", "10", "--seed", "1", "--prompt", "The"]) == 0
        assert len(capsys.readouterr().out) > 5
        assert main(["eval", "-c", str(run), "--json"]) == 0
        assert '"bits_per_char"' in capsys.readouterr().out
    finally:
        release_lock(fd, run)
    assert load_checkpoint(run / "last.pt")["state"]["step"] == 30  # the refused commands changed nothing


def test_resume_takes_the_runs_own_flags_and_names_each_difference(run: Path, prepared: Path, capsys) -> None:
    """The command the run started with, plus --resume (and a larger budget), continues it."""
    assert main(["train", "--data", str(prepared), "--out", str(run), *TINY, "--resume", "--max-iters", "35"]) == 0
    assert load_checkpoint(run / "last.pt")["state"]["step"] == 35
    assert metrics_steps(run) == [10, 20, 30, 35]
    assert not (run / LOCK_FILE).exists()
    capsys.readouterr()
    assert main(["train", "--data", str(prepared), "--out", str(run), *TINY, "--resume", "--max-iters", "35"]) == 0
    assert ("the run is already at step 35, --max-iters 35: nothing to train; give a larger --max-iters to go on"
            in capsys.readouterr().err)
    assert load_checkpoint(run / "last.pt")["state"]["step"] == 35
    code = main(["train", "--data", str(prepared), "--out", str(run), *TINY, "--resume", "--n-block", "3",
                 "--n-embed", "64", "--tie-embeddings", "--no-tie-embeddings"])
    assert code == 2
    assert capsys.readouterr().err == ("janelm train: error: --resume keeps the run's model: --n-block 3, but the run has 2; "
                                       "--n-embed 64, but the run has 32; --no-tie-embeddings, but the run has "
                                       "--tie-embeddings: drop those flags, or train a new run\n")


def test_a_write_over_a_file_size_limit_keeps_the_earlier_checkpoints(run: Path, prepared: Path) -> None:
    before = {name: (run / name).read_bytes() for name in ("best.pt", "last.pt")}
    proc = janelm("train", "--data", str(prepared), "--out", str(run), *TINY, "--resume", "--max-iters", "40",
                  check=False, preexec_fn=file_size_limit(100_000))  # a checkpoint is ~450 kB
    assert proc.returncode == 1
    line = last_line(proc.stderr)
    assert line.startswith("janelm train: error: file too large (a file-size limit) writing ")
    assert line.endswith(".pt: raise the limit (ulimit -f) or pass --out on another disk")
    assert f"writing {run}/best.pt" in line or f"writing {run}/last.pt" in line
    for name, data in before.items():
        assert (run / name).read_bytes() == data
        assert load_checkpoint(run / name)["state"]["step"] == 30
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt", "loss.png", "metrics.csv"]

    resumed = janelm("train", "--data", str(prepared), "--out", str(run), *TINY, "--resume", "--max-iters", "40")
    assert "Warning" not in resumed.stderr  # e.g. torch's "Failed to initialize NumPy" without numpy
    assert load_checkpoint(run / "last.pt")["state"]["step"] == 40
    assert metrics_steps(run) == [10, 20, 30, 40]  # the row logged before the failed save is not repeated


def test_a_folder_made_read_only_mid_run_keeps_the_earlier_checkpoints(tmp_path: Path, prepared: Path) -> None:
    if not read_only_folders_work():
        pytest.skip("folder permissions cannot be made to apply here")
    run = tmp_path / "run"
    args = ["--data", str(prepared), "--out", str(run), *TINY, "--max-iters", "100000", "--save-interval", "20"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "janelm", "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=obey_permissions)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and len(metrics_steps(run)) < 1:
            time.sleep(0.01)
        run.chmod(0o555)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        run.chmod(0o755)
    assert proc.returncode == 1, err
    line = last_line(err)
    assert line.startswith("janelm train: error: permission denied writing ")
    assert line.endswith(f".pt: make {run}/ writable or pass --out elsewhere")
    assert load_checkpoint(run / "last.pt")["state"]["step"] % 20 == 0  # a whole earlier save
    # A temporary stays only if the folder turned read-only mid-write (then nothing can remove
    # it); the next command to hold the folder does.
    with locked_folder(run, "train"):
        assert not list(run.glob(".*.tmp"))


def test_kill_9_at_random_moments_then_resume(tmp_path: Path, prepared: Path) -> None:
    """benchmarks/kill_resume.py's loop, with four kills: every kill leaves loadable checkpoints and
    each step once in metrics.csv, and the run then finishes whole, with nothing left behind."""
    result = kill_and_resume(prepared, tmp_path, kills=4, max_iters=150, max_delay=6.0,
                             rng=random.Random(os.getpid()))
    assert result["kills"] == 4
    finished = tmp_path / f"run-{result['runs']}"
    assert check_after_kill(finished)["last_step"] == 150


def test_bf16_without_native_support_is_named_slow(prepared: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import janelm.device
    import janelm.speed

    monkeypatch.setattr(janelm.device, "cpu_has_native_bf16", lambda *_: False)
    args = ["--data", str(prepared), "--out", str(tmp_path / "run"), *TINY, "--max-iters", "1", "--eval-interval", "1"]
    assert main(["train", *args, "--dtype", "bfloat16"]) == 0  # one step of a tiny model: emulated, but brief
    warning = "warning: this CPU has no native bf16, so --dtype bfloat16 is emulated and many times slower than float32"
    assert warning in capsys.readouterr().err

    def measured(*a, **k):
        raise RuntimeError("the measurement would start here")

    monkeypatch.setattr(janelm.speed, "measure_training", measured)
    assert main(["bench", "train", "--dtype", "bfloat16", "--n-block", "1", "--n-embed", "32", "--n-head", "2"]) == 1
    err = capsys.readouterr().err
    assert err.index(warning) < err.index("the measurement would start here")

    monkeypatch.setattr(janelm.device, "cpu_has_native_bf16", lambda *_: True)
    assert main(["train", *args, "--dtype", "bfloat16", "--force"]) == 0
    assert warning not in capsys.readouterr().err


# Appends one row to a metrics.csv in a child whose file-size limit cuts the row in two.
APPEND = """
import sys
from pathlib import Path
from janelm.files import WriteFailure
from janelm.metrics_log import MetricsLog
log = MetricsLog(Path(sys.argv[1]), resume_step=10)
try:
    log.append(step=20, tokens=2560, train_loss="4.5", val_loss="4.4", lr="0.001", elapsed_s="1.0")
except WriteFailure as e:
    print(e)
"""


def test_a_metrics_row_cut_by_a_write_failure_is_taken_back(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("step,tokens,train_loss,val_loss,lr,elapsed_s\r\n10,1280,4.9,4.8,0.002,0.5\r\n"
                    "20,2560,4.5,4.4,0.001,1.0\r\n")  # the row past step 10 goes on resume
    kept = "step,tokens,train_loss,val_loss,lr,elapsed_s\r\n10,1280,4.9,4.8,0.002,0.5\r\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", APPEND, str(path)], capture_output=True, text=True, env=env,
                          preexec_fn=file_size_limit(len(kept) + 10), timeout=120)
    assert proc.stdout == (f"file too large (a file-size limit) writing {path}: raise the limit (ulimit -f) "
                           f"or pass --out on another disk\n"), proc.stderr
    assert path.read_bytes().decode() == kept  # not a piece of the row
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_failed_plot_write_names_the_file_and_its_option(trained: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "both.png"
    proc = janelm("plot", str(trained), "-o", str(out), check=False, preexec_fn=file_size_limit(5_000))
    assert proc.returncode == 1
    assert proc.stderr == (f"janelm plot: error: file too large (a file-size limit) writing {out}: raise the limit "
                           f"(ulimit -f) or pass -o on another disk\n")
    assert list(tmp_path.iterdir()) == []
