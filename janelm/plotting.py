"""Loss curves from metrics.csv files, drawn with matplotlib (the optional `janelm[plot]` extra)."""

from __future__ import annotations

import csv
from pathlib import Path

from janelm.errors import InputError
from janelm.files import atomic_write

SIZE_INCHES, DPI = (8, 5), 100  # an 800 × 500 pixel image


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def read_metrics(run: Path) -> list[dict[str, float]]:
    path = run / "metrics.csv" if run.is_dir() else run
    if not path.is_file():
        raise InputError(f"no metrics.csv in {run}/: train a run there with `janelm train --out {run}` first, "
                         f"or pass a run folder it wrote")
    with open(path, newline="") as f:
        try:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        except (ValueError, TypeError):
            raise InputError(f"{path} is not a JaneLM metrics file") from None


def plot_runs(runs: list[Path], output: Path, option: str = "-o") -> None:
    """Train (dashed) and val (solid) loss against tokens seen, one colour per run, written
    atomically to `output`; `option` is the flag that chose it, named if the write fails."""
    if not have_matplotlib():
        raise InputError("plotting needs matplotlib: pip install 'janelm[plot]'")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=SIZE_INCHES, dpi=DPI)
    for i, run in enumerate(runs):
        rows = read_metrics(run)
        tokens = [r["tokens"] for r in rows]
        colour = f"C{i}"
        label = run.name if run.is_dir() else run.parent.name
        ax.plot(tokens, [r["train_loss"] for r in rows], "--", color=colour, label=f"{label} train")
        ax.plot(tokens, [r["val_loss"] for r in rows], "-", color=colour, label=f"{label} val")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        atomic_write(output, lambda f: fig.savefig(f, format="png", dpi=DPI), option)
    finally:
        plt.close(fig)
