"""Tests for janelm.gutenberg against a real HTTP server on the loopback interface.

The server lays files out as Gutenberg does (/cache/epub/<N>/pg<N>.txt) and serves raw Gutenberg
files of the bundled novels (tests/gutenberg_like.py), or synthetic text where content does not matter.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import janelm
from janelm.cleaning import clean_gutenberg
from janelm.corpus import read_text
from janelm.errors import InputError, JaneLMError
from gutenberg_like import RAW_BOOKS, raw_book
from janelm.gutenberg import AUSTEN, AUTHORS, DEFAULT_MIRROR, TITLES, book_url, fetch_book, parse_books, sha256_file

# Our own words: used where the content does not matter.
SYNTHETIC = ("A line of text that stands in for a book, repeated to make some bulk.\n" * 2000).encode()

FAST = {"timeout": 5, "backoff": 0.001, "progress": False}


@dataclass
class Server:
    """What the handler serves and what it saw."""

    url: str
    books: dict[int, bytes] = field(default_factory=dict)
    mode: str = "ok"  # ok | 404 | drop | 500-once
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, User-Agent)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, number: int) -> int:
        with self.lock:
            return sum(1 for path, _ in self.requests if path == f"/cache/epub/{number}/pg{number}.txt")


def make_handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append((self.path, self.headers.get("User-Agent", "")))
                first = len(state.requests) == 1
            parts = self.path.strip("/").split("/")
            number = int(parts[2]) if len(parts) == 4 and parts[:2] == ["cache", "epub"] and parts[2].isdigit() else None
            body = state.books.get(number) if number is not None and parts[3] == f"pg{number}.txt" else None
            if state.mode == "404" or body is None:
                self.send_error(404, "Not Found")
                return
            if state.mode == "500-once" and first:
                self.send_error(500, "Internal Server Error")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.mode == "drop":
                # Promise the whole file, send half, hang up.
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


def serve(state: Server) -> Iterator[Server]:
    """Run a loopback HTTP server for `state` in a thread while the caller uses it."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve(Server(url=""))


@pytest.fixture
def real_books(server: Server) -> Server:
    """The server with raw files of four of the novels, under their eBook numbers."""
    server.books.update({n: raw_book(n).encode() for n in RAW_BOOKS})
    return server


# ------------------------------------------------------------------------------------------
# parse_books, URLs, hashes
# ------------------------------------------------------------------------------------------


def test_manifest() -> None:
    assert AUSTEN == {
        105: "Persuasion",
        121: "Northanger Abbey",
        141: "Mansfield Park",
        158: "Emma",
        161: "Sense and Sensibility",
        946: "Lady Susan",
        1212: "Love and Freindship",
        1342: "Pride and Prejudice",
    }
    assert book_url(1342) == "https://www.gutenberg.org/cache/epub/1342/pg1342.txt"
    assert book_url(105, "http://mirror.example/gutenberg/") == "http://mirror.example/gutenberg/cache/epub/105/pg105.txt"
    assert DEFAULT_MIRROR == "https://www.gutenberg.org"


def test_parse_books() -> None:
    assert parse_books("austen") == list(AUSTEN)
    assert parse_books(" Austen ") == list(AUSTEN)
    assert parse_books("105,1342") == [105, 1342]
    assert parse_books("1342, 105, 1342") == [1342, 105]
    assert parse_books("austen,1400")[-1] == 1400


def test_author_sets() -> None:
    assert parse_books("dickens") == [98, 1400, 766, 786, 564]
    assert parse_books(" Eliot ") == [145, 6688, 550]
    # Authors mix with each other and with numbers; a book named twice comes once, where first named.
    assert parse_books("eliot,550,austen,1400") == [145, 6688, 550, *AUSTEN, 1400]
    assert parse_books("austen,dickens,eliot") == list(TITLES)
    assert [TITLES[n] for n in parse_books("dickens,eliot")] == [
        "A Tale of Two Cities", "Great Expectations", "David Copperfield", "Hard Times", "The Mystery of Edwin Drood",
        "Middlemarch", "The Mill on the Floss", "Silas Marner"]
    assert set(AUTHORS) == {"austen", "dickens", "eliot"}


@pytest.mark.parametrize("spec", ["", " , ", "tolstoy", "105;1342", "-5", "0", "1.5", "105,,x", "dickens eliot"])
def test_parse_books_rejects(spec: str) -> None:
    with pytest.raises(InputError) as err:
        parse_books(spec, "--extra-gutenberg")
    message = str(err.value)
    assert message.startswith(f"--extra-gutenberg {spec!r}: ")
    assert all(name in message for name in ("'austen'", "'dickens'", "'eliot'", "105,1342"))
    assert err.value.exit_code == 2


