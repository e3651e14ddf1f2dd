"""The W3C Baggage header as a carrier for stores: the codec behind the HTTP integration.

A Baggage header (https://www.w3.org/TR/baggage/) is a comma-separated list
of ``key=value`` members, each optionally followed by ``;properties``. Keys
are HTTP tokens; values are percent-encoded UTF-8. A store's key travels as
one member whose key is the store's name and the key's name, each
percent-encoded so that it holds only token characters other than ``%`` and
``|``, joined by ``|``: ``contextual.request|user_id=ada``. A token holds
exactly one ``|`` when it names a store and a key, so store names with dots
stay unambiguous; members of other keys (other libraries' baggage) are left
alone.

The header has limits: 8192 bytes, 180 members, 4096 bytes per member.
Nothing here ever writes a header beyond them, or a malformed one: what
doesn't fit or can't be encoded is left out. When the members a header
already had and ours don't fit together, ours are kept and the others are
dropped: this service answers for its own. An incoming value that decodes
to a control or format character is refused (it would forge log lines; see
``contextual._propagation.wire`` for the rule). Each kind of problem is
reported once per process (see ``_headers.report_once``). Functions here
return the problems instead of logging them, so that the middleware can log
them inside the request they belong to. What is not about Baggage (the
character rule, the limits, the request store's keys, how problems show
carried text) is ``contextual._propagation.wire``'s.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote

from contextual._propagation.wire import (
    CONTROL_CHARACTERS,
    MAX_BYTES,
    MAX_VALUE_BYTES,
    REQUEST_ID_KEY,
    REQUEST_KEY,
    REQUEST_STORE_NAME,
    Problem,
    has_control,
    shown,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._carrier import AllowList

__all__ = [
    "HEADER",
    "MAX_BYTES",
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "SEPARATOR",
    "decode_key",
    "encode_key",
    "read",
    "write",
]

#: The header's name, lowercase as the specification recommends.
HEADER: Final = "baggage"
MAX_MEMBERS: Final = 180
MAX_MEMBER_BYTES: Final = MAX_VALUE_BYTES
#: Between the store's name and the key's name in a member's key.
SEPARATOR: Final = "|"

# The request store's keys that never travel as baggage: the ID has a header
# of its own (checked by the middleware), and "request" is the object the
# two values are made from, rebuilt on arrival.
_NEVER_CARRIED: Final = frozenset({REQUEST_ID_KEY, REQUEST_KEY})

# RFC 9110 token characters, the Baggage specification's key.
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# baggage-octet: printable ASCII but space, DQUOTE, comma, semicolon, backslash.
_VALUE: Final = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_OWS: Final = " \t"
# Left as they are in a name (quote() keeps letters, digits and "_.-~" too):
# token characters but "%" (the escape) and "|" (the separator).
_NAME_SAFE: Final = "!#$&'*^`"
# Left as they are in a value: baggage-octets but "%" (the escape) and "+",
# which form decoders would read as a space.
_VALUE_SAFE: Final = "!#$&'()*/:<=>?@[]^`{|}"


def encode_key(store: str, key: str) -> str:
    """Return the member key for ``key`` of the store named ``store``."""
    return quote(store, safe=_NAME_SAFE) + SEPARATOR + quote(key, safe=_NAME_SAFE)


def decode_key(token: str) -> tuple[str, str] | None:
    """Return the store name and key a member key names, or ``None`` if it names none."""
    store, separator, key = token.partition(SEPARATOR)
    if not separator or not store or SEPARATOR in key:
        return None
    try:
        return unquote(store, errors="strict"), unquote(key, errors="strict")
    except UnicodeDecodeError:
        return None


def _member(text: str) -> tuple[str, str] | None:
    """Return the key and raw value of one member (outer whitespace stripped), or None."""
    head, semicolon, properties = text.partition(";")
    key, equals, value = head.partition("=")
    key, value = key.rstrip(_OWS), value.strip(_OWS)
    if not equals or _TOKEN.fullmatch(key) is None or _VALUE.fullmatch(value) is None:
        return None
    if semicolon:
        for prop in properties.split(";"):
            name, equals, prop_value = prop.partition("=")
            if _TOKEN.fullmatch(name.strip(_OWS)) is None or (
                equals and _VALUE.fullmatch(prop_value.strip(_OWS)) is None
            ):
                return None
    return key, value


def _text(value: Any) -> str | None:
    """Return what a value travels as, or None if it can't travel.

    Raises:
        ValueError: An int with more digits than ``sys.get_int_max_str_digits()``.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return None


