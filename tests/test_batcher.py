"""The batcher without HTTP: rows at their own positions give each text as if it ran alone, rows
join and leave between steps, a cancelled row is freed, limits hold, and closing ends what runs."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import torch

from janelm.config import ModelConfig, SamplingOptions
from janelm.decode_step import cpu_compiled_step
from janelm.generate import generate_tokens
from janelm.model import GPT
from janelm.quantize import HALF_MAX_ROWS
from janelm.serving.batcher import Batcher
from janelm.serving.jobs import Closed, Event, Job, QueueFull
from janelm.tokenizer import CharTokenizer

GREEDY = SamplingOptions(temperature=0)
SAMPLED = SamplingOptions(temperature=1.0, top_k=8, top_p=0.9)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    # Double precision: a row's arithmetic in a batch then matches its lone run to ~1e-15, so the
    # tests see positions, masks and the cache, not rounding.
    model = GPT(ModelConfig(vocab_size=40, context=16, n_block=2, n_embed=32, n_head=4, n_kv_head=2)).eval().double()
    return model, CharTokenizer("".join(chr(97 + i) for i in range(40)))


class Collector:
    def __init__(self):
        self.events: list[Event] = []
        self.finished = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if event.finish:
            self.finished.set()

    def text(self) -> str:
        assert self.finished.wait(60)
        return "".join(e.text for e in self.events)


def lone_text(model, tokenizer, prompt: list[int], n: int, opts: SamplingOptions, seed: int) -> str:
    tokens = generate_tokens(model, prompt, n, opts, rng=torch.Generator().manual_seed(seed))
    return tokenizer.decode([t.item() for t in tokens])


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_rows_in_a_batch_give_their_lone_texts(parts, compile):
    """Rows of different prompts, lengths, options and seeds, joining while others decode, past the
    context (16: each slides several times): each text is its lone run's. Compiled: batches of 2 and
    3 rows step through one library compiled for any batch size."""
    model, tokenizer = parts
    if compile:  # the batches' step only (the lone one stays eager): found in the cache by the default
        assert cpu_compiled_step(model, 3, compile=True, any_batch=True) is not None
    # Eager: told so (the compiled case, in another worker, may have put its step in the shared cache)
    batcher = Batcher(model, tokenizer, max_rows=3, max_waiting=8, compile=None if compile else False).start()
    assert (batcher.batch_step is not None) == bool(compile)
    try:
        specs = [([1, 2, 3], 50, GREEDY, 0), ([5], 37, SAMPLED, 1), ([7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], 44, SAMPLED, 2),
                 ([4, 4], 23, GREEDY, 0), ([9], 30, SAMPLED, 5)]
        collectors = [Collector() for _ in specs]
        for (prompt, n, opts, seed), c in zip(specs, collectors):  # more than 3: some wait for a row
            batcher.submit([Job(prompt, n, opts, seed, [], c)])
        for (prompt, n, opts, seed), c in zip(specs, collectors):
            assert c.text() == lone_text(model, tokenizer, prompt, n, opts, seed)
            assert c.events[-1].finish == "length" and c.events[-1].tokens == n
        assert batcher.stepped_rows > batcher.steps  # the rows did share steps
    finally:
        batcher.close(0)
        batcher.join(10)


def test_small_batches_can_step_row_by_row_through_the_lone_step(parts):
    """Where the lone step's products are faster than the batch step's (`Batcher.lone_rows`, set
    where the lone one's are the compiler's own), a batch of up to that many rows steps each row
    alone through the lone step: every text is its lone run's, and the rows still share turns."""
    model, tokenizer = parts
    batcher = Batcher(model, tokenizer, max_rows=3, max_waiting=8)
    assert batcher.lone_rows == 1  # eager steps: a batch steps as one
    lone, rows_stepped = batcher.lone_step, []

    def recorded(token, position, cache):
        rows_stepped.append(token.size(0))
        return lone(token, position, cache)

    batcher.lone_rows, batcher.lone_step = 3, recorded
    batcher.start()
    try:
        specs = [([1, 2, 3], 40, GREEDY, 0), ([5], 37, SAMPLED, 1), ([7, 8, 9, 10, 11, 12, 13], 30, SAMPLED, 2),
                 ([4, 4], 23, GREEDY, 0)]
        collectors = [Collector() for _ in specs]
        for (prompt, n, opts, seed), c in zip(specs, collectors):
            batcher.submit([Job(prompt, n, opts, seed, [], c)])
        for (prompt, n, opts, seed), c in zip(specs, collectors):
            assert c.text() == lone_text(model, tokenizer, prompt, n, opts, seed)
        assert batcher.stepped_rows > batcher.steps  # turns shared by several rows...
        assert set(rows_stepped) == {1} and len(rows_stepped) == batcher.stepped_rows  # ...each stepped alone
    finally:
        batcher.close(0)
        batcher.join(10)


