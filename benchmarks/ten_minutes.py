"""What ten minutes buys on this machine: the README's first block, timed, and scored.

`janelm prepare` on six of Austen's works (the bundled ones, Northanger Abbey held out), then
`janelm train` with no flags (or the flags given after `--`), then `janelm eval` on the held-out
novel; wall times and bits per character are appended to benchmarks/results/ten_minutes.jsonl.

    python3 benchmarks/ten_minutes.py                         # this machine as it is
    python3 benchmarks/ten_minutes.py --class avx2            # PyTorch, oneDNN and MKL capped at AVX2
    python3 benchmarks/ten_minutes.py --one-core              # taskset -c 0: a slower machine
    python3 benchmarks/ten_minutes.py -- --max-time 1200      # train's own flags
    python3 benchmarks/ten_minutes.py --keep /tmp/best.pt     # and keep the trained model

The machine must be otherwise idle: this measures what the clock buys.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ten_minutes.jsonl"
HELD_OUT = "northanger-abbey"
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, text=True, capture_output=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--class", dest="cpu_class", choices=("native", "avx2"), default="native")
    p.add_argument("--one-core", action="store_true", help="run under taskset -c 0")
    p.add_argument("--keep", type=Path, help="copy the trained best.pt here (a model to measure with)")
    p.add_argument("train_flags", nargs="*", help="flags for janelm train (after --)")
    a = p.parse_args()
    sys.path.insert(0, str(REPO))
    from janelm.bundled import bundled_works

    env = {**os.environ, "PYTHONPATH": str(REPO), **(AVX2 if a.cpu_class == "avx2" else {})}
    prefix = ["taskset", "-c", "0"] if a.one_core else []
    janelm = [*prefix, sys.executable, "-m", "janelm"]
    works = [w.source for name, w in bundled_works().items() if name != HELD_OUT]
    with tempfile.TemporaryDirectory(prefix="janelm-ten-") as tmp:
        work = Path(tmp)
        prepare_s, _ = timed([*janelm, "prepare", *works], env, work)
        train_s, train = timed([*janelm, "train", *a.train_flags], env, work)
        _, score = timed([*janelm, "eval", f"austen:{HELD_OUT}", "--json"], env, work)
        import torch

        ckpt = torch.load(work / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        if a.keep:
            a.keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / "checkpoints" / "best.pt", a.keep)
    result = json.loads(score.stdout)
    lines = train.stderr.replace("\r", "\n").splitlines()  # the progress bar redraws with \r
    row = {"class": a.cpu_class, "one_core": a.one_core, "train_flags": a.train_flags,
           "prepare_s": round(prepare_s, 1), "train_s": round(train_s, 1), "total_s": round(prepare_s + train_s, 1),
           "bits_per_char": result["bits_per_char"], "steps": ckpt["state"]["step"],
           "tokens_seen": ckpt["state"]["tokens_seen"], "last_lr": ckpt["optimizer"]["param_groups"][0]["lr"],
           "floor_lr": ckpt["train_config"]["lr"] * ckpt["train_config"]["min_lr_ratio"],
           "model": {k: ckpt["model_config"][k] for k in ("n_block", "n_embed", "n_head", "context")},
           "batch_size": ckpt["train_config"]["batch_size"], "first_line": lines[0] if lines else "",
           "plan": next((line for line in lines if "steps fill" in line), ""),
           # What decided the run's length: the reserve, each plan, a switch to the clock, the compile.
           "budget_lines": [line.strip() for line in lines if any(k in line for k in (
               "--max-time", "replays this run", "follows the clock", "compiled in", "training finished"))],
           "time_bound": ckpt["state"].get("time_bound_progress", -1.0) >= 0,
           "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M")}
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