def write(
    stores: Mapping[str, Mapping[str, Any]], existing: str | None
) -> tuple[str | None, list[Problem]]:
    """Return the Baggage header for ``stores`` merged into ``existing``, and the problems.

    ``stores`` is already selected by an allow-list. ``existing`` is the
    header the request had, or None. Its well-formed members stay, first
    and in order, unless one of ours has the same key; ours follow. Members
    that are malformed, or don't fit the limits, are left out: ours take
    the room first, and the existing members share what is left. The header
    is None when no member is left.
    """
    problems: list[Problem] = []
    ours = _ours(stores, problems)
    theirs = [] if existing is None else _theirs(existing, ours, problems)
    # No comma before the first member: size starts at -1.
    kept_ours, size = _fit(list(ours.values()), 0, -1, problems, existing=False)
    kept_theirs, _ = _fit(theirs, len(kept_ours), size, problems, existing=True)
    return ",".join(kept_theirs + kept_ours) or None, problems


def _fit(
    members: list[str], count: int, size: int, problems: list[Problem], *, existing: bool
) -> tuple[list[str], int]:
    """Return the ``members`` that fit after ``count`` members of ``size`` bytes, and the size."""
    kept: list[str] = []
    for member in members:
        if count + len(kept) == MAX_MEMBERS:
            problems.append(_too_many("outgoing", existing=existing))
            break
        if size + 1 + len(member) > MAX_BYTES:
            problems.append(_too_big("outgoing", member, existing=existing))
            continue
        kept.append(member)
        size += 1 + len(member)
    return kept, size


def _ours(stores: Mapping[str, Mapping[str, Any]], problems: list[Problem]) -> dict[str, str]:
    """Return the members for ``stores``, by member key."""
    ours: dict[str, str] = {}
    for store, values in stores.items():
        for key, value in values.items():
            if value is None or (store == REQUEST_STORE_NAME and key in _NEVER_CARRIED):
                continue  # None is "unset": the other side's defaults serve
            try:
                text = _text(value)
            except ValueError:
                problems.append(_too_many_digits(store, key))
                continue
            if text is None:
                problems.append(_unsendable(store, key, value))
                continue
            try:
                token = encode_key(store, key)
                member = f"{token}={quote(text, safe=_VALUE_SAFE)}"
            except UnicodeEncodeError:  # a lone surrogate: no UTF-8 for it
                problems.append(_unencodable(store, key))
                continue
            if len(member) > MAX_MEMBER_BYTES:
                problems.append(_too_long("outgoing", member))
                continue
            ours[token] = member
    return ours


def _theirs(existing: str, ours: Mapping[str, str], problems: list[Problem]) -> list[str]:
    """Return the well-formed members of ``existing`` that ``ours`` doesn't replace."""
    members: list[str] = []
    for raw in existing.split(","):
        text = raw.strip(_OWS)
        if not text:
            continue
        if len(text) > MAX_MEMBER_BYTES:
            problems.append(_too_long("outgoing", text))
            continue
        parsed = _member(text)
        if parsed is None:
            problems.append(_malformed("outgoing", text))
        elif parsed[0] not in ours:
            members.append(text)
    return members


def read(header: str, allow: AllowList) -> tuple[dict[str, dict[str, str]], list[Problem]]:
    """Return the allowed stores' values a Baggage header carries, and the problems.

    Values are percent-decoded as UTF-8 (invalid sequences become U+FFFD, as
    the specification says). A member that is malformed or too long, or
    whose key or value decodes to a control or format character, is skipped; members
    past 180, or past byte 8192 of the header, are dropped.
    Members that name no store, or a store and key ``allow`` refuses, are
    ignored, and so are the request store's ``request_id`` and ``request``.
    """
    stores: dict[str, dict[str, str]] = {}
    problems: list[Problem] = []
    count = 0
    end = -1
    for raw in header.split(","):
        end += 1 + len(raw)
        text = raw.strip(_OWS)
        if not text:
            continue  # RFC 9110 5.6.1: empty list elements are ignored
        count += 1
        if count > MAX_MEMBERS:
            problems.append(_too_many("incoming"))
            break
        if end > MAX_BYTES:
            problems.append(_too_big("incoming", text))
            break
        if len(text) > MAX_MEMBER_BYTES:
            problems.append(_too_long("incoming", text))
            continue
        parsed = _member(text)
        if parsed is None:
            problems.append(_malformed("incoming", text))
            continue
        names = decode_key(parsed[0])
        if names is None:
            continue
        store, key = names
        if not allow.allows(store, key) or (store == REQUEST_STORE_NAME and key in _NEVER_CARRIED):
            continue
        value = unquote(parsed[1], errors="replace")
        if has_control(key) or has_control(value):
            problems.append(_control(text))
            continue
        stores.setdefault(store, {})[key] = value
    return stores, problems