def test_sha256_file(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(SYNTHETIC)
    assert sha256_file(f) == hashlib.sha256(SYNTHETIC).hexdigest()


# ------------------------------------------------------------------------------------------
# fetch_book
# ------------------------------------------------------------------------------------------


def test_fetch_real_files_and_cache(real_books: Server, tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    path, downloaded = fetch_book(1342, raw_dir, real_books.url, **FAST)
    assert (path, downloaded) == (raw_dir / "pg1342.txt", True)
    assert path.read_bytes() == raw_book(1342).encode()
    digest = sha256_file(path)
    assert (raw_dir / "pg1342.txt.sha256").read_text().split() == [digest, "pg1342.txt"]
    assert real_books.requests[0][1] == f"janelm/{janelm.__version__} (+https://github.com/janelm)"
    # The download is the real book: it cleans to the same text as the file it came from.
    assert clean_gutenberg(read_text(path)) == clean_gutenberg(raw_book(1342))

    # A second fetch finds the intact file and asks the server for nothing.
    assert fetch_book(1342, raw_dir, real_books.url, **FAST) == (path, False)
    assert real_books.count(1342) == 1

    # Another book goes beside it; only .txt files and their sidecars are left.
    fetch_book(158, raw_dir, real_books.url + "/", **FAST)
    assert sorted(p.name for p in raw_dir.iterdir()) == ["pg1342.txt", "pg1342.txt.sha256", "pg158.txt", "pg158.txt.sha256"]


def test_fetch_again_when_the_file_is_damaged_or_unverified(server: Server, tmp_path: Path) -> None:
    server.books[105] = SYNTHETIC
    path, _ = fetch_book(105, tmp_path, server.url, **FAST)
    # A damaged file (here: cut short) no longer matches its sidecar and is fetched again.
    path.write_bytes(SYNTHETIC[:100])
    assert fetch_book(105, tmp_path, server.url, **FAST) == (path, True)
    assert path.read_bytes() == SYNTHETIC and server.count(105) == 2
    # A file without its sidecar cannot be trusted either.
    (tmp_path / "pg105.txt.sha256").unlink()
    assert fetch_book(105, tmp_path, server.url, **FAST) == (path, True)
    assert server.count(105) == 3
    assert fetch_book(105, tmp_path, server.url, **FAST) == (path, False)
    assert server.count(105) == 3


def test_fetch_404_is_a_clear_error_and_not_retried(server: Server, tmp_path: Path) -> None:
    url = f"{server.url}/cache/epub/1342/pg1342.txt"
    server.mode = "404"
    with pytest.raises(JaneLMError) as err:
        fetch_book(1342, tmp_path / "raw", server.url, timeout=5, retries=3, backoff=0.001, progress=False)
    assert type(err.value) is JaneLMError and err.value.exit_code == 1
    assert str(err.value) == (
        f"could not download eBook 1342 (Pride and Prejudice) from {url}: HTTP 404 Not Found; "
        "check your connection or try --mirror"
    )
    assert server.count(1342) == 1
    assert list((tmp_path / "raw").iterdir()) == []


def test_fetch_unknown_number_names_the_number(server: Server, tmp_path: Path) -> None:
    with pytest.raises(JaneLMError, match=r"could not download eBook 99999999 from .*pg99999999\.txt: HTTP 404"):
        fetch_book(99999999, tmp_path, server.url, **FAST)


def test_fetch_dropped_connection_leaves_nothing(server: Server, tmp_path: Path) -> None:
    server.books[1342] = SYNTHETIC
    server.mode = "drop"
    raw_dir = tmp_path / "raw"
    with pytest.raises(JaneLMError) as err:
        fetch_book(1342, raw_dir, server.url, timeout=5, retries=1, backoff=0.001, progress=False)
    message = str(err.value)
    assert message.startswith("could not download eBook 1342 (Pride and Prejudice) from ")
    assert f"{server.url}/cache/epub/1342/pg1342.txt" in message
    assert f"of {len(SYNTHETIC)} bytes" in message and message.endswith("check your connection or try --mirror")
    assert server.count(1342) == 2  # one retry
    # No half file, no temporary file, no sidecar.
    assert list(raw_dir.iterdir()) == []


def test_fetch_dropped_connection_keeps_an_old_file_untrusted(server: Server, tmp_path: Path) -> None:
    server.books[161] = SYNTHETIC
    fetch_book(161, tmp_path, server.url, **FAST)
    (tmp_path / "pg161.txt").write_bytes(b"damaged")
    server.mode = "drop"
    with pytest.raises(JaneLMError):
        fetch_book(161, tmp_path, server.url, retries=0, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pg161.txt"]  # no sidecar: not trusted


def test_fetch_retries_a_server_error(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.books[946] = SYNTHETIC
    server.mode = "500-once"
    path, downloaded = fetch_book(946, tmp_path, server.url, timeout=5, retries=2, backoff=0.001, progress=True)
    assert downloaded and path.read_bytes() == SYNTHETIC
    assert server.count(946) == 2
    assert capsys.readouterr().out == ""  # the progress bar goes to stderr only


def test_fetch_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now.
    with pytest.raises(JaneLMError, match=r"could not download eBook 158 \(Emma\) from http://127\.0\.0\.1:\d+/cache/epub/158/pg158\.txt: .+; check your connection or try --mirror"):
        fetch_book(158, tmp_path, f"http://127.0.0.1:{port}", retries=1, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_fetch_rejects_a_bad_mirror(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--mirror"):
        fetch_book(105, tmp_path, "ftp://example.org", **FAST)


def test_fetch_timeout(tmp_path: Path) -> None:
    # A server that accepts the connection (the kernel does, into the backlog) but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(JaneLMError, match=r"eBook 121 \(Northanger Abbey\) .*: timed out; check your connection"):
            fetch_book(121, tmp_path, url, timeout=0.2, retries=1, backoff=0.001, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_download_over_a_file_size_limit_names_the_file_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    """A disk error is not the network's: no retries, no "check your connection", the file named."""
    from conftest import file_size_limit, janelm

    server.books[105] = SYNTHETIC  # 142 kB, over the 50 kB limit
    out = tmp_path / "corpus"
    proc = janelm("prepare", "--gutenberg", "105", "--mirror", server.url, "--out", str(out), check=False,
                  preexec_fn=file_size_limit(50_000))
    assert proc.returncode == 1
    assert proc.stderr == (f"janelm prepare: error: file too large (a file-size limit) writing {out}/raw/pg105.txt: "
                           f"raise the limit (ulimit -f) or pass --out on another disk\n")
    assert server.count(105) == 1
    assert not out.exists()  # no partial download, no empty folders
