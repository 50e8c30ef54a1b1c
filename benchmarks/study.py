"""What the quality studies share: the corpus beside the repository, the held-out novel, running
`janelm` as a user would, the machine a result ran on, and a trained run's record and score.

benchmarks/quality.py (model and tokenizer variants) and benchmarks/period.py (training data) import
it; each appends its results to its own file in benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "corpus"
CORPUS = SHARED / "austen"
HELD_OUT = "northanger-abbey.txt"  # scored by every study, in no study's training set


def janelm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "janelm", *args], cwd=REPO, text=True, capture_output=True, check=True)


def training_works() -> list[str]:
    """Austen's works but the held-out one."""
    return [str(p) for p in sorted(CORPUS.glob("*.txt")) if p.name != HELD_OUT]


def machine(device: str = "cpu") -> str:
    """The CUDA GPU's name, or this CPU's class as JaneLM sees it, with any ISA cap that emulates
    another class."""
    sys.path.insert(0, str(REPO))
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    from janelm.device import cpu_class

    caps = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
            if os.environ.get(k)]
    return cpu_class().removeprefix("this CPU ") + (f" ({', '.join(caps)})" if caps else "")


def default_preset() -> str:
    sys.path.insert(0, str(REPO))
    from janelm.device import auto_preset

    return auto_preset(cuda=False)[0]


def run_record(run: Path) -> dict:
    """A finished run's parameters (a tied head counted once), tokens seen and steps, from its last.pt."""
    import torch  # only to read the run's own record

    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    tied = ckpt["model_config"]["tie_embeddings"]
    params = sum(v.numel() for k, v in ckpt["model"].items() if k != "head.weight" or not tied)
    return {"params": params, "tokens_seen": ckpt["state"]["tokens_seen"], "steps": ckpt["state"]["step"]}


def score_held_out(checkpoint: Path, *flags: str) -> dict:
    """`janelm eval --json` of a checkpoint on the held-out novel."""
    return json.loads(janelm("eval", "-c", str(checkpoint), str(CORPUS / HELD_OUT), "--json", *flags).stdout)


def read_results(path: Path) -> list[dict]:
    """The rows of a results file (one JSON object per line)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tables(rows: list[dict], key: Callable[[dict], tuple], title: Callable[[tuple], str], columns: Iterable[str],
           cells: Callable[[dict], Iterable[Any]], order: Callable[[tuple], Any] | None = None) -> str:
    """Markdown: one table per group of rows with the same `key` (groups sorted by `order`), under
    `title(group)`, best row (fewest bits per character) first."""
    columns = list(columns)
    out = []
    for group in sorted({key(r) for r in rows}, key=order):
        out += [f"{title(group)}:", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        out += ["| " + " | ".join(map(str, cells(r))) + " |"
                for r in sorted((r for r in rows if key(r) == group), key=lambda r: r["bits_per_char"])]
        out.append("")
    return "\n".join(out).rstrip()