def _unsendable(store: str, key: str, value: object) -> Problem:
    return Problem(
        "unsendable",
        f"Left {_named(store, key)} out of the outgoing Baggage header: a value of type "
        f"{shown(type(value).__name__)} can't travel over HTTP, only str, int, float and bool "
        "can. Store it as a str, or leave the key out of allow.",
    )


def _named(store: str, key: str) -> str:
    """Show a store's key for a log line as a member's key names it: ``'store|key'``."""
    return shown(f"{store}{SEPARATOR}{key}")


def _too_many_digits(store: str, key: str) -> Problem:
    return Problem(
        "unsendable int",
        f"Left {_named(store, key)} out of the outgoing Baggage header: its value is an int "
        "with more digits than str() converts (sys.get_int_max_str_digits()). Store it as a "
        "str, or leave the key out of allow.",
    )


def _control(text: str) -> Problem:
    return Problem(
        "incoming control",
        f"Ignored the member {shown(text)} of the incoming Baggage header: its key or value "
        f"decodes to {CONTROL_CHARACTERS}, which would forge or garble log lines. "
        "Senders should carry printable text only.",
    )


def _unencodable(store: str, key: str) -> Problem:
    return Problem(
        "unencodable",
        f"Left {_named(store, key)} out of the outgoing Baggage header: its name or value "
        "holds a lone surrogate, which UTF-8 can't encode. Store text decoded without "
        "errors='surrogateescape'.",
    )


def _malformed(direction: str, text: str) -> Problem:
    return Problem(
        f"{direction} malformed",
        f"Dropped a malformed member of the {direction} Baggage header, {shown(text)}; a "
        "member is key=value with optional ;properties: the key an HTTP token, the value "
        "printable ASCII without spaces, quotes, commas, semicolons and backslashes "
        "(percent-encode the rest).",
    )


def _too_long(direction: str, text: str) -> Problem:
    return Problem(
        f"{direction} member size",
        f"Dropped a member of the {direction} Baggage header: {shown(text)} is {len(text)} "
        f"bytes long, over the limit of {MAX_MEMBER_BYTES} bytes per member. Carry a shorter "
        "value (an ID to look the rest up with).",
    )


# Said of the members an outgoing header already had, dropped when they
# don't fit beside ours: this service answers for its own members.
_EXISTING: Final = (
    "Dropped members that the outgoing Baggage header already had (other code's "
    "baggage) to make room for the allowed context this service sends, which comes "
    "first: {limit}. Have that code send less baggage, or allow fewer keys to travel."
)


def _too_many(direction: str, *, existing: bool = False) -> Problem:
    if existing:
        limit = f"a header may hold at most {MAX_MEMBERS} members"
        return Problem("outgoing existing members", _EXISTING.format(limit=limit))
    return Problem(
        f"{direction} members",
        f"Dropped the members of the {direction} Baggage header past the {MAX_MEMBERS}th: "
        f"a header may hold at most {MAX_MEMBERS}. Allow fewer keys to travel.",
    )


def _too_big(direction: str, text: str, *, existing: bool = False) -> Problem:
    if existing:
        limit = f"a header may hold at most {MAX_BYTES} bytes, and {shown(text)} did not fit"
        return Problem("outgoing existing size", _EXISTING.format(limit=limit))
    return Problem(
        f"{direction} size",
        f"Dropped members of the {direction} Baggage header past its limit of {MAX_BYTES} "
        f"bytes (the first being {shown(text)}). Allow fewer keys to travel, or carry "
        "shorter values.",
    )
