"""Texts shaped like the files Project Gutenberg distributes, made at test time.

The tests of cleaning and downloading need raw files: hard-wrapped at about 70 columns, with
`_italics_`, verse and letters set in from the margin, a table of contents, notes on the text, the
END marker and the licence. They are made here from the Austen bundled with JaneLM (so the suite
needs nothing beside the repository), with the features the real files of the same works carry
(`RAW_BOOKS`). Novels of the period, for the extra-text tests, are made from words of our own, not
from the main sources: hard-wrapped, some with CRLF line ends and a byte-order mark, opening with
blank lines and centred titles.
"""

from __future__ import annotations

import random
import re
import textwrap
from dataclasses import dataclass
from functools import lru_cache

from janelm.bundled import PREFIX, read_bundled

WIDTH = 70  # the column Gutenberg's plain-text files are wrapped at

# The licence after the END marker: our own words, with the terms a cleaner must not leave behind.
LICENCE = """\
Updated editions will replace the previous one--the old editions will
be renamed.

Section 1.  General Terms of Use and Redistributing Project Gutenberg-tm
electronic works

1.A.  By reading or using any part of this Project Gutenberg-tm
electronic work, you indicate that you have read, understand, agree to
and accept all the terms of this license and intellectual property
(trademark/copyright) agreement.

Section 4.  Information about Donations to the Project Gutenberg
Literary Archive Foundation

To donate, please visit: http://pglaf.org/donate, or see the main page
at www.gutenberg.org for how to help produce our new eBooks.
"""

NOTE_ON_THE_TEXT = (
    "This edition follows the first printing, with obvious misprints put right and the spelling "
    "otherwise left as the printer set it, inconsistencies and all. Words printed in italics are "
    "marked with underscores. Page numbers of the printed book have been left out of this file."
)
TRANSCRIBERS_NOTE = (
    "[Transcriber's Note: the table of contents below was added for this\n"
    "electronic edition; it lists the chapters in the order printed.]"
)


@dataclass(frozen=True)
class RawBook:
    """How a raw file of a bundled work is made: the features its real Gutenberg file carries."""

    name: str  # the bundled work (austen:NAME)
    title: str
    ascii: bool = False  # straight quotes and -- for dashes, as the oldest files have
    italics: bool = False  # _underscores_ around some words
    contents: bool = False  # a table of contents after the title, and a note on the text after the work
    letters: tuple[str, ...] = ()  # paragraphs starting so are set in from the margin, as letters are


# The four raw files the cleaner is tested on, under their eBook numbers.
RAW_BOOKS = {
    1342: RawBook("pride-and-prejudice", "Pride and Prejudice", italics=True),
    158: RawBook("emma", "Emma", italics=True),
    161: RawBook("sense-and-sensibility", "Sense and Sensibility", ascii=True,
                 letters=('"I have just had the honour of receiving your letter',)),
    121: RawBook("northanger-abbey", "Northanger Abbey", contents=True),
}


@lru_cache(maxsize=None)
def bundled_text(name: str) -> str:
    """A bundled work's text, as JaneLM ships it."""
    return read_bundled(PREFIX + name).decode("utf-8")


def wrap(paragraph: str, indent: str = "") -> list[str]:
    """One paragraph hard-wrapped as Gutenberg does: at spaces only, never inside a word."""
    return textwrap.wrap(paragraph.strip(), WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False, expand_tabs=False, replace_whitespace=False)


def italicise(line: str, every: int = 97) -> str:
    """Underscores around every `every`-th word of three letters or more (`_them_`)."""
    count = 0

    def mark(m: re.Match) -> str:
        nonlocal count
        count += 1
        return f"_{m.group()}_" if count % every == 0 else m.group()

    return re.sub(r"(?<![\w’'-])[A-Za-z]{3,}(?![\w’'-])", mark, line)


ASCII = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "—": "--"})


def hard_wrap(text: str, book: RawBook) -> str:
    """Clean text (one paragraph per line) set as a Gutenberg file: every paragraph longer than a line
    wrapped and set off by blank lines; headings and short lines (verse, signatures) kept as set."""
    out: list[str] = []
    for block in text.strip("\n").split("\n\n"):
        group: list[str] = []  # consecutive short lines stay together, as printed
        for line in block.split("\n"):
            if book.ascii:
                line = line.translate(ASCII)
            if book.italics and len(line) > WIDTH:
                line = italicise(line)
            if len(line) <= WIDTH:
                group.append(line)
                continue
            out += set_in(group)
            group = []
            indent = re.match(r" *", line).group()
            if not indent and book.letters and line.startswith(book.letters):
                indent = "     "
            out += [*wrap(line, indent), ""]
        out += set_in(group)
        out.append("")  # two blank lines between the clean text's blocks, as between chapters
    return "\n".join(out).rstrip("\n") + "\n"


