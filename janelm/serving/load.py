"""`janelm bench serve`: a real server on loopback and concurrent streaming clients, timed.

The clients use only the standard library (http.client, threads), so the benchmark needs nothing
beyond the server's own extra; each reads its stream as it comes, noting the time to its first text."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from janelm.errors import JaneLMError

PROMPTS = ("It is a truth universally acknowledged", "Emma Woodhouse, handsome, clever, and rich,",
           "“My dear Mr. Bennet,” said his lady to him one day,", "The family of Dashwood had long been settled")


@contextmanager
def server_process(args: list[str], stderr=None, env: dict[str, str] | None = None) -> Iterator[tuple[int, subprocess.Popen]]:
    """`janelm serve ARGS --port 0` in a process of its own (with `env`, else ours); yields its port
    and the process; stopped with SIGTERM. Its notes go to `stderr` (a file), else to ours."""
    proc = subprocess.Popen([sys.executable, "-m", "janelm", "serve", "--port", "0", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env or os.environ.copy())
    try:
        out, before = stderr or sys.stderr, ""
        while not (line := proc.stderr.readline()).startswith("janelm serve: http://"):  # notes first (compiling...)
            if not line:
                raise JaneLMError(f"janelm serve did not start: {before.strip()[-300:]}")
            before += line
            out.write(line)
        threading.Thread(target=lambda: [out.write(text) for text in proc.stderr], daemon=True).start()
        yield int(line.split()[2].rstrip("/").rsplit(":", 1)[1]), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stream_completion(port: int, body: dict[str, Any]) -> dict[str, float]:
    """One streamed completion: seconds to the first text, tokens, seconds in all."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise JaneLMError(f"the server answered {response.status}: {response.read()[:200]!r}")
        first, tokens = None, 0
        for line in response:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c.get("text") for c in chunk.get("choices", [])):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    finally:
        conn.close()
    return {"ttft_s": first if first is not None else float("nan"), "tokens": tokens,
            "start": start, "end": time.perf_counter()}


def concurrent_streams(port: int, clients: int, tokens: int) -> dict[str, Any]:
    """`clients` greedy streams of `tokens` tokens, started together: aggregate tokens/s and time
    to first token (p50, p95)."""
    results: list[dict[str, float]] = [{} for _ in range(clients)]
    gate = threading.Barrier(clients)

    def client(i: int) -> None:
        gate.wait()
        results[i] = stream_completion(port, {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens, "temperature": 0})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(not r for r in results):
        raise JaneLMError("a client failed: see the server's notes above")
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    ttfts = sorted(r["ttft_s"] for r in results)
    return {"clients": clients, "tokens": sum(r["tokens"] for r in results), "seconds": elapsed,
            "tokens_per_s": sum(r["tokens"] for r in results) / elapsed,
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95)}


def paired_rounds(port: int, tokens: int, decode: Callable[[], float], rounds: int = 3) -> list[dict[str, Any]]:
    """`rounds` times: one stream of `tokens` tokens, then `decode()` (tokens/s) right after it. The
    machine's speed moves by a third from one second to the next, so a stream and a decode timed
    apart measure two machines; side by side, their ratio stands."""
    out = []
    for _ in range(max(1, rounds)):
        stream = concurrent_streams(port, 1, tokens)
        out.append({"stream": stream, "decode": decode()})
        time.sleep(0.3)  # this process's idle compute threads spin a while before they sleep: not beside a stream
    return out


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]
