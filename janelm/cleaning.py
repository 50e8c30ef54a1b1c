"""Project Gutenberg plain text → the work alone, one paragraph per line (`clean_gutenberg`).

Strips the Gutenberg header, footer and licence (every variant seen in the wild), producer
credits, contents tables and notes on the text, and joins hard-wrapped lines into paragraphs while
leaving verse, headings and already-clean text alone. Deterministic, on plain `str`, like the
reading and normalising in `janelm.corpus` that it builds on.
"""

from __future__ import annotations

import re

from janelm.corpus import NEWLINES_RE, normalise

__all__ = ["clean_gutenberg"]

# "*** START OF THE PROJECT GUTENBERG EBOOK PRIDE AND PREJUDICE ***", "***START OF THIS
# PROJECT GUTENBERG EBOOK", "*** START OF THE PROJECT GUTENBERG E-TEXT"...
_START_RE = re.compile(
    r"^\W{0,10}\*{2,}\s*START\s+OF\s+(?:THE\s+|THIS\s+)?PROJECT\s+GUTENBERG\s+E-?(?:BOOK|TEXT)", re.I
)
_END_RE = re.compile(
    r"^\W{0,10}\*{2,}\s*END\s+OF\s+(?:THE\s+|THIS\s+)?PROJECT\s+GUTENBERG\s+E-?(?:BOOK|TEXT)", re.I
)
# Old files (1990s) open with a licence ending "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ...".
_SMALL_PRINT_END_RE = re.compile(r"^\s*\*+\s*END\s*\*?\s*THE\s+SMALL\s+PRINT", re.I)
# Lines that start the footer even without the *** marker: "End of the Project Gutenberg
# EBook of Emma, by Jane Austen", "End of Project Gutenberg's Emma", "*** START: FULL LICENSE".
_FOOTER_RE = re.compile(
    r"^\W{0,10}(?:End\s+of\s+(?:the\s+|this\s+)?Project\s+Gutenberg|\*+\s*START:\s*FULL\s+LICEN[CS]E)",
    re.I,
)
# Credits at the top of the text proper; not part of the work.
_CREDIT_RE = re.compile(
    r"^\s*(?:Produced\s+by|E-?text\s+prepared\s+by|This\s+e-?(?:book|text)\s+was\s+(?:produced|prepared)"
    r"|Transcribed\s+(?:from|by)|Prepared\s+by|Scanned\s+(?:by|and)|Digiti[sz]ed\s+by"
    r"|Updated\s+editions\s+will|\[?Transcriber[’']?s?\s+Notes?)",
    re.I,
)
_ILLUSTRATION_RE = re.compile(r"^\s*\[(?:Illustration|Transcriber[’']?s?\s+Note)", re.I)
_CONTENTS_RE = re.compile(r"^\s*(?:table\s+of\s+)?contents?\.?:?\s*$", re.I)
# An editor's or transcriber's note on the text placed after the work.
_TRAILING_NOTE_RE = re.compile(
    r"^\s*(?:A\s+)?(?:NOTE\s+ON\s+THE\s+TEXT|TRANSCRIBER[’']?S?\s+NOTES?|TEXTUAL\s+NOTES?)\.?:?\s*$", re.I
)
# Case matters: "Letter to-day. I met..." is prose, "LETTER the FIRST" is a heading.
_CHAPTER_RE = re.compile(
    r"^(?:CHAPTER|Chapter|VOLUME|Volume|BOOK|Book|PART|Part|LETTER|Letter|STAVE|Stave|CANTO|Canto)\s+"
    r"(?:[IVXLCDM]+|\d+(?:st|nd|rd|th)?|[A-Z][A-Za-z]+|the\s+[A-Za-z]+)\.?(?:\s*[:.\-—–]\s*.{0,60})?$"
)
_ROMAN_RE = re.compile(r"^[IVXLCDM]+\.?$")


