"""The compute study behind `--preset auto`: which recipe scores best at each compute budget?

On one machine, time budgets of 150 to 2,400 s stand in for machines 4× slower to 4× faster than it.
Each budget becomes *compute*: budget × the probe's training tokens/s (janelm.recipe), in probe
tokens. Each recipe (shape, batch, learning rate, dropout: flags on top of the `cpu` preset) trains
for the steps its own measured pace fits in the budget (janelm.recipe.plan_steps, as `auto` plans a
run) and is scored with `janelm eval` on the held-out northanger-abbey.txt.

Runs are bound by steps, not by the clock: the paces are measured once, alone (`pace`), and a run's
result is then the same however busy the machine is while it trains. So only `pace` needs a quiet
machine.

    python3 benchmarks/compute.py pace                  # every candidate's pace here (a few minutes, alone)
    python3 benchmarks/compute.py run 600 3x384 4x384   # train and score at a budget
    python3 benchmarks/compute.py run 600 3x384 --seed 2
    python3 benchmarks/compute.py grid                  # the study's runs, in order, skipping done ones
    python3 benchmarks/compute.py table                 # the markdown tables for docs/quality.md
    python3 benchmarks/compute.py plot docs/compute.png # bits/char against compute, a line per recipe

Paces go to benchmarks/results/pace.jsonl, results to benchmarks/results/compute.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from study import REPO, janelm, machine, read_results, run_record, score_held_out, training_works

sys.path.insert(0, str(REPO))
PACES = REPO / "benchmarks" / "results" / "pace.jsonl"
RESULTS = REPO / "benchmarks" / "results" / "compute.jsonl"
BASE = "cpu"  # the preset the variants' flags change (3 × 384, batch 16, lr 3e-3): also the probe
PROBE_VARIANT = "3x384"
VOCAB = 2048  # the default BPE's, which the variants' heads are timed with
SHAPES = {"4x256": ["--n-block", "4", "--n-embed", "256", "--n-head", "4"],
          "2x256": ["--n-block", "2", "--n-embed", "256", "--n-head", "4"],
          "3x256": ["--n-block", "3", "--n-embed", "256", "--n-head", "4"],
          "2x384": ["--n-block", "2"],
          "3x384": [],
          "4x384": ["--n-block", "4"],
          "6x384": ["--n-block", "6"],
          "4x512": ["--n-block", "4", "--n-embed", "512", "--n-head", "8"]}
BASE_FLAGS = ["--eval-batches", "6"]  # evaluations cost ~1/3 step per batch: 6 keep eight of them under 3% of a run
EXTRAS = {"b8": ["--batch-size", "8"], "lr2": ["--lr", "2e-3"], "d1": ["--dropout", "0.1"]}


def variant_flags(name: str) -> list[str]:
    """`4x384-d1-lr2`: the shape's flags, then each suffix's."""
    shape, *extras = name.split("-")
    return BASE_FLAGS + SHAPES[shape] + [f for e in extras for f in EXTRAS[e]]


# budget (s): variants. The first rounds (150, 300 s) showed smaller shapes and batch 8 ahead, so the
# later budgets run the two leaders; 1,200 and 2,400 s were not reached in the session (docs/quality.md).
GRID = {150: ["2x256", "3x256", "3x256-b8", "2x256-b8"],
        300: ["2x256-b8", "3x256-b8", "2x384-b8", "3x384-b8"],
        600: ["2x256-b8", "3x256-b8"],
        1200: ["2x256-b8", "3x256-b8", "4x256-b8"],
        2400: ["3x256-b8", "4x256-b8"]}
PROBE_OVERHEAD_S = 10.0  # what `auto`'s own measurements take out of a budget before training


def configs(name: str):
    from janelm.cli import build_parser
    from janelm.commands.train import configs_from_args

    args = build_parser().parse_args(["train", "--preset", BASE, *variant_flags(name)])
    return configs_from_args(args)


def measure_paces(names: list[str], rounds: int) -> None:
    """Each variant's pace, `rounds` times interleaved; the fastest round is kept (noise only slows)."""
    from janelm.recipe import measure_pace

    best: dict[str, dict] = {}
    for r in range(rounds):
        for name in names:
            model_cfg, train_cfg = configs(name)
            pace = measure_pace(model_cfg, train_cfg, VOCAB)
            row = {"variant": name, "step_s": pace.step_s, "eval_s": pace.eval_s,
                   "tokens_per_s": pace.tokens_per_s, "tokens_per_step": pace.tokens_per_step}
            print(f"round {r + 1}: {name}: {pace.tokens_per_s:,.0f} tokens/s, eval {pace.eval_s:.2f} s", file=sys.stderr)
            if name not in best or row["step_s"] < best[name]["step_s"]:
                best[name] = row
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "threads": os.cpu_count()}
    with PACES.open("a") as f:
        for row in best.values():
            f.write(json.dumps({**row, **stamp}) + "\n")


def paces() -> dict[str, dict]:
    """The latest measured pace of each variant on this machine."""
    here = machine()
    return {r["variant"]: r for r in read_results(PACES) if r["machine"] == here} if PACES.exists() else {}


