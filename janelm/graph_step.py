"""The uncompiled training step on one GPU, replayed from a CUDA graph.

A small model's step on a GPU is bound by launching its kernels, not by running them: at the
reference shape (6 blocks × 384, batch 8 × 256) an H200 finished nanoGPT's eager bf16 step in
12.7 ms and JaneLM's in 18.7, each a few hundred kernels of a few microseconds, every one
dispatched by Python. Captured once, the forward, backward and gradient clipping replay as one
graph launch. The optimizer step stays outside the graph: it reads the learning rate, a Python
number that the schedule changes every step (fused AdamW is a few launches anyway).

`torch.compile` (`--compile`) captures its own graphs (`mode="reduce-overhead"`); this is the step
of a run that does not compile, with the kernels eager PyTorch picks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn

from janelm.errors import first_line

Batches = list[tuple[torch.Tensor, torch.Tensor]]

# Eager steps before the capture: the first steps of a process initialise cuBLAS, pick attention's
# kernels and create the optimizer's state, none of which may happen inside a capture.
EAGER_STEPS = 2


class GraphedStep:
    """`forward_backward(batches)` (the step's micro-batches → their mean loss, gradients in the
    parameters' `.grad`, clipped) run eagerly for `EAGER_STEPS` calls, then captured and replayed.

    The graph reads its batches from buffers of its own and writes the gradients into the same
    tensors every replay, so once captured the gradients must not be set to None between steps
    (`captured`); the optimizer step only reads them. Where the capture fails (an
    operation a graph cannot hold), the step stays eager and `on_failure` is told why, once."""

    def __init__(self, model: nn.Module, forward_backward: Callable[[Batches], torch.Tensor],
                 on_failure: Callable[[str], None] = lambda why: None):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.forward_backward = forward_backward
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: Batches = []
        self.loss: torch.Tensor | None = None
        self.on_failure = on_failure
        self.failure: str | None = None
        self.stream = torch.cuda.Stream()

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, batches: Batches) -> torch.Tensor:
        self.calls += 1
        if self.graph is None and self.failure is None and self.calls <= EAGER_STEPS:
            with self._side_stream():  # the stream the capture records on, initialised by these steps
                return self.forward_backward(batches)
        if self.graph is None and (self.failure is not None or not self._capture(batches)):
            return self.forward_backward(batches)
        for (x_in, y_in), (x, y) in zip(self.inputs, batches):
            x_in.copy_(x, non_blocking=True)
            y_in.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.loss

    @contextmanager
    def _side_stream(self) -> Iterator[None]:
        """Run on the capture's stream, after everything queued before (the batches' copies, the
        last optimizer step) and before anything queued after."""
        main = torch.cuda.current_stream()
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            yield
        main.wait_stream(self.stream)

    def _capture(self, batches: Batches) -> bool:
        """Record the step on `batches`' shapes (nothing runs: the caller replays it next)."""
        for p in self.params:  # the backward allocates them inside the graph's own memory
            p.grad = None
        inputs = [(x.clone(), y.clone()) for x, y in batches]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                loss = self.forward_backward(inputs)
        except Exception as e:  # noqa: BLE001 - whatever the capture refuses, the eager step still trains
            self.failure = first_line(e)
            for p in self.params:  # half-captured gradients were never computed
                p.grad = None
            self.on_failure(self.failure)
            return False
        self.graph, self.inputs, self.loss = graph, inputs, loss
        return True
