"""Tests for janelm.corpus and janelm.cleaning: finding, reading, normalising, cleaning and splitting texts.

The novels are the Austen bundled with JaneLM; the raw Gutenberg files the cleaner is tested on
are made from them at test time (tests/gutenberg_like.py), so nothing beside the repository is read.
"""

from __future__ import annotations

import difflib
import io
import re
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gutenberg_like import ASCII, LICENCE, RAW_BOOKS, bundled_text, period_novel, raw_book
from janelm.bundled import bundled_works
from janelm.cleaning import clean_gutenberg
from janelm.corpus import iter_sources, normalise, read_text, split_work
from janelm.errors import InputError

@lru_cache(maxsize=None)
def cleaned(number: int, ascii: bool = False) -> str:
    """The cleaned raw file of a bundled work (RAW_BOOKS: eBook number -> work)."""
    return clean_gutenberg(raw_book(number), ascii=ascii)


def reference(number: int) -> str:
    """The work as bundled, in the raw file's typography: what cleaning should give back."""
    book = RAW_BOOKS[number]
    text = normalise(bundled_text(book.name))
    return text.translate(ASCII) if book.ascii else text


def words(text: str) -> list[str]:
    """Lower-case words with typography (quotes, dashes, punctuation) set aside."""
    text = text.translate(str.maketrans("‘’“”—–", "''\"\"--"))
    return re.findall(r"[a-z0-9]+", text.lower())


def nonblank_pairs(text: str) -> list[tuple[str, str]]:
    lines = text.split("\n")
    return [(a, b) for a, b in zip(lines, lines[1:]) if a.strip() and b.strip()]


# ------------------------------------------------------------------------------------------
# iter_sources
# ------------------------------------------------------------------------------------------


def test_iter_sources_expands_folders_recursively_and_sorted(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("z")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "c.TXT").write_text("c")
    (tmp_path / "notes.md").write_text("not text for us")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "copy.txt").write_text("hidden copy")
    got = iter_sources([str(tmp_path)])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["a.txt", "b/z.txt", "c.TXT"]


def test_iter_sources_files_stdin_and_duplicates(tmp_path: Path) -> None:
    one = tmp_path / "one.txt"
    one.write_text("x")
    got = iter_sources([str(one), "-", str(tmp_path), "-"])
    assert got == [one, "-"]  # the folder only adds one.txt again, which is listed once


def test_iter_sources_missing_path() -> None:
    with pytest.raises(InputError) as err:
        iter_sources(["no/such/place.txt"])
    assert str(err.value) == "no/such/place.txt: no such file or folder; check the path"
    assert err.value.exit_code == 2


