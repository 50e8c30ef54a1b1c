"""The period-data study: does fiction of Austen's time (five novels by Dickens, three by George Eliot,
../shared/corpus/period, 8.3M characters) make a better Austen model in a fixed budget?

Every recipe trains on Austen's six works (northanger-abbey.txt held out of every training set),
with or without the period novels, for the same wall-clock budget, one recipe at a time, and is
scored with `janelm eval` on northanger-abbey.txt. Two corpora serve all recipes: Austen alone
(today's default), and Austen with the period novels as `--extra` sources, whose validation split
is still Austen's own. The recipes differ in how training draws from that one corpus:

    austen             Austen alone, its own tokenizer (today's default)
    austen-shared-bpe  Austen alone from the mixed corpus (--extra-weight 0): the tokenizer's share
    mix                all text mixed plainly (every window equally likely: about 3/4 period)
    mix-0.5, mix-0.3   half, or 30%, of the training windows from the period novels
    pretrain-finetune  the period novels alone for 60% of the budget (--extra-weight 1), then
                       --init-from that on Austen alone for 40% (fine-tuning's 10x lower lr)
    pretrain-finetune-full-lr   the same, with the preset's lr in the second stage

    python3 benchmarks/period.py                                  # every recipe, ten minutes each
    python3 benchmarks/period.py austen mix-0.3 --seed 2
    python3 benchmarks/period.py --preset cpu-long                # the hour-long preset (its own budget)
    python3 benchmarks/period.py --device cuda           # the gpu preset (see benchmarks/gpu_session.sh)
    python3 benchmarks/period.py --budget 20 --preset tiny --results /tmp/smoke.jsonl   # the script itself
    python3 benchmarks/period.py mix --corpora DIR    # DIR/corpus-austen, DIR/corpus-mixed made earlier
    python3 benchmarks/period.py --table

Run it on an otherwise idle machine: any other load makes the budget buy less. Results are appended
to benchmarks/results/period.jsonl (machine class, device, preset, budget, seed, flags, each stage's
steps and tokens), and --table prints the markdown tables for docs/quality.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from study import (CORPUS, HELD_OUT, REPO, SHARED, default_preset, janelm, machine, read_results, run_record,
                   score_held_out, tables, training_works)

RESULTS = REPO / "benchmarks" / "results" / "period.jsonl"
PERIOD = SHARED / "period"
AUSTEN, MIXED = "austen", "mixed"  # the two corpora: Austen alone; Austen with the period novels as extras


@dataclass(frozen=True)
class Stage:
    corpus: str  # AUSTEN or MIXED
    train: tuple[str, ...]  # train flags on top of the preset and --flags
    share: float = 1.0  # of the budget
    full_lr: bool = False  # after --init-from: the preset's lr, not fine-tuning's tenth of it


# Stages run in order; a later stage starts from the one before's last.pt (--init-from).
RECIPES: dict[str, tuple[Stage, ...]] = {
    "austen": (Stage(AUSTEN, ()),),
    "austen-shared-bpe": (Stage(MIXED, ("--extra-weight", "0")),),
    "mix": (Stage(MIXED, ()),),
    "mix-0.5": (Stage(MIXED, ("--extra-weight", "0.5")),),
    "mix-0.3": (Stage(MIXED, ("--extra-weight", "0.3")),),
    "pretrain-finetune": (Stage(MIXED, ("--extra-weight", "1"), 0.6), Stage(MIXED, ("--extra-weight", "0"), 0.4)),
    "pretrain-finetune-full-lr": (Stage(MIXED, ("--extra-weight", "1"), 0.6),
                                  Stage(MIXED, ("--extra-weight", "0"), 0.4, full_lr=True)),
}


def prepare_corpora(work: Path, prepared: Path | None = None) -> dict[str, Path]:
    """Both corpora, made in `work`, or taken from `prepared` (where an earlier run or another machine
    made them); checked to hold no held-out text."""
    corpora = {AUSTEN: (prepared or work) / "corpus-austen", MIXED: (prepared or work) / "corpus-mixed"}
    if prepared is None:
        janelm("prepare", *training_works(), "--out", str(corpora[AUSTEN]), "--force")
        janelm("prepare", *training_works(), "--extra", str(PERIOD), "--out", str(corpora[MIXED]), "--force")
    for corpus in corpora.values():
        check_held_out(corpus)
    return corpora


def check_held_out(corpus: Path) -> None:
    """Stop if the held-out novel is among a corpus's sources (by name or by content)."""
    held_out = hashlib.sha256((CORPUS / HELD_OUT).read_text(encoding="utf-8-sig").encode()).hexdigest()
    for source in json.loads((corpus / "meta.json").read_text())["sources"]:
        if source["sha256"] == held_out or Path(source["source"]).name == HELD_OUT:
            sys.exit(f"{corpus}: {source['source']} is the held-out novel; no recipe may train on it")


