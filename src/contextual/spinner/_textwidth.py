"""How much of a terminal line text takes, and how to make it fit one.

A terminal shows a wide East Asian character (an ideograph, most emoji) in
two columns and a combining mark in none, so ``len()`` is not the width.
This is the spinner's own small measure, enough for the one line it draws:
it does not know grapheme clusters such as flags or joined emoji.
"""

from __future__ import annotations

import itertools
import unicodedata
from typing import Final

__all__ = ["cut", "one_line", "width"]

# Line breaks, tabs, escapes and the other C0 and C1 controls would move the
# cursor off the spinner's line or throw out its width: they print as spaces.
_CONTROLS: Final = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)], " ")


def one_line(text: str) -> str:
    """Return ``text`` with every C0 and C1 control (line breaks, tabs, ESC) as a space."""
    return text.translate(_CONTROLS)


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def width(text: str) -> int:
    """Return how many terminal columns ``text`` takes (wide East Asian characters: 2)."""
    return len(text) if text.isascii() else sum(map(_char_width, text))


def cut(text: str, room: int, ellipsis: str) -> str:
    """Return ``text`` cut to ``room`` columns, ending with ``ellipsis`` if it was cut."""
    if width(text) <= room:
        return text
    room -= width(ellipsis)
    if room < 0:
        return ""
    # The longest start of the text that fits; a combining mark stays with
    # the character before it, since it takes no column.
    used = itertools.accumulate(map(_char_width, text))
    kept = sum(1 for _ in itertools.takewhile(lambda total: total <= room, used))
    return text[:kept] + ellipsis
