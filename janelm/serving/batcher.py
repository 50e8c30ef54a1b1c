"""The batcher: one thread decodes every request's text as a row of one batch.

Rows join between steps (their prompts processed into free rows of the shared cache: together,
padded, when several arrive at once) and leave when done, stopped or abandoned, so a request never
waits for another to finish. Each row keeps its own position, window, sampling options, generator
and stop strings; one decode step serves all rows at once (`GPT.decode_step` takes a position per
row), which reads the weights once for all of them.

A row alone runs exactly as `janelm sample` does (`janelm.generate.generate_tokens`): the same
prefill, the same step (the compiled one where it is cached), the same slide past the context and
the same draws from a generator seeded as sample seeds it. In a batch, the products round as
batched arithmetic does, which may part a text from its lone twin (docs/speed.md says how often).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from janelm.config import SamplingOptions
from janelm.console import note
from janelm.decode_step import batch_step_for, decode_step_for, template_products
from janelm.errors import first_line
from janelm.generate import StopFilter, StreamDecoder, pick_next, prefill, slid
from janelm.serving.jobs import Closed, Event, Job, QueueFull

# A batch of up to this many rows steps row by row through the lone step, where that one's products
# are the compiler's own and the batch step's oneDNN's: the reference-shape lone step takes 0.8-1.0
# ms a row, the float32 batch step 2.8-3.9 ms at 2 rows, 3.1-3.7 at 3, 2.5-3.7 at 4 (docs/speed.md).
LONE_ROWS = 3


@dataclass(eq=False)
class _Row:
    job: Job
    # The tokens the model sees (generate_tokens' window), as ids: a step appends one in
    # nanoseconds, where a tensor's cat cost ~6 µs a row (~0.1 ms a 16-row step).
    tokens: list[int]
    rng: torch.Generator
    decoder: StreamDecoder
    stop: StopFilter
    position: int = 0  # where its next token goes in the cache
    logits: torch.Tensor | None = None  # (1, V): what the next token is drawn from
    last: int = 0  # the token drawn from them
    produced: int = 0

    def window(self, device: torch.device) -> torch.Tensor:
        """The tokens as generate_tokens holds them, (1, T)."""
        return torch.tensor(self.tokens, device=device)[None]


class Batcher:
    """Decodes jobs on the thread that calls `run` (the server's main thread: PyTorch's CPU threads
    run a step at half speed when another thread drives them; docs/speed.md), or on a thread of its
    own with `start`; `submit` and `close` are called from any thread."""

    def __init__(self, model, tokenizer, max_rows: int = 16, max_waiting: int = 64, compile: bool | None = None,
                 threads: int = 0, flush: Callable[["Batcher"], None] | None = None):
        self.model, self.tokenizer, self.compile = model, tokenizer, compile
        self.flush = flush  # called on the decoding thread after each turn's events (a decoding process sends them)
        # Every step on `threads` (0: as set), batches too: the HTTP side, in a process of its own and
        # sent a stream's text at most every few hundredths of a second, needs little of a core
        # (docs/speed.md: 16 streams 1.3-1.5x faster than with a batch on one thread fewer).
        if threads:
            torch.set_num_threads(threads)
        self.max_rows, self.max_waiting = max_rows, max_waiting
        self.device = model.tok_embed.weight.device
        self.context = model.config.context
        self.cache = model.new_cache(max_rows)
        self.rows: list[_Row] = []  # row i of the batch is row i of the cache
        self.views: dict = {}  # the cache's first n rows, by n; row i alone, by ("row", i)
        self.waiting: deque[Job] = deque()
        self.lock = threading.Condition()
        self.deadline: float | None = None  # set by close: rows still decoding then are ended
        self.steps = self.stepped_rows = 0  # batched steps, and the rows they served: the batching at work
        # A lone row's step is sample's: compiled where it is cached (or compiled now, with `compile`).
        self.lone_step = decode_step_for(model, self.cache.rows(0, 1), torch.zeros(1, dtype=torch.long, device=self.device),
                                         1, compile, cuda_graphs=False)
        # A batch's: on a CPU, one compiled for any number of rows, cached or compiled as the lone one.
        self.batch_step = batch_step_for(model, max_rows, compile)  # None: eager
        # Where the lone step's products are the compiler's own and the batch step's oneDNN's (past
        # HALF_MAX_ROWS rows), a batch of up to LONE_ROWS rows steps row by row through the lone step.
        self.lone_rows = LONE_ROWS if (self.batch_step is not None and self.lone_step != model.decode_step
                                       and not template_products(model, max_rows) and template_products(model, 1)) else 1
        self.compiled = self.lone_step != model.decode_step and (self.batch_step is not None or max_rows < 2)
        self.thread: threading.Thread | None = None

    def start(self) -> "Batcher":
        """Decode on a thread of its own."""
        self.thread = threading.Thread(target=self.run, name="janelm-batcher", daemon=True)
        self.thread.start()
        return self

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue jobs (a request's choices): all of them, or none (QueueFull, Closed). Jobs wait for
        free rows, and at most `max_waiting` wait beyond those."""
        with self.lock:
            if self.deadline is not None:
                raise Closed("the server is shutting down")
            if len(self.waiting) + len(jobs) > self.max_waiting + self.max_rows - len(self.rows):
                raise QueueFull(f"all {self.max_rows} rows are decoding and {len(self.waiting)} texts wait for one")
            self.waiting.extend(jobs)
            self.lock.notify()

    def close(self, grace: float) -> None:
        """Take no more jobs; rows still decoding after `grace` seconds end with an error event."""
        with self.lock:
            if self.deadline is None:
                self.deadline = time.monotonic() + grace
            self.lock.notify()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def load(self) -> dict[str, Any]:
        """What /health reports: rows in use and waiting, steps taken and the rows they served, and
        whether every step is compiled (batches' too, where there are any)."""
        return {"rows": len(self.rows), "waiting": len(self.waiting), "max_rows": self.max_rows,
                "steps": self.steps, "stepped_rows": self.stepped_rows, "compiled": self.compiled}

    # The decoding thread.

    def run(self) -> None:
        """Decode until closed and idle."""
        with torch.inference_mode():
            while (joining := self._next_jobs()) is not None:
                try:
                    self._join(joining)
                    if self.rows:
                        self._advance()
                except Exception as e:  # noqa: BLE001 - a failure ends the rows in flight, never the server
                    note(f"janelm serve: error while decoding: {first_line(e, 300)}")
                    for row in self.rows:
                        row.job.deliver(Event(finish="error", error="decoding failed", tokens=row.produced))
                    self.rows = []
                if self.flush:
                    self.flush(self)

    def _next_jobs(self) -> list[Job] | None:
        """Wait until there is work; the waiting jobs that free rows take. None once closed and idle."""
        with self.lock:
            while not self.rows and not self.waiting and self.deadline is None:
                self.lock.wait()
            if self.deadline is not None and (not self.rows or time.monotonic() >= self.deadline):
                for job in [row.job for row in self.rows] + list(self.waiting):
                    job.deliver(Event(finish="error", error="the server is shutting down"))
                self.rows, self.waiting = [], deque()
                return None
            # Cancelled jobs end too, "cancelled": every job gets one finish event (a DecoderProcess
            # counts the jobs in flight by them).
            gone = [i for i, row in enumerate(self.rows) if row.job.cancelled]
            for i in gone:
                self.rows[i].job.deliver(Event(finish="cancelled", tokens=self.rows[i].produced))
            self._drop(gone)
            for job in self.waiting:
                if job.cancelled:
                    job.deliver(Event(finish="cancelled"))
            self.waiting = deque(job for job in self.waiting if not job.cancelled)
            joining = []
            while self.waiting and len(self.rows) + len(joining) < self.max_rows:
                joining.append(self.waiting.popleft())
        return joining

    def _join(self, jobs: list[Job]) -> None:
        """Rows for the jobs, their prompts processed into the cache: a job joining alone as a lone
        sample would, several at once in padded passes of like lengths (`prefill_groups`), and a
        window that another joining job has too (a request's `n` choices) once, its cache row copied."""
        firsts: dict[tuple[int, ...], _Row] = {}  # each window's first row
        twins: list[tuple[_Row, _Row]] = []  # (row, the first row of its window)
        for job in jobs:
            if job.max_tokens == 0:
                job.deliver(Event(finish="length"))
                continue
            row = _Row(job, list(job.prompt)[-self.context :], torch.Generator(self.device).manual_seed(job.seed),
                       StreamDecoder(self.tokenizer), StopFilter(job.stops))
            if (first := firsts.setdefault(tuple(row.tokens), row)) is not row:
                twins.append((row, first))
        new = list(firsts.values())
        for group in prefill_groups([len(row.tokens) for row in new]):
            self.rows.extend(new[j] for j in group)
            self._prefill(len(self.rows) - len(group), len(group))
        for row, first in twins:
            self._copy_cache_row(self.rows.index(first), len(self.rows))
            row.logits, row.position = first.logits, first.position
            self.rows.append(row)

    def _prefill(self, first: int, count: int = 1) -> None:
        """Process the windows of rows first..first+count-1 into their rows of the cache: one row
        alone exactly as a lone sample would; several in one pass, each padded to the longest (its
        padding is written past the row's position, where no step reads before overwriting it)."""
        rows, view = self.rows[first : first + count], self.cache.rows(first, first + count)
        if count == 1:
            rows[0].logits = prefill(self.model, rows[0].window(self.device), view)
        else:
            lengths = [len(row.tokens) for row in rows]
            padded = [row.tokens + [0] * (max(lengths) - len(row.tokens)) for row in rows]
            logits = prefill(self.model, torch.tensor(padded, device=self.device), view,
                             torch.tensor(lengths, device=self.device))
            for j, row in enumerate(rows):
                row.logits = logits[j : j + 1]
        for row in rows:
            row.position = len(row.tokens)

    def _drop(self, gone: list[int]) -> None:
        """Free rows (highest first), moving the last row into each gap so rows stay 0..n-1."""
        for i in sorted(gone, reverse=True):
            last = len(self.rows) - 1
            if i != last:
                self._copy_cache_row(last, i)
                self.rows[i] = self.rows[last]
            self.rows.pop()

    def _copy_cache_row(self, source: int, target: int) -> None:
        for tensors in (self.cache.keys, self.cache.values):
            for t in tensors:
                t[target].copy_(t[source])

    def _advance(self) -> None:
        """Draw every row's next token, deliver its text, retire finished rows, and compute the
        others' next logits: a pass alone for a row whose window slid, one batched step for the rest."""
        done = []
        for i, (row, token) in enumerate(zip(self.rows, self._pick())):
            row.produced += 1
            text = row.stop.feed(row.decoder.feed([token]))
            finish = "stop" if row.stop.stopped else "length" if row.produced >= row.job.max_tokens else None
            if finish:
                text += row.stop.feed(row.decoder.flush()) + row.stop.flush()
                done.append(i)
            if text or finish:
                row.job.deliver(Event(text, finish, row.produced))
        self._drop(done)
        slides = set()
        for i, row in enumerate(self.rows):
            row.tokens.append(row.last)
            if (shorter := slid(row.tokens, self.context)) is not None:
                row.tokens = shorter
                self._prefill(i)
                slides.add(i)
        if len(slides) < len(self.rows):
            self._step(slides)

    def _step(self, slides: set[int]) -> None:
        """One decode step for rows 0..n-1. A row that slid has its logits already: its token is
        written again at its next position, which its own next token overwrites before it is read."""
        rows = self.rows
        token = torch.tensor([row.last for row in rows], device=self.device)[:, None]
        position = torch.tensor([row.position for row in rows], device=self.device)
        if (view := self.views.get(len(rows))) is None:  # slicing 2 x n_block tensors costs ~30 µs: once per size
            view = self.views[len(rows)] = self.cache.rows(0, len(rows))
        if len(rows) == 1:  # as generate_tokens steps a lone sample
            view.slots = self.cache.slots
            logits = self.lone_step(token, position, view)
        elif len(rows) <= self.lone_rows:  # each row as if alone: its lone text exactly
            logits = torch.cat([self.lone_step(token[i : i + 1], position[i : i + 1], self._row_view(i))
                                for i in range(len(rows))])
        elif self.batch_step is None:  # eager: attention over the positions in use only
            view.slots = self.cache.slots[: max(r.position for r in rows) + 1]
            logits = self.model.decode_step(token, position, view)
        else:  # compiled: it picks the positions to read itself
            view.slots = self.cache.slots
            logits = self.batch_step(token, position, view)
        self.steps, self.stepped_rows = self.steps + 1, self.stepped_rows + len(rows)
        for i, row in enumerate(rows):
            if i not in slides:
                row.logits = logits[i : i + 1]
                row.position += 1

    def _row_view(self, i: int):
        """Row i of the cache alone, attending over the whole context (made once per row)."""
        if (view := self.views.get(("row", i))) is None:
            view = self.views[("row", i)] = self.cache.rows(i, i + 1)
            view.slots = self.cache.slots
        return view

    def _pick(self) -> list[int]:
        """The next token of every row. Rows sharing sampling options (and no repetition penalty,
        which reads each row's own window) draw together, each with a number from its own
        generator; a row alone is exactly `pick_next`, as in generate_tokens."""
        rows = self.rows
        if len(rows) == 1:
            row = rows[0]
            row.last = int(pick_next(row.logits, row.job.opts, row.rng, self._history(row)))
            return [row.last]
        logits = torch.cat([row.logits for row in rows])
        groups: dict[SamplingOptions, list[int]] = {}
        for i, row in enumerate(rows):
            if row.job.opts.repetition_penalty != 1.0:
                row.last = int(pick_next(row.logits, row.job.opts, row.rng, self._history(row)))
            else:
                groups.setdefault(row.job.opts, []).append(i)
        for opts, members in groups.items():
            chosen = logits if len(members) == len(rows) else logits[members]
            tokens = pick_next(chosen, opts, [rows[i].rng for i in members])  # each row's own generator
            for i, token in zip(members, tokens.tolist()):
                rows[i].last = token
        return [row.last for row in rows]

    def _history(self, row: _Row) -> torch.Tensor | None:
        """The window a repetition penalty reads (none is needed without one)."""
        return row.window(self.device) if row.job.opts.repetition_penalty != 1.0 else None


def prefill_groups(lengths: Sequence[int], short: int = 32) -> list[list[int]]:
    """Indices of windows of these lengths, grouped for padded prefill passes: longest first, a
    window joining the last group while the group's padding stays within a quarter of its real
    tokens (a pass costs its tokens, padding too), or while the group's longest is `short` tokens
    at most (a pass over so few costs its operations, not its tokens: 16 openings of 8-15 tokens in
    one pass, 50-65 ms against 150-194 ms for 16 passes on 2 cores)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if group and (lengths[group[0]] <= short
                      or 4 * lengths[group[0]] * (len(group) + 1) <= 5 * (sum(lengths[j] for j in group) + lengths[i])):
            group.append(i)
        else:
            groups.append([i])
    return groups