def run_recipe(name: str, corpora: dict[str, Path], budget: float, seed: int, work: Path, preset: str,
               device: str, flags: list[str]) -> dict:
    stages, previous, start = [], None, time.time()
    for number, stage in enumerate(RECIPES[name]):
        run = work / f"run-{name}-{seed}-{number}"
        train = [*stage.train, *(["--lr", preset_train_config(preset).lr] if stage.full_lr and "--lr" not in flags else [])]
        train = [str(flag) for flag in train]
        init = ["--init-from", str(previous / "last.pt")] if previous else []
        janelm("train", "--data", str(corpora[stage.corpus]), "--out", str(run), "--force", "--quiet",
               "--seed", str(seed), "--preset", preset, "--device", device, "--max-time", str(budget * stage.share),
               *flags, *train, *init)
        stages.append({"corpus": stage.corpus, "train": train, "budget_s": budget * stage.share, **run_record(run)})
        previous = run
    wall = time.time() - start
    result = score_held_out(previous / "best.pt", "--device", device)
    return {"recipe": name, "seed": seed, "budget_s": budget, "train_wall_s": round(wall, 1),
            "params": stages[-1]["params"], "tokens_seen": sum(s["tokens_seen"] for s in stages),
            "steps": sum(s["steps"] for s in stages), "bits_per_char": result["bits_per_char"], "loss": result["loss"],
            "flags": flags, "stages": stages, "date": time.strftime("%Y-%m-%d %H:%M"), "preset": preset,
            "device": device, "machine": machine(device)}


def preset_train_config(preset: str):
    sys.path.insert(0, str(REPO))
    from janelm.presets import preset_configs

    return preset_configs(preset)[1]


def table(rows: list[dict]) -> str:
    """One markdown table per device, machine, preset, budget and added flags; best row first."""
    def title(group: tuple) -> str:
        device, where, preset, budget, flags = group
        where = f"a CPU that {where}" if device == "cpu" else f"one {where}"
        return f"On {where}, `--preset {preset}`{f' `{flags}`' if flags else ''}, {budget:g} s of training"

    def cells(r: dict) -> tuple:
        stages = "; then ".join(f"{s['corpus']} `{' '.join(s['train']) or '(defaults)'}` {s['budget_s']:g} s"
                                for s in r["stages"])
        return r["recipe"], stages, f"{r['tokens_seen'] / 1e6:.2f}M", r["steps"], f"{r['bits_per_char']:.3f}", r["seed"]

    return tables(rows, key=lambda r: (r["device"], r["machine"], r["preset"], r["budget_s"], " ".join(r["flags"])),
                  title=title, columns=("recipe", "stages", "tokens seen", "steps", "bits/char", "seed"), cells=cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", help="recipes to run (default: all)")
    parser.add_argument("--preset", default=None,
                        help="preset every recipe trains with (default: gpu on cuda, else auto's pick for this CPU)")
    parser.add_argument("--budget", type=float, default=None,
                        help="training seconds per recipe, split among its stages (default: the preset's --max-time)")
    parser.add_argument("--seed", type=int, default=1337, help="training seed (default: 1337)")
    parser.add_argument("--device", default="cpu", help="device to train and score on: cpu or cuda (default: cpu)")
    parser.add_argument("--flags", default="", help="train flags added to every recipe, e.g. \"--dropout 0.1\" (default: none)")
    parser.add_argument("--corpora", type=Path, default=None,
                        help="folder holding corpus-austen/ and corpus-mixed/ made as this script makes them, to "
                             "use instead of preparing both again (default: prepare them)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"file to append results to (default: {RESULTS})")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--table", action="store_true", help="print the markdown tables of all recorded results")
    args = parser.parse_args()
    if args.list:
        for name, stages in RECIPES.items():
            print(f"{name:26} " + "; then ".join(f"{s.corpus} {' '.join(s.train) or '(defaults)'}"
                                                  f"{' at the preset lr' if s.full_lr else ''} ({s.share:.0%})"
                                                  for s in stages))
        return
    if args.table:
        print(table(read_results(args.results)))
        return
    unknown = [name for name in args.recipes if name not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipe {unknown[0]!r}: see --list")
    preset = args.preset or ("gpu" if args.device.startswith("cuda") else default_preset())
    budget = args.budget or preset_train_config(preset).max_time or 600.0  # the preset's own: cpu-long's hour
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="janelm-period-") as tmp:
        corpora = prepare_corpora(Path(tmp), args.corpora)
        for name in args.recipes or list(RECIPES):
            row = run_recipe(name, corpora, budget, args.seed, Path(tmp), preset, args.device, shlex.split(args.flags))
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name:26} seed {args.seed}: {row['bits_per_char']:.3f} bits/char, "
                  f"{row['tokens_seen'] / 1e6:.2f}M tokens in {row['steps']} steps", flush=True)


if __name__ == "__main__":
    main()
