"""`janelm serve` as clients meet it: a real server on loopback, the official `openai` package,
sample's exact text for a lone request, errors as OpenAI's error object, rows freed on disconnect,
SIGTERM, and the page in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from conftest import REPO, janelm

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@contextmanager
def running_server(*args: str, key: str | None = None, log=None):
    """`janelm serve` on 127.0.0.1 and a free port: yields (process, base URL); always stopped."""
    from janelm.serving.load import server_process

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with server_process([*args, *(["--api-key", key] if key else [])], stderr=log, env=env) as (port, proc):
        yield proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(trained):
    with running_server("-c", str(trained)) as (proc, url):
        yield url


def client(url: str, key: str = "none") -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def sample_text(trained, *args: str) -> str:
    return janelm("sample", "-c", str(trained), "--no-echo", *args).stdout.removesuffix("\n")


@pytest.mark.parametrize("options, flags", [
    ({"temperature": 0, "max_tokens": 70}, ["--temperature", "0", "-n", "70"]),  # past the context (32): slides
    ({"temperature": 0.9, "top_p": 0.8, "seed": 7, "max_tokens": 40, "stop": ["e "],
      "extra_body": {"top_k": 12, "repetition_penalty": 1.2}},
     ["--temperature", "0.9", "--top-p", "0.8", "--seed", "7", "-n", "40", "--stop", "e ", "--top-k", "12",
      "--repetition-penalty", "1.2"]),
])
def test_a_lone_completion_is_samples_text(server, trained, options, flags):
    api = client(server)
    answer = api.completions.create(model="janelm", prompt="Elizabeth", **options)
    assert answer.choices[0].text == sample_text(trained, "--prompt", "Elizabeth", *flags)
    assert answer.usage.prompt_tokens > 0 and answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    streamed = list(api.completions.create(model="janelm", prompt="Elizabeth", stream=True, **options))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == answer.choices[0].text
    assert streamed[-1].usage.completion_tokens == answer.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == answer.choices[0].finish_reason
    if answer.usage.completion_tokens >= 20:  # a chunk carries all decoded since the last (--stream-interval)
        assert len([c for c in streamed if c.choices and c.choices[0].text]) < answer.usage.completion_tokens


def test_chat_is_janelm_chats_reply(server, trained):
    api = client(server)
    messages = [{"role": "user", "content": "Good morning."}]
    answer = api.chat.completions.create(model="janelm", messages=messages, temperature=0, max_tokens=30,
                                         extra_body={"as": "Elizabeth", "with": "Darcy"})
    said = janelm("chat", "-c", str(trained), "--temperature", "0", "--max-reply", "30", "--as", "Elizabeth",
                  "--with", "Darcy", input="Good morning.\n").stdout
    assert answer.choices[0].message.content == said.removesuffix("\n")
    assert answer.choices[0].message.role == "assistant" and answer.usage.completion_tokens > 0
    chunks = list(api.chat.completions.create(model="janelm", messages=messages, temperature=0, max_tokens=30,
                                              stream=True, extra_body={"as": "Elizabeth", "with": "Darcy"}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].usage.total_tokens == answer.usage.total_tokens
    two = api.chat.completions.create(model="janelm", messages=messages, n=2, seed=3, max_tokens=10)
    assert [c.index for c in two.choices] == [0, 1]


def test_models_health_and_errors(server, trained):
    api = client(server)
    assert [m.id for m in api.models.list().data] == ["run"]
    assert api.models.list().data[0].created == int((trained / "best.pt").stat().st_mtime)  # the checkpoint's time
    health = httpx.get(f"{server}/health").json()
    # On the CPU a server compiles its steps (a lone row's, the batches') at its first start by default.
    assert health["status"] == "ok" and health["compiled"] is True
    cases = [
        (lambda: api.completions.create(model="janelm", prompt="x", max_tokens=10**6), openai.BadRequestError, "max_tokens"),
        (lambda: api.completions.create(model="janelm", prompt="x", max_tokens="5"), openai.BadRequestError, "max_tokens"),
        (lambda: api.completions.create(model="janelm", prompt="x" * 400), openai.BadRequestError, "prompt"),
        (lambda: api.completions.create(model="janelm", prompt="x", extra_body={"logprobs": 3}), openai.BadRequestError, "logprobs"),
        (lambda: api.chat.completions.create(model="janelm", messages=[{"role": "king", "content": "x"}]),
         openai.BadRequestError, "messages"),
    ]
    for call, kind, param in cases:
        with pytest.raises(kind) as caught:
            call()
        assert caught.value.status_code == 400 and caught.value.body["param"] == param
        assert set(caught.value.body) == {"message", "type", "param", "code"}
    for body in (b'{"prompt": "x",', b"[1, 2]", "{\"prompt\": \"\u00e9\"}".encode("latin-1"),
                 b'{"prompt": "x", "repetition_penalty": Infinity}', b'{"prompt": "x", "temperature": NaN}'):
        bad = httpx.post(f"{server}/v1/completions", content=body, headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    big = httpx.post(f"{server}/v1/completions", content=b"x" * (2 << 20), headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and "--max-body-bytes" in big.json()["error"]["message"]
    assert httpx.get(f"{server}/nowhere").json()["error"]["type"] == "not_found_error"


def test_concurrent_requests_share_steps_and_disconnects_free_rows(server):
    before = httpx.get(f"{server}/health").json()
    api = client(server)
    texts = [None] * 4

    def ask(i: int) -> None:
        texts[i] = api.completions.create(model="janelm", prompt="Emma", max_tokens=150, temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = httpx.get(f"{server}/health").json()
    assert all(texts) and after["rows"] == 0
    assert after["stepped_rows"] - before["stepped_rows"] > after["steps"] - before["steps"]  # some steps served several

    assert leave_mid_stream(server) == 0  # the row is freed


def leave_mid_stream(url: str) -> int:
    """Start a long stream, leave after a few chunks; the rows decoding once the server noticed
    (within 10 s)."""
    with httpx.stream("POST", f"{url}/v1/completions", json={"prompt": "Emma", "max_tokens": 4000, "stream": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 3:
                break
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/health").json()["rows"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return httpx.get(f"{url}/health").json()["rows"]


def test_key_queue_and_sigterm(trained, tmp_path):
    log = (tmp_path / "serve.log").open("w")
    # A stream too long to end by itself within the shutdown's grace, however fast the machine.
    with running_server("-c", str(trained), "--max-rows", "1", "--max-queue", "0", "--max-tokens", "10000000",
                        key="sesame", log=log) as (proc, url):
        with pytest.raises(openai.AuthenticationError) as caught:
            client(url, "wrong").models.list()
        assert caught.value.body["code"] == "invalid_api_key"
        api = client(url, "sesame")
        assert api.models.list().data
        stream = api.completions.create(model="janelm", prompt="Emma", max_tokens=10_000_000, stream=True)
        next(iter(stream))
        with pytest.raises(openai.RateLimitError):  # the one row is taken, and nothing may wait
            api.completions.create(model="janelm", prompt="Emma", max_tokens=5)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in stream:
                pass
        assert proc.wait(10) == 0 and time.monotonic() - start < 8
    log.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_clients_that_leave_do_not_fill_the_queue(trained):
    """More disconnects than rows and queue together: each frees its place, and the next request
    is answered, not refused as if the server were full."""
    with running_server("-c", str(trained), "--max-rows", "1", "--max-queue", "0") as (proc, url):
        for _ in range(3):
            assert leave_mid_stream(url) == 0
        answer = client(url).completions.create(model="janelm", prompt="Emma", max_tokens=5)
        assert answer.usage.completion_tokens == 5


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    found = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(stat))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the decoding process through /proc")
def test_a_decoding_process_that_dies_ends_serve_in_one_line(trained, tmp_path):
    """Decoding runs in a process of its own: if it dies, the streams in flight end with an error
    event and serve exits 1 with one line saying so, not a hang or a traceback."""
    log = (tmp_path / "serve.log").open("w")
    with running_server("-c", str(trained), log=log) as (proc, url):
        stream = client(url).completions.create(model="janelm", prompt="Emma", max_tokens=4000, stream=True)
        next(iter(stream))
        decoders = [pid for pid in children(proc.pid)
                    if "resource_tracker" not in open(f"/proc/{pid}/cmdline").read()]
        assert len(decoders) == 1
        os.kill(decoders[0], signal.SIGKILL)
        with pytest.raises(openai.APIError, match="decoding process stopped"):
            for _ in stream:
                pass
        assert proc.wait(10) == 1
    log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in text and "the decoding process stopped" in text.splitlines()[-1]


def test_a_damaged_checkpoint_is_one_line_from_the_decoding_process(tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"PK\x03\x04 not a checkpoint")
    proc = janelm("serve", "-c", str(damaged), "--port", "0", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "damaged.pt" in proc.stderr


def test_bench_serve_pairs_one_stream_with_the_decode_and_the_streams_beside_it(trained):
    """A real server, five rounds of one stream from token 0, the decode of the same tokens in the
    benchmark's process and concurrent streams: the JSON holds what the ratios are made of."""
    import statistics

    proc = janelm("bench", "serve", "-c", str(trained), "--clients", "3", "--tokens", "12", "--no-compile", "--json")
    result = json.loads(proc.stdout)
    rounds = result["rounds"]
    assert len(rounds) == 5 and "bench serve: 5 rounds of one stream" in proc.stderr
    assert result["one_stream_tokens_per_s"] == max(r["one_stream_tokens_per_s"] for r in rounds)
    assert result["sample_decode_tokens_per_s"] == max(r["sample_decode_tokens_per_s"] for r in rounds)
    assert result["one_stream_vs_sample_decode"] == pytest.approx(statistics.median(
        r["one_stream_tokens_per_s"] / r["sample_decode_tokens_per_s"] for r in rounds))
    assert result["aggregate_tokens_per_s"] == max(r["aggregate_tokens_per_s"] for r in rounds)
    assert result["aggregate_vs_one_stream"] == pytest.approx(statistics.median(
        r["aggregate_tokens_per_s"] / r["one_stream_tokens_per_s"] for r in rounds))
    assert result["clients"] == 3 and 0 < result["ttft_p50_s"] <= result["ttft_p95_s"]