def test_rows_step_alone_only_where_the_lone_step_alone_has_the_compilers_products(parts, monkeypatch):
    import janelm.serving.batcher as batching

    model, tokenizer = parts
    monkeypatch.setattr(batching, "decode_step_for", lambda *args, **kwargs: lambda *step: None)
    monkeypatch.setattr(batching, "batch_step_for", lambda *args: lambda *step: None)
    monkeypatch.setattr(batching, "template_products", lambda model, rows: rows <= HALF_MAX_ROWS)
    assert Batcher(model, tokenizer, max_rows=16, max_waiting=1).lone_rows == batching.LONE_ROWS
    assert Batcher(model, tokenizer, max_rows=HALF_MAX_ROWS, max_waiting=1).lone_rows == 1  # the batch step has them too
    monkeypatch.setattr(batching, "batch_step_for", lambda *args: None)
    assert Batcher(model, tokenizer, max_rows=16, max_waiting=1).lone_rows == 1  # batches step eagerly


def test_rows_joining_together_prefill_in_one_pass(parts, monkeypatch):
    """Jobs that join in one turn have their prompts processed in one padded pass (lengths 1 to 13;
    one slides past the context later), and each text is still its lone run's; a job joining alone
    is processed alone, as sample does."""
    import janelm.serving.batcher as batching

    model, tokenizer = parts
    windows, prefill = [], batching.prefill

    def recording(model, window, cache, lengths=None):
        windows.append(tuple(window.shape) if lengths is None else (tuple(window.shape), tuple(lengths.tolist())))
        return prefill(model, window, cache, lengths)

    monkeypatch.setattr(batching, "prefill", recording)
    batcher = Batcher(model, tokenizer, max_rows=4, max_waiting=4)  # not started: the jobs wait together
    specs = [([1], 30, GREEDY, 0), (list(range(7, 20)), 12, SAMPLED, 2), ([4, 4], 23, GREEDY, 0), ([5, 6, 7], 9, SAMPLED, 1)]
    collectors = [Collector() for _ in specs]
    batcher.submit([Job(prompt, n, opts, seed, [], c) for (prompt, n, opts, seed), c in zip(specs, collectors)])
    assert batcher.load()["compiled"] is False  # eager steps: nothing was compiled or cached for this model
    batcher.start()
    try:
        for (prompt, n, opts, seed), c in zip(specs, collectors):
            assert c.text() == lone_text(model, tokenizer, prompt, n, opts, seed)
        assert windows[0] == ((4, 13), (13, 3, 2, 1))  # longest first, each padded to 13 tokens
        assert all(w == (1, 8) for w in windows[1:])  # the slides of the 30-token text: alone
        alone = Collector()
        batcher.submit([Job([2, 3], 5, GREEDY, 0, [], alone)])
        assert alone.text() == lone_text(model, tokenizer, [2, 3], 5, GREEDY, 0) and windows[-1] == (1, 2)
    finally:
        batcher.close(0)
        batcher.join(10)


