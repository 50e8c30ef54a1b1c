"""The batcher in a process of its own: `janelm serve` decodes there, HTTP runs in the first.

Both halves are Python, and a process has one interpreter lock. In one process the decoding
thread and the event loop take turns with it: the compiled step holds it for its whole run (a
16-row step: ~14 ms), so the loop waits through every step, and a busy loop beside the step
slows it 2-3x, since each time the step needs the lock back it waits for a switch interval
(docs/speed.md). Here each half has its own: the decoding process runs the Batcher on its main
thread (PyTorch's CPU threads step at full speed only there), and the two exchange small messages
over a pipe: jobs and cancellations one way, events the other. Events go at most every
`stream_interval` seconds (a row's first text and every finish at once), each row's text since the
last message as one event: per token, that trip (pickling, a wake-up of the HTTP process, an SSE
chunk, the client's parsing) took CPU from the step on the same cores (docs/speed.md).

`DecoderProcess` stands in for a Batcher in the HTTP process (submit, close, load, deadline,
max_rows, context); its `run` reads the decoder's messages on serve's main thread and hands each
event to its job, until the decoder ends.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from contextlib import suppress
from typing import Any, Callable, Sequence

from janelm.errors import InputError, JaneLMError, first_line
from janelm.serving.jobs import Closed, Event, Job, QueueFull
from janelm.tokenizer import tokenizer_from_dict

STOPPED = "the decoding process stopped"


class DecoderProcess:
    """A Batcher running in a child process, started at once; `wait_ready` returns once the model
    is loaded there (with its tokenizer), or raises the child's error in one line. Between the two
    the HTTP process imports its web stack (~0.3 s) while the child imports PyTorch."""

    def __init__(self, load: dict[str, Any], max_rows: int, max_waiting: int, compile: bool | None, threads: int,
                 stream_interval: float):
        spawn = multiprocessing.get_context("spawn")  # not fork: PyTorch's thread pools do not survive one
        parent, child = spawn.Pipe()
        self.conn, self.max_rows, self.max_waiting = parent, max_rows, max_waiting
        self.process = spawn.Process(
            target=decode_in_child, args=(child, load, max_rows, max_waiting, compile, threads, stream_interval),
            name="janelm-decoder", daemon=True)
        self.process.start()
        child.close()
        self.jobs: dict[int, Job] = {}  # submitted and not finished, by id
        self.cancelled: set[int] = set()  # ids whose cancellation was sent
        self.next_id = 0
        # submit (HTTP thread) and run (main thread) share the jobs and the pipe; reentrant, since a
        # signal's handler (close) runs on the main thread, possibly inside run's hold of it.
        self.lock = threading.RLock()
        self.deadline: float | None = None
        self.stats: dict[str, Any] = {}  # the decoder's Batcher.load(), sent with "ready" and every message

    def wait_ready(self) -> None:
        """Wait until the model is loaded; its tokenizer and context are then known."""
        kind, *info = self._receive()
        if kind != "ready":
            self.process.join(10)
            if kind == "failed":  # the child's error, as the CLI would have said it
                raise (InputError if info[1] else JaneLMError)(info[0])
            raise JaneLMError(f"{STOPPED} while loading the model (exit code {self.process.exitcode})")
        self.tokenizer, self.context, self.stats = tokenizer_from_dict(info[0]), info[1], info[2]

    def _receive(self) -> tuple:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return ("gone",)

    def _send(self, message: tuple) -> None:
        with suppress(OSError):  # the decoder is gone: run() says so
            self.conn.send(message)

    def submit(self, jobs: Sequence[Job]) -> None:
        """As Batcher.submit: all of the jobs or none (QueueFull, Closed), checked here against the
        jobs the decoder has not finished."""
        with self.lock:
            if self.deadline is not None:
                raise Closed("the server is shutting down")
            if len(self.jobs) + len(jobs) > self.max_waiting + self.max_rows:
                raise QueueFull(f"all {self.max_rows} rows are decoding and "
                                f"{max(0, len(self.jobs) - self.max_rows)} texts wait for one")
            sent = []
            for job in jobs:
                self.jobs[self.next_id] = job
                sent.append((self.next_id, list(job.prompt), job.max_tokens, job.opts, job.seed, list(job.stops)))
                self.next_id += 1
            self._send(("submit", sent))

    def close(self, grace: float) -> None:
        with self.lock:
            if self.deadline is None:
                self.deadline = time.monotonic() + grace
                self._send(("close", grace))

    def load(self) -> dict[str, Any]:
        return dict(self.stats)

    def run(self) -> None:
        """Hand the decoder's events to their jobs until it ends; a decoder that ends before it was
        closed fails the jobs in flight and raises (serve says so in one line)."""
        while True:
            kind, *info = self._receive()
            if kind != "events":
                break
            events, self.stats = info
            with self.lock:
                for i, event in events:
                    job = self.jobs.pop(i, None) if event.finish else self.jobs.get(i)
                    if job is not None:
                        job.deliver(event)
                # A client gone (the app marks its jobs) frees its row at the decoder's next step.
                gone = [i for i, job in self.jobs.items() if job.cancelled and i not in self.cancelled]
                if gone:
                    self.cancelled.update(gone)
                    self._send(("cancel", gone))
                self.cancelled.intersection_update(self.jobs)
        self.process.join(5)
        with self.lock:
            closed, jobs, self.jobs = self.deadline is not None, list(self.jobs.values()), {}
            self.deadline = self.deadline or time.monotonic()
        for job in jobs:
            job.deliver(Event(finish="error", error="the server is shutting down" if closed else STOPPED))
        if kind != "done" and not closed:
            raise JaneLMError(f"{STOPPED} (exit code {self.process.exitcode}): the server cannot decode; start it again")


class Outbox:
    """Events waiting to go to the HTTP process, one per job: a job's events since the last
    message merge into one (its text joined, its last count and finish). `take` gives them when
    due: at once for a job's first text (time to first token) and every finish, else once
    `interval` seconds have passed since the last message."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.interval, self.clock, self.lock = interval, clock, threading.Lock()
        self.events: dict[int, Event] = {}
        self.started: set[int] = set()  # jobs that have had their first event (sent at once) and no finish yet
        self.urgent, self.last = False, 0.0

    def add(self, i: int, event: Event) -> None:
        with self.lock:
            if (before := self.events.get(i)) is not None:
                event = Event(before.text + event.text, event.finish, event.tokens, event.error)
            self.events[i] = event
            if event.finish or i not in self.started:
                self.urgent = True
                self.started.add(i)
            if event.finish:
                self.started.discard(i)

    def take(self, force: bool = False) -> list[tuple[int, Event]]:
        """The events due now (all of them with `force`), oldest job first; none if not due."""
        with self.lock:
            now = self.clock()
            if not self.events or not (force or self.urgent or now - self.last >= self.interval):
                return []
            events, self.events, self.urgent, self.last = list(self.events.items()), {}, False, now
            return events


