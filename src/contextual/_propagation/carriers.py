"""Carriers: context that is no store, carried out of the process as a text map.

A store travels by name, as plain data (``contextual._propagation.wire``).
Some context is not a store: OpenTelemetry's span context is a ContextVar of
OpenTelemetry's, which only OpenTelemetry's propagator can write out and
read back. A :class:`Carrier` is that propagator seen from here: it captures
what is current as a *text map* (``{"traceparent": "00-..."}``), and enters
a text map that arrived as what is current, for a block.

The transports that leave the process carry the text map of every carrier
registered here, under the carrier's name, beside the stores:
:class:`~contextual.ContextProcessPoolExecutor` (the carrier object itself
goes in the payload, pickled by reference, so a worker imports the
carrier's module and need not register it), ``inject()``/``extract()`` of
the HTTP integration (the text map's keys are header names) and the Celery
integration (by name: the worker applies the carriers registered there).
With no carrier registered nothing is captured and nothing is sent: the
transports pay one call.

The registry is private to the package: the public face of a carrier is
the integration that registers it (``contextual.integrations.opentelemetry``).
"""

from __future__ import annotations

import contextlib
import pickle
import re
import threading
from typing import TYPE_CHECKING, Final, NoReturn, Protocol

from contextual._core.fork import renew_locks_after_fork

from .wire import MAX_BYTES, is_printable_ascii

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Iterator, Mapping
    from contextlib import AbstractContextManager

__all__ = [
    "Carrier",
    "applied_all",
    "capture_all",
    "carrier_named",
    "check_text_map",
    "register_carrier",
    "registered_carriers",
    "unregister_carrier",
]

# A carrier's name, and a text map's keys: HTTP field names (RFC 9110 tokens),
# so that every transport can carry them as they are.
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class Carrier(Protocol):
    """Context that is no store, captured and applied as a text map.

    A text map is a ``dict`` of str keys, HTTP field names such as
    ``"traceparent"``, to str values of printable ASCII: what an HTTP
    header, a Celery message header and a pickle can all carry as it is.
    Neither method may raise: a carrier that fails captures nothing, or
    applies nothing, and says so on a logger of its own. A carrier must
    pickle by reference (a module-level instance whose ``__reduce__``
    returns its global name), so that a process-pool payload names it and
    the worker imports its module.
    """

    @property
    def name(self) -> str:
        """Name the carrier in registries and messages: an HTTP token, unique here."""
        ...  # pragma: no cover - a Protocol's member

    @property
    def fields(self) -> Collection[str]:
        """Name the keys (lowercase) a text map of this carrier may hold.

        A transport that also carries other keys (the headers of an HTTP
        request) picks these out for :meth:`applied`.
        """
        ...  # pragma: no cover - a Protocol's member

    def capture(self) -> dict[str, str] | None:
        """Return what is current here as a text map, or ``None`` when there is nothing to carry."""
        ...  # pragma: no cover - a Protocol's member

    def applied(self, carried: Mapping[str, str], /) -> AbstractContextManager[object]:
        """Return a context manager that makes ``carried`` current here, for its block.

        ``carried`` is untrusted: a text map that came from another process
        or service, perhaps malformed. What can't be read is ignored.
        """
        ...  # pragma: no cover - a Protocol's member


_lock = threading.Lock()
renew_locks_after_fork(globals(), "_lock")

# Replaced whole, under the lock, never changed in place: readers on the hot
# path (every process-pool submit, every outgoing request) read the tuple
# without the lock, which is safe without a GIL too.
_carriers: tuple[Carrier, ...] = ()


def register_carrier(carrier: Carrier) -> None:
    """Make every transport carry ``carrier``'s text map from now on.

    Registering the same object again does nothing.

    Raises:
        TypeError: ``carrier`` is not a carrier (no ``name``, ``fields``,
            ``capture`` or ``applied``), or doesn't pickle by reference.
        ValueError: Its name is not an HTTP token, or another carrier of
            that name is registered.
    """
    global _carriers  # noqa: PLW0603 (replaced whole: see above)
    _check_carrier(carrier)
    with _lock:
        for registered in _carriers:
            if registered is carrier:
                return
            if registered.name == carrier.name:
                msg = (
                    f"another carrier is registered under the name {carrier.name!r}: "
                    f"{registered!r}. Unregister it first, or give this one another name."
                )
                raise ValueError(msg)
        _carriers = (*_carriers, carrier)


