"""The carried format: context that crosses a process boundary, in one place.

Context that crosses a process boundary (an HTTP header, W3C Baggage, a
Celery message header, data handed to another process) arrives untrusted
and ends up in log lines, response headers and terminals. This module owns
everything about it that does not depend on the carrier:

* the **envelope** ``{"format": FORMAT, "stores": {name: {key: value}}}``:
  :func:`envelope` builds it, :func:`open_envelope` checks its structure
  and lists the problems found;
* the **characters** carried text may hold: no Unicode control or format
  character (categories Cc and Cf: C0 and C1 controls, DEL, the
  bidirectional overrides and isolates U+202A-E and U+2066-9 of "Trojan
  Source", CVE-2021-42574, zero widths, the BOM...), nor the line and
  paragraph separators U+2028 and U+2029, nor a lone surrogate (category
  Cs), which no UTF-8 log or header can hold. Each starts a new line or
  makes a line read other than it is, wherever a log line, a terminal or a
  log viewer shows the value (:func:`has_control`, :func:`holds_control`,
  :func:`check_characters`);
* the **sizes**: at most :data:`MAX_VALUE_BYTES` for one carried key and its
  value, and :data:`MAX_BYTES` for everything one message carries, both
  measured on the encoded form that crosses the boundary
  (:func:`within_limits`, given the carrier's measure). These are W3C
  Baggage's own limits, so a value that fits one carrier fits them all;
* the **request**: the request store's name and keys, the rule for
  carried request IDs (:func:`accepts_request_id`), and the request
  rebuilt on arrival (:func:`rebuild_request`);
* **reporting**: a :class:`Problem` found in what arrived, shown escaped
  (:func:`shown`), and :class:`Reported`, which lets a process report each
  kind of problem once.

Its users are thin adapters that keep only what their carrier needs:
:meth:`Snapshot.to_dict() <contextual.Snapshot.to_dict>` (the envelope),
:meth:`~contextual.Snapshot.from_dict` and
:class:`~contextual.ContextProcessPoolExecutor` (pickling; they raise),
``contextual.integrations.celery`` (message headers and signals; it drops
and reports), and the HTTP integration (headers, Baggage's encoding).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Final, Literal, NamedTuple, NoReturn, cast, final

from contextual._core.fork import renew_locks_after_fork
from contextual._request.request import (
    REQUEST_ID_KEY,
    REQUEST_KEY,
    REQUEST_STORE,
    USER_KEY,
    RequestContext,
    new_request_id,
)

__all__ = [
    "CONTROL_CHARACTERS",
    "FORMAT",
    "LOGGED_CHARS",
    "MAX_BYTES",
    "MAX_VALUE_BYTES",
    "REQUEST_ID_KEY",
    "REQUEST_KEY",
    "REQUEST_STORE_NAME",
    "USER_KEY",
    "Arrival",
    "Dropped",
    "Generated",
    "Problem",
    "Reported",
    "accepts_request_id",
    "check_characters",
    "envelope",
    "escape_for_log",
    "generate_request_id",
    "has_control",
    "holds_control",
    "is_printable_ascii",
    "is_valid_request_id",
    "open_envelope",
    "rebuild_request",
    "shown",
    "within_limits",
]

#: The version of the carried format: ``{"format": 1, "stores": {name: {key: value}}}``.
FORMAT: Final = 1
#: The most that one message may carry, encoded: every store and key together.
MAX_BYTES: Final = 8192
#: The most that one carried key and its value may take, encoded.
MAX_VALUE_BYTES: Final = 4096

#: The request store's name; its keys are the request module's (re-exported
#: here). Between services (HTTP, Celery) the ID and the user travel and the
#: :class:`~contextual.RequestContext` under :data:`REQUEST_KEY` never does:
#: it is rebuilt on arrival. A process pool, the same program on both sides,
#: carries the request store whole.
REQUEST_STORE_NAME: Final = REQUEST_STORE.name

#: What the rule refuses, as messages that report a refused value name it.
CONTROL_CHARACTERS: Final = (
    "a control or format character (a line break, DEL, a bidirectional override "
    "such as U+202E, U+2028...) or a lone surrogate"
)
#: How much of a refused value a log line shows.
LOGGED_CHARS: Final = 64

# Not categories Cc or Cf, yet refused: they end a line wherever text is shown.
_SEPARATORS: Final = frozenset("\u2028\u2029")
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs"})
_VALID_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Printable ASCII: what a response header can carry back and a log line can
# show as is. No custom validator can let anything else through.
_SAFE: Final = re.compile(r"[ -~]+")
_EXPECTED: Final = (
    "expected the dict returned by Snapshot.to_dict(), "
    f"{{'format': {FORMAT}, 'stores': {{store name: {{key: value}}}}}}"
)

# One lock for every Reported: they are met only when something is wrong.
_reported_lock = threading.Lock()

renew_locks_after_fork(globals(), "_reported_lock")


# -- characters --------------------------------------------------------------------


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
    """Tell whether ``value``, or a str in the lists, tuples, sets, mappings in it, breaks the rule.

    Dict keys count as text too. Values nested deeper than ``depth`` count
    as breaking it: no sender of ours nests that deep, and a value that
    does is refused unread.
    """
    if isinstance(value, str):
        return has_control(value)
    if depth == 0:
        return isinstance(value, (list, tuple, set, frozenset, Mapping))
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(holds_control(item, depth - 1) for item in cast("list[object]", value))
    # Any mapping, not dicts alone: a RequestContext's extras are a read-only view.
    if isinstance(value, Mapping):
        items = cast("Mapping[object, object]", value).items()
        return any(holds_control(k, depth - 1) or holds_control(v, depth - 1) for k, v in items)
    return False


def check_characters(stores: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse carried stores whose name, keys or values break the character rule.

    What a carrier that refuses does (process pools: the sender before
    anything is sent, :meth:`Snapshot.from_dict() <contextual.Snapshot.from_dict>`
    before anything is applied). Nothing of ``stores`` is quoted.

    Raises:
        ValueError: Naming the store and the key, escaped with ``ascii()``.
    """
    for name, values in stores.items():
        if has_control(name):
            raise ValueError(_refused(f"the store name {name!a}"))
        for key, value in values.items():
            if has_control(key) or holds_control(value):
                raise ValueError(_refused(f"store {name!a} key {key!a}"))


