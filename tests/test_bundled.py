"""The Austen bundled with JaneLM (janelm/austen/, janelm.bundled): what ships, `janelm prepare` with
no text, and austen:NAME wherever a text file goes."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

import pytest

from conftest import REPO, janelm
from janelm.bundled import PREFIX, bundled_works, read_bundled
from janelm.errors import JaneLMError

QUICK = ["--vocab-size", "300", "--tokenizer-sample", "200000"]  # a small BPE: seconds, not minutes
# The development machines keep the texts the bundle was made from here; a clone alone does not.
SHARED_AUSTEN = REPO.parent / "shared" / "corpus" / "austen"
TITLES = {"emma": (158, "Emma"), "lady-susan": (946, "Lady Susan"), "love-and-freindship": (1212, "Love and Freindship"),
          "mansfield-park": (141, "Mansfield Park"), "northanger-abbey": (121, "Northanger Abbey"),
          "pride-and-prejudice": (1342, "Pride and Prejudice"), "sense-and-sensibility": (161, "Sense and Sensibility")}


def test_the_seven_works_ship_compressed_with_their_description() -> None:
    works = bundled_works()
    assert {name: (w.gutenberg, w.title) for name, w in works.items()} == TITLES
    folder = files("janelm") / "austen"
    packed = sorted(p.name for p in folder.iterdir() if p.name.endswith(".bz2"))
    assert packed == [f"{name}.txt.bz2" for name in sorted(TITLES)]  # nothing shipped that works.json does not describe
    assert sum(len((folder / name).read_bytes()) for name in packed) < 1.2e6  # the wheel stays small
    for work in works.values():
        data = read_bundled(work.source)
        text = data.decode("utf-8")
        assert hashlib.sha256(data).hexdigest() == work.sha256 and len(text) == work.chars
        assert 100_000 < work.chars < 1_000_000 and work.cleaning
        # Cleaned as works.json says: no Gutenberg matter, one paragraph per line.
        assert not re.search(r"gutenberg|\*\*\* ?(START|END)", text, re.I)
        assert sum(len(line) for line in text.split("\n") if len(line) > 100) > 0.8 * len(text)
    # Typography as the editions print it: the one ASCII-quoted work is said to be.
    assert "straight quotes" in works["sense-and-sensibility"].cleaning and "“" not in read_bundled(
        "austen:sense-and-sensibility").decode()


def test_the_bundle_is_what_the_gutenberg_module_calls_austen() -> None:
    from janelm.gutenberg import AUSTEN

    assert all(AUSTEN[w.gutenberg] == w.title for w in bundled_works().values())
    assert sorted(set(AUSTEN) - {w.gutenberg for w in bundled_works().values()}) == [105]  # Persuasion: download it


def test_a_damaged_copy_is_refused_in_words(monkeypatch) -> None:
    from janelm import bundled

    damaged = replace(bundled_works()["emma"], sha256="0" * 64)
    monkeypatch.setattr(bundled, "bundled_works", lambda: {"emma": damaged})
    with pytest.raises(JaneLMError, match=r"austen:emma: JaneLM's bundled copy is damaged .*reinstall janelm"):
        read_bundled("austen:emma")


def bundled_folder(tmp_path: Path) -> Path:
    """The seven works as files: ../shared/corpus/austen where it is (the texts the bundle was made
    from), else written out from the bundle."""
    if SHARED_AUSTEN.is_dir():
        return SHARED_AUSTEN
    folder = tmp_path / "austen"
    folder.mkdir()
    for work in bundled_works().values():
        (folder / f"{work.name}.txt").write_bytes(read_bundled(work.source))
    return folder


def test_prepare_with_no_text_prepares_the_bundled_austen(tmp_path: Path) -> None:
    proc = janelm("prepare", *QUICK, cwd=tmp_path)
    first = proc.stderr.splitlines()[0]
    meta = json.loads((tmp_path / "corpus" / "meta.json").read_text())
    chars = sum(s["chars"] for s in meta["sources"])
    assert first.startswith("no text given: preparing the 7 works of Jane Austen bundled with JaneLM")
    assert f"{chars:,} characters" in first and "janelm prepare FILE" in first and "--gutenberg" in first
    assert proc.stdout == ""
    # Seven works, each with its title, eBook number and its own validation split (its last tenth).
    assert [(s["source"], s["gutenberg"], s["title"]) for s in meta["sources"]] == [
        (PREFIX + name, *TITLES[name]) for name in sorted(TITLES)]
    for source in meta["sources"]:
        assert abs(source["val_chars"] / source["chars"] - 0.1) < 0.01 and source["val_tokens"] > 1_000
    assert meta["tokens"]["val"] == sum(s["val_tokens"] for s in meta["sources"])

    # The same tokens, byte for byte, as preparing the texts from files.
    folder = bundled_folder(tmp_path)
    janelm("prepare", str(folder), "--out", str(tmp_path / "from-files"), *QUICK)
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "corpus" / name).read_bytes() == (tmp_path / "from-files" / name).read_bytes(), name
    from_files = json.loads((tmp_path / "from-files" / "meta.json").read_text())
    assert [s["sha256"] for s in from_files["sources"]] == [s["sha256"] for s in meta["sources"]]


def test_bundled_works_by_name_in_prepare_and_eval(tmp_path: Path, trained: Path) -> None:
    """The quality figures' corpus: six works to train on, Northanger Abbey held out and scored."""
    six = [PREFIX + name for name in sorted(TITLES) if name != "northanger-abbey"]
    janelm("prepare", *six, "--out", str(tmp_path / "six"), *QUICK)
    meta = json.loads((tmp_path / "six" / "meta.json").read_text())
    assert [s["source"] for s in meta["sources"]] == six
    # Named twice, a work is read once.
    janelm("prepare", "austen:lady-susan", "austen:lady-susan", "--out", str(tmp_path / "one"), *QUICK)
    assert len(json.loads((tmp_path / "one" / "meta.json").read_text())["sources"]) == 1

    held_out = json.loads(janelm("eval", "-c", str(trained), "austen:lady-susan", "--json").stdout)
    text = read_bundled("austen:lady-susan").decode()
    assert held_out["chars"] > 0.99 * len(text) and 0 < held_out["bits_per_char"] < 10


def test_extra_text_alone_goes_with_the_bundled_austen(tmp_path: Path) -> None:
    """`janelm prepare --extra FILE`: the bundled works are the main text, the file training text only."""
    from conftest import make_text

    extra = tmp_path / "extra.txt"
    extra.write_text(make_text(400, seed=9))
    proc = janelm("prepare", "--extra", str(extra), "--out", str(tmp_path / "corpus"), *QUICK)
    assert proc.stderr.startswith("no text given: preparing the 7 works of Jane Austen bundled with JaneLM")
    meta = json.loads((tmp_path / "corpus" / "meta.json").read_text())
    assert [(s["source"], s["group"]) for s in meta["sources"]] == [
        *((PREFIX + name, "main") for name in sorted(TITLES)), (str(extra), "extra")]
