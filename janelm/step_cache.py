"""The folder of compiled decode steps: what a step's file is keyed by, how the folder is kept
within its size, and how long compiling took here (what `train --compile-decode` reserves).

janelm.decode_step compiles and loads the steps; this module only names and keeps their files.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import suppress
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import torch

from janelm import __version__
from janelm.device import cpu_has_amx
from janelm.errors import first_line
from janelm.files import WRITE_FAILURES, WriteFailure, atomic_write_text, cache_home

CACHE_LIMIT_BYTES = 2 << 30  # the cache keeps its most recently used files within this size
SOURCES = ("model.py", "linear.py", "rotary.py", "norm.py", "quantize.py", "decode_step.py")  # the code a compiled step is made from


def cache_root() -> Path:
    """Where compiled steps are kept: `decode` in JaneLM's cache folder (janelm.files.cache_home)."""
    return cache_home() / "decode"


@lru_cache(maxsize=1)
def code_version() -> str:
    """The code a compiled step is made from (JaneLM's version and SOURCES), hashed."""
    code = Path(__file__).parent
    digest = hashlib.sha256(__version__.encode())
    for name in SOURCES:
        digest.update(hashlib.sha256((code / name).read_bytes()).digest())
    return digest.hexdigest()[:16]


def step_key(model, batch_size: int, any_batch: bool = False) -> str:
    """What a compiled step depends on, hashed: the weights as decoding stores them, the config,
    the batch size (or sizes), the code that defines the step, PyTorch's version, the CPU's
    instruction set and the threads its kernels run on."""
    digest = hashlib.sha256()
    about = {"code": code_version(), "torch": torch.__version__, "isa": torch.backends.cpu.get_cpu_capability(),
             "amx": cpu_has_amx(),  # a batch step's products (janelm.decode_step.template_products)
             "batch": batch_size, "threads": torch.get_num_threads(), **({"any_batch": True} if any_batch else {}),
             "config": asdict(model.config), "activations": str(model.tok_embed.weight.dtype)}
    digest.update(json.dumps(about, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


def trim_cache(folder: Path, keep: Path) -> None:
    """Delete the least recently used compiled steps until the folder fits CACHE_LIMIT_BYTES, and
    what compilations left behind (temporary files of killed ones, and lock files, a day old)."""
    now = time.time()
    for f in [*folder.glob(".*.tmp.pt2"), *folder.glob(".*.lock")]:
        with suppress(OSError):
            if now - f.stat().st_mtime > 86_400:
                f.unlink()
    files = sorted((f for f in folder.glob("*.pt2") if not f.name.startswith(".")),
                   key=lambda f: f.stat().st_mtime, reverse=True)
    total = 0
    for f in files:
        total += f.stat().st_size
        if total > CACHE_LIMIT_BYTES and f != keep:
            f.unlink(missing_ok=True)


def why_not_compiled(error: Exception, folder: Path) -> str:
    """Why a step could not be compiled, in words: an unwritable cache (and the fix), or the compiler's error."""
    if isinstance(error, OSError) and error.errno in WRITE_FAILURES:
        return f"cannot write {folder} ({error.strerror}; set JANELM_CACHE to a writable folder)"
    return f"could not compile the decode step ({first_line(error, 160)})"


COMPILE_TIMES = "compile_times.json"  # in the cache folder: how long compiling took here, by shape


def _compile_key(config, any_batch: bool) -> str:
    # With the code's version: a step made by other code may compile at another speed (the
    # products compiled too took 23.5 s for 3 x 256 where the version before took 14 s, and a
    # ten-minute run reserving for the older time ran 12 s past its budget). With an ensemble's
    # members: each adds its blocks' kernels (an AMX Xeon: 3 × 256 × 2 members 14.5 s, × 3 21 s,
    # × 4 28 s), and two members' time, kept for any member count, had a four's run reserve 22 s.
    members = getattr(config, "members", 1)
    return (f"{config.n_block}x{config.n_embed}{f' x{members} members' if members > 1 else ''}"
            f"{', any batch' if any_batch else ''}, {torch.get_num_threads()} threads, code {code_version()}")


TRAIN_TO_DECODE_COMPILE = 1.3  # a decode step's compile time, as a multiple of the training step's (above)


def compile_estimate_s(config, any_batch: bool = False, train_compile_s: float = 0.0) -> float:
    """About how long compiling a model's decode step takes here: the last time measured on this
    machine for this shape (and a margin), else (10 + 6 · blocks) s, and 2 s a block for each
    further member of an ensemble: with the products compiled too, a 2-block toy took 20-24 s,
    3 × 256 23.5-26.4 s, the 6-block reference 33-45 s on 2 cores of a Zen 4 (docs/speed.md), and on
    one core about as long (2 × 256: 22.0 s); with empty caches on 2 cores of an AMX Xeon, 3 × 256
    25.4 s, two such members 33.0 s, three 38.4 s, three of 4 × 256 45.6 s, six 54 s, eight 76.5 s
    (members share the graph's work: 6 s a block for each would reserve 64 s for three; the
    formula's 34, 40, 50, 74 and 90 s for those ensembles stay above each, where 2.5 s a block
    reserved 84 and 104 s for six and eight, ~5% of ten minutes too many). A slower compiler takes
    longer: `train_compile_s`, the seconds compiling the training step took in this run, says how
    much (a 2-core Zen 3: 37.9 s for 2 × 256's training step, 41.3 s for its decode step, both with
    empty caches, and 54.2 s at the end of a ten-minute run)."""
    with suppress(OSError, ValueError, TypeError, AttributeError):  # none yet, or a damaged file
        measured = json.loads((cache_root() / COMPILE_TIMES).read_text()).get(_compile_key(config, any_batch))
        if measured is not None:
            return 1.2 * float(measured) + 2.0
    formula = 10.0 + 6.0 * config.n_block + 2.0 * config.n_block * (getattr(config, "members", 1) - 1)
    return max(formula, TRAIN_TO_DECODE_COMPILE * train_compile_s)


def remember_compile_time(config, seconds: float, any_batch: bool = False) -> None:
    """Keep how long compiling this shape took here: the next estimate starts from it."""
    path = cache_root() / COMPILE_TIMES
    known = {}
    with suppress(OSError, ValueError, TypeError):  # none yet, or a damaged file: start again
        known = dict(json.loads(path.read_text()))
    known = {key: value for key, value in known.items() if key.endswith(f"code {code_version()}")}  # other code's: stale
    with suppress(OSError, WriteFailure):  # a read-only cache only means estimating from the formula
        atomic_write_text(path, json.dumps({**known, _compile_key(config, any_batch): round(seconds, 1)}))
