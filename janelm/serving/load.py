"""`janelm bench serve`: a real server on loopback and concurrent streaming clients, timed, beside
`bench sample`'s decode of the same model.

The clients use only the standard library (http.client, threads), so the benchmark needs nothing
beyond the server's own extra; each reads its stream as it comes, noting the time to its first text."""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from janelm.errors import InputError, JaneLMError

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


def concurrent_streams(port: int, clients: int, tokens: int, prompts: Sequence[str | list[int]] = PROMPTS) -> dict[str, Any]:
    """`clients` greedy streams of `tokens` tokens, client i's from prompts[i % len(prompts)] (a
    text or token ids), started together: aggregate tokens/s and time to first token (p50, p95)."""
    results: list[dict[str, float]] = [{} for _ in range(clients)]
    failures: list[str] = []
    gate = threading.Barrier(clients)

    def client(i: int) -> None:
        gate.wait()
        try:
            results[i] = stream_completion(port, {"prompt": prompts[i % len(prompts)], "max_tokens": tokens, "temperature": 0})
        except (JaneLMError, OSError, http.client.HTTPException) as e:  # one line for the benchmark, not a thread's traceback
            failures.append(str(e) or type(e).__name__)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures or any(not r for r in results):
        raise JaneLMError(f"a client failed: {failures[0] if failures else 'no answer'}")
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    ttfts = sorted(r["ttft_s"] for r in results)
    return {"clients": clients, "tokens": sum(r["tokens"] for r in results), "seconds": elapsed,
            "tokens_per_s": sum(r["tokens"] for r in results) / elapsed,
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95), "ttfts": ttfts}


def paired_rounds(port: int, tokens: int, decode: Callable[[], float], prompt: list[int], clients: int,
                  openings: Sequence[str | list[int]], rounds: int = 5) -> list[dict[str, Any]]:
    """`rounds` times: one stream of `tokens` tokens from `prompt` (token ids: the decode's own, so
    both do the same work), `decode()` (tokens/s) right after it, then `clients` streams of
    `openings` at once. The machine's speed moves by a third from one second to the next, so
    figures timed apart measure two machines; side by side, their ratios stand."""
    out = []
    for _ in range(max(1, rounds)):
        stream = concurrent_streams(port, 1, tokens, [prompt])
        out.append({"stream": stream, "decode": decode()})
        time.sleep(0.3)  # this process's idle compute threads spin a while before they sleep: not beside a stream
        out[-1]["together"] = concurrent_streams(port, clients, tokens, openings)
    return out


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def measure_serving(checkpoint: str | os.PathLike, clients: int, tokens: int, dtype: str, flags: list[str]) -> dict[str, Any]:
    """`janelm serve -c checkpoint FLAGS` measured in five rounds (paired_rounds) of: one stream from
    token 0, `bench sample`'s decode of the same tokens in this process beside it, then `clients`
    streams of Austen's openings at once; `tokens` tokens each. Speeds are the best round's; the
    ratios the median round's own; times to first token over every round's clients."""
    import torch

    from janelm.checkpoint import load_model
    from janelm.console import note
    from janelm.device import pick_device, pick_weight_dtype
    from janelm.speed import timed_generation

    device = pick_device("auto")
    model, tokenizer, _ = load_model(checkpoint, device, pick_weight_dtype(dtype, device))
    # The openings as token ids, each cut to half the context: any model takes them.
    openings = [ids[: max(1, model.config.context // 2)] for ids in encodable(tokenizer, PROMPTS)] or [[0]]

    @torch.inference_mode()
    def decode() -> float:  # as bench sample decodes: from token 0, the compiled step where it is cached
        return timed_generation(model, [0], tokens, True, None)

    with server_process(["-c", str(checkpoint), "--max-rows", str(max(16, clients)), *flags]) as (port, _):
        concurrent_streams(port, 1, 8, openings)  # warm-ups: the first request, and the first decode, pay for lazy set-up
        decode()
        note(f"bench serve: 5 rounds of one stream, bench sample's decode beside it, then {clients} streams at once, "
             f"{tokens} tokens each")
        rounds = paired_rounds(port, tokens, decode, [0], clients, openings)  # the one stream: the decode's tokens
    ttfts = sorted(t for r in rounds for t in r["together"]["ttfts"])  # every round's clients
    alone = max(r["stream"]["tokens_per_s"] for r in rounds)  # best of the rounds, as the decode
    return {"clients": clients, "tokens": tokens, "one_stream_tokens_per_s": alone,
            "aggregate_tokens_per_s": max(r["together"]["tokens_per_s"] for r in rounds),
            # Each round's streams against its own one stream, timed seconds apart: the median round.
            "aggregate_vs_one_stream": statistics.median(r["together"]["tokens_per_s"] / r["stream"]["tokens_per_s"]
                                                         for r in rounds),
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95),
            "one_stream_ttft_s": min(r["stream"]["ttft_p50_s"] for r in rounds),
            "sample_decode_tokens_per_s": max(r["decode"] for r in rounds),
            "one_stream_vs_sample_decode": statistics.median(r["stream"]["tokens_per_s"] / r["decode"] for r in rounds),
            "rounds": [{"one_stream_tokens_per_s": r["stream"]["tokens_per_s"], "sample_decode_tokens_per_s": r["decode"],
                        "aggregate_tokens_per_s": r["together"]["tokens_per_s"]} for r in rounds]}


def encodable(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """The texts' token ids, leaving out any the tokenizer cannot encode (a character vocabulary
    without curly quotes)."""
    out = []
    for text in texts:
        try:
            out.append(tokenizer.encode(text))
        except InputError:
            continue
    return out
