"""Downloading Project Gutenberg plain-text files by eBook number.

Downloads are polite (a named User-Agent, one file at a time, a cache so nothing is fetched
twice) and safe to interrupt: a file only appears under its final name once it is complete,
and a `.sha256` sidecar written afterwards says the file is whole.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

import janelm
from janelm.console import progress_bar
from janelm.errors import InputError, JaneLMError
from janelm.files import write_failure

__all__ = ["AUSTEN", "AUTHORS", "DEFAULT_MIRROR", "TITLES", "USER_AGENT", "book_url", "parse_books", "fetch_book",
           "sha256_file"]

# Jane Austen's works on Project Gutenberg: eBook number -> title.
AUSTEN: dict[int, str] = {
    105: "Persuasion",
    121: "Northanger Abbey",
    141: "Mansfield Park",
    158: "Emma",
    161: "Sense and Sensibility",
    946: "Lady Susan",
    1212: "Love and Freindship",
    1342: "Pride and Prejudice",
}
# Novelists of the period, as extra training text (janelm prepare --extra-gutenberg dickens,eliot).
DICKENS: dict[int, str] = {
    98: "A Tale of Two Cities",
    1400: "Great Expectations",
    766: "David Copperfield",
    786: "Hard Times",
    564: "The Mystery of Edwin Drood",
}
ELIOT: dict[int, str] = {
    145: "Middlemarch",
    6688: "The Mill on the Floss",
    550: "Silas Marner",
}
# The names --gutenberg and --extra-gutenberg take for a whole author.
AUTHORS: dict[str, dict[int, str]] = {"austen": AUSTEN, "dickens": DICKENS, "eliot": ELIOT}
TITLES: dict[int, str] = {number: title for works in AUTHORS.values() for number, title in works.items()}

DEFAULT_MIRROR = "https://www.gutenberg.org"
USER_AGENT = f"janelm/{janelm.__version__} (+https://github.com/janelm)"

_CHUNK = 64 * 1024
# HTTP statuses worth asking again for: the server is busy or had a passing fault. Anything
# else (404 above all) will not change by retrying.
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


def book_url(number: int, mirror: str = DEFAULT_MIRROR) -> str:
    """URL of the plain-text (UTF-8) file of eBook `number` on `mirror`."""
    return f"{mirror.rstrip('/')}/cache/epub/{number}/pg{number}.txt"


def parse_books(spec: str, flag: str = "--gutenberg") -> list[int]:
    """Turn a `flag` value into eBook numbers: an author ("austen", "dickens", "eliot") or "105,1342".

    Items may be mixed ("austen,1400"); duplicates are dropped, order is kept.
    """
    authors = ", ".join(f"'{name}'" for name in AUTHORS)
    fix = f"{flag} {spec!r}: use an author ({authors}) or comma-separated eBook numbers such as 105,1342"
    numbers: list[int] = []
    items = [item.strip() for item in spec.split(",")]
    if not any(items):
        raise InputError(fix)
    for item in items:
        if item.lower() in AUTHORS:
            numbers.extend(AUTHORS[item.lower()])
        elif item.isdigit() and int(item) > 0:
            numbers.append(int(item))
        else:
            raise InputError(fix)
    return list(dict.fromkeys(numbers))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks so size does not matter."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _is_intact(path: Path) -> bool:
    """Whether a cached download is complete: its sidecar hash matches its bytes."""
    sidecar = _sidecar(path)
    if not (path.is_file() and sidecar.is_file()):
        return False
    try:
        recorded = sidecar.read_text(encoding="ascii").split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return False
    return recorded == sha256_file(path)


class _Retryable(Exception):
    """A failure another attempt may get past (network trouble, a busy server)."""


class _Fatal(Exception):
    """A failure that retrying will not fix (404, a page that is not the book)."""


def _download(url: str, dest: Path, *, timeout: float, progress: bool, label: str) -> str:
    """One attempt: stream `url` into a temporary file, then move it to `dest`.

    Returns the SHA-256 of what was written. The temporary file is removed on any failure.
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        handle, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise write_failure(exc, dest) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code} {exc.reason}"
                exc.close()
                raise (_Retryable if exc.code in _RETRY_STATUS else _Fatal)(reason) from exc
            with response:
                length_header = response.headers.get("Content-Length")
                expected = int(length_header) if length_header and length_header.isdigit() else None
                digest = hashlib.sha256()
                received = 0
                with progress_bar(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                                  disable=not progress) as bar:
                    while True:
                        try:
                            chunk = response.read(_CHUNK)
                        except http.client.IncompleteRead as exc:
                            chunk = exc.partial
                            received += len(chunk)
                            raise _Retryable(
                                f"connection dropped after {received} of {expected} bytes"
                            ) from exc
                        if not chunk:
                            break
                        if received == 0 and chunk.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
                            raise _Fatal("the server sent a web page, not the book's text")
                        _disk(out.write, chunk, path=dest)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            # A connection that closes early can look like a normal end of the body; only the
            # announced length tells a whole file from a cut one.
            if expected is not None and received != expected:
                raise _Retryable(f"connection dropped after {received} of {expected} bytes")
            if received == 0:
                raise _Retryable("the server sent an empty file")
            _disk(out.flush, path=dest)
            _disk(os.fsync, out.fileno(), path=dest)
        _disk(os.replace, tmp, dest, path=dest)
        return digest.hexdigest()
    except (OSError, http.client.HTTPException) as exc:
        # Disk errors were turned into _Fatal where they happen; what is left is the network
        # (refused, reset, timed out, TLS trouble), which another attempt may get past.
        raise _Retryable(_describe(exc)) from exc
    finally:
        tmp.unlink(missing_ok=True)


