"""torchrun for `janelm train --nproc N`: the processes' own output and exit code, nothing more.

torchrun reports a process that failed with a Python traceback of its own and log lines, after the
process has said what went wrong in one line; `janelm` says it once and exits with that process's
code. Run as `python -m janelm.launch TORCHRUN_ARGS…` (the parent, `janelm train --nproc`, stays free
of torch.distributed).
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in list(logging.root.manager.loggerDict):  # torchrun's own, set up as it was imported
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 1  # killed by a signal: torchrun's negative code
    except (KeyboardInterrupt, SignalException):
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