def planned_steps(name: str, budget: float) -> tuple[int, float]:
    """(steps, compute in probe tokens) of a variant at a budget, as `auto` would plan them here."""
    from janelm.recipe import Pace, plan_steps

    known = paces()
    if name not in known or PROBE_VARIANT not in known:
        raise SystemExit(f"no pace for {name} (or the probe) on this machine: run `compute.py pace` first")
    p = known[name]
    steps = plan_steps(budget - PROBE_OVERHEAD_S, Pace(p["step_s"], p["eval_s"], p["tokens_per_step"]))
    return steps, budget * known[PROBE_VARIANT]["tokens_per_s"]


def run(name: str, budget: float, seed: int, work: Path, corpus: Path) -> dict:
    from janelm.recipe import with_steps

    steps, compute = planned_steps(name, budget)
    model_cfg, train_cfg = configs(name)
    every = with_steps(train_cfg, steps).eval_interval
    out = work / f"run-{name}-{budget:g}-{seed}"
    start = time.time()
    janelm("train", "--data", str(corpus), "--out", str(out), "--force", "--quiet", "--seed", str(seed),
           "--preset", BASE, *variant_flags(name), "--max-iters", str(steps), "--max-time", "0",
           "--eval-interval", str(every), "--save-interval", str(every))
    wall = time.time() - start
    result = score_held_out(out / "best.pt")
    return {"variant": name, "seed": seed, "budget_s": budget, "compute": compute, "train_wall_s": round(wall, 1),
            **run_record(out), "bits_per_char": result["bits_per_char"], "loss": result["loss"],
            "flags": variant_flags(name), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}


def done(name: str, budget: float, seed: int) -> bool:
    return RESULTS.exists() and any(r["variant"] == name and r["budget_s"] == budget and r["seed"] == seed
                                    and r["machine"] == machine() for r in read_results(RESULTS))


def run_all(jobs: list[tuple[float, str]], seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="janelm-compute-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        janelm("prepare", *training_works(), "--out", str(corpus))
        for budget, name in jobs:
            if done(name, budget, seed):
                continue
            row = run(name, budget, seed, work, corpus)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{budget:g} s {name} seed {seed}: {row['bits_per_char']:.4f} bits/char, {row['tokens_seen']:,} tokens, "
                  f"{row['steps']} steps, {row['train_wall_s']:.0f} s", file=sys.stderr, flush=True)


def table() -> str:
    rows = [r for r in read_results(RESULTS)]
    out = []
    for here in sorted({r["machine"] for r in rows}):
        out += [f"On a CPU that {here}:", "",
                "| budget | compute (probe tokens) | recipe | steps | tokens seen | bits/char (seed) |", "|---|---|---|---|---|---|"]
        for r in sorted((r for r in rows if r["machine"] == here), key=lambda r: (r["budget_s"], r["bits_per_char"])):
            out.append(f"| {r['budget_s']:g} s | {r['compute'] / 1e6:.2f}M | {r['variant']} | {r['steps']} | "
                       f"{r['tokens_seen'] / 1e6:.2f}M | {r['bits_per_char']:.4f} ({r['seed']}) |")
        out.append("")
    return "\n".join(out)


def plot(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_results(RESULTS)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in sorted({r["variant"] for r in rows}):
        points = sorted((r["compute"], r["bits_per_char"]) for r in rows if r["variant"] == name)
        by_compute: dict[float, list[float]] = {}
        for c, b in points:
            by_compute.setdefault(c, []).append(b)
        means = sorted((c, sum(bs) / len(bs)) for c, bs in by_compute.items())  # seeds: the line runs through their mean
        line, = ax.plot([c / 1e6 for c, _ in means], [b for _, b in means], marker="o", label=name)
        ax.scatter([c / 1e6 for c, _ in points], [b for _, b in points], s=12, color=line.get_color())
    ax.set_xscale("log")
    ticks = sorted({r["compute"] / 1e6 for r in rows})
    ax.set_xticks(ticks, [f"{t:.2g}M ({b:g} s)" for t, b in sorted({(r["compute"] / 1e6, r["budget_s"]) for r in rows})])
    ax.minorticks_off()
    ax.set_xlabel("compute: probe tokens (budget × the 3 × 384 probe's tokens/s here)")
    ax.set_ylabel("bits per character, Northanger Abbey")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("pace", "run", "grid", "table", "plot"))
    p.add_argument("args", nargs="*")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_intermixed_args()
    if a.what == "pace":
        names = a.args or sorted({n for names in GRID.values() for n in names})
        measure_paces(names, a.rounds)
    elif a.what == "run":
        run_all([(float(a.args[0]), name) for name in a.args[1:]], a.seed)
    elif a.what == "grid":
        run_all([(float(b), name) for b, names in GRID.items() for name in names], a.seed)
    elif a.what == "table":
        print(table())
    else:
        plot(Path(a.args[0] if a.args else "compute.png"))


if __name__ == "__main__":
    main()
