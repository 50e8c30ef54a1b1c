"""One optimizer step: forward and backward over the step's micro-batches, clipping, the optimizer
and the weight average, run compiled, eagerly, or on one GPU replayed from a CUDA graph.

The Trainer decides what each step trains on (batches and learning rate from the step number); this
module decides how the step runs on this device, and falls back where a faster way fails."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from janelm.averaging import WeightAverage
from janelm.config import TrainConfig
from janelm.device import autocast, deterministic_compiling, use_compiler_cache
from janelm.distributed import Distributed
from janelm.errors import first_line
from janelm.graph_step import GraphedStep

Batches = list[tuple[torch.Tensor, torch.Tensor]]


class TrainingStep:
    """`training_step(micro, lr, step)`: optimizer step number `step` of `model` over the
    micro-batches at rate `lr`; returns their mean loss, averaged over the processes. The first step of a compiled model
    compiles it; where that fails (no C++ compiler, an operation the compiler lacks) training goes
    on uncompiled, with a note (`note`, shown by the main process)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device,
                 dtype: torch.dtype, dist: Distributed, average: WeightAverage | None, note: Callable[[str], None]):
        self.model, self.optimizer, self.dist, self.average, self.note = model, optimizer, dist, average, note
        self.device = device
        self.grad_clip = cfg.grad_clip
        self.ctx = autocast(device, dtype)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.step_model = self.eager_model = dist.wrap(model)
        self.compile_pending = cfg.compile  # compiling happens in the first step, which may fail
        if cfg.compile:
            use_compiler_cache()
            # On one GPU, CUDA graphs replay each step's hundreds of kernel launches at once: the
            # seed preset's step went from 15.5 to 12.4 ms on an H100, where launches, not maths,
            # set the pace. DDP's all-reduce hooks do not go into a graph, so several processes use
            # plain compilation.
            graphs = device.type == "cuda" and not dist.active
            self.step_model = torch.compile(self.step_model, mode="reduce-overhead" if graphs else None)
        # Uncompiled on one GPU, forward and backward replay from a CUDA graph of their own
        # (janelm.graph_step). A gradient scaler (float16) syncs with the CPU, which a graph cannot hold.
        self.graphed = None
        if device.type == "cuda" and not cfg.compile and not dist.active and not self.scaler.is_enabled():
            graph_ctx = autocast(device, dtype, cache=False)
            self.graphed = GraphedStep(model, lambda batches: self._forward_backward(batches, graph_ctx),
                                       on_failure=lambda why: note(f"note: could not capture the training step in a "
                                                                   f"CUDA graph ({why}): training with eager steps"))

    def __call__(self, micro: Batches, lr: float, step: int) -> float:
        with deterministic_compiling(self.step_model is not self.eager_model):  # a compiled step
            return self._first_step(micro, lr, step) if self.compile_pending else self._step(micro, lr, step)

    def _first_step(self, micro: Batches, lr: float, step: int) -> float:
        """The step that compiles; a failure to compile falls back to the eager model."""
        try:
            loss = self._step(micro, lr, step)
        except Exception as e:  # noqa: BLE001 - whatever the compiler raises, the eager model still trains
            self.optimizer.zero_grad(set_to_none=True)
            self.step_model = self.eager_model
            self.compile_pending = False
            if self.dist.is_main:
                self.note(f"note: could not compile the training step ({first_line(e)}): training uncompiled")
            return self._step(micro, lr, step)
        self.compile_pending = False
        return loss

    def _step(self, micro: Batches, lr: float, step: int) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.graphed(micro) if self.graphed is not None else self._forward_backward(micro, self.ctx)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.graphed is None or not self.graphed.captured:  # a graph writes into the same gradients each step
            self.optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update(step + 1)
        return self.dist.mean(loss.float()).item()

    def _forward_backward(self, micro: Batches, ctx) -> torch.Tensor:
        """Gradients of the step's micro-batches, clipped; returns their mean loss (on the device)."""
        total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro):
            # Only the last micro-step all-reduces gradients across processes.
            with self.dist.no_sync(self.step_model, last=i == len(micro) - 1), ctx:
                _, loss = self.step_model(x, y)
            self.scaler.scale(loss / len(micro)).backward()
            total += loss.detach()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        return total / len(micro)