def test_a_missing_web_stack_is_one_line_naming_the_extra(trained, monkeypatch, capsys):
    import importlib.util

    from janelm.cli import main

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else found(name, *a))
    assert main(["serve", "-c", str(trained)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "pip install -e '.[serve]'" in err


def test_a_public_host_needs_a_key_and_help_imports_nothing_heavy(trained):
    refused = janelm("serve", "-c", str(trained), "--host", "0.0.0.0", check=False)
    assert refused.returncode == 2 and "--api-key" in refused.stderr and len(refused.stderr.splitlines()) == 1
    refused = janelm("serve", "-c", str(trained), "--stream-interval", "-1", check=False)
    assert refused.returncode == 2 and "--stream-interval" in refused.stderr and len(refused.stderr.splitlines()) == 1
    code = ("import sys, runpy; sys.argv = ['janelm', 'serve', '--help']\n"
            "try:\n    runpy.run_module('janelm', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'fastapi', 'uvicorn', 'starlette') if m in sys.modules]\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
    # The HTTP process never loads PyTorch: only the decoding process does (janelm.serving.decoder).
    http_side = ("import sys, janelm.commands.serve, janelm.serving.app, janelm.serving.decoder, janelm.serving.run\n"
                 "assert 'torch' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", http_side], capture_output=True, text=True, cwd=REPO).returncode == 0


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_the_page_streams_a_reply_in_a_real_browser(trained, tmp_path):
    """A server of its own, uncompiled: the page is what this tests (compiled serving: the tests
    above), and it need not wait for another worker compiling the module's server."""
    webdriver = pytest.importorskip("selenium.webdriver")
    with running_server("-c", str(trained), "--no-compile") as (proc, server):
        talk_on_the_page(webdriver, server, tmp_path)


def talk_on_the_page(webdriver, server: str, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)  # given: nothing is downloaded
    browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.get(server + "/")
        wait = WebDriverWait(browser, 60)
        # The page sends no seed (a person chatting gets fresh replies), and a reply may be empty: the
        # model can close the quotation at once. Every reply must be well formed; one of three lines
        # must get words (a tiny model's empty replies are rare, so three in a row mean a fault).
        replies = []
        for turn in range(3):
            browser.find_element(By.ID, "line").send_keys("Good morning, sir.\n")
            reply = wait.until(lambda b: (lambda done: done[turn] if len(done) > turn else False)(
                b.find_elements(By.CSS_SELECTOR, "#transcript p.reply[data-done]")))
            said = browser.find_elements(By.CSS_SELECTOR, "#transcript p.said")[turn].text
            assert said == "“Good morning, sir.” said Elizabeth."
            assert reply.text.startswith("Mr. Darcy replied, “") and reply.text.endswith("”")
            replies.append(reply.text)
            if len(reply.text) > len("Mr. Darcy replied, “”"):
                break
        assert any(len(r) > len("Mr. Darcy replied, “”") for r in replies), replies
        assert browser.find_element(By.ID, "status").text == ""
        browser.find_element(By.ID, "tab-write").click()
        area = browser.find_element(By.ID, "text")
        start = area.get_property("value")
        browser.find_element(By.ID, "continue").click()
        wait.until(lambda b: b.find_element(By.ID, "continue").is_enabled() and area.get_property("value") != start)
        assert area.get_property("value").startswith(start)
    finally:
        browser.quit()
