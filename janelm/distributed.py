"""Multi-process training through torch.distributed: gloo on the CPU, NCCL on CUDA.

`torchrun` sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything here is a no-op for
a single process, so the trainer has one code path.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn


def check_cuda_ranks(local_world_size: int) -> None:
    """NCCL needs a GPU per process: say so before starting more processes than GPUs."""
    if torch.cuda.is_available() and local_world_size > torch.cuda.device_count():
        from janelm.errors import InputError

        n = torch.cuda.device_count()
        raise InputError(f"{local_world_size} processes need {local_world_size} GPUs, but this machine has {n}: "
                         f"use --nproc {n} (torchrun --nproc_per_node={n}), or --device cpu to train on the CPU with gloo")


def launched_as_job() -> bool:
    """Whether torchrun started this process as one of several."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def end_process(code: int) -> int:
    """End a process of a multi-process job, once its files are closed, without Python's
    shutdown; return `code` to a single process. DDP keeps the gloo group, and with it its
    worker threads, alive past destroy_process_group; a worker that has not yet let go of its
    last all-reduce's tensors when Python shuts down cannot take the GIL to do so, and the
    process aborts ("terminate called without an active exception", SIGABRT) after a run that
    went well, or after the line that says why it did not. Only the standard streams are left to
    flush (`janelm.cli.main` calls this once the command has closed its files)."""
    if not launched_as_job():
        return code
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


class Distributed:
    """This process's place in the job: rank, world size, and the device it owns."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        self.rank, self.world_size, self.device = rank, world_size, device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device_name: str = "auto") -> "Distributed":
        """Join the process group when launched by torchrun, else a single process."""
        if not launched_as_job():
            return cls()
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        if use_cuda:
            check_cuda_ranks(int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
        dist.init_process_group("nccl" if use_cuda else "gloo")
        device = None
        if use_cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on every micro-step but the last of an accumulation."""
        if self.active and not last and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over all processes (for logging the same loss everywhere)."""
        if self.active:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


class AgreedClock:
    """One clock for every process of a job: a reading is the mean over the processes of their own
    seconds since their own `origin`, so every decision a time budget makes (the plan, the switch
    to the clock, the learning rate on it, the end) comes out the same in each. Read apart, one
    process could end a step before the rest, which then waited for it in their gradient
    all-reduce for ever, and their learning rates on the clock differed by a hair. Every reading
    is a collective: all processes read it at the same points of the loop, which decisions made
    from agreed readings keep true."""

    def __init__(self, clock: Callable[[], float], dist: Distributed, origin: float):
        self.clock, self.dist, self.origin = clock, dist, origin

    def __call__(self) -> float:
        seconds = torch.tensor(self.clock() - self.origin, dtype=torch.float64, device=self.dist.device)
        return self.dist.mean(seconds).item()
