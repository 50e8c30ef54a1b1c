"""`janelm plot RUN...`: the loss curves of one or several runs in one PNG."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from janelm.console import note
    from janelm.plotting import plot_runs

    plot_runs([Path(r) for r in args.runs], Path(args.output))
    note(f"wrote {args.output}")
    return 0
