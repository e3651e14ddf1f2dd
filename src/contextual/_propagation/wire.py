"""What context may hold when it arrives from outside: one rule, one set of limits.

Context that crosses a process boundary (an HTTP header, W3C Baggage, a
Celery message header, data handed to another process) arrives untrusted
and ends up in log lines, response headers and terminals. Every boundary
applies the same two checks, from here:

* **characters**: no Unicode control or format character (categories Cc
  and Cf: C0 and C1 controls, DEL, the bidirectional overrides and
  isolates U+202A-E and U+2066-9 of "Trojan Source", CVE-2021-42574, zero
  widths, the BOM...), nor the line and paragraph separators U+2028 and
  U+2029. Each either starts a new line or makes a line read other than it
  is, wherever a log line, a terminal or a log viewer shows the value.
  Nor a lone surrogate (category Cs), which no UTF-8 log or header can
  hold: writing it fails;
* **size**: at most :data:`MAX_VALUE_BYTES` for one carried key and its
  value, and :data:`MAX_BYTES` for everything one message carries, both
  measured on the encoded form that crossed the boundary. These are W3C
  Baggage's own limits, so a value that fits one carrier fits them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, cast

__all__ = [
    "CONTROL_CHARACTERS",
    "FORMAT",
    "MAX_BYTES",
    "MAX_VALUE_BYTES",
    "has_control",
    "holds_control",
]

#: The version of the carried format: ``{"format": 1, "stores": {name: {key: value}}}``.
FORMAT: Final = 1
#: The most that one message may carry, encoded: every store and key together.
MAX_BYTES: Final = 8192
#: The most that one carried key and its value may take, encoded.
MAX_VALUE_BYTES: Final = 4096

#: What the rule refuses, as messages that report a refused value name it.
CONTROL_CHARACTERS: Final = (
    "a control or format character (a line break, DEL, a bidirectional override "
    "such as U+202E, U+2028...) or a lone surrogate"
)

# Not categories Cc or Cf, yet refused: they end a line wherever text is shown.
_SEPARATORS: Final = frozenset("\u2028\u2029")
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs"})


def has_control(text: str) -> bool:
    """Return whether ``text`` holds a control or format character, U+2028/U+2029, or a surrogate.

    The rule every boundary applies to carried text: no character of
    Unicode categories Cc, Cf or Cs, nor a line or paragraph separator.
    """
    # str.isprintable() is False for every refused character, and True for
    # almost every real value (ASCII IDs, names): the category lookup runs
    # only for the rare text that holds something unusual (a no-break space,
    # an unassigned code point), and decides exactly there.
    if text.isprintable():
        return False
    import unicodedata  # noqa: PLC0415 (only text that is not plainly printable needs it)

    category = unicodedata.category
    return any(c in _SEPARATORS or category(c) in _REFUSED_CATEGORIES for c in text)


def holds_control(value: object, depth: int = 32) -> bool:
    """Tell whether ``value``, or a str in the lists, tuples and mappings in it, breaks the rule.

    Dict keys count as text too. Values nested deeper than ``depth`` count
    as breaking it: no sender of ours nests that deep, and a value that
    does is refused unread.
    """
    if isinstance(value, str):
        return has_control(value)
    if depth == 0:
        return isinstance(value, (list, tuple, Mapping))
    if isinstance(value, (list, tuple)):
        return any(holds_control(item, depth - 1) for item in cast("list[object]", value))
    # Any mapping, not dicts alone: a RequestContext's extras are a read-only view.
    if isinstance(value, Mapping):
        items = cast("Mapping[object, object]", value).items()
        return any(holds_control(k, depth - 1) or holds_control(v, depth - 1) for k, v in items)
    return False