def test_iter_sources_folder_without_txt(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("hello")
    with pytest.raises(InputError, match=re.escape(str(tmp_path))):
        iter_sources([str(tmp_path)])


def test_iter_sources_nothing_given() -> None:
    with pytest.raises(InputError):
        iter_sources([])


# ------------------------------------------------------------------------------------------
# read_text
# ------------------------------------------------------------------------------------------


def test_read_text_plain_and_bom(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_bytes("\ufeffHello “world”\n".encode())
    assert read_text(f) == "Hello “world”\n"


def test_read_text_rejects_binary(tmp_path: Path) -> None:
    f = tmp_path / "model.txt"
    f.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(InputError, match=r"model\.txt: .*binary"):
        read_text(f)
    g = tmp_path / "ctrl.txt"
    g.write_bytes(b"text" + bytes(range(1, 9)) * 20)
    with pytest.raises(InputError, match=r"ctrl\.txt: .*binary"):
        read_text(g)


def test_read_text_rejects_latin1_with_fix(tmp_path: Path) -> None:
    f = tmp_path / "latin.txt"
    f.write_bytes("Caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(InputError) as err:
        read_text(f)
    message = str(err.value)
    assert "latin.txt" in message and "UTF-8" in message and "iconv -f latin1 -t utf-8" in message
    assert "\n" not in message


def test_read_text_rejects_utf16(tmp_path: Path) -> None:
    f = tmp_path / "wide.txt"
    f.write_bytes("Hello\n".encode("utf-16"))
    with pytest.raises(InputError, match=r"wide\.txt: .*UTF-16.*iconv"):
        read_text(f)


@pytest.mark.parametrize("content", [b"", b"   \n\n\t  \r\n", b"\xef\xbb\xbf"])
def test_read_text_rejects_empty(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "empty.txt"
    f.write_bytes(content)
    with pytest.raises(InputError, match=r"empty\.txt: is empty"):
        read_text(f)


def test_read_text_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\ufeffFrom stdin\n".encode())))
    assert read_text("-") == "From stdin\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe\x00")))
    with pytest.raises(InputError, match="standard input"):
        read_text("-")


def test_read_text_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_text(tmp_path)  # a folder


# ------------------------------------------------------------------------------------------
# normalise
# ------------------------------------------------------------------------------------------


def test_normalise() -> None:
    raw = "\n\n  \r\nOne\u00a0two\tthree  \r\nCafe\u0301\r\r\r\n\n\nEnd\u2003.\u200b\n\n\n"
    got = normalise(raw)
    assert got == "One two three\nCafé\n\nEnd .\n"
    assert normalise("") == "" and normalise(" \n\t\n") == ""
    assert normalise("no newline") == "no newline\n"
    assert normalise("    indented verse\n") == "    indented verse\n"  # leading indent is kept


# ------------------------------------------------------------------------------------------
# clean_gutenberg: synthetic files (our own words, not the novels)
# ------------------------------------------------------------------------------------------

# Two paragraphs hard-wrapped at about 70 columns, then what the cleaner should make of them.
WRAPPED = """\
CHAPTER I

The rain had kept on since the morning, and the lane to the village was
a brown river by noon; nobody who could stay at home went out, and the
few who had to go went quickly, with their heads down and their minds
on the fire they would sit by when they came back.

Mary, who liked the rain, took the long way round by the mill.
"""
JOINED = (
    "CHAPTER I\n\n"
    "The rain had kept on since the morning, and the lane to the village was a brown river by noon; "
    "nobody who could stay at home went out, and the few who had to go went quickly, with their heads "
    "down and their minds on the fire they would sit by when they came back.\n\n"
    "Mary, who liked the rain, took the long way round by the mill.\n"
)

HEADER_NEW = """\
The Project Gutenberg eBook of A Wet Day, by A. Writer

This eBook is for the use of anyone anywhere in the United States and
most other parts of the world at no cost and with almost no restrictions
whatsoever.

Title: A Wet Day

Release date: May 1, 2001 [eBook #99999]

"""

VARIANTS = {
    "the-ebook": (
        HEADER_NEW + "*** START OF THE PROJECT GUTENBERG EBOOK A WET DAY ***\n\n\n\n"
        "Produced by Anne Volunteer, Ben Helper and the Online Distributed\n"
        "Proofreading Team at https://www.pgdp.net\n\n\n\n",
        "\n\n\n\n*** END OF THE PROJECT GUTENBERG EBOOK A WET DAY ***\n\n" + LICENCE,
    ),
    "this-ebook": (
        "The Project Gutenberg EBook of A Wet Day, by A. Writer\n\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK A WET DAY ***\n\n\n\n\nProduced by An Anonymous Volunteer\n\n\n\n",
        "\n\n\n\nEnd of the Project Gutenberg EBook of A Wet Day, by A. Writer\n\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK A WET DAY ***\n\n"
        "***** This file should be named 99999.txt or 99999.zip *****\n\n" + LICENCE,
    ),
    "no-space-markers": (
        "***START OF THE PROJECT GUTENBERG EBOOK A WET DAY***\n"
        "E-text prepared by Somebody Kind\n\n",
        "\n***END OF THE PROJECT GUTENBERG EBOOK A WET DAY***\n" + LICENCE,
    ),
    "small-print": (
        "**The Project Gutenberg Etext of A Wet Day, by A. Writer**\n"
        "**Welcome To The World of Free Plain Vanilla Electronic Texts**\n\n"
        "***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***\n"
        "Why is this \"Small Print!\" statement here?  You know: lawyers.\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n\n",
        "\n\nEnd of the Project Gutenberg Etext of A Wet Day\n",
    ),
    "end-of-project-gutenbergs": (
        "",
        "\n\n\nEnd of Project Gutenberg's A Wet Day, by A. Writer\n\n" + LICENCE,
    ),
    "crlf-and-bom": (
        "\ufeff*** START OF THE PROJECT GUTENBERG EBOOK A WET DAY ***\r\n\r\n",
        "\r\n*** END OF THE PROJECT GUTENBERG EBOOK A WET DAY ***\r\n" + LICENCE.replace("\n", "\r\n"),
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_clean_strips_every_header_and_footer_variant(variant: str) -> None:
    head, foot = VARIANTS[variant]
    body = WRAPPED.replace("\n", "\r\n") if "\r\n" in head else WRAPPED
    got = clean_gutenberg(head + body + foot)
    assert got == JOINED
    for leftover in ("Gutenberg", "SMALL PRINT", "Produced by", "prepared by", "license", "pgdp"):
        assert leftover.lower() not in got.lower()


def test_clean_without_markers_only_normalises_and_joins() -> None:
    assert clean_gutenberg(WRAPPED) == JOINED
    assert clean_gutenberg(JOINED) == JOINED
    plain = "A short note.\r\n\r\n\r\n\r\nWith\ttabs and an\u00a0NBSP.   \n"
    assert clean_gutenberg(plain) == normalise(plain) == "A short note.\n\nWith tabs and an NBSP.\n"


def test_clean_keeps_text_that_merely_mentions_things() -> None:
    # No markers: opening paragraphs that mention the web or credits are the user's text.
    text = "Produced by the village players in 1802.\n\nSee www.example.org for more.\n"
    assert clean_gutenberg(text) == text


def test_clean_keeps_verse_headings_and_indented_lines() -> None:
    text = (
        "It was the kind of evening on which everybody in the house wanted to\n"
        "read aloud, and Harriet, who had a book of poems, was asked for a few\n"
        "lines before the candles were brought in. She read:\n"
        "\n"
        "    Soft fell the snow upon the hill,\n"
        "      And softer on the mill;\n"
        "    The miller slept, the wheel was still.\n"
        "\n"
        "Nobody said a word for a moment, and then everybody spoke at once and\n"
        "the evening was saved.\n"
        "\n"
        "VOLUME II\n"
        "CHAPTER III\n"
        "The next morning brought a letter, which was read out at breakfast by\n"
        "the eldest sister with some ceremony:\n"
        "\n"
        "MY DEAR SISTER,\n"
        "We are well, and hope you are the same.\n"
    )
    got = clean_gutenberg(text)
    lines = got.split("\n")
    assert "    Soft fell the snow upon the hill," in lines
    assert "      And softer on the mill;" in lines
    assert "VOLUME II" in lines and "CHAPTER III" in lines and "MY DEAR SISTER," in lines
    assert any(line.startswith("It was the kind of evening") and line.endswith("She read:") for line in lines)
    assert any(line.startswith("The next morning") and line.endswith("ceremony:") for line in lines)
    assert "Nobody said a word for a moment, and then everybody spoke at once and the evening was saved." in lines


def test_clean_joins_letters_set_in_from_the_margin() -> None:
    text = (
        "The letter was short, and she read it twice over before she could\n"
        "believe what it said:\n"
        "\n"
        "     \"I write in haste, for the carriage is at the door and my\n"
        "     aunt will not wait for anybody; but you must know at once that\n"
        "     the house is let, and that we shall be with you on Tuesday.\n"
        "\n"
        "                              \"Yours ever,\n"
        "                                        \"E. W.\"\n"
    )
    got = clean_gutenberg(text)
    assert (
        '     "I write in haste, for the carriage is at the door and my aunt will not wait for anybody; '
        'but you must know at once that the house is let, and that we shall be with you on Tuesday.'
    ) in got.split("\n")
    assert '                              "Yours ever,\n                                        "E. W."\n' in got


def test_clean_paragraphs_marked_by_first_line_indent() -> None:
    text = (
        "    The first paragraph begins with an indent like a printed page and\n"
        "runs on over a second line and a third, which is rather shorter.\n"
        "    A second paragraph follows with no blank line between, as old\n"
        "typewritten files sometimes had them.\n"
    )
    assert clean_gutenberg(text) == (
        "The first paragraph begins with an indent like a printed page and runs on over a second "
        "line and a third, which is rather shorter.\n\n"
        "A second paragraph follows with no blank line between, as old typewritten files sometimes had them.\n"
    )


def test_clean_does_not_merge_one_paragraph_per_line_text() -> None:
    # Already-clean text with no blank lines between paragraphs: each long line ends a sentence
    # and must stay a paragraph of its own, whatever the neighbouring lines look like.
    paragraphs = [
        "She had always supposed that the walk to the church was a short one, but on that morning it "
        "seemed to go on for ever, and every cottage they passed had somebody at the window.",
        "“Are you tired?” said her brother.",
        "“Not in the least,” she answered, though she was, and though he knew it perfectly well.",
        "They went on in silence as far as the stile, where the path turned down towards the river and "
        "the bells could be heard quite plainly over the water meadows.",
    ] * 5
    text = "\n".join(paragraphs) + "\n"
    assert clean_gutenberg(text) == text


def test_clean_drops_italic_markers_and_illustrations() -> None:
    text = "[Illustration: A lady\nat a window]\n\nShe _would_ go, and _you_ could not stop her; snake_case stays.\n"
    assert clean_gutenberg(text) == "She would go, and you could not stop her; snake_case stays.\n"


def test_clean_removes_table_of_contents() -> None:
    chapters = "\n".join(f" CHAPTER {n}" for n in range(1, 6))
    body = "\n\n".join(f"CHAPTER {n}\n\nThe text of chapter {n} begins here and goes on." for n in range(1, 6))
    text = f"A Wet Day\n\nby A. Writer\n\n\nContents\n\n{chapters}\n\n\n\n{body}\n"
    got = clean_gutenberg(text)
    assert got.startswith("A Wet Day\n\nby A. Writer\n\nCHAPTER 1\n\nThe text of chapter 1 begins")
    assert "Contents" not in got and got.count("CHAPTER 1\n") == 1


def test_clean_keeps_a_contents_heading_that_is_not_a_table() -> None:
    # "Contents" heading followed by prose, and the first line never reappears: keep everything.
    text = (
        "Contents\n\nThe box held letters, a ribbon, two pressed flowers and a small key that\n"
        "nobody in the house could put a name to, however long they looked at it.\n"
    )
    got = clean_gutenberg(text)
    assert got.startswith("Contents\n\nThe box held letters") and "however long they looked at it." in got


def test_clean_ascii() -> None:
    text = "“Well,” said she—‘quite’ so… a 1–2 win.\n"
    assert clean_gutenberg(text, ascii=True) == "\"Well,\" said she--'quite' so... a 1-2 win.\n"
    assert clean_gutenberg(text) == text


# ------------------------------------------------------------------------------------------
# clean_gutenberg: novels of the period as distributed (hard-wrapped; CRLF, a byte-order mark)
# ------------------------------------------------------------------------------------------

PERIOD_FILES = {"bom-and-crlf": {"bom": True, "crlf": True}, "crlf": {"crlf": True}, "lf": {}}


@pytest.mark.parametrize("kind", sorted(PERIOD_FILES))  # each opens with blank lines and a centred title
def test_period_file_cleans_to_one_paragraph_per_line(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "novel.txt"
    path.write_bytes(period_novel(seed=len(kind), **PERIOD_FILES[kind]))
    raw = read_text(path)
    text = clean_gutenberg(raw)
    assert "\r" not in text and "\ufeff" not in text
    assert text.startswith("A NOVEL OF THE FOG\n\nBY A. WRITER")  # the centring was layout
    # The wrapped prose is joined: no line at the margin continues on the next, no block of
    # wrap-width lines survives, and nearly all the text stands in paragraph-long lines.
    assert [(a, b) for a, b in nonblank_pairs(text) if b[:1].islower()] == []
    lines = text.split("\n")
    assert not any(all(55 <= len(x.strip()) <= 80 for x in run) for run in zip(lines, lines[1:], lines[2:]))
    assert sum(len(line) for line in lines if len(line) > 100) > 0.9 * len(text)
    assert words(text) == words(raw)  # and not a word lost or gained


# ------------------------------------------------------------------------------------------
# clean_gutenberg: raw Gutenberg files of the bundled novels (tests/gutenberg_like.py)
# ------------------------------------------------------------------------------------------

LICENCE_WORDS = re.compile(r"gutenberg|\blicense\b|trademark|pglaf|\bdonations?\b|https?:|www\.|\be-?book|\be-?text\b", re.I)


def test_the_raw_files_carry_what_the_cleaner_removes() -> None:
    """Each made-up raw file has the matter its real one has, so the tests below are not vacuous."""
    raws = {number: raw_book(number) for number in RAW_BOOKS}
    assert all(LICENCE_WORDS.search(raw) and "*** END OF THIS PROJECT GUTENBERG EBOOK" in raw for raw in raws.values())
    assert raws[1342].count("_") > 500 and raws[158].count("_") > 500  # _italics_
    assert not set(raws[161]) & set("‘’“”—")  # the ASCII edition
    assert "\nContents\n" in raws[121] and "[Transcriber's Note:" in raws[121] and "A NOTE ON THE TEXT" in raws[121]
    for raw in raws.values():  # hard-wrapped: the prose lines end near column 70
        lengths = [len(line) for line in raw.split("\n") if len(line) > 40]
        assert sum(60 <= n <= 70 for n in lengths) > 0.8 * len(lengths)


@pytest.mark.parametrize("number", sorted(RAW_BOOKS))
def test_raw_file_has_no_gutenberg_matter(number: int) -> None:
    text = cleaned(number)
    assert [m.group() for m in LICENCE_WORDS.finditer(text)] == []
    assert "_" not in text  # italics markers dropped
    assert "\r" not in text and "\t" not in text and text.endswith("\n") and not text.endswith("\n\n")


@pytest.mark.parametrize("number", sorted(RAW_BOOKS))
def test_raw_file_starts_at_the_works_first_words(number: int) -> None:
    # These files come without the Gutenberg header, so the work's first words are the file's
    # first non-blank line (a title page for every one of them).
    first_line = next(line for line in raw_book(number).splitlines() if line.strip())
    assert cleaned(number).startswith(first_line.strip())


def test_raw_file_openings() -> None:
    assert cleaned(1342).startswith("PRIDE.\n\nand\n\nPREJUDICE\n\nby\n\nJane Austen,\n\nWalt Whitman has somewhere")
    assert "\nIT is a truth universally acknowledged, that a single man in possession" in cleaned(1342)
    assert cleaned(158).startswith("Emma\n\nby Jane Austen\n\nVOLUME I\nCHAPTER I\n\nEmma Woodhouse, handsome, clever,")
    assert cleaned(161).startswith("SENSE & SENSIBILITY\n\n    BY\n    JANE AUSTEN\n\nINTRODUCTION\n\nWith the title")
    assert "\nThe family of Dashwood had long been settled in Sussex." in cleaned(161)
    northanger = cleaned(121)
    # The transcriber's note and the table of contents are gone: each chapter heading appears once,
    # and the first chapter follows the title.
    assert northanger.startswith("Northanger Abbey\n\nby Jane Austen\n\nCHAPTER 1\n\nNo one who had ever seen Catherine")
    assert "Contents" not in northanger.split("\n") and "Transcriber" not in northanger
    assert re.findall(r"^CHAPTER \d+$", northanger, re.M) == [f"CHAPTER {n}" for n in range(1, 32)]
    # The editor's note on the text after the novel is gone too.
    assert "NOTE ON THE TEXT" not in northanger and "misprints" not in northanger


@pytest.mark.parametrize("number", sorted(RAW_BOOKS))
def test_raw_file_keeps_the_last_paragraph(number: int) -> None:
    ours = cleaned(number).split("\n")
    our_last = [line for line in ours if len(line) > 100][-1]
    ref_last = [line for line in reference(number).split("\n") if len(line) > 100][-1]
    assert words(our_last)[-12:] == words(ref_last)[-12:]
    assert difflib.SequenceMatcher(None, words(our_last), words(ref_last)).ratio() > 0.9
    # After it at most a closing line such as "FINIS" or "THE END".
    tail = [line for line in ours[ours.index(our_last) + 1 :] if line.strip()]
    assert len(tail) <= 1 and all(len(line) <= 12 and line.isupper() for line in tail)


@pytest.mark.parametrize("number", sorted(RAW_BOOKS))
def test_raw_file_has_one_paragraph_per_line(number: int) -> None:
    text = cleaned(number)
    # No line continues on the next one: a continuation would start in lower case.
    broken = [(a, b) for a, b in nonblank_pairs(text) if b.lstrip()[:1].islower()]
    assert broken == []
    # No block of wrapped-looking lines survives.
    lines = text.split("\n")
    for a, b, c in zip(lines, lines[1:], lines[2:]):
        assert not all(55 <= len(x.strip()) <= 80 for x in (a, b, c)), (a, b, c)
    # Line for line the work as bundled (set-in verse and lists aside, and the blank lines a
    # hard-wrapped file puts around every paragraph): nothing joined that should not be, nothing lost.
    ours = [line.strip() for line in lines if line.strip()]
    bundled = [line.strip() for line in reference(number).split("\n") if line.strip()]
    assert len(ours) == len(bundled) and ours == bundled


@pytest.mark.parametrize("number", sorted(RAW_BOOKS))
def test_raw_file_with_a_current_header(number: int) -> None:
    # Today's downloads also carry the header and START marker these files lack.
    head, _ = VARIANTS["the-ebook"]
    assert clean_gutenberg(head + raw_book(number)) == cleaned(number)


def test_raw_file_keeps_verse_and_joins_letters() -> None:
    emma = cleaned(158).split("\n")
    verse = [line.strip() for line in emma if line.startswith("    ") and len(line) < 60]
    assert "My first doth affliction denote," in verse and "Kindled a flame I yet deplore," in verse
    sense = cleaned(161).split("\n")
    letter = [line for line in sense if line.startswith('     "I have just had the honour of receiving your letter,')]
    assert len(letter) == 1 and len(letter[0]) > 800
    northanger = cleaned(121).split("\n")
    letter = [line for line in northanger if line.startswith("    “Though, God knows, with little inclination")]
    assert len(letter) == 1 and len(letter[0]) > 1000


@pytest.mark.parametrize("number", sorted(RAW_BOOKS))
def test_raw_file_cleaning_is_idempotent(number: int) -> None:
    once = cleaned(number)
    assert clean_gutenberg(once) == once


def test_raw_file_ascii() -> None:
    text = cleaned(1342, ascii=True)
    assert not set(text) & set("‘’“”—–…")
    assert "\nIT is a truth universally acknowledged" in text
    assert len(text.split("\n")) == len(cleaned(1342).split("\n"))


@pytest.mark.parametrize("name", sorted(bundled_works()))
def test_already_clean_files_are_not_damaged(name: str) -> None:
    # One paragraph per line already: cleaning must only normalise, not join anything...
    text = bundled_text(name)
    assert clean_gutenberg(text) == normalise(text)
    # ...even with the blank lines between paragraphs taken out.
    dense = "\n".join(line for line in text.split("\n") if line.strip()) + "\n"
    assert clean_gutenberg(dense) == normalise(dense)


# ------------------------------------------------------------------------------------------
# split_work
# ------------------------------------------------------------------------------------------


def test_split_at_paragraph_boundary() -> None:
    paragraphs = [f"Paragraph {n} " + "word " * 20 + "end." for n in range(10)]
    text = "\n\n".join(paragraphs) + "\n"
    train, val = split_work(text, 0.2)
    assert train.endswith("\n") and not train.endswith("\n\n") and val.endswith("\n")
    assert val.startswith("Paragraph 8 ")
    assert train.rstrip("\n") + "\n\n" + val == text
    assert abs(len(val) / len(text) - 0.2) < 0.1


def test_split_one_paragraph_per_line() -> None:
    text = "".join(f"Line {n} has some words in it.\n" for n in range(100))
    train, val = split_work(text, 0.1)
    assert train + val == text
    assert val.startswith("Line 90 ") and train.endswith("Line 89 has some words in it.\n")


def test_split_zero_and_bad_fractions() -> None:
    assert split_work("Some text.\n", 0) == ("Some text.\n", "")
    assert split_work("No newline", 0) == ("No newline\n", "")
    for bad in (-0.1, 1, 1.5):
        with pytest.raises(InputError):
            split_work("text\n", bad)


def test_split_single_line_falls_back_to_a_space() -> None:
    train, val = split_work("one two three four five six seven eight nine ten\n", 0.3)
    assert train.endswith("\n") and val.endswith("\n") and val.strip()
    assert (train.strip() + " " + val).split() == "one two three four five six seven eight nine ten".split()


def test_split_real_work() -> None:
    text = cleaned(1342)
    train, val = split_work(text, 0.1)
    assert abs(len(val) / len(text) - 0.1) < 0.01
    assert val.endswith("the means of uniting them.\n") and train.endswith("\n")
    assert train.rstrip("\n") + "\n\n" + val == text


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

# Text made of pieces that exercise the cleaner's paths, mixed with arbitrary text.
PIECES = st.sampled_from(
    [
        "*** START OF THE PROJECT GUTENBERG EBOOK X ***",
        "*** END OF THIS PROJECT GUTENBERG EBOOK X ***",
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*",
        "End of Project Gutenberg's X",
        "Produced by Someone",
        "Contents",
        " CHAPTER 1",
        "CHAPTER 1",
        "A NOTE ON THE TEXT",
        "[Illustration: x",
        "]",
        "",
        "    indented verse line,",
        "a hard-wrapped line of prose that runs on to about seventy columns or",
        "so before it breaks, like the lines of a Gutenberg file do when read.",
        "_italic_ and “quotes”—dashes… and\u00a0spaces\tand\r\nnewlines",
    ]
)
TEXTS = st.one_of(
    st.text(),
    st.lists(st.one_of(PIECES, st.text(max_size=80)), max_size=40).map("\n".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXTS, st.booleans())
def test_property_clean_and_normalise_never_crash(text: str, ascii: bool) -> None:
    for out in (normalise(text), clean_gutenberg(text, ascii=ascii)):
        assert out == "" or (out.endswith("\n") and not out.endswith("\n\n") and not out.startswith("\n"))
        assert "\r" not in out and "\t" not in out
        assert all(line == line.rstrip(" ") for line in out.split("\n"))
    assert normalise(normalise(text)) == normalise(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="ab \n", max_size=30), min_size=1, max_size=20).map("\n".join),
       st.floats(min_value=0, max_value=0.9))
def test_property_split_loses_nothing(text: str, fraction: float) -> None:
    text = normalise(text)
    if not text:
        return
    train, val = split_work(text, fraction)
    assert train.endswith("\n") and (val == "" or val.endswith("\n"))
    assert (train + val).split() == text.split()
