"""Fault run for `janelm serve`: 500 requests from 32 clients mixing valid, malformed and
oversized bodies, wrong types, unknown paths and disconnects mid-stream, then SIGTERM with
streams in flight. Prints one JSON object: what each kind got, whether every valid request was
answered or refused with a status, the server's memory after the first 50 requests and at the
end, how it exited, and whether a traceback appeared anywhere.

    python3 benchmarks/serve_faults.py -c CKPT [--requests 500] [--clients 32]

Loopback only; every request has a timeout and the run a deadline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from janelm.serving.load import server_process  # noqa: E402

BODY_LIMIT = 65536
KINDS = ("complete", "chat_stream", "malformed", "wrong_type", "oversized", "disconnect", "unknown_path")
VALID = {"complete", "chat_stream"}


def rss_bytes(pid: int) -> int:
    """The resident memory of `pid` and its children (the server's decoding process)."""
    total = 0
    for entry in Path("/proc").iterdir():
        try:
            parent = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) if entry.name.isdigit() else -1
            if entry.name == str(pid) or parent == pid:
                total += next(int(line.split()[1]) * 1024 for line in entry.joinpath("status").read_text().splitlines()
                              if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue  # gone meanwhile, or a kernel thread
    return total


def request(port: int, kind: str, rng: random.Random) -> str:
    """Send one request of `kind`; return what came back ("200", "400", "disconnected", ...)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    path, body = "/v1/completions", {"prompt": rng.choice(["Emma", "It is a truth", ""]), "max_tokens": rng.randint(5, 60)}
    if kind == "chat_stream":
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "Good morning."}],
                                              "max_tokens": rng.randint(5, 40), "stream": True}
    data = json.dumps(body).encode()
    if kind == "malformed":
        data = data[: rng.randint(1, len(data) - 1)]
    elif kind == "wrong_type":
        data = json.dumps({**body, "max_tokens": "many", "temperature": [1]}).encode()
    elif kind == "oversized":
        data = json.dumps({"prompt": "x" * (BODY_LIMIT + rng.randint(1, 50_000))}).encode()
    elif kind == "unknown_path":
        path = "/v1/engines"
    elif kind in ("disconnect", "long_stream"):
        body = {**body, "max_tokens": 2000, "stream": True}
        data = json.dumps(body).encode()
    try:
        conn.request("POST", path, data, headers)
        response = conn.getresponse()
        if kind == "disconnect":
            response.fp.readline()
            conn.sock.close()  # gone mid-stream
            return "disconnected"
        payload = response.read()
        if response.status == 200 and kind == "long_stream" and b"shutting down" in payload:
            return "200-ended-by-shutdown"
        if response.status == 200 and "stream" in kind and not payload.rstrip().endswith(b"data: [DONE]"):
            return "200-unfinished"
        if response.status != 200 and "error" not in json.loads(payload or b"{}"):
            return f"{response.status}-not-an-error-object"
        return str(response.status)
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as e:
        return f"failed: {type(e).__name__}"
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--checkpoint", required=True)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=900, help="seconds the whole run may take")
    args = parser.parse_args()
    log = Path("serve_faults.log")
    outcomes: dict[str, Counter] = {kind: Counter() for kind in KINDS}
    lock, done, sent = threading.Lock(), [0], [0]
    memory: dict[str, int] = {}
    deadline = time.monotonic() + args.deadline
    with log.open("w") as stderr, server_process(["-c", args.checkpoint, "--max-body-bytes", str(BODY_LIMIT)],
                                                 stderr=stderr) as (port, proc):
        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                with lock:
                    if sent[0] >= args.requests:
                        return
                    sent[0] += 1
                kind = rng.choice(KINDS)
                got = request(port, kind, rng)
                with lock:
                    outcomes[kind][got] += 1
                    done[0] += 1
                    if done[0] == 50:
                        memory["after_50"] = rss_bytes(proc.pid)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        memory["end"] = rss_bytes(proc.pid)
        outcomes["long_stream"] = Counter()  # streams in flight when SIGTERM comes
        in_flight = [threading.Thread(target=lambda: outcomes["long_stream"].update(
            [request(port, "long_stream", random.Random(0))])) for _ in range(4)]
        for t in in_flight:
            t.start()
        time.sleep(0.5)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(30)
        exit_s = time.monotonic() - start
        for t in in_flight:
            t.join(10)
    text = log.read_text()
    valid = sum(sum(outcomes[k].values()) for k in VALID)
    answered = sum(n for k in VALID for got, n in outcomes[k].items() if got[:3].isdigit() and "-" not in got)
    print(json.dumps({
        "requests": sum(sum(c.values()) for c in outcomes.values()), "outcomes": {k: dict(c) for k, c in outcomes.items()},
        "valid": valid, "valid_answered_or_refused_with_a_status": answered,
        "rss_after_50_mb": memory.get("after_50", 0) / 2**20, "rss_end_mb": memory["end"] / 2**20,
        "rss_end_vs_after_50": memory["end"] / memory["after_50"] if memory.get("after_50") else None,
        "exit_code": exit_code, "exit_s": round(exit_s, 2), "traceback_in_server_log": "Traceback" in text,
        "server_log_lines": len(text.splitlines()),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
