"""Austen's dialogue form, in which `janelm chat` and the server's chat turn lines into a novel:

    “Good morning,” said Elizabeth.

    Mr. Darcy replied, “…”

The model only ever continues a novel; framing each turn as dialogue is what makes it answer
(assistant-like behaviour without fine-tuning). A reply ends at its closing quote or line's end.
"""

from __future__ import annotations

from janelm.errors import InputError

QUOTES = {"curly": ("“", "”"), "straight": ('"', '"')}


def said(line: str, speaker: str, quotes: tuple[str, str]) -> str:
    """Frame a user's line as dialogue: a final full stop becomes the comma before `said`."""
    line = line.strip().strip("“”\"")
    if line.endswith("."):
        line = line[:-1] + ","
    elif not line.endswith(("?", "!", ",", "—")):
        line += ","
    return f"{quotes[0]}{line}{quotes[1]} said {speaker}.\n\n"


def reply_opening(speaker: str, quotes: tuple[str, str]) -> str:
    return f"{speaker} replied, {quotes[0]}"


def replied(reply: str, speaker: str, quotes: tuple[str, str]) -> str:
    """A reply as it stands in the history: opening, words, closing quote."""
    return f"{reply_opening(speaker, quotes)}{reply.strip()}{quotes[1]}\n\n"


def reply_stops(quotes: tuple[str, str]) -> list[str]:
    """Where a reply ends: its closing quote, or the end of its line."""
    return [quotes[1], "\n"]


def reply_piece(reply: str, piece: str) -> str:
    """A piece of a reply as shown: the reply's leading spaces dropped (its opening quote is given)."""
    return piece if reply else piece.lstrip()


def pick_quotes(tokenizer) -> tuple[str, str]:
    """Curly quotes, as most of Austen's editions print them, unless the vocabulary lacks them."""
    try:
        tokenizer.encode("“”")
        return QUOTES["curly"]
    except InputError:
        return QUOTES["straight"]


def fit_history(turns: list[str], tokenizer, budget: int) -> str:
    """The most recent whole turns whose tokens fit in `budget`."""
    kept, used = [], 0
    for turn in reversed(turns):
        n = len(tokenizer.encode(turn))
        if kept and used + n > budget:
            break
        kept.append(turn)
        used += n
    return "".join(reversed(kept))


def narration(text: str) -> str:
    """Text that sets a scene (a chat's system message): a paragraph of the novel."""
    return f"{text.strip()}\n\n"
