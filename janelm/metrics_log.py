"""metrics.csv: one row per evaluation, kept consistent with the checkpoints across kills and resumes."""

from __future__ import annotations

import csv
import io
from contextlib import suppress
from pathlib import Path
from typing import Any

from janelm.files import atomic_write_text, reporting_write_failures

METRICS_FILE = "metrics.csv"
METRICS_FIELDS = ("step", "tokens", "train_loss", "val_loss", "lr", "elapsed_s")


class MetricsLog:
    """metrics.csv, one row per evaluation. On resume, rows past the checkpoint's step are dropped
    so the file matches an uninterrupted run. The file is only ever rewritten atomically and
    appended to by whole rows, so a kill at any moment leaves each step in it at most once."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        rows = []
        if resume_step is not None and path.exists():
            rows = [r for r in read_metrics_rows(path) if int(r["step"]) <= resume_step]
        table = io.StringIO()
        writer = csv.DictWriter(table, METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, table.getvalue())

    def append(self, **row: Any) -> None:
        """One row, whole or not at all: a write that fails part-way (a full disk) is cut back off."""
        line = io.StringIO()
        csv.DictWriter(line, METRICS_FIELDS).writerow(row)
        data = memoryview(line.getvalue().encode())
        with reporting_write_failures(self.path), open(self.path, "ab", buffering=0) as f:
            size = f.tell()
            try:
                while data:
                    data = data[f.write(data):]
            except OSError:
                with suppress(OSError):
                    f.truncate(size)
                raise


def read_metrics_rows(path: Path) -> list[dict[str, str]]:
    """The complete rows of a metrics.csv: a last line cut short by a kill (no newline) is not one."""
    text = path.read_text(encoding="utf-8", errors="replace")
    text = text[: text.rfind("\n") + 1]
    return [r for r in csv.DictReader(io.StringIO(text, newline=""))
            if r.get("step", "").isdigit() and all(r.get(k) for k in METRICS_FIELDS)]