def _refused(what: str) -> str:
    return (
        f"{what} holds {CONTROL_CHARACTERS} (or lists and dicts nested too deep to "
        "check), so the context can't cross a process boundary and none of it is sent or "
        "applied: such a character would start or rewrite a line wherever the value is "
        "logged or shown. Carry printable text only (remove or escape the character "
        "before setting the value), or create the store with propagate=False so that "
        "it stays in its process."
    )


# -- log lines ---------------------------------------------------------------------


def escape_for_log(value: str) -> str:
    """Return ``value`` as a log line may show it: quoted, escaped, truncated.

    Everything outside printable ASCII is escaped (``ascii()``), CR, LF and
    the other line breaks included, so the result is one line whatever the
    value holds; values longer than :data:`LOGGED_CHARS` end in ``...``.
    """
    text = ascii(value[:LOGGED_CHARS])
    return text + "..." if len(value) > LOGGED_CHARS else text


def shown(value: object) -> str:
    """Return any carried ``value`` as a log line may show it: one line, escaped, cut short."""
    if isinstance(value, str):
        return escape_for_log(value)
    text = ascii(value)
    return text[:LOGGED_CHARS] + "..." if len(text) > LOGGED_CHARS else text


class Problem(NamedTuple):
    """One problem found in carried context: its kind, and what to say about it.

    Attributes:
        kind: What is reported once per process (see :class:`Reported`).
        text: One line for a log, with every carried value already
            :func:`shown`.
    """

    kind: str
    text: str


@final
class Reported:
    """What this process has reported already, so that each is reported once.

    A sender that repeats the same bad value with every message can't
    flood the log. At most ``limit`` things are remembered, so that
    carried data can't grow it without end; past that, nothing more is
    reported. Safe to use from any thread, and in a forked child.

    Args:
        limit: The most things remembered.
    """

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int = 100) -> None:
        self._limit = limit
        self._seen: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def first(self, what: Hashable) -> bool:
        """Return whether ``what`` is to be reported now: the first time, within the limit."""
        with _reported_lock:
            if what in self._seen or len(self._seen) >= self._limit:
                return False
            self._seen.add(what)
            return True

    def new(self, problems: Iterable[Problem]) -> list[Problem]:
        """Return the ``problems`` of kinds not reported before, every one of those kinds."""
        problems = list(problems)
        fresh = {kind for kind in dict.fromkeys(kind for kind, _ in problems) if self.first(kind)}
        return [problem for problem in problems if problem[0] in fresh]

    def clear(self) -> None:
        """Forget what was reported: everything is reported again."""
        with _reported_lock:
            self._seen.clear()


# -- the envelope ------------------------------------------------------------------