def set_in(group: list[str]) -> list[str]:
    """Lines printed one under another (verse, a list), set in from the margin as Gutenberg sets
    them: in a file wrapped at 70 columns, a long line at the margin would read as wrapped prose."""
    if not group:
        return []
    if any(line[:1].islower() for line in group[1:]):  # a title page, or a caption broken mid-sentence
        return [part for line in group for part in (line, "")]
    if len(group) > 1 and (any(line.startswith(" ") for line in group)
                           or any(len(line) >= 0.75 * WIDTH for line in group[:-1])):
        group = ["    " + line for line in group]
    return [*group, ""]


def contents(text: str) -> str:
    """A table of contents: every chapter heading of the text, then the note after it."""
    headings = [line for line in text.split("\n") if re.match(r"CHAPTER [0-9IVXLC]+$", line)]
    return "Contents\n\n\n" + "\n".join(f" {h}" for h in headings) + "\n\n A NOTE ON THE TEXT\n"


@lru_cache(maxsize=None)
def raw_book(number: int) -> str:
    """The raw file of RAW_BOOKS[number] as Gutenberg distributed it: opening at the work (as older
    files do, without today's header and START marker), the END marker and licence after it."""
    book = RAW_BOOKS[number]
    clean = bundled_text(book.name)
    body = hard_wrap(clean, book)
    if book.contents:  # between the title page and the first chapter
        first = re.search(r"^CHAPTER ", body, re.M).start()
        body = f"{body[:first]}\n\n{TRANSCRIBERS_NOTE}\n\n\n{contents(clean)}\n\n\n\n{body[first:]}"
        body += "\n\n\n\nA NOTE ON THE TEXT\n\n\n" + "\n".join(wrap(NOTE_ON_THE_TEXT)) + "\n"
    upper = book.title.upper()
    end = (f"\n\n\n\nEnd of the Project Gutenberg EBook of {book.title}, by Jane Austen\n\n"
           f"*** END OF THIS PROJECT GUTENBERG EBOOK {upper} ***\n\n"
           f"***** This file should be named {number}-0.txt or {number}-0.zip *****\n\n{LICENCE}")
    return "\n" + body + end


# --- novels of the period: our own words ---------------------------------------------------------

PERIOD_WORDS = ("fog river coach lamp clerk office street bridge market chimney ledger candle parcel "
                "window ferry lane harbour yard mill wharf cart shilling engine signal orchard kettle "
                "grumbled hurried muttered wandered shivered counted waited knocked whistled lingered "
                "old wet narrow grey crooked dim busy patient weary cheerful stubborn "
                "over under along beneath across beside toward through "
                "Tibbs Crackle Mrs. Gamp Wemmick Hobb Dorrit Tulliver Pumble Gradgrind").split()


def period_paragraph(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(3, 7)):
        words = [rng.choice(PERIOD_WORDS) for _ in range(rng.randint(6, 16))]
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ";", "!", "?"])
        if rng.random() < 0.25:
            sentence = f"“{sentence}” said {rng.choice(['Tibbs', 'Mrs. Gamp', 'the clerk'])}."
        sentences.append(sentence)
    return " ".join(sentences)


def period_novel(seed: int, chapters: int = 6, paragraphs: int = 25, *, crlf: bool = False,
                 bom: bool = False) -> bytes:
    """A hard-wrapped novel of the period as distributed (header and licence already stripped):
    blank lines and a centred title first, CHAPTER headings, paragraphs of wrapped prose."""
    rng = random.Random(seed)
    lines = ["", "", "", "A NOVEL OF THE FOG".center(WIDTH).rstrip(), "", f"BY A. WRITER, NUMBER {seed}".center(WIDTH).rstrip(),
             "", "", ""]
    for n in range(1, chapters + 1):
        lines += [f"CHAPTER {n}", "", ""]
        for _ in range(paragraphs):
            lines += [*wrap(period_paragraph(rng)), ""]
        lines += ["", ""]
    text = "\n".join(lines)
    if crlf:
        text = text.replace("\n", "\r\n")
    return ("\ufeff" if bom else "").encode() + text.encode("utf-8")
