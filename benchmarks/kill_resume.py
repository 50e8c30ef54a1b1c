"""kill -9 anywhere: SIGKILL a short training at random moments, resume it each time, check the run folder.

Each kill lands at a random moment of a process's life (uniform over the length of an
uninterrupted run): during start-up, mid-step, mid-evaluation, mid-save, while plotting. After
every kill:
  - every checkpoint in the folder loads;
  - metrics.csv holds each step at most once, in order, every row complete;
  - the run can go on: last.pt exists, or the folder holds no checkpoint (a fresh start is allowed);
and the next start is never refused (a killed process's lock never blocks). After the last kill
the run is resumed to its end and compared with the uninterrupted run: the same final and best
weights, bit for bit, the same metrics rows (but for elapsed time), and no temporary file or
lock file left. A run that ends before its kill is checked the same way and a new one begins.

    python3 benchmarks/kill_resume.py                 # 20 kills, about five minutes on 2 cores
    python3 benchmarks/kill_resume.py --kills 5 --seed 2

tests/test_run_folder.py runs the same loop with a handful of kills.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "corpus" / "austen" / "lady-susan.txt"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
FLAGS = ["--preset", "tiny", "--n-embed", "32", "--n-head", "2", "--context", "32", "--batch-size", "4",
         "--eval-batches", "2", "--warmup-iters", "3", "--dtype", "float32", "--dropout", "0.1", "--seed", "3",
         "--eval-interval", "10", "--save-interval", "25", "--quiet"]


def train(corpus: Path, run: Path, max_iters: int) -> subprocess.Popen:
    """Start (or, where last.pt exists, resume) the run as a user would."""
    resume = ["--resume"] if (run / "last.pt").exists() else []
    return subprocess.Popen([sys.executable, "-m", "janelm", "train", "--data", str(corpus), "--out", str(run),
                             *FLAGS, "--max-iters", str(max_iters), *resume],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)


def metrics_steps(run: Path) -> list[int]:
    """The steps in metrics.csv; raises AssertionError for a repeated, unordered or incomplete row."""
    path = run / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(all(row.get(k) for k in ("step", "val_loss", "elapsed_s")) for row in rows), f"an incomplete row in {path}"
    steps = [int(row["step"]) for row in rows]
    assert steps == sorted(set(steps)), f"{path} repeats or reorders steps: {steps}"
    return steps


def check_after_kill(run: Path) -> dict:
    """The invariants a killed run folder must keep; returns what it found."""
    from janelm.checkpoint import load_checkpoint

    steps = {name: load_checkpoint(run / name)["state"]["step"] for name in ("last.pt", "best.pt") if (run / name).exists()}
    assert "last.pt" in steps or not steps, f"{run} holds best.pt without last.pt: neither --resume nor a new run goes on"
    return {"last_step": steps.get("last.pt"), "metrics": metrics_steps(run),
            "temporaries": sum(1 for p in run.glob(".*.tmp")) if run.exists() else 0}


def check_complete(run: Path, reference: Path | None, max_iters: int) -> None:
    """A finished run: all steps, each eval once, no leftovers; with a reference, identical to it."""
    from janelm.checkpoint import load_checkpoint

    last = load_checkpoint(run / "last.pt")
    assert last["state"]["step"] == max_iters, f"{run} stopped at step {last['state']['step']}"
    interval = int(FLAGS[FLAGS.index("--eval-interval") + 1])
    expected = sorted({*range(interval, max_iters + 1, interval), max_iters})
    assert metrics_steps(run) == expected, f"{run}/metrics.csv has steps {metrics_steps(run)}"
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"{run} keeps {leftovers}"
    if reference is None:
        return
    for name in ("last.pt", "best.pt"):
        ours, theirs = load_checkpoint(run / name)["model"], load_checkpoint(reference / name)["model"]
        assert all(ours[k].equal(theirs[k]) for k in theirs), f"{run}/{name} differs from the uninterrupted run"
    strip = lambda path: [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]  # noqa: E731 - drop elapsed_s
    assert strip(run / "metrics.csv") == strip(reference / "metrics.csv"), "metrics.csv differs from the uninterrupted run"


def kill_and_resume(corpus: Path, work: Path, kills: int, max_iters: int, max_delay: float, rng: random.Random,
                    reference: Path | None = None) -> dict:
    """SIGKILL the run `kills` times at random moments, checking the folder after each; then finish it."""
    runs, landed, finished, stale, early, progress = 1, 0, 0, 0, 0, []
    run = work / "run-1"
    while landed < kills:
        before = check_after_kill(run)["last_step"] if run.exists() else None
        proc = train(corpus, run, max_iters)
        deadline = time.monotonic() + rng.uniform(0.0, max_delay)
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        err = proc.communicate(timeout=300)[1]
        if proc.returncode == 0:  # it ended before its kill: check it, then start another run
            check_complete(run, reference, max_iters)
            finished += 1
            runs += 1
            run = work / f"run-{runs}"
            continue
        assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}: {err[-2000:]}"
        landed += 1
        found = check_after_kill(run)
        stale += found["temporaries"] > 0
        early += not [step for step in found["metrics"] if step > (before or 0)]  # no evaluation logged yet
        progress.append((found["last_step"] or 0) - (before or 0))
    proc = train(corpus, run, max_iters)
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == 0, err[-2000:]
    check_complete(run, reference, max_iters)
    return {"kills": landed, "runs": runs, "runs_ended_before_their_kill": finished,
            "kills_leaving_a_temporary": stale, "kills_before_a_new_evaluation": early,
            "kills_with_no_new_checkpoint": sum(1 for p in progress if p <= 0),
            "steps_saved_per_kill": progress}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to land (default: 20)")
    parser.add_argument("--steps", type=int, default=600, help="training steps of each run (default: 600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default: 0)")
    parser.add_argument("--text", type=Path, default=TEXT, help=f"text to train on (default: {TEXT})")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="janelm-kill-") as tmp:
        work, corpus, reference = Path(tmp), Path(tmp) / "corpus", Path(tmp) / "reference"
        subprocess.run([sys.executable, "-m", "janelm", "prepare", str(args.text), "--out", str(corpus),
                        "--tokenizer", "char"], check=True, env=ENV, stderr=subprocess.DEVNULL)
        start = time.monotonic()
        proc = train(corpus, reference, args.steps)
        assert proc.wait() == 0, proc.stderr.read()
        duration = time.monotonic() - start
        start = time.monotonic()
        result = kill_and_resume(corpus, work, args.kills, args.steps, duration, rng, reference)
        result.update(uninterrupted_run_s=round(duration, 2), total_s=round(time.monotonic() - start, 1))
    print(f"{result['kills']} kills at random moments over {result['runs']} run(s) of {args.steps} steps "
          f"(an uninterrupted run: {duration:.1f} s; kill moments uniform over that):")
    for key, value in result.items():
        print(f"  {key}: {value}")
    print("every kill: checkpoints loaded, metrics.csv held each step once, the run went on; "
          "every run ended identical to the uninterrupted one, with nothing left behind")


if __name__ == "__main__":
    main()