def envelope(stores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return the carried form of ``stores``: ``{"format": FORMAT, "stores": stores}``."""
    return {"format": FORMAT, "stores": stores}


def open_envelope(
    data: object, *, strict: bool = False
) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """Return the well-formed stores an :func:`envelope` holds, and the problems found.

    A ``data`` that is not a mapping, of another format, or whose
    ``"stores"`` is not a mapping holds nothing (a problem of kind
    ``"header"``); an entry that is not ``store name: mapping``, or a key
    that is not a str, is left out (kind ``"entry"``). Values are not
    looked at: the character rule and the limits are the caller's to apply.

    Args:
        data: What arrived.
        strict: Raise at the first problem instead, as
            :meth:`Snapshot.from_dict() <contextual.Snapshot.from_dict>` does.

    Raises:
        TypeError: With ``strict``, ``data`` is not what :func:`envelope` returns.
    """
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        if strict:
            _refuse(f"got {kind}")
        return {}, [Problem("header", f"the header is a {kind}, not a mapping")]
    version = cast("Mapping[str, object]", data).get("format")
    if type(version) is not int or version != FORMAT:
        if strict:
            versions = "Both processes must run compatible versions of contextual"
            _refuse(f"got format {version!r}. {versions}")
        text = f"format {shown(version)}, where this contextual reads {FORMAT}"
        return {}, [Problem("header", text)]
    stores = cast("Mapping[str, object]", data).get("stores")
    if not isinstance(stores, Mapping):
        kind = type(stores).__name__
        if strict:
            _refuse(f"'stores' is {kind}")
        return {}, [Problem("header", f"'stores' is a {kind}, not a mapping")]
    return _entries(cast("Mapping[object, object]", stores), strict=strict)


def _entries(
    stores: Mapping[object, object], *, strict: bool
) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """Return the well-formed entries of an envelope's stores, and a problem for each other."""
    result: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for name, values in stores.items():
        if not isinstance(name, str) or not isinstance(values, Mapping):
            if strict:
                _refuse(f"got the entry {name!r}: {values!r}")
            problems.append(Problem("entry", f"the entry {shown(name)} is not store name: mapping"))
            continue
        kept: dict[str, Any] = {}
        for key, value in cast("Mapping[object, Any]", values).items():
            if isinstance(key, str):
                kept[key] = value
            elif strict:
                _refuse(f"store {name!r} has a non-str key")
            else:
                text = f"store {shown(name)} has a key that is not a str ({shown(key)})"
                problems.append(Problem("entry", text))
        result[name] = kept
    return result, problems


def _refuse(what: str) -> NoReturn:
    """Raise what a strict reader says of malformed data: what it expected, and ``what`` it got."""
    raise TypeError(f"{_EXPECTED}; {what}.")


# -- sizes ---------------------------------------------------------------------------


class Dropped(NamedTuple):
    """An entry that :func:`within_limits` left out, and the limit it broke."""

    store: str
    key: str
    limit: Literal["value", "total"]
    size: int


def within_limits(
    stores: Mapping[str, Mapping[str, Any]], measure: Callable[[str, Any], int]
) -> tuple[dict[str, dict[str, Any]], list[Dropped]]:
    """Return ``stores`` within the byte limits of carried context, and the entries left out.

    The rule of Celery and process pools, on both sides, so a sender never
    sends what the receiver would refuse. (Baggage holds to the same two
    limits on the header itself, names and separators included: its
    encoder and parser measure the header, not entries.) An entry over
    :data:`MAX_VALUE_BYTES` is left out; the others count, the request
    store's first (it ties the two sides' log lines together), then the
    rest in order, and from the first one that would take the total past
    :data:`MAX_BYTES` on, every entry is left out. Store names don't count.

    Args:
        stores: The carried stores.
        measure: The size of one key and its value, encoded as the carrier
            sends them (compact JSON for Celery, pickle for process pools).
    """
    ordered = sorted(stores.items(), key=lambda item: item[0] != REQUEST_STORE_NAME)
    kept: dict[str, dict[str, Any]] = {}
    dropped: list[Dropped] = []
    total = 0
    full = False
    for name, values in ordered:
        kept_values: dict[str, Any] = {}
        for key, value in values.items():
            size = measure(key, value)
            if size > MAX_VALUE_BYTES:
                dropped.append(Dropped(name, key, "value", size))
            elif full or total + size > MAX_BYTES:
                full = True
                dropped.append(Dropped(name, key, "total", size))
            else:
                total += size
                kept_values[key] = value
        if kept_values:
            kept[name] = kept_values
    return kept, dropped


# -- the request ---------------------------------------------------------------------


def is_valid_request_id(value: str) -> bool:
    """Return whether ``value`` is a request ID to keep: the default check.

    1 to 128 characters from ``A-Z a-z 0-9 . _ : -``.
    """
    return _VALID_ID.fullmatch(value) is not None


def is_printable_ascii(value: str) -> bool:
    """Return whether a header can carry ``value`` as it is: non-empty printable ASCII."""
    return _SAFE.fullmatch(value) is not None


class Generated(NamedTuple):
    """A request ID that a user's generator made, or the random one that replaced it."""

    #: The ID to use.
    request_id: str
    #: What the generator returned, as a log line may show it, when it was refused.
    refused: str | None = None
    #: What the generator raised, if it raised.
    error: Exception | None = None


def generate_request_id(generator: Callable[[], object]) -> Generated:
    """Call a user's request ID ``generator``; keep what it makes if a header can carry it.

    The rule for made IDs, the same everywhere a new one goes out (a response
    header, a task's message, every log line): a non-empty str of printable
    ASCII. Anything else, or an exception, gives :func:`~contextual.new_request_id`'s
    ID instead, with what went wrong, for the caller to report its own way.
    """
    try:
        request_id = generator()
    except Exception as exc:  # noqa: BLE001 (returned to the caller, who reports it)
        return Generated(new_request_id(), None, exc)
    if isinstance(request_id, str) and is_printable_ascii(request_id):
        return Generated(request_id)
    return Generated(new_request_id(), shown(request_id))


def accepts_request_id(value: str, validator: Callable[[str], bool] | None) -> bool:
    """Return whether to keep the incoming request ID ``value``.

    Without ``validator``, the default check (:func:`is_valid_request_id`);
    with one, what it says of a value of printable ASCII: whatever it says,
    nothing else goes out in a header or into a log line. Whatever
    ``validator`` raises propagates.
    """
    if validator is None:
        return _VALID_ID.fullmatch(value) is not None
    return _SAFE.fullmatch(value) is not None and bool(validator(value))


class Arrival(NamedTuple):
    """The request that carried context opens where it arrives.

    Attributes:
        request_id: The carried request ID, if it was accepted.
        user: The carried user, or ``None``.
        error: What the validator raised on the request ID, if it did.
    """

    request_id: str | None
    user: Any
    error: Exception | None

    def values(self) -> dict[str, Any]:
        """Return what opens the request in the request store: its RequestContext, ID and user.

        Without an accepted ID there is no request to open: the user alone,
        if any.
        """
        request_id, user = self.request_id, self.user
        if request_id is None:
            return {} if user is None else {USER_KEY: user}
        request = RequestContext(request_id, user)
        return {REQUEST_KEY: request, REQUEST_ID_KEY: request_id, USER_KEY: user}


# Arrival(...) without NamedTuple's Python-level __new__: the middleware
# makes one for every request.
_new_arrival: Final = tuple.__new__


def rebuild_request(
    request_id: object,
    stores: dict[str, dict[str, Any]] | None,
    validator: Callable[[str], bool] | None = None,
) -> Arrival:
    """Check a carried request ID, and take the carried request out of ``stores``.

    The request store's ID, user and RequestContext never apply as carried
    values: they are taken out of ``stores`` (in place; the store goes when
    nothing is left of it), and the request is opened from the
    :class:`Arrival` (``open_request(arrival.request_id, arrival.user)``,
    or its :meth:`~Arrival.values`). The RequestContext carried, if any,
    is dropped: it is ours to build, never the sender's.

    Args:
        request_id: The carried ID, or ``None`` for none. It is accepted
            when it is a str that :func:`accepts_request_id` accepts.
        stores: The carried stores, or ``None``.
        validator: Replaces the default check; when it raises, the ID is
            refused and the error is in the result.
    """
    user = None
    values = None if stores is None else stores.get(REQUEST_STORE_NAME)
    if values is not None:
        values.pop(REQUEST_KEY, None)
        values.pop(REQUEST_ID_KEY, None)
        user = values.pop(USER_KEY, None)
        if not values:
            del cast("dict[str, dict[str, Any]]", stores)[REQUEST_STORE_NAME]
    if type(request_id) is str:
        try:
            if accepts_request_id(request_id, validator):
                return _new_arrival(Arrival, (request_id, user, None))
        except Exception as exc:  # noqa: BLE001 (a broken validator refuses; nothing fails)
            return _new_arrival(Arrival, (None, user, exc))
    return _new_arrival(Arrival, (None, user, None))