def _strip_header_footer(lines: list[str]) -> tuple[list[str], bool]:
    """Keep only the lines between the Gutenberg header and footer (all when there are none).

    Also says whether any Gutenberg marker was found.
    """
    start = 0
    for i, line in enumerate(lines):
        if _START_RE.match(line):
            start = i + 1
            break
    # The old small-print licence sits in the header; the text starts after its end line. Only
    # look before any END marker, so a small print block in a footer cannot swallow the book.
    for i in range(start, len(lines)):
        if _END_RE.match(lines[i]) or _FOOTER_RE.match(lines[i]):
            break
        if _SMALL_PRINT_END_RE.match(lines[i]):
            start = i + 1
    end = len(lines)
    for i in range(start, len(lines)):
        if _END_RE.match(lines[i]) or _FOOTER_RE.match(lines[i]):
            end = i
            break
    return lines[start:end], (start > 0 or end < len(lines))


def _blocks(lines: list[str]) -> list[tuple[int, int]]:
    """(start, stop) index ranges of the runs of non-blank lines."""
    spans = []
    i = 0
    while i < len(lines):
        if lines[i].strip():
            j = i
            while j < len(lines) and lines[j].strip():
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    return spans


def _drop_front_matter(lines: list[str]) -> list[str]:
    """Remove producer/transcriber credits and Gutenberg notes from the first few blocks."""
    drop: set[int] = set()
    for start, stop in _blocks(lines)[:6]:
        block = "\n".join(lines[start:stop])
        if _CREDIT_RE.match(lines[start]) or re.search(r"gutenberg|https?://|www\.", block, re.I):
            drop.update(range(start, stop))
    return [line for i, line in enumerate(lines) if i not in drop]


