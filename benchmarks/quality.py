"""The quality study: which configuration gives the lowest held-out bits per character for a fixed
wall-clock budget on this machine?

Every variant trains on six of Austen's works with the same budget (default 600 s) and is scored
with `janelm eval` on the held-out northanger-abbey.txt. Variants are flags on top of a preset
(default: the one `--preset auto` picks for this machine's CPU), and each result records the
machine's class, so each class gets its own table. Run variants one at a time on an otherwise idle
machine: two at once, or any other load, makes the budget buy less and the figures worthless.

    python3 benchmarks/quality.py                      # every variant (hours)
    python3 benchmarks/quality.py default char learned-positions --seed 2
    python3 benchmarks/quality.py default 3x384 --preset cpu-2x256
    python3 benchmarks/quality.py --list

Results are appended to benchmarks/results/quality.jsonl (one JSON object per run) and the table in
docs/quality.md is regenerated from that file with --table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from study import (REPO, default_preset, janelm, machine, read_results, run_record, score_held_out, tables,
                   training_works)

RESULTS = REPO / "benchmarks" / "results" / "quality.jsonl"

# name: (prepare flags, train flags), each relative to the preset. A result records the defaults it
# ran against under "base" when they were not today's, and the preset and machine class it ran on
# (rows without them ran the `cpu` preset on a CPU with native bf16).
VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "default": ([], []),
    "char": (["--tokenizer", "char"], []),
    "bpe-512": (["--vocab-size", "512"], []),
    "bpe-1024": (["--vocab-size", "1024"], []),
    "bpe-4096": (["--vocab-size", "4096"], []),
    "bpe-8192": (["--vocab-size", "8192"], []),
    "learned-positions": ([], ["--position", "learned"]),
    "layernorm": ([], ["--norm", "layer"]),
    "gelu": ([], ["--mlp", "gelu"]),
    "relu2": ([], ["--mlp", "relu2"]),
    "untied": ([], ["--no-tie-embeddings"]),
    "narrow-deep": ([], ["--n-embed", "192", "--n-head", "3", "--n-block", "8"]),
    "6x256": ([], ["--n-embed", "256", "--n-head", "4", "--n-block", "6"]),  # the default until the study
    "4x384": ([], ["--n-block", "4"]),
    "2x512": ([], ["--n-embed", "512", "--n-head", "8", "--n-block", "2"]),
    "3x384": ([], ["--n-embed", "384", "--n-head", "6", "--n-block", "3"]),  # the cpu preset's shape
    "2x384": ([], ["--n-embed", "384", "--n-head", "6", "--n-block", "2"]),
    "4x256": ([], ["--n-embed", "256", "--n-head", "4", "--n-block", "4"]),
    "3x256": ([], ["--n-embed", "256", "--n-head", "4", "--n-block", "3"]),
    "2x256": ([], ["--n-embed", "256", "--n-head", "4", "--n-block", "2"]),
    "batch-8": ([], ["--batch-size", "8"]),
    "3x512": ([], ["--n-embed", "512", "--n-head", "8", "--n-block", "3"]),
    "small": ([], ["--n-embed", "192", "--n-head", "3", "--n-block", "4"]),
    "dropout-0.1": ([], ["--dropout", "0.1"]),
    "muon": ([], ["--optimizer", "muon"]),
}


def run_variant(name: str, budget: float, seed: int, work: Path, preset: str) -> dict:
    prepare_flags, train_flags = VARIANTS[name]
    corpus, run = work / f"corpus-{name}", work / f"run-{name}-{seed}"
    janelm("prepare", *training_works(), "--out", str(corpus), "--force", *prepare_flags)
    start = time.time()
    janelm("train", "--data", str(corpus), "--out", str(run), "--force", "--quiet", "--seed", str(seed),
           "--preset", preset, "--max-time", str(budget), *train_flags)
    wall = time.time() - start
    result = score_held_out(run / "best.pt")
    return {"variant": name, "seed": seed, "budget_s": budget, "train_wall_s": round(wall, 1), **run_record(run),
            "bits_per_char": result["bits_per_char"], "loss": result["loss"],
            "prepare": prepare_flags, "train": train_flags, "date": time.strftime("%Y-%m-%d %H:%M"),
            "preset": preset, "machine": machine()}


NATIVE_BF16 = "multiplies bf16 natively"  # what rows without a machine ran on


def table(rows: list[dict]) -> str:
    """One markdown table per machine class, preset and set of defaults the rows ran against, today's
    first, best row first."""
    def cells(r: dict) -> tuple:
        flags = " ".join(r["prepare"] + r["train"]) or "(defaults)"
        name = r["variant"] + (f" ({r['note']})" if r.get("note") else "")
        return (name, f"`{flags}`", f"{r['params'] / 1e6:.2f}M", f"{r['tokens_seen'] / 1e6:.2f}M", r["steps"],
                f"{r['bits_per_char']:.3f}", r["seed"])

    return tables(rows, key=lambda r: (r.get("machine", NATIVE_BF16), r.get("preset", "cpu"), r.get("base", "")),
                  order=lambda k: (k[0], k[2] != "", k[1], k[2]),
                  title=lambda k: f"On a CPU that {k[0]}, `--preset {k[1]}`, against {k[2] or 'today' + chr(39) + 's defaults'}",
                  columns=("variant", "flags", "params", "tokens seen", "steps", "bits/char", "seed"), cells=cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--budget", type=float, default=600, help="training seconds per variant (default: 600)")
    parser.add_argument("--seed", type=int, default=1337, help="training seed (default: 1337)")
    parser.add_argument("--preset", default=None, help="preset the variants modify (default: auto's pick for this CPU)")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--table", action="store_true", help="print the markdown table of all recorded results")
    args = parser.parse_args()
    if args.list:
        for name, (p, t) in VARIANTS.items():
            print(f"{name:18} {' '.join(p + t) or '(defaults)'}")
        return
    if args.table:
        print(table(read_results(RESULTS)))
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="janelm-quality-") as tmp:
        for name in args.variants or list(VARIANTS):
            if name not in VARIANTS:
                sys.exit(f"unknown variant {name!r}: see --list")
            row = run_variant(name, args.budget, args.seed, Path(tmp), args.preset or default_preset())
            with open(RESULTS, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name:18} seed {args.seed}: {row['bits_per_char']:.3f} bits/char, "
                  f"{row['tokens_seen'] / 1e6:.2f}M tokens, {row['params'] / 1e6:.2f}M params", flush=True)


if __name__ == "__main__":
    main()
