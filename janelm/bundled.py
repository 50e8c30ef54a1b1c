"""Jane Austen's seven works, shipped inside the package so JaneLM trains offline on a fresh machine.

`janelm/austen/<name>.txt.bz2` holds each work's cleaned text and `janelm/austen/works.json` its
title, Project Gutenberg eBook number, size, sha256 and how it was cleaned. `austen:NAME` names a
work wherever a text file goes (`janelm prepare austen:emma`, `janelm eval austen:northanger-abbey`),
and `janelm prepare` with no text prepares all seven. Read through importlib.resources, so they
are found in a wheel as in a source tree.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import json
from dataclasses import dataclass
from importlib.resources import files

from janelm.errors import InputError, JaneLMError, first_line

__all__ = ["PREFIX", "BundledWork", "bundled_works", "find_work", "is_bundled", "read_bundled"]

PREFIX = "austen:"  # names a bundled work: austen:emma
FOLDER = "austen"  # inside the janelm package


@dataclass(frozen=True)
class BundledWork:
    """One bundled work, as works.json describes it."""

    name: str
    title: str
    gutenberg: int
    chars: int
    sha256: str
    cleaning: str

    @property
    def source(self) -> str:
        """The name that stands for it in place of a file: austen:emma."""
        return PREFIX + self.name


@functools.lru_cache(maxsize=1)
def bundled_works() -> dict[str, BundledWork]:
    """The bundled works by name, in file-name order (the order a folder of their files is read in)."""
    try:
        listing = json.loads((files("janelm") / FOLDER / "works.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise JaneLMError(f"JaneLM's list of bundled texts is missing or damaged ({first_line(e)}): "
                          f"reinstall janelm, or give text files") from None
    works = sorted((BundledWork(**work) for work in listing["works"]), key=lambda w: w.name)
    return {w.name: w for w in works}


def is_bundled(source: object) -> bool:
    """Whether a command-line text source names a bundled work (austen:NAME) rather than a file."""
    return isinstance(source, str) and source.startswith(PREFIX)


def find_work(source: str) -> BundledWork:
    """The bundled work `source` (austen:NAME) names; an unknown name is refused with the known ones."""
    works = bundled_works()
    work = works.get(source.removeprefix(PREFIX))
    if work is None:
        names = ", ".join(w.source for w in works.values())
        raise InputError(f"{source}: no such work bundled with JaneLM (there are {names}): give one of those or a "
                         f"text file (`janelm prepare --gutenberg NUMBER` downloads other books)")
    return work


def read_bundled(source: str) -> bytes:
    """The UTF-8 bytes of a bundled work, checked against works.json's sha256."""
    work = find_work(source)
    path = files("janelm") / FOLDER / f"{work.name}.txt.bz2"
    try:
        data = bz2.decompress(path.read_bytes())
    except (OSError, ValueError, EOFError) as e:
        raise JaneLMError(f"{source}: JaneLM's bundled copy is missing or damaged ({first_line(e)}): "
                          f"reinstall janelm, or give the text as a file") from None
    if hashlib.sha256(data).hexdigest() != work.sha256:
        raise JaneLMError(f"{source}: JaneLM's bundled copy is damaged (its sha256 differs from works.json's): "
                          f"reinstall janelm, or give the text as a file")
    return data