def unregister_carrier(name: str) -> None:
    """Stop carrying the carrier registered as ``name``; without one, do nothing."""
    global _carriers  # noqa: PLW0603 (replaced whole: see above)
    with _lock:
        _carriers = tuple(carrier for carrier in _carriers if carrier.name != name)


def registered_carriers() -> tuple[Carrier, ...]:
    """Return the registered carriers, in the order they were registered."""
    return _carriers


def carrier_named(name: str) -> Carrier | None:
    """Return the carrier registered as ``name``, or ``None``."""
    for carrier in _carriers:
        if carrier.name == name:
            return carrier
    return None


def capture_all() -> tuple[tuple[Carrier, dict[str, str]], ...]:
    """Return each registered carrier that has something to carry here, with its text map.

    Empty when no carrier is registered, or none has anything to carry.
    The text maps are as the carriers gave them: a transport checks them
    with :func:`check_text_map` before they leave.
    """
    carriers = _carriers
    if not carriers:
        return ()
    captured = []
    for carrier in carriers:
        text_map = carrier.capture()
        if text_map:
            captured.append((carrier, text_map))
    return tuple(captured)


@contextlib.contextmanager
def applied_all(carried: Iterable[tuple[Carrier, Mapping[str, str]]]) -> Iterator[None]:
    """Make each carrier's text map current, for a block; on exit, put everything back.

    Entered in order, left in the reverse order.
    """
    with contextlib.ExitStack() as stack:
        for carrier, text_map in carried:
            stack.enter_context(carrier.applied(text_map))
        yield


def check_text_map(name: str, text_map: object) -> None:
    """Refuse a text map that some transport could not carry as it is.

    A text map is a dict of HTTP field names to printable ASCII, at most
    :data:`~.wire.MAX_BYTES` bytes in all (keys and values). The messages
    name the carrier ``name`` and quote nothing of the values.

    Raises:
        TypeError: ``text_map`` is not a dict of str to str.
        ValueError: A key is not an HTTP field name, a value is not
            printable ASCII, or the map is over the limit.
    """
    if not isinstance(text_map, dict):
        _refuse_type(name, text_map)
    size = 0
    for key, value in text_map.items():
        if not isinstance(key, str) or not isinstance(value, str):
            _refuse_type(name, text_map)
        if _TOKEN.fullmatch(key) is None:
            msg = (
                f"the carrier {name!r} captured the key {key!a}, which is not an HTTP "
                "field name, so it can't be carried."
            )
            raise ValueError(msg)
        if value and not is_printable_ascii(value):
            msg = (
                f"the carrier {name!r} captured a value for {key!a} that is not printable "
                "ASCII, so it can't be carried."
            )
            raise ValueError(msg)
        size += len(key) + len(value)
    if size > MAX_BYTES:
        msg = (
            f"the carrier {name!r} captured {size} bytes, over the limit of {MAX_BYTES} "
            "bytes for one carrier's text map, so it can't be carried."
        )
        raise ValueError(msg)


def _refuse_type(name: str, text_map: object) -> NoReturn:
    msg = (
        f"the carrier {name!r} captured {type(text_map).__name__}, not a text map "
        "(a dict of str to str), so it can't be carried."
    )
    raise TypeError(msg)


def _check_carrier(carrier: object) -> None:
    if not (
        hasattr(carrier, "name")
        and hasattr(carrier, "fields")
        and callable(getattr(carrier, "capture", None))
        and callable(getattr(carrier, "applied", None))
    ):
        msg = (
            f"register_carrier takes a Carrier (name, fields, capture(), applied()), got "
            f"{type(carrier).__name__} {carrier!r}."
        )
        raise TypeError(msg)
    name = getattr(carrier, "name", None)
    if not isinstance(name, str) or _TOKEN.fullmatch(name) is None:
        msg = f"a carrier's name must be an HTTP token such as 'opentelemetry', got {name!r}."
        raise ValueError(msg)
    try:
        pickles_by_reference = pickle.loads(pickle.dumps(carrier)) is carrier  # noqa: S301 (ours)
    except Exception:  # noqa: BLE001 (any failure to pickle means the same thing)
        pickles_by_reference = False
    if not pickles_by_reference:
        msg = (
            f"the carrier {name!r} must pickle by reference, so that a process-pool payload "
            "can name it: make it a module-level instance whose __reduce__ returns its "
            "global name."
        )
        raise TypeError(msg)
