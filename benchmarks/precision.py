"""Does bf16 autocast change what training learns? The reference shape (`--preset bench`: 6 blocks ×
384, 6 heads, context 256, batch 8) on Austen's characters (a ~100-symbol vocabulary), the same
seed and the same number of steps in float32 and in bfloat16, then the final losses side by side.

    python3 benchmarks/precision.py             # 300 steps each: a few minutes on 2 cores
    python3 benchmarks/precision.py --steps 100

The held-out figure is `janelm eval` of each run's last checkpoint on northanger-abbey.txt, always in
float32, so only training differs. Results are appended to benchmarks/results/precision.jsonl.
"""

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from study import CORPUS, HELD_OUT, REPO, janelm, training_works

RESULTS = REPO / "benchmarks" / "results" / "precision.jsonl"
DTYPES = ("float32", "bfloat16")


def last_row(run: Path) -> dict[str, str]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per precision (default: 300)")
    parser.add_argument("--seed", type=int, default=1337, help="training seed (default: 1337)")
    args = parser.parse_args()
    sources = training_works()
    rows = []
    with tempfile.TemporaryDirectory(prefix="janelm-precision-") as tmp:
        corpus = Path(tmp) / "corpus"
        janelm("prepare", *sources, "--out", str(corpus), "--tokenizer", "char")
        for dtype in DTYPES:
            run = Path(tmp) / dtype
            janelm("train", "--data", str(corpus), "--out", str(run), "--preset", "bench", "--quiet",
                   "--max-iters", str(args.steps), "--eval-interval", str(max(1, args.steps // 6)),
                   "--dtype", dtype, "--seed", str(args.seed), "--patience", "0")
            row = last_row(run)
            held_out = json.loads(janelm("eval", "-c", str(run / "last.pt"), str(CORPUS / HELD_OUT), "--json").stdout)
            rows.append({"dtype": dtype, "steps": int(row["step"]), "seed": args.seed,
                         "train_loss": float(row["train_loss"]), "val_loss": float(row["val_loss"]),
                         "held_out_loss": held_out["loss"], "date": time.strftime("%Y-%m-%d %H:%M")})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    f32, bf16 = rows
    print("| dtype | steps | train loss | val loss | held-out loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['steps']} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | "
              f"{r['held_out_loss']:.4f} |")
    for key in ("val_loss", "held_out_loss"):
        change = (bf16[key] - f32[key]) / f32[key]
        print(f"bf16 vs float32 {key.replace('_', ' ')}: {change:+.2%}", file=sys.stderr)


if __name__ == "__main__":
    main()
