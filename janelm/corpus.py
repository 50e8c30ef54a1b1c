"""Reading the text a model is trained on: finding files, decoding them, normalising, and
splitting each work into training and validation text.

Everything here works on plain `str` and is deterministic, so the same files always give the
same corpus (and the same data hash). Cleaning Project Gutenberg files is `janelm.cleaning`.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path

from janelm.bundled import find_work, is_bundled, read_bundled
from janelm.errors import InputError

__all__ = [
    "iter_sources",
    "read_text",
    "normalise",
    "split_work",
]

STDIN = "-"

# --------------------------------------------------------------------------------------------
# Finding and reading files
# --------------------------------------------------------------------------------------------


def iter_sources(paths: list[str]) -> list[Path | str]:
    """Expand paths into the list of sources to read, in a stable order.

    A file is taken as given (the user named it), a folder contributes its `.txt` files
    recursively in sorted order (hidden files and folders skipped), "-" stands for stdin and
    austen:NAME for a work bundled with JaneLM (`janelm.bundled`). A file or work reached twice
    is listed once, so a work is never counted double.
    """
    if not paths:
        raise InputError("no input given; name a .txt file, a folder of .txt files, or - for stdin")
    sources: list[Path | str] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            sources.append(path)

    for raw in paths:
        if raw == STDIN or is_bundled(raw):
            if is_bundled(raw):
                find_work(raw)  # an unknown name fails here, before anything is read
            if raw not in sources:
                sources.append(raw)
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                (
                    p
                    for p in path.rglob("*")
                    if p.suffix.lower() == ".txt"
                    and p.is_file()
                    # Editors and notebooks leave hidden copies (.~lock, .ipynb_checkpoints)
                    # that would silently duplicate a work.
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                ),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not found:
                raise InputError(f"{raw}: folder has no .txt files; put the texts there as .txt files")
            for p in found:
                add(p)
        elif path.is_file():
            add(path)
        elif path.exists():
            raise InputError(f"{raw}: not a regular file or folder; give a .txt file or a folder")
        else:
            raise InputError(f"{raw}: no such file or folder; check the path")
    return sources


def _source_name(source: Path | str) -> str:
    return "standard input" if source == STDIN else str(source)


# A text file has almost no control characters; a few stray ones (form feeds, ESC in old
# files) are tolerated, but more than this share means the bytes are not prose.
_MAX_CONTROL_SHARE = 0.01


def read_text(source: Path | str) -> str:
    """Read one source (a file, "-" for stdin, austen:NAME for a bundled work) as UTF-8 text,
    refusing binary, non-UTF-8 and empty input.

    A UTF-8 byte-order mark is dropped. Errors name the file and say how to fix it.
    """
    name = _source_name(source)
    try:
        if source == STDIN:
            data = sys.stdin.buffer.read()
        elif is_bundled(source):
            data = read_bundled(str(source))
        else:
            data = Path(source).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InputError(f"{name}: cannot read it ({reason}); check the path and its permissions") from exc

    # UTF-16 files are full of NUL bytes; say what they are rather than calling them binary.
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{name}: is UTF-16, not UTF-8; convert it to UTF-8 (iconv -f utf-16 -t utf-8)")
    if b"\x00" in data:
        raise InputError(f"{name}: looks like a binary file, not text; give a plain-text .txt file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{name}: is not UTF-8 (bad byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert it to UTF-8 (iconv -f latin1 -t utf-8)"
        ) from exc
    if text:
        control = sum(1 for ch in text if unicodedata.category(ch) == "Cc" and ch not in "\n\r\t\f\v")
        if control / len(text) > _MAX_CONTROL_SHARE:
            raise InputError(f"{name}: looks like a binary file, not text; give a plain-text .txt file")
    if not text.strip():
        raise InputError(f"{name}: is empty; give a file with some text in it")
    return text


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

# Characters that end a line in the wild besides "\n" (old Mac files, Unicode separators).
NEWLINES_RE = re.compile("\r\n|[\r\u2028\u2029\x85\x0b\x0c]")
# Invisible characters that carry no text but would become tokens: zero-width spaces and
# joiners, soft hyphens, stray byte-order marks inside the text.
_INVISIBLE_RE = re.compile("[\u00ad\u200b\u200c\u200d\u2060\ufeff]")
# Remaining C0/C1 control characters (after newlines and tabs are handled) are noise.
_CONTROL_RE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
# Tabs and the typographic spaces (NBSP, thin, en/em spaces...) all read as one space.
_SPACES_RE = re.compile("[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_SPACE_RE = re.compile(r" +$", re.MULTILINE)
_BLANK_RUN_RE = re.compile(r"\n{3,}")


def normalise(text: str) -> str:
    """Canonical form of a text: "\\n" newlines, NFC, plain spaces, no trailing spaces,
    at most one blank line in a row, no leading or trailing blank lines, one final "\\n".

    Text with nothing but whitespace becomes "" (there is no line to end).
    """
    text = NEWLINES_RE.sub("\n", text)
    # Drop invisibles before NFC so that characters they separated can still compose.
    text = _INVISIBLE_RE.sub("", text)
    text = _CONTROL_RE.sub("", text)
    text = unicodedata.normalize("NFC", text)
    text = _SPACES_RE.sub(" ", text)
    text = _TRAILING_SPACE_RE.sub("", text)
    text = _BLANK_RUN_RE.sub("\n\n", text)
    text = text.strip("\n")
    return text + "\n" if text else ""


# --------------------------------------------------------------------------------------------
# Train/validation split
# --------------------------------------------------------------------------------------------


def split_work(text: str, val_fraction: float) -> tuple[str, str]:
    """Split one work into (train, validation): validation is its last `val_fraction`.

    The cut falls on a paragraph boundary (a blank line when one is near, else a line break),
    so no paragraph is shared between the parts; both parts end with "\\n". Taking the end of
    each work, rather than random lines, keeps validation text unseen in training.
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"validation fraction {val_fraction}: must be at least 0 and below 1, e.g. 0.1")
    if not text.endswith("\n"):
        text += "\n"
    if val_fraction == 0 or not text.strip():
        return text, ""
    target = round(len(text) * (1 - val_fraction))
    # Cut positions are indices just after a separator; keep both parts non-empty.
    candidates = [m.end() for m in re.finditer(r"\n\n+", text) if 0 < m.end() < len(text)]
    cut = _nearest(candidates, target)
    if cut is None or abs(cut - target) > len(text) * val_fraction / 2:
        lines = [m.end() for m in re.finditer(r"\n", text) if 0 < m.end() < len(text)]
        cut = _nearest(lines, target) if lines else cut
    if cut is None:
        # One single line: fall back to the nearest space so validation is not empty.
        spaces = [m.end() for m in re.finditer(r" +", text) if 0 < m.end() < len(text) - 1]
        cut = _nearest(spaces, target)
    if cut is None:
        return text, ""
    train, val = text[:cut].rstrip("\n ") + "\n", text[cut:]
    if not train.strip():
        return text, ""
    return train, val


def _nearest(positions: list[int], target: int) -> int | None:
    return min(positions, key=lambda p: (abs(p - target), p)) if positions else None