def test_a_requests_choices_share_one_prefill(parts, monkeypatch):
    """Jobs with the same window (a request's n choices, each its own seed) are processed once, the
    others' cache rows copied: three choices and another prompt take one pass of two rows, and
    every text is its lone run's."""
    import janelm.serving.batcher as batching

    model, tokenizer = parts
    windows, prefill = [], batching.prefill

    def recording(model, window, cache, lengths=None):
        windows.append(tuple(window.shape))
        return prefill(model, window, cache, lengths)

    monkeypatch.setattr(batching, "prefill", recording)
    batcher = Batcher(model, tokenizer, max_rows=4, max_waiting=4)
    specs = [([3, 1, 4], 20, SAMPLED, 7), ([3, 1, 4], 20, SAMPLED, 8), ([2, 7], 15, GREEDY, 0), ([3, 1, 4], 20, SAMPLED, 9)]
    collectors = [Collector() for _ in specs]
    batcher.submit([Job(prompt, n, opts, seed, [], c) for (prompt, n, opts, seed), c in zip(specs, collectors)])
    batcher.start()
    try:
        for (prompt, n, opts, seed), c in zip(specs, collectors):
            assert c.text() == lone_text(model, tokenizer, prompt, n, opts, seed)
        assert windows[0] == (2, 3) and all(w == (1, 8) for w in windows[1:])  # then slides past the context
        assert len({c.text() for c in collectors[:2] + collectors[3:]}) > 1  # three seeds, three texts
    finally:
        batcher.close(0)
        batcher.join(10)


def test_prefill_groups_bound_the_padding():
    """Windows go longest first into groups whose padding stays within a quarter of their real
    tokens; windows of up to 32 tokens all share one pass; every window is in exactly one group."""
    from janelm.serving.batcher import prefill_groups

    assert prefill_groups([]) == []
    assert prefill_groups([12, 30, 1, 8]) == [[1, 0, 3, 2]]
    # 200, 190, 180 together; 40 beside them would pad 160 tokens, and 10 beside 40 pad 30.
    assert prefill_groups([200, 10, 190, 180, 40, 1]) == [[0, 2, 3], [4], [1, 5]]
    lengths = [256, 3, 100, 120, 64, 7, 250, 33, 240]
    for group in prefill_groups(lengths):
        longest = max(lengths[i] for i in group)
        assert longest <= 32 or 4 * longest * len(group) <= 5 * sum(lengths[i] for i in group)
    assert sorted(i for g in prefill_groups(lengths) for i in g) == list(range(len(lengths)))


def test_stop_cancel_limits_and_close(parts):
    model, tokenizer = parts
    batcher = Batcher(model, tokenizer, max_rows=1, max_waiting=1).start()
    try:
        lone = lone_text(model, tokenizer, [1], 40, GREEDY, 0)
        stop = lone[5:7]
        stopped = Collector()
        batcher.submit([Job([1], 40, GREEDY, 0, [stop], stopped)])
        assert stopped.text() == lone[: lone.index(stop)] and stopped.events[-1].finish == "stop"
        empty = Collector()
        batcher.submit([Job([1], 0, GREEDY, 0, [], empty)])
        assert empty.text() == "" and empty.events[-1].finish == "length"

        running, waiting = Collector(), Collector()
        first = Job([1], 10**6, GREEDY, 0, [], running)
        batcher.submit([first, Job([2], 5, GREEDY, 0, [], waiting)])  # one row, one waiting
        with pytest.raises(QueueFull):
            batcher.submit([Job([3], 5, GREEDY, 0, [], Collector())])
        first.cancelled = True  # its client went away: the row is freed, the waiting job runs
        assert waiting.text() == lone_text(model, tokenizer, [2], 5, GREEDY, 0)
        assert batcher.load()["rows"] == 0 and running.events[-1].finish == "cancelled"  # its one finish event
        gone = Job([4], 5, GREEDY, 0, [], Collector())
        gone.cancelled = True  # gone before its row came: it never runs, and ends too
        batcher.submit([gone])
        assert gone.deliver.finished.wait(10) and gone.deliver.events == [Event(finish="cancelled")]

        endless = Collector()
        batcher.submit([Job([1], 10**6, GREEDY, 0, [], endless)])
        batcher.close(0.2)
        assert endless.finished.wait(10) and endless.events[-1].finish == "error"
        assert "shutting down" in endless.events[-1].error
        with pytest.raises(Closed):
            batcher.submit([Job([1], 5, GREEDY, 0, [], Collector())])
    finally:
        batcher.close(0)
        batcher.join(10)
    assert not batcher.thread.is_alive()