_T = TypeVar("_T")


def _disk(operation: Callable[..., _T], *args: Any, path: Path) -> _T:
    """Run a file operation; a failure there is the disk's (a full disk, a read-only folder):
    retrying will not help, and the user hears which file and what to do."""
    try:
        return operation(*args)
    except OSError as exc:
        raise write_failure(exc, path) from None


def _describe(exc: BaseException) -> str:
    """A short reason for a network error: "Connection refused", "timed out"."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        exc = reason
    elif isinstance(reason, str) and reason:
        return reason
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not every platform can open a folder, which is fine.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fetch_book(
    number: int,
    raw_dir: Path,
    mirror: str = DEFAULT_MIRROR,
    *,
    timeout: float = 30,
    retries: int = 3,
    backoff: float = 2.0,
    progress: bool = True,
) -> tuple[Path, bool]:
    """Download eBook `number` to `raw_dir/pg<N>.txt` unless an intact copy is there.

    Returns (path, downloaded_now). `retries` is how many more attempts follow a failed one,
    waiting `backoff`, 2*`backoff`, 4*`backoff`... seconds; a 404 is not retried. Failure
    raises JaneLMError naming the book, the URL and the reason; a failed write (a full disk)
    raises WriteFailure naming the file.
    """
    if not mirror.startswith(("http://", "https://")):
        raise InputError(f"--mirror {mirror!r}: must be an http(s) URL such as {DEFAULT_MIRROR}")
    raw_dir = Path(raw_dir)
    dest = raw_dir / f"pg{number}.txt"
    if _is_intact(dest):
        return dest, False

    url = book_url(number, mirror)
    title = TITLES.get(number)
    book = f"eBook {number} ({title})" if title else f"eBook {number}"

    def fail(reason: str) -> JaneLMError:
        return JaneLMError(f"could not download {book} from {url}: {reason}; check your connection or try --mirror")

    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(exc, raw_dir) from None
    # The old sidecar no longer describes what will be there; drop it before touching the file.
    _sidecar(dest).unlink(missing_ok=True)

    attempts = max(0, retries) + 1
    for attempt in range(attempts):
        try:
            digest = _download(url, dest, timeout=timeout, progress=progress, label=dest.name)
        except _Fatal as exc:
            raise fail(str(exc)) from exc
        except _Retryable as exc:
            if attempt + 1 == attempts:
                raise fail(str(exc)) from exc
            time.sleep(backoff * 2**attempt)
            continue
        # Written last, and itself atomically: a sidecar exists only next to a whole file.
        sidecar = _sidecar(dest)
        tmp = sidecar.with_name(sidecar.name + ".part")
        try:
            tmp.write_text(f"{digest}  {dest.name}\n", encoding="ascii")
            os.replace(tmp, sidecar)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise write_failure(exc, sidecar) from None
        _fsync_dir(raw_dir)
        return dest, True
    raise AssertionError("unreachable")  # the loop returns or raises