def decode_in_child(conn, load: dict[str, Any], max_rows: int, max_waiting: int, compile: bool | None, threads: int,
                    stream_interval: float) -> None:
    """The decoding process: load the model, report ready, then run the Batcher on this (main)
    thread while a second thread takes the HTTP process's messages."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # the HTTP process decides when to stop (a terminal's Ctrl-C reaches both)
        signal.signal(sig, signal.SIG_IGN)
    try:
        import torch
        from tqdm import tqdm

        # Compiling draws a tqdm bar (torch.fx), and tqdm's first bar makes its lock a named
        # semaphore of multiprocessing's: were this process killed, that semaphore would outlive it
        # and the resource tracker would print a warning, with a traceback line, as serve exits.
        tqdm.set_lock(threading.RLock())
        from janelm.checkpoint import load_model
        from janelm.serving.batcher import Batcher

        if threads:  # before loading: the weights' format is the one measured fastest on these threads
            torch.set_num_threads(threads)
        from janelm.device import pick_device, pick_weight_dtype

        device = pick_device(load["device"])
        model, tokenizer, _ = load_model(load["checkpoint"], device, pick_weight_dtype(load["dtype"], device), load["quantize"])
        if compile is None and device.type == "cpu":
            # A server is long-lived: its steps compile at its first start, once (kept in the cache,
            # found by later starts), where sample compiles only for outputs long enough to repay it.
            compile = True
        outbox, sent = Outbox(stream_interval), [{}]

        def flush(batcher: Batcher, force: bool = False) -> None:
            """The events due in one message, with the load; sent also when the load changed (a row
            freed or taken: /health)."""
            now = batcher.load()
            changed = now["rows"] != sent[0].get("rows") or now["waiting"] != sent[0].get("waiting")
            events = outbox.take(force or changed)
            if events or changed:
                conn.send(("events", events, now))
                sent[0] = now

        batcher = Batcher(model, tokenizer, max_rows, max_waiting, compile, threads, flush=flush)
    except JaneLMError as e:
        conn.send(("failed", str(e), isinstance(e, InputError)))
        return
    except Exception as e:  # noqa: BLE001 - one line in the HTTP process, never a traceback here
        conn.send(("failed", f"the decoding process could not load the model ({first_line(e, 200)})", False))
        return
    conn.send(("ready", tokenizer.to_dict(), model.config.context, batcher.load()))
    jobs: dict[int, Job] = {}

    def deliverer(i: int):
        def deliver(event: Event) -> None:
            outbox.add(i, event)
            if event.finish:
                jobs.pop(i, None)
        return deliver

    def take_messages() -> None:
        try:
            while True:
                kind, payload = conn.recv()
                if kind == "submit":
                    new = [Job(prompt, n, opts, seed, stops, deliverer(i)) for i, prompt, n, opts, seed, stops in payload]
                    jobs.update((i, job) for (i, *_), job in zip(payload, new))
                    try:
                        batcher.submit(new)
                    except (QueueFull, Closed) as e:  # the HTTP process checks first: a race with closing
                        for job in new:
                            job.deliver(Event(finish="error", error=str(e)))
                elif kind == "cancel":
                    for i in payload:
                        if (job := jobs.get(i)) is not None:
                            job.cancelled = True
                elif kind == "close":
                    batcher.close(payload)
        except (EOFError, OSError):  # the HTTP process is gone: stop
            batcher.close(0)

    threading.Thread(target=take_messages, name="janelm-messages", daemon=True).start()
    batcher.run()
    flush(batcher, force=True)
    conn.send(("done",))
