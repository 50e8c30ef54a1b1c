"""`janelm prepare --gutenberg` through the real CLI, against a Gutenberg-shaped server on loopback.

The server (tests/test_gutenberg.py's) serves raw Gutenberg files of four bundled novels under
/cache/epub/<N>/pg<N>.txt, and made-up novels of the period (tests/gutenberg_like.py). Retries
wait $JANELM_DOWNLOAD_BACKOFF seconds (doubling), set tiny here so a dropped connection costs nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import janelm
from gutenberg_like import RAW_BOOKS, period_novel, raw_book
from test_gutenberg import Server, serve

# The period novels' eBook numbers, in the order `dickens,eliot` names them; made-up novels stand in.
PERIOD_BOOKS = [98, 1400, 766, 786, 564, 145, 6688, 550]
BOOKS = "1342,158,161,121"
TITLES = {1342: "Pride and Prejudice", 158: "Emma", 161: "Sense and Sensibility", 121: "Northanger Abbey"}
QUICK = ["--vocab-size", "300", "--tokenizer-sample", "200000"]  # a small BPE: seconds, not minutes


@pytest.fixture
def mirror(monkeypatch) -> Iterator[Server]:
    """A loopback Gutenberg mirror serving the four raw novels; counts the requests it gets."""
    monkeypatch.setenv("JANELM_DOWNLOAD_BACKOFF", "0.01")
    yield from serve(Server(url="", books={n: raw_book(n).encode() for n in RAW_BOOKS}))


def one_error_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


def test_download_four_books_then_reuse_the_cache(mirror: Server, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    janelm("prepare", "--gutenberg", BOOKS, "--mirror", mirror.url, "--out", str(out), *QUICK)
    assert [mirror.count(n) for n in TITLES] == [1, 1, 1, 1]

    meta = json.loads((out / "meta.json").read_text())
    served = {n: hashlib.sha256(mirror.books[n]).hexdigest() for n in TITLES}
    assert [s["gutenberg"] for s in meta["sources"]] == [1342, 158, 161, 121]
    for source in meta["sources"]:
        n = source["gutenberg"]
        assert source["title"] == TITLES[n]
        assert source["raw_sha256"] == served[n]  # the recorded hash is the download's, byte for byte
        assert source["source"] == str(out / "raw" / f"pg{n}.txt")
        assert source["train_tokens"] > 10_000 and source["val_tokens"] > 1_000
    for n in TITLES:
        raw = out / "raw" / f"pg{n}.txt"
        assert raw.read_bytes() == mirror.books[n]
        assert (out / "raw" / f"pg{n}.txt.sha256").read_text().split() == [served[n], raw.name]

    # The cleaned token files: uint16 ids, as many as meta.json counts.
    assert meta["token_dtype"] == "uint16"
    for split in ("train", "val"):
        size = (out / f"{split}.bin").stat().st_size
        assert size > 0 and size == 2 * meta["tokens"][split]
    assert (out / "tokenizer.json").is_file()

    # Again, with --force: the intact downloads are reused, the server is asked for nothing.
    before = len(mirror.requests)
    janelm("prepare", "--gutenberg", BOOKS, "--mirror", mirror.url, "--out", str(out), "--force", *QUICK)
    assert len(mirror.requests) == before
    again = json.loads((out / "meta.json").read_text())
    assert [s["raw_sha256"] for s in again["sources"]] == [s["raw_sha256"] for s in meta["sources"]]
    assert again["tokens"] == meta["tokens"]

    # Without --force the finished corpus is refused before anything is fetched.
    proc = janelm("prepare", "--gutenberg", BOOKS, "--mirror", mirror.url, "--out", str(out), check=False)
    assert proc.returncode == 2 and "--force" in one_error_line(proc)
    assert len(mirror.requests) == before


def test_404_names_the_book_and_the_url(mirror: Server, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    missing = 99999999  # not on the mirror: 404
    proc = janelm("prepare", "--gutenberg", f"1342,{missing}", "--mirror", mirror.url, "--out", str(out), *QUICK,
                  check=False)
    line = one_error_line(proc)
    assert proc.returncode == 1
    url = f"{mirror.url}/cache/epub/{missing}/pg{missing}.txt"
    assert line == (f"janelm prepare: error: could not download eBook {missing} from {url}: HTTP 404 Not Found; "
                    "check your connection or try --mirror")
    assert mirror.count(missing) == 1  # a 404 is not retried
    # The book that did download stays cached for the next try; no corpus is written.
    assert sorted(p.name for p in out.iterdir()) == ["raw"]
    assert sorted(p.name for p in (out / "raw").iterdir()) == ["pg1342.txt", "pg1342.txt.sha256"]


def test_404_of_an_austen_novel_names_its_title(mirror: Server, tmp_path: Path) -> None:
    mirror.mode = "404"
    proc = janelm("prepare", "--gutenberg", "158", "--mirror", mirror.url, "--out", str(tmp_path / "c"), check=False)
    line = one_error_line(proc)
    assert proc.returncode == 1
    assert f"could not download eBook 158 (Emma) from {mirror.url}/cache/epub/158/pg158.txt: HTTP 404" in line
    assert not (tmp_path / "c").exists()  # nothing downloaded, nothing left behind


def test_dropped_connection_leaves_no_partial_file(mirror: Server, tmp_path: Path) -> None:
    mirror.mode = "drop"  # promises the whole file, sends half, hangs up
    out = tmp_path / "corpus"
    proc = janelm("prepare", "--gutenberg", "161", "--mirror", mirror.url, "--out", str(out), check=False)
    line = one_error_line(proc)
    assert proc.returncode == 1
    size = len(mirror.books[161])
    assert line.startswith(f"janelm prepare: error: could not download eBook 161 (Sense and Sensibility) from "
                           f"{mirror.url}/cache/epub/161/pg161.txt: connection dropped after ")
    assert line.endswith(f" of {size} bytes; check your connection or try --mirror")
    assert mirror.count(161) == 4  # the first try and three retries, 0.01 + 0.02 + 0.04 s apart
    # No partial book, no temporary file, no sidecar; the folder this run created is gone again.
    assert not out.exists()


def test_dropped_connection_keeps_an_existing_cache(mirror: Server, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    janelm("prepare", "--gutenberg", "121", "--mirror", mirror.url, "--out", str(out), "--tokenizer", "char")
    cached = {p.name: p.read_bytes() for p in (out / "raw").iterdir()}
    mirror.mode = "drop"
    proc = janelm("prepare", "--gutenberg", "121,161", "--mirror", mirror.url, "--out", str(out), "--force",
                  "--tokenizer", "char", check=False)
    assert proc.returncode == 1 and "eBook 161" in one_error_line(proc)
    assert {p.name: p.read_bytes() for p in (out / "raw").iterdir()} == cached
    assert (out / "meta.json").is_file()  # the corpus from before is untouched
    assert json.loads((out / "meta.json").read_text())["tokenizer"]["kind"] == "char"


@pytest.mark.parametrize("value", ["soon", "-1"])
def test_bad_backoff_setting(monkeypatch, value: str, tmp_path: Path) -> None:
    monkeypatch.setenv("JANELM_DOWNLOAD_BACKOFF", value)
    proc = janelm("prepare", "--gutenberg", "158", "--mirror", "http://127.0.0.1:9", "--out", str(tmp_path / "c"),
                  check=False)
    line = one_error_line(proc)
    assert proc.returncode == 2
    assert line == f"janelm prepare: error: $JANELM_DOWNLOAD_BACKOFF must be a number of seconds from 0 to 3600, got {value!r}"
    assert not (tmp_path / "c").exists()


def test_char_vocabulary_covers_the_validation_split(tmp_path: Path) -> None:
    """A character found only in a work's held-out tail still gets an id (it used to fail the
    prepare: "the text has 1 distinct character(s) the model never saw in training")."""
    text = tmp_path / "novel.txt"
    text.write_text("Plain words in a plain paragraph, said the lady.\n" * 60 + "A café at the very end.\n")
    out = tmp_path / "corpus"
    janelm("prepare", str(text), "--out", str(out), "--tokenizer", "char", "--val-fraction", "0.1")
    assert "é" in json.loads((out / "tokenizer.json").read_text())["chars"]


def test_author_sets_download_as_extra_sources(mirror: Server, tmp_path: Path) -> None:
    """`--extra-gutenberg dickens,eliot` fetches the eight period novels as training-only text."""
    from janelm.gutenberg import TITLES

    # As distributed: some with a byte-order mark and CRLF line ends, all hard-wrapped.
    mirror.books.update({n: period_novel(seed=n, bom=n % 3 == 0, crlf=n % 2 == 0) for n in PERIOD_BOOKS})
    out = tmp_path / "corpus"
    janelm("prepare", "--gutenberg", "121", "--extra-gutenberg", "dickens,eliot", "--extra-weight", "0.4",
           "--mirror", mirror.url, "--out", str(out), *QUICK)
    meta = json.loads((out / "meta.json").read_text())
    assert [(s["gutenberg"], s["title"], s["group"]) for s in meta["sources"]] == [
        (121, "Northanger Abbey", "main"), *((n, TITLES[n], "extra") for n in PERIOD_BOOKS)]
    main, *extras = meta["sources"]
    for source in extras:
        assert source["raw_sha256"] == hashlib.sha256(mirror.books[source["gutenberg"]]).hexdigest()
        assert source["val_chars"] == source["val_tokens"] == 0 and source["train_tokens"] > 5_000
    # train.bin: Northanger Abbey's training tenths, then the extras; val.bin is Northanger Abbey's alone.
    total = meta["tokens"]["train"]
    assert meta["train_ranges"] == {"main": [0, main["train_tokens"]], "extra": [main["train_tokens"], total]}
    assert meta["tokens"]["val"] == main["val_tokens"] > 1_000
    assert meta["extra_weight"] == 0.4
    assert sorted(p.name for p in (out / "raw").iterdir() if p.suffix == ".txt") == sorted(
        f"pg{n}.txt" for n in [121, *PERIOD_BOOKS])