def _drop_bracketed_notes(lines: list[str]) -> list[str]:
    """Remove "[Illustration: ...]" and "[Transcriber's Note: ...]" blocks, however long."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if _ILLUSTRATION_RE.match(lines[i]):
            # Skip to the line closing the bracket; give up (keep the text) if it never closes
            # within a paragraph or two, since then it was not such a note.
            j = i
            while j < len(lines) and j - i < 40 and "]" not in lines[j]:
                j += 1
            if j < len(lines) and "]" in lines[j]:
                i = j + 1
                continue
        out.append(lines[i])
        i += 1
    return out


def _contents_key(line: str) -> str:
    """Compare a contents entry with a heading: case, spacing, dots and page numbers aside."""
    key = line.strip().lower()
    # A page number set off by a tab, spaces or a dot leader; "chapter 12" keeps its number.
    key = re.sub(r"(?:\t|\s{2,}|\s*[.·…]{2,}\s*)\d+\s*$", "", key).rstrip(" .")
    return re.sub(r"\s+", " ", key)


def _drop_contents(lines: list[str]) -> list[str]:
    """Remove a table of contents near the start of the work.

    Recognised only when a "Contents" heading is followed by short entry lines and the first
    entry then reappears as a heading further on; everything else is left alone, because
    removing real text is worse than keeping a list of chapter titles.
    """
    limit = max(200, len(lines) // 5)
    for c in range(min(limit, len(lines))):
        if not _CONTENTS_RE.match(lines[c]):
            continue
        entries = [i for i in range(c + 1, min(c + 400, len(lines))) if lines[i].strip()]
        if not entries:
            return lines
        first_key = _contents_key(lines[entries[0]])
        if not first_key:
            return lines
        for n, i in enumerate(entries[1:], start=1):
            line = lines[i]
            if _contents_key(line) == first_key:
                toc = [lines[k] for k in entries[:n]]
                if len(toc) >= 2 and all(len(t.strip()) <= 80 for t in toc):
                    return lines[:c] + lines[i:]
                return lines
            # Prose before the heading reappears: this was no table of contents after all.
            prev = lines[i - 1]
            if len(prev.strip()) >= 55 and line[:1].islower():
                return lines
        return lines
    return lines


def _drop_trailing_note(lines: list[str]) -> list[str]:
    """Cut an editor's "A NOTE ON THE TEXT" / transcriber's notes section after the work."""
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    if not nonblank:
        return lines
    tail_from = nonblank[int(len(nonblank) * 0.85)]
    for i in range(tail_from, len(lines)):
        if _TRAILING_NOTE_RE.match(lines[i]) and (i == 0 or not lines[i - 1].strip()):
            return lines[:i]
    return lines


def _is_heading(line: str) -> bool:
    """A line set on its own: "CHAPTER I", "Chapter 1.", "VOLUME II", "XIV", "THE END"."""
    s = line.strip()
    if not s:
        return False
    if _CHAPTER_RE.match(s) or _ROMAN_RE.match(s):
        return True
    letters = [ch for ch in s if ch.isalpha()]
    return len(letters) >= 2 and all(ch.isupper() for ch in letters)


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" "))]


# A Gutenberg file is hard-wrapped when the lines inside its paragraphs cluster just below a
# common width (70-75 columns). Already-clean text (one paragraph per line) has only headings,
# verse and lists inside blocks, whose lengths are spread out and short.
_MIN_WRAP_WIDTH = 55
_MIN_NEAR_SHARE = 0.6
_WIDTH_SLACK = 6  # lines may poke a few columns past the usual width


def _wrap_width(lines: list[str]) -> int | None:
    """The column a text is hard-wrapped at, or None when it is not hard-wrapped."""
    inner = sorted(
        len(a)
        for a, b in zip(lines, lines[1:])
        # Headings sit inside blocks in both kinds of text and say nothing about wrapping.
        if a.strip() and b.strip() and len(a) <= 100 and not a.startswith(" ") and not _is_heading(a)
    )
    if not inner:
        return None
    width = inner[int(0.9 * (len(inner) - 1))]
    near = sum(1 for n in inner if n >= width - 15) / len(inner)
    if width < _MIN_WRAP_WIDTH or near < _MIN_NEAR_SHARE:
        return None
    return width


def _continues(a: str, b: str, width: int) -> bool:
    """Whether line b continues the paragraph of line a in text wrapped at `width` columns."""
    a, b = a.strip(), b.strip()
    # A line well past the wrap width was never wrapped: it is a paragraph of its own, and a
    # line that follows it starts something new.
    if len(a) > width + _WIDTH_SLACK or len(b) > width + _WIDTH_SLACK:
        return False
    if _is_heading(a) or _CHAPTER_RE.match(b) or _ROMAN_RE.match(b):
        return False
    # An all-capitals line after a finished sentence is a heading; after a line that stops
    # mid-sentence it is a word set in capitals for emphasis ('...great uncle of / HIS."').
    if _is_heading(b) and (len(a) < 0.75 * width or re.search(r"[.!?:;”’\"')\]]$", a)):
        return False
    # Most wrapped lines run nearly to the width; a short line ends a paragraph or a verse line,
    # unless the next word was too long to fit on it (then the wrap was forced).
    if len(a) >= 0.75 * width:
        return True
    return len(a) + 1 + len(b.split()[0]) > width


def _indented_prose(run: list[str]) -> bool:
    """Whether an indented run of lines (a letter set in from the margin) is wrapped prose.

    Verse is indented too, so ask for what verse rarely has: lines of similar, prose-like
    length and at least one continuation line starting in lower case.
    """
    if len(run) < 2:
        return False
    body = [line.strip() for line in run]
    longest = max(len(s) for s in body[:-1])
    if longest < 35:
        return False
    if not any(s[:1].islower() for s in body[1:]):
        return False
    near = sum(1 for s in body[:-1] if len(s) >= 0.7 * longest) / (len(body) - 1)
    return near >= 0.7


def _join_run(run: list[str], width: int) -> list[str]:
    """Join the lines of one same-indent run that continue each other."""
    out = [run[0]]
    for prev, line in zip(run, run[1:]):
        # Judge by the previous *original* line: its length is what says it was wrapped.
        if _continues(prev, line, width):
            out[-1] = out[-1].rstrip() + " " + line.strip()
        else:
            out.append(line)
    return out


def _split_first_line_indents(block: list[str], width: int) -> list[list[str]]:
    """Split a block of paragraphs marked only by an indented first line (no blank lines).

    The shape is strict: the block starts indented, every indented line is a full-width line
    indented by a few spaces and followed by unindented continuation lines. Verse or a letter
    set in from the margin does not look like that and is returned whole.
    """
    indents = [_indent(line) for line in block]
    if len(block) < 2 or not indents[0] or all(indents):
        return [block]
    for i, line in enumerate(block):
        if indents[i]:
            if len(indents[i]) > 8 or len(line) < 0.75 * width:
                return [block]
            if i + 1 < len(block) and indents[i + 1]:
                return [block]
    parts: list[list[str]] = []
    for i, line in enumerate(block):
        if indents[i]:
            parts.append([line.lstrip(" ")])
        else:
            parts[-1].append(line)
    return parts


def _join_wrapped(text: str) -> str:
    """Join hard-wrapped lines so each paragraph is one line; keep verse and headings."""
    lines = text.split("\n")
    width = _wrap_width(lines)
    if width is None:
        return text
    out: list[str] = []
    for n, (start, stop) in enumerate(_blocks(lines)):
        if n:
            out.append("")
        block = lines[start:stop]
        # A wrapped line that starts with a single space is where the wrap fell just before
        # a space (common in Gutenberg files); the space is an artefact, not an indent.
        block = [
            line[1:] if k and _indent(line) == " " and not _indent(block[k - 1]) else line
            for k, line in enumerate(block)
        ]
        for part_no, part in enumerate(_split_first_line_indents(block, width)):
            if part_no:
                out.append("")
            # Runs of lines with the same indentation are handled separately: a change of
            # indentation marks verse, a letter's salutation or signature.
            i = 0
            while i < len(part):
                j = i
                while j < len(part) and _indent(part[j]) == _indent(part[i]):
                    j += 1
                run = part[i:j]
                indent = _indent(run[0])
                if not indent:
                    out.extend(_join_run(run, width))
                elif _indented_prose(run):
                    longest = max(len(s.strip()) for s in run)
                    joined = _join_run([s.strip() for s in run], longest)
                    out.extend(indent + s for s in joined)
                elif len(run) == 1 and _is_heading(run[0]) and len(part) == 1:
                    out.append(run[0].strip())  # a centred heading: the centring is layout
                else:
                    out.extend(run)
                i = j
    return "\n".join(out)


# "_word_" and "_several words_"; identifiers like snake_case or __init__ are left alone.
_ITALIC_RE = re.compile(r"(?<![\w_])_(?=[^_\s])([^_\n]*?[^_\s])?_(?![\w_])")

_ASCII_MAP = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u2014": "--",
        "\u2015": "--",
        "\u2013": "-",
        "\u2012": "-",
        "\u2010": "-",
        "\u2011": "-",
        "\u2026": "...",
    }
)


def clean_gutenberg(text: str, ascii: bool = False) -> str:
    """Turn a Project Gutenberg plain-text file into the work alone, one paragraph per line.

    Strips the header, footer, licence and credits (every variant seen in the wild), a table
    of contents and trailing notes on the text when they can be recognised, joins hard-wrapped
    lines (verse, headings and indented lines stay as set), drops `_italic_` markers and
    normalises. Text without Gutenberg markers, or already cleaned, passes through with only
    normalisation. `ascii=True` also maps curly quotes, dashes and the ellipsis to ASCII.
    """
    lines = NEWLINES_RE.sub("\n", text).split("\n")
    lines, marked = _strip_header_footer(lines)
    if marked:
        # Only a real Gutenberg file has producer credits to drop; in anything else the first
        # paragraphs are the user's text, whatever they say.
        lines = _drop_front_matter(lines)
    lines = _drop_bracketed_notes(lines)
    lines = _drop_contents(lines)
    lines = _drop_trailing_note(lines)
    # Normalise before joining so that tabs, odd spaces and trailing blanks do not distort
    # the line lengths the joining heuristics rely on.
    text = normalise("\n".join(lines))
    text = _join_wrapped(text)
    text = _ITALIC_RE.sub(r"\1", text)
    if ascii:
        text = text.translate(_ASCII_MAP)
    return normalise(text)