def test_decoding_on_the_callers_thread_on_all_threads(parts, monkeypatch):
    """`run` decodes on the calling thread (serve's main thread) until closed; with `threads`, a lone
    row and a batch step on that many, and the texts stay their lone runs'."""
    model, tokenizer = parts
    seen, step = set(), model.decode_step

    def recording(idx, position, cache, fused=False):
        seen.add((idx.size(0), torch.get_num_threads()))
        return step(idx, position, cache, fused)

    monkeypatch.setattr(model, "decode_step", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    batcher = Batcher(model, tokenizer, max_rows=2, max_waiting=2, threads=2)
    long, short = Collector(), Collector()

    def client() -> None:
        try:
            batcher.submit([Job([1], 30, GREEDY, 0, [], long)])
            deadline = time.monotonic() + 30
            while len(long.events) < 3 and time.monotonic() < deadline:  # alone for a few steps first
                time.sleep(0.001)
            batcher.submit([Job([2], 6, GREEDY, 0, [], short)])
            short.text(), long.text()
        finally:
            batcher.close(0)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        batcher.run()  # returns once closed and idle
    finally:
        torch.set_num_threads(before)
        thread.join(30)
    assert seen == {(1, 2), (2, 2)}  # (before the lone runs below add steps of their own)
    assert long.text() == lone_text(model, tokenizer, [1], 30, GREEDY, 0)
    assert short.text() == lone_text(model, tokenizer, [2], 6, GREEDY, 0)


def test_an_http_failure_ends_serve_in_one_line(parts, monkeypatch):
    """HTTP runs on a thread of its own: if it fails, decoding stops and serve says why in one line
    (a JaneLMError, which the CLI prints), not a thread's traceback and an exit status of 0."""
    uvicorn = pytest.importorskip("uvicorn")
    from janelm.errors import JaneLMError
    from janelm.serving.run import listen, serve

    def broken(self, sockets=None):
        raise OSError("the socket went away")

    monkeypatch.setattr(uvicorn.Server, "run", broken)
    model, tokenizer = parts
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    sock = listen("127.0.0.1", 0)
    try:
        with pytest.raises(JaneLMError, match="^the HTTP server stopped: the socket went away$"):
            serve(None, Batcher(model, tokenizer, max_rows=1, max_waiting=1), sock, grace=0.1)
    finally:
        sock.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_the_decoding_process_sends_a_streams_text_at_most_every_interval():
    """A row's first text and every finish go at once (time to first token, the end of a stream);
    the rest waits for the interval, each job's events since the last message merged into one."""
    from janelm.serving.decoder import Outbox

    now = [0.0]
    outbox = Outbox(0.05, clock=lambda: now[0])
    outbox.add(1, Event("It", tokens=1))
    assert outbox.take() == [(1, Event("It", tokens=1))]  # the first text: at once
    outbox.add(1, Event(" is", tokens=2))
    outbox.add(2, Event("Emma", tokens=1))  # another job's first: at once, with what job 1 has
    assert outbox.take() == [(1, Event(" is", tokens=2)), (2, Event("Emma", tokens=1))]
    now[0] = 0.02
    outbox.add(1, Event(" a", tokens=3))
    outbox.add(1, Event(" truth", tokens=4))
    assert outbox.take() == []  # 0.02 s since the last message: held
    now[0] = 0.06
    assert outbox.take() == [(1, Event(" a truth", tokens=4))]
    now[0] = 0.07
    outbox.add(2, Event(",", tokens=2))
    outbox.add(2, Event("", finish="length", tokens=3))  # a finish: at once, merged with the text before it
    assert outbox.take() == [(2, Event(",", finish="length", tokens=3))]
    outbox.add(1, Event(" universally", tokens=5))
    assert outbox.take() == [] and outbox.take(force=True) == [(1, Event(" universally", tokens=5))]
    assert outbox.take(force=True) == []
