"""torchrun for `janelm train --nproc N`: the processes' own output and exit code, nothing more.

torchrun reports a process that failed with a Python traceback of its own and log lines, after the
process has said what went wrong in one line; `janelm` says it once and exits with that process's
code. Run as `python -m janelm.launch TORCHRUN_ARGS…` (the parent, `janelm train --nproc`, stays free
of torch.distributed).

The processes' error lines come back through a folder (`report_error`), so that a failure every
process meets alike (a damaged token file, a flag only the trainer checks) is said once, not once
per process; lines that differ are all said, the first failed process's first.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

ERRORS_ENV = "JANELM_JOB_ERRORS"  # the folder where a job's processes leave their error lines


def report_error(line: str) -> None:
    """A command's error line: on stderr, or, in a process of a `janelm.launch` job, in the job's
    folder for the launcher to say (stderr still, where that folder cannot be written)."""
    folder, rank = os.environ.get(ERRORS_ENV), os.environ.get("RANK")
    if folder and rank is not None:
        try:
            with open(Path(folder) / f"rank-{int(rank):05d}", "a", encoding="utf-8") as f:
                f.write(line + "\n")
            return
        except (OSError, ValueError):
            pass
    print(line, file=sys.stderr)


def say_job_errors(folder: Path, first_rank: int | None = None) -> None:
    """Each distinct line the processes left in `folder`, once: the first failed process's first
    (torchrun stops the others, who may say they were stopped), then in rank order."""
    said = set()
    paths = sorted(folder.glob("rank-*"))
    paths.sort(key=lambda p: first_rank is None or p.name != f"rank-{first_rank:05d}")  # stable: rank order after it
    for path in paths:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line not in said:
                said.add(line)
                print(line, file=sys.stderr)


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in list(logging.root.manager.loggerDict):  # torchrun's own, set up as it was imported
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="janelm-job-"))
    os.environ[ERRORS_ENV] = str(folder)  # the processes inherit this process's environment
    args.log_dir = args.log_dir or str(folder / "torchrun")  # torchrun's own, else a folder it leaves in /tmp
    first_rank = None
    try:
        run(args)
    except ChildFailedError as e:
        first_rank, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1  # killed by a signal: torchrun's negative code
    except (KeyboardInterrupt, SignalException):
        return 130
    finally:
        say_job_errors(folder, first_rank)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
