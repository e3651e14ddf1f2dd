"""Celery: carry the request ID and allowed context from publisher to task (extra ``celery``).

One call per app, where the app is created, on the publishing side and in
the worker alike (both usually import the same module)::

    from celery import Celery
    from contextual.integrations.celery import install

    app = Celery("shop", broker="redis://localhost:6379/0")
    install(app, allow={"myapp.tenant": ["tenant"]})

Every task published through ``app`` from inside a request then carries the
request ID (and the allowed stores and keys) in a message header, and the
worker runs the task with them; a task that arrives without a request ID
runs under a new one. To log them, attach a
:class:`~contextual.ContextFilter` to the worker's handlers, with
:func:`task_fields` as a source for the task's own ID and its parent's; the
how-to :doc:`/howto/celery` shows how.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, cast, final

from contextual import ContextStore, Snapshot, capture, get_request_id, new_request_id
from contextual._core.fork import renew_locks_after_fork
from contextual._core.store import backend_of, propagating_stores
from contextual._propagation.carriers import (
    applied_all,
    capture_all,
    carrier_named,
    check_text_map,
)
from contextual._propagation.wire import (
    CONTROL_CHARACTERS,
    LOGGED_CHARS,
    MAX_BYTES,
    MAX_VALUE_BYTES,
    REQUEST_ID_KEY,
    REQUEST_KEY,
    REQUEST_STORE_NAME,
    USER_KEY,
    Arrival,
    Problem,
    Reported,
    envelope,
    escape_for_log,
    generate_request_id,
    holds_control,
    is_printable_ascii,
    open_envelope,
    rebuild_request,
    shown,
    within_limits,
)
from contextual.db import TransactionManager

from ._carrier import AllowList, AllowSpec, applied
from ._extra import missing_library
from ._headers import check_callable

if TYPE_CHECKING:
    from contextual._propagation.carriers import Carrier
    from contextual._propagation.wire import Dropped

__all__ = ["CARRIERS_HEADER", "HEADER", "enqueue_on_commit", "install", "task_fields"]

# Celery ships no type information (no py.typed). Imported through importlib,
# its objects are Any, narrowed below to the few Protocols this module uses:
# mypy --strict holds whether or not Celery is installed where it runs.
try:
    _signals: Any = importlib.import_module("celery.signals")
    _Celery: Any = importlib.import_module("celery").Celery
    _Signature: Any = importlib.import_module("celery.canvas").Signature
    _Task: Any = importlib.import_module("celery.app.task").Task
except ImportError as exc:
    raise missing_library(__name__, "Celery", "celery", exc) from exc

#: The message header that carries the context: ``{"format": 1, "stores":
#: {store name: {key: value}}}``, the allowed part of
#: :meth:`Snapshot.to_dict() <contextual.Snapshot.to_dict>`, within the
#: byte limits that :func:`install` describes.
#:
#: .. versionadded:: 0.1.0
HEADER: Final = "contextual"

#: The message header that carries context which is no store (OpenTelemetry's
#: span context, once :func:`contextual.integrations.opentelemetry.install`
#: registered its carrier): ``{carrier name: text map}``, each text map a
#: dict of HTTP field names to printable ASCII (``{"traceparent":
#: "00-..."}``), of at most 8192 bytes.
#:
#: .. versionadded:: 0.2.0
CARRIERS_HEADER: Final = "contextual_carriers"

# Where problems with headers and values are reported, as warnings: the
# middleware's logger, so one logging rule covers every boundary.
_logger: Final = logging.getLogger("contextual.integrations")
# Where what happens to one task is said: a new request ID, a generator
# that failed.
_task_logger: Final = logging.getLogger(__name__)
# Where a task lost after its transaction committed is reported: the logger
# that reports every other failed after-commit hook, so that one alert
# covers them all.
_transactions_logger: Final = logging.getLogger("contextual.transactions")
# How the byte limits measure a key and a value: compact JSON, left as
# UTF-8 (not \u escapes). One encoder, made once: json.dumps() with
# options builds a new one for every call.
_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# The types every Celery transport and serializer carries as they are: JSON's.
_PLAIN: Final = (str, int, float, bool, type(None))
_PLAIN_DEPTH: Final = 32
_SHOWN_PROBLEMS: Final = 5
# The kind of problem reported for a refused request ID.
_REQUEST_ID_PROBLEM: Final = "request ID"
_NO_TASK: Final = "-"
_TASK_ID: Final = "task_id"
_PARENT_TASK_ID: Final = "parent_task_id"

# The running task's IDs, set by the worker side from Celery's own request
# for the length of each task. A "context" store that propagates: work the
# task hands to a ContextExecutor, to_thread() or a process pool logs them
# too. It never travels in a message: a child task has IDs of its own.
_TASKS: Final = ContextStore("contextual.celery", defaults={_TASK_ID: None, _PARENT_TASK_ID: None})
_read_tasks: Final = backend_of(_TASKS).get


class _CeleryApp(Protocol):
    """What :func:`install` uses of a ``celery.Celery`` app."""

    send_task: Callable[..., Any]


class _TaskLike(Protocol):
    """What the task signals' handlers use of a task: its app and its request."""

    app: object
    request: object


class _SignatureLike(Protocol):
    """What :func:`enqueue_on_commit` uses of a signature (or a canvas)."""

    def freeze(self) -> Any: ...

    def apply_async(self) -> Any: ...


@final
class _Installed:
    """One app's settings; shared with its ``send_task`` wrapper, so a new install updates both."""

    __slots__ = ("allow", "generator", "validator")

    def __init__(
        self,
        allow: AllowList,
        validator: Callable[[str], bool] | None,
        generator: Callable[[], str] | None,
    ) -> None:
        self.allow = allow
        self.validator = validator
        self.generator = generator


# The apps install() was called on. Weak: an app that goes away takes its
# entry with it.
_installed: weakref.WeakKeyDictionary[object, _Installed] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()
# What was reported already, to say it once per process: the (store, key)
# pairs that could not be sent, and the kinds of problems met in headers.
# The pairs are bounded: a store allowed whole may have keys without end.
_MAX_UNSENDABLE_REPORTED: Final = 100
_unsendable_reported: Final = Reported(_MAX_UNSENDABLE_REPORTED)
_incoming_reported: Final = Reported()
# The carriers whose text map could not be sent, by name.
_uncarried_reported: Final = Reported()


renew_locks_after_fork(globals(), "_install_lock")

# Per thread: (task ID, the exits that undo what task_prerun applied), one
# entry per task running in this thread (tasks applied eagerly nest).
_running = threading.local()


def install(
    app: _CeleryApp,
    *,
    allow: AllowSpec = None,
    validator: Callable[[str], bool] | None = None,
    generator: Callable[[], str] | None = new_request_id,
) -> None:
    """Carry the allowed context from publishers to the tasks of ``app``.

    Call it once where the app is created, in a module that both the
    publishing processes and the worker import. Calling it again for the
    same app only replaces ``allow``, ``validator`` and ``generator``;
    other apps in the process are not affected.

    **Publishing.** Every message that ``app`` publishes carries, in the
    :data:`HEADER` message header, the values of the publishing code's
    context that ``allow`` lets through: the request ID always (when a
    request is open), other stores and keys only when named; nothing else
    leaves the process. That covers ``delay()``, ``apply_async()``,
    ``send_task()``, canvas (chains, groups, chords) and the links and chord
    bodies that the worker publishes; a retry carries the header of the
    attempt it retries (Celery copies the message's headers). Values must be
    plain data: str, int, float, bool, ``None``, and lists, tuples (they
    arrive as lists) and dicts of those, which every transport carries. Any
    other value (an int too long for ``str()`` included) stays behind, with
    a warning the first time for each store and key (for the first 100
    keys). So does what a worker would refuse for its size, under the byte
    limits below: a key whose value is too large, and the keys from the
    first one that would take the message past the total on (the request
    ID counts first, so it is the last to go). Request fields that are
    ``None`` (no request, no user) are not sent, and a message with nothing
    to carry has no header. The task IDs of :func:`task_fields` never
    travel: each task gets its own from Celery. A ``headers`` option that
    already holds :data:`HEADER` is sent as given, unchecked.

    **Carriers.** Context that is no store travels beside it, in the
    :data:`CARRIERS_HEADER` header: the text map of every carrier registered
    in the publishing process that has something to carry (OpenTelemetry's
    span context, once :func:`contextual.integrations.opentelemetry.install`
    ran), under the carrier's name. Each text map has a limit of its own,
    apart from the context's: a dict of HTTP field names to printable ASCII
    of at most 8192 bytes (keys and values); a carrier whose text map breaks
    that stays behind, with a warning the first time. A ``headers`` option
    that already holds :data:`CARRIERS_HEADER` is sent as given.

    **Byte limits.** The same as for context over HTTP
    (``contextual._propagation.wire.MAX_VALUE_BYTES`` and ``MAX_BYTES``): one key and
    its value may take at most 4096 bytes, and the entries of one message
    8192 bytes in all. An entry's size is the length of its key plus that
    of its value, each encoded as compact JSON in UTF-8
    (``len(json.dumps(x, ensure_ascii=False, separators=(",", ":")).encode())``),
    whatever serializer the app uses: ``"k": "v"`` takes 6 bytes, ``"ë"``
    counts 2 bytes, and store names don't count. The entries count in
    order, the request store's first. Carriers' text maps don't count
    toward them.

    **In the worker.** For each task of ``app``, from ``task_prerun`` to
    ``task_postrun``, the header's values that the worker's own ``allow``
    accepts are set, each in the worker's store of the same name. The
    request store gets the publisher's request ID (and user, if allowed),
    and :func:`~contextual.current_request` returns a
    :class:`~contextual.RequestContext` with them. The carriers registered
    in the worker make current what their text map in the
    :data:`CARRIERS_HEADER` header holds (a span started in the task is a
    child of the publisher's); the text map of a carrier that is not
    registered in the worker is ignored. :func:`task_fields` gives the
    task's ID and its parent's. That span of time covers the task's body,
    its ``on_failure``, ``on_retry`` and ``after_return`` handlers, and
    Celery's own log lines about the task ("succeeded", "raised
    unexpected", "Retry in"), so a :class:`~contextual.ContextFilter` on
    the worker's handlers puts the request ID in all of them.

    **Tasks without a request ID.** A task that arrives without a request
    ID, or with one that is refused, runs under a new one from
    ``generator`` (with the user that came, if any), unless a request is
    open already where it runs (a task applied eagerly inside a request
    runs in that request). That is said in one DEBUG record on the
    ``contextual.integrations.celery`` logger, logged inside the task, so
    that it carries the new ID: tasks published outside any request (by
    ``celery beat``, a script, a shell) are routine, and their other lines
    carry the new ID anyway. The subtasks the task publishes carry the new
    ID on, so one ID ties a scheduled task and all it causes together.

    What sees the values: the task, code it calls, and work it hands on with
    the propagation layer (a :class:`~contextual.ContextExecutor`,
    :func:`~contextual.capture`) or publishes (subtasks carry the task's
    context as it is when they are published). A plain thread the task
    starts does not. Nothing flows back to the publisher.

    Nothing outlives the task: every propagating store is scoped for the
    length of the task, so after ``task_postrun`` the worker's stores are
    exactly as they were before it, values the task wrote included, also
    when the task raised, retried, or was revoked with ``terminate=True``
    by a signal that raises in it (``SIGUSR1``); nothing is set to ``None``.
    The next task on that process or thread, in the prefork and threads
    pools alike, never sees them. Stores created with ``propagate=False``,
    meant to outlive a task (a per-thread connection), keep what it wrote.

    Incoming headers are untrusted: values the worker's ``allow`` doesn't
    name are dropped, a request ID must pass the middleware's check (1 to
    128 characters from ``A-Z a-z 0-9 . _ : -``, or ``validator``), a key
    or value holding a str with a control or format character (a line
    break would forge log lines, a bidirectional override such as U+202E
    would make them read other than they are; the rule is the one every
    boundary of contextual applies: Unicode categories Cc and Cf, U+2028
    and U+2029), in it or in a list or dict in it, is dropped, and so is a
    value that is not plain data. Then the byte limits apply: an entry over
    4096 bytes is dropped, and from the first entry that would take the
    total past 8192 bytes on, every entry is dropped. A malformed header or
    entry is ignored, and so is a carrier's text map that is not one (see
    above). Each kind of problem is reported once per process, as a warning
    on the ``contextual.integrations`` logger logged inside the task, so a
    misbehaving publisher can't flood the log. The task always runs.

    Why this way: publishing goes through a wrapper around this app's
    ``send_task``, the method that every publishing path of the app ends
    in. The ``before_task_publish`` signal doesn't say which app publishes,
    so through it two apps in one process would share one ``allow``, and
    an app without :func:`install` would send context too. The worker side
    uses the ``task_prerun`` and ``task_postrun`` signals (connected once
    per process; each task's app decides), which Celery sends in the task's
    thread around all it does for the task, ``task_postrun`` from a
    ``finally`` block; a ``Task`` base class would miss tasks defined before
    :func:`install` and Celery's own log lines.

    Args:
        app: The ``celery.Celery`` app.
        allow: The stores and keys that may travel, besides the request ID:
            ``None`` (the request ID alone), store names (every key), or
            ``{store name: True | [key, ...]}``. Each side filters with its
            own: the publisher's decides what leaves, the worker's what is
            applied.
        validator: Replaces the check of incoming request IDs, as the
            middleware's ``validator=`` does: takes the ID, returns whether
            to keep it. Whatever it says, only printable ASCII is kept; when
            it raises, the ID is refused. Give the worker the one the
            middleware of the publishing services uses.
        generator: Makes the request ID of a task that arrives without one,
            as the middleware's ``generator=`` does: a non-empty str of
            printable ASCII (anything else, or an error, is logged as an
            ERROR on the ``contextual.integrations.celery`` logger and
            replaced by :func:`~contextual.new_request_id`). It is called in
            the task's thread as the task starts (``celery.current_task`` is
            the task). Make IDs that ``validator`` accepts: the task's
            subtasks carry the ID to workers that check it. ``None`` makes
            none: such a task runs without a request, as before 0.2.

    Raises:
        TypeError: ``app`` is not a Celery app, ``allow`` is malformed, or
            ``validator`` or ``generator`` is not a plain callable (nor
            ``None``).
        ValueError: ``allow`` lets the store of :func:`task_fields`
            (``"contextual.celery"``) travel.

    .. versionadded:: 0.1.0

    .. versionchanged:: 0.2.0
       Carried context has the byte limits of context over HTTP: the
       publisher leaves behind, with a warning, what the worker would
       refuse for its size, and the worker drops an oversized entry and
       whatever comes past the total. The worker also refuses format
       characters (Unicode category Cf, such as the bidirectional override
       U+202E) in keys and values, and values that are not plain data.

    .. versionchanged:: 0.2.0
       A task that arrives without a request ID runs under a new one
       (``generator``); the running task's IDs are log fields
       (:func:`task_fields`); registered carriers (OpenTelemetry's span
       context) travel in the :data:`CARRIERS_HEADER` header.
    """
    if not isinstance(app, _Celery):
        msg = (
            f"install() takes a Celery app (a celery.Celery instance), got "
            f"{type(app).__name__} {app!r}."
        )
        raise TypeError(msg)
    allow_list = AllowList(allow)
    if allow_list.allows(_TASKS.name, _TASK_ID) or allow_list.allows(_TASKS.name, _PARENT_TASK_ID):
        msg = (
            f"allow lets the store {_TASKS.name!r} travel, but it holds the IDs of the task "
            "running here, which never travel: each task gets its own from Celery, and a "
            "child task's parent_task_id is its parent's task_id. Remove it from allow."
        )
        raise ValueError(msg)
    check_callable("validator", validator)
    _check_generator(generator)
    _connect_signals()
    with _install_lock:
        installed = _installed.get(app)
        if installed is not None:
            installed.allow = allow_list
            installed.validator = validator
            installed.generator = generator
            return
        installed = _Installed(allow_list, validator, generator)
        app.send_task = _with_context(app.send_task, installed)
        _installed[app] = installed


def _check_generator(generator: object) -> None:
    if isinstance(generator, bool) or not (generator is None or callable(generator)):
        msg = (
            f"generator must be a function that returns a new request ID (such as "
            f"contextual.new_request_id), or None for tasks that arrive without one to run "
            f"without one; got {type(generator).__name__} {generator!r}."
        )
        raise TypeError(msg)
    check_callable("generator", generator)


def task_fields() -> dict[str, str]:
    """Return the ``task_id`` and ``parent_task_id`` of the task running here, as log fields.

    A source for the ``sources=`` option of :class:`~contextual.ContextFilter`,
    :func:`~contextual.integrations.structlog.add_context` and
    :func:`~contextual.integrations.loguru.patch_context`: it runs for every
    record, in the code that logs, so that each line of a task carries the
    task's ID, and that of the task that published it (Celery's
    ``request.parent_id``)::

        handler.addFilter(ContextFilter(sources=[task_fields]))
        handler.setFormatter(logging.Formatter("%(task_id)s %(parent_task_id)s %(message)s"))

    Both are ``"-"`` outside a task, and ``parent_task_id`` is ``"-"`` for a
    task that no task published. They are set for the tasks of the apps
    that :func:`install` set up, in a worker and when applied eagerly
    (``task.apply()``, ``task_always_eager``), from ``task_prerun`` to
    ``task_postrun``: Celery's own lines about the task ("succeeded",
    "raised unexpected") carry them too, while the worker's main process
    lines ("received") have ``"-"``. Work the task hands on with the
    propagation layer (a :class:`~contextual.ContextExecutor`,
    :func:`~contextual.to_thread`, a
    :class:`~contextual.ContextProcessPoolExecutor` whose workers import
    this module) sees them too; a task a task applies eagerly has its own.
    They never travel with a message, whatever ``install(allow=...)``
    says: a child task gets IDs of its own. An ID that is not short
    printable ASCII (only a foreign publisher sends one) is shown escaped,
    so it can't forge a log line. It never raises.

    Call it yourself to read them anywhere the task's context reaches:
    ``task_fields()["task_id"]``. (In the task's own thread,
    ``celery.current_task.request`` has them too, and more.)

    Example:
        >>> from contextual.integrations.celery import task_fields
        >>> task_fields()
        {'task_id': '-', 'parent_task_id': '-'}

    .. versionadded:: 0.2.0
    """
    values = _read_tasks()
    return {
        _TASK_ID: values.get(_TASK_ID) or _NO_TASK,
        _PARENT_TASK_ID: values.get(_PARENT_TASK_ID) or _NO_TASK,
    }


def _connect_signals() -> None:
    # A dispatch_uid makes a second connect a no-op. Strong references: the
    # handlers are module functions that live as long as the process.
    _signals.task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid=f"{__name__}.prerun")
    _signals.task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid=f"{__name__}.postrun")


def _with_context(send_task: Callable[..., Any], installed: _Installed) -> Callable[..., Any]:
    """Wrap an app's ``send_task`` so that every message carries the allowed context."""

    @functools.wraps(send_task)
    def send_task_with_context(
        name: str, args: Any = None, kwargs: Any = None, *more: Any, **options: Any
    ) -> Any:
        headers = options.get("headers")
        # Headers that are not a mapping go to Celery untouched, to be refused there.
        if headers is None or isinstance(headers, Mapping):
            given: Mapping[str, Any] = headers or {}
            added: dict[str, Any] = {}
            if HEADER not in given:
                payload = _outgoing(installed.allow, name)
                if payload is not None:
                    added[HEADER] = payload
            if CARRIERS_HEADER not in given:
                carried = _outgoing_carriers(name)
                if carried is not None:
                    added[CARRIERS_HEADER] = carried
            if added:
                options["headers"] = {**given, **added}
        return send_task(name, args, kwargs, *more, **options)

    return send_task_with_context


def _outgoing(allow: AllowList, task_name: str) -> dict[str, Any] | None:
    """The header value for a message published here and now, or ``None`` for no header.

    It holds what a worker of the same version takes whole: plain data,
    within the byte limits that :func:`~contextual._propagation.wire.within_limits`
    applies on both sides. What stays behind is reported once per store and key.
    """
    stores = allow.outgoing()
    # Whatever allow says of its other keys: a child task has IDs of its own.
    stores.pop(_TASKS.name, None)
    request = stores.get(REQUEST_STORE_NAME)
    if request is not None:
        request.pop(REQUEST_KEY, None)
        for key in [key for key, value in request.items() if value is None]:
            del request[key]  # no request or no user: nothing to send
    for name, values in list(stores.items()):
        for key, value in list(values.items()):
            if not _is_plain(value, _PLAIN_DEPTH):
                del values[key]
                _report_unsendable(name, key, value, task_name)
    stores, dropped = within_limits(stores, _measure)
    for entry in dropped:
        _report_unsendable(entry.store, entry.key, None, task_name, entry)
    if not stores:
        return None
    return envelope(stores)


def _outgoing_carriers(task_name: str) -> dict[str, dict[str, str]] | None:
    """The carriers' header for a message published here and now, or ``None`` for none.

    A text map that no transport could carry stays behind, reported once
    per carrier.
    """
    captured = capture_all()
    if not captured:
        return None
    carried: dict[str, dict[str, str]] = {}
    for carrier, text_map in captured:
        try:
            check_text_map(carrier.name, text_map)
        except (TypeError, ValueError) as exc:
            if _uncarried_reported.first(carrier.name):
                _logger.warning(
                    "Did not send the text map of the carrier %s with task %s: %s Later "
                    "problems with this carrier are not reported.",
                    escape_for_log(carrier.name),
                    task_name,
                    exc,
                )
            continue
        carried[carrier.name] = dict(text_map)
    return carried or None


def _measure(key: str, value: object) -> int:
    """Measure one carried key and its value as compact JSON in UTF-8, on both sides.

    Whatever serializer the messages use: ``"k": "v"`` takes 6 bytes.
    """
    # surrogatepass: a lone surrogate in a local value must not fail the
    # publish; a worker refuses it by the character rule.
    return len(_JSON(key).encode(errors="surrogatepass")) + len(
        _JSON(value).encode(errors="surrogatepass")
    )


def _is_plain(value: object, depth: int) -> bool:
    kind = type(value)
    if kind is int:
        return _int_fits(cast("int", value))
    if kind in _PLAIN:
        return True
    if depth == 0:
        return False
    if kind is list or kind is tuple:
        return all(_is_plain(item, depth - 1) for item in cast("list[object]", value))
    if kind is dict:
        items = cast("dict[object, object]", value).items()
        return all(type(k) is str and _is_plain(v, depth - 1) for k, v in items)
    return False


def _int_fits(value: int) -> bool:
    """Tell whether JSON can encode ``value``: not past ``sys.get_int_max_str_digits()``."""
    try:
        str(value)
    except ValueError:
        return False
    return True


def _report_unsendable(
    store: str, key: str, value: object, task_name: str, dropped: Dropped | None = None
) -> None:
    """Warn that ``store[key]`` stayed behind, the first time for that store and key.

    Args:
        store: The store's name.
        key: The key.
        value: The value, when it is not plain data.
        task_name: The task published without it.
        dropped: Why, when it is plain data that broke a byte limit.
    """
    if not _unsendable_reported.first((store, key)):
        return
    # Worded here, past the check: every message published runs the calls.
    if dropped is None:
        reason = (
            f"its value (a {type(value).__name__}) is not, or holds something that is not, "
            "plain data (str, int, float, bool, None, and lists, tuples and dicts of those; no "
            "int past sys.get_int_max_str_digits()), which every Celery transport carries"
        )
        fix = "Store plain data under that key, or leave it out of install(allow=...)."
    elif dropped.limit == "value":
        reason = (
            f"with its key, it takes {dropped.size} bytes as JSON, more than the "
            f"{MAX_VALUE_BYTES} that a worker accepts for one key and its value"
        )
        fix = (
            "Store something smaller under that key (an ID to look the rest up by), "
            "or leave it out of install(allow=...)."
        )
    else:
        reason = (
            f"with it, the message would carry more than the {MAX_BYTES} bytes of context "
            "that a worker accepts in all (the request ID and the values before it were kept)"
        )
        fix = "Carry less: store smaller values, or allow fewer keys in install(allow=...)."
    _logger.warning(
        "Did not send %s[%s] with task %s: %s. %s Later problems with this key are not reported.",
        escape_for_log(store),
        escape_for_log(key),
        task_name,
        reason,
        fix,
    )


# -- in the worker ---------------------------------------------------------------


def _incoming(
    raw: object, allow: AllowList, validator: Callable[[str], bool] | None = None
) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """What a task should apply of a received header, and what was wrong with it.

    Returns:
        The allowed values by store (a request ID comes with its
        RequestContext), and the kind and description of each malformed
        part, ignored.
    """
    if raw is None:
        return {}, []
    stores, problems = open_envelope(raw)
    selected = _checked_values(allow.select(stores), problems)
    selected, dropped = within_limits(selected, _measure)
    _describe_dropped(dropped, problems)
    if REQUEST_STORE_NAME in selected:
        _rebuild_request(selected, problems, validator)
    return selected, problems


def _checked_values(
    stores: dict[str, dict[str, Any]], problems: list[Problem]
) -> dict[str, dict[str, Any]]:
    """``stores`` without the entries that break the character rule or are not plain data.

    The character rule is :func:`contextual._propagation.wire.holds_control`'s; plain
    data is what publishers send (see :func:`_is_plain`), and what the
    byte limits can measure.
    """
    clean: dict[str, dict[str, Any]] = {}
    for name, values in stores.items():
        kept: dict[str, Any] = {}
        for key, value in values.items():
            # The request ID has a check of its own, below: printable ASCII only.
            is_id = name == REQUEST_STORE_NAME and key == REQUEST_ID_KEY
            if not is_id and (
                holds_control(key, _PLAIN_DEPTH) or holds_control(value, _PLAIN_DEPTH)
            ):
                text = (
                    f"the key or value of {shown(name)}[{shown(key)}] holds "
                    f"{CONTROL_CHARACTERS}, which would forge or garble log lines"
                )
                problems.append(Problem("control", text))
            elif not _is_plain(value, _PLAIN_DEPTH):
                text = (
                    f"the value of {shown(name)}[{shown(key)}] is not plain data "
                    f"(a {type(value).__name__})"
                )
                problems.append(Problem("entry", text))
            else:
                kept[key] = value
        if kept:
            clean[name] = kept
    return clean


def _describe_dropped(dropped: list[Dropped], problems: list[Problem]) -> None:
    """Add a problem for each entry over the value limit, and one for those past the total."""
    past_total = [entry for entry in dropped if entry.limit == "total"]
    for entry in dropped:
        if entry.limit == "value":
            text = (
                f"{_entry(entry)} takes {entry.size} bytes as JSON, more than the "
                f"{MAX_VALUE_BYTES} that one key and its value may take"
            )
            problems.append(Problem("value size", text))
    if past_total:
        text = (
            f"the entries from {_entry(past_total[0])} on ({len(past_total)} of them) would "
            f"take the header past the {MAX_BYTES} bytes that one message may carry in all"
        )
        problems.append(Problem("total size", text))


def _entry(entry: Dropped) -> str:
    return f"{shown(entry.store)}[{shown(entry.key)}]"


def _rebuild_request(
    stores: dict[str, dict[str, Any]],
    problems: list[Problem],
    validator: Callable[[str], bool] | None,
) -> None:
    """Check the request ID and open the request with its RequestContext, in ``stores``."""
    request_id = stores[REQUEST_STORE_NAME].get(REQUEST_ID_KEY)
    arrival = rebuild_request(request_id, stores, validator)
    if arrival.error is not None:
        text = f"the validator raised {shown(repr(arrival.error))} on the request ID"
        problems.append(Problem(_REQUEST_ID_PROBLEM, text))
    if arrival.request_id is None and request_id is not None:
        text = f"the request ID {shown(request_id)} is not valid"
        problems.append(Problem(_REQUEST_ID_PROBLEM, text))
    opened = arrival.values()
    if opened:
        stores.setdefault(REQUEST_STORE_NAME, {}).update(opened)


def _name(value: object) -> str:
    """A task's name or ID for a log line: as it is when it is short printable ASCII."""
    if isinstance(value, str) and len(value) <= LOGGED_CHARS and is_printable_ascii(value):
        return value
    return shown(value)


def _received(request: object, header: str) -> object:
    """The value of the message header ``header`` as the task's request holds it, or None."""
    # A worker makes each message header an attribute of the request;
    # task.apply(headers=...) keeps them in request.headers.
    value = getattr(request, header, None)
    if value is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, Mapping):
            value = headers.get(header)
    return value


def _incoming_carriers(
    raw: object,
) -> tuple[list[tuple[Carrier, Mapping[str, str]]], list[Problem]]:
    """The registered carriers that a received carriers' header names, with their text maps.

    Returns:
        Each carrier registered here that the header has a well-formed text
        map for, with it; and the kind and description of each problem.
    """
    if raw is None:
        return [], []
    if not isinstance(raw, Mapping):
        return [], [Problem("carriers", f"the header is a {type(raw).__name__}, not a mapping")]
    carried: list[tuple[Carrier, Mapping[str, str]]] = []
    problems: list[Problem] = []
    unknown: list[str] = []
    for name, text_map in cast("Mapping[object, object]", raw).items():
        carrier = carrier_named(name) if isinstance(name, str) else None
        if carrier is None:
            unknown.append(shown(name))
            continue
        try:
            check_text_map(carrier.name, text_map)
        except (TypeError, ValueError):
            text = (
                f"the text map of the carrier {shown(name)} is not a dict of HTTP field "
                f"names to printable ASCII of at most {MAX_BYTES} bytes"
            )
            problems.append(Problem("carrier", text))
            continue
        carried.append((carrier, cast("Mapping[str, str]", text_map)))
    if unknown:
        more = (
            f" (and {len(unknown) - _SHOWN_PROBLEMS} more)"
            if len(unknown) > _SHOWN_PROBLEMS
            else ""
        )
        text = (
            f"no carrier is registered here as {', '.join(unknown[:_SHOWN_PROBLEMS])}{more}, "
            "so what it carries is not applied (register the same carriers in the worker "
            "as in the publishers: for OpenTelemetry, call "
            "contextual.integrations.opentelemetry.install() in the worker too)"
        )
        problems.append(Problem("unknown carrier", text))
    return carried, problems


def _running_here() -> list[tuple[object, contextlib.ExitStack]]:
    stack: list[tuple[object, contextlib.ExitStack]] | None = getattr(_running, "tasks", None)
    if stack is None:
        stack = _running.tasks = []
    return stack


def _on_task_prerun(
    *, task_id: object = None, task: _TaskLike | None = None, **_signal: object
) -> None:
    """Apply the task's headers for the length of the task: Celery's ``task_prerun``."""
    try:
        installed = _installed.get(getattr(task, "app", None))
    except TypeError:  # not an object a weak reference can point to: not an app
        return
    if installed is None or task is None:
        return
    request = task.request
    name = getattr(task, "name", "?")
    stores, problems = _incoming(_received(request, HEADER), installed.allow, installed.validator)
    carried, carrier_problems = _incoming_carriers(_received(request, CARRIERS_HEADER))
    # Logged once the task's context is applied, so that the records carry it.
    reports: list[Callable[[], None]] = []
    for header, found in ((HEADER, problems), (CARRIERS_HEADER, carrier_problems)):
        if found:
            reports.append(functools.partial(_report_incoming, header, found, name, task_id))
    if installed.generator is not None and _without_request(stores):
        label = f"{_name(name)}[{_name(task_id)}]"
        _open_new_request(stores, problems, installed, reports, label)
    # Celery's own IDs, replacing whatever a header held under that name.
    stores[_TASKS.name] = {
        _TASK_ID: _task_id(task_id),
        _PARENT_TASK_ID: _task_id(getattr(request, "parent_id", None)),
    }
    exits = contextlib.ExitStack()
    try:
        # Carriers first: the stores' scopes and the reports run in the
        # context they carry (a span), and are undone before it.
        exits.enter_context(applied_all(carried))
        exits.enter_context(applied(stores))
        # Scope the other stores too, empty: whatever the task writes in any
        # of them is undone when it ends, so the next task never sees it.
        for store in propagating_stores():
            if store.name not in stores:
                exits.enter_context(store.scope())
        for report_now in reports:
            report_now()
    except BaseException:
        exits.close()
        raise
    _running_here().append((task_id, exits))


def _task_id(value: object) -> str | None:
    """A task ID as its log field shows it: short printable ASCII as it is, or escaped."""
    return None if value is None else _name(value)


def _without_request(stores: Mapping[str, Mapping[str, Any]]) -> bool:
    """Tell whether a task would run without a request: none came, none is open here.

    A task applied eagerly inside a request runs in that request.
    """
    values = stores.get(REQUEST_STORE_NAME)
    return (values is None or REQUEST_ID_KEY not in values) and get_request_id() is None


def _open_new_request(
    stores: dict[str, dict[str, Any]],
    problems: list[Problem],
    installed: _Installed,
    reports: list[Callable[[], None]],
    task: str,
) -> None:
    """Open a request with a new ID in ``stores``, with the user that came, if any."""
    generator = cast("Callable[[], str]", installed.generator)
    request_id = _new_id(generator, reports, task)
    values = stores.setdefault(REQUEST_STORE_NAME, {})
    values.update(Arrival(request_id, values.get(USER_KEY), None).values())
    refused = any(kind == _REQUEST_ID_PROBLEM for kind, _ in problems)
    reports.append(
        functools.partial(
            _task_logger.debug,
            "Task %s arrived %s; it runs under the new request ID %s.",
            task,
            "with a request ID that was refused" if refused else "without a request ID",
            request_id,
        )
    )


def _new_id(generator: Callable[[], str], reports: list[Callable[[], None]], task: str) -> str:
    """Return a new request ID from ``generator``, or a random one if it misbehaves.

    What went wrong is added to ``reports``, as an ERROR for ``task``
    (``name[id]``) to log inside the task.
    """
    generated = generate_request_id(generator)
    if generated.error is not None:
        message = (
            "The request ID generator given to install() raised for task %s; the task runs "
            "under a random request ID instead."
        )
        reports.append(
            functools.partial(_task_logger.error, message, task, exc_info=generated.error)
        )
    elif generated.refused is not None:
        message = (
            "The request ID generator given to install() returned %s for task %s, not a "
            "non-empty str of printable ASCII; the task runs under a random request ID instead."
        )
        reports.append(functools.partial(_task_logger.error, message, generated.refused, task))
    return generated.request_id


def _report_incoming(header: str, problems: list[Problem], task_name: str, task_id: object) -> None:
    """Warn about the problems of kinds not reported yet in this process."""
    new = [text for _, text in _incoming_reported.new(problems)]
    if not new:
        return
    more = len(new) - _SHOWN_PROBLEMS
    _logger.warning(
        "Ignored part of the %r header of task %s[%s]: %s%s. Publishers should send what "
        "contextual.integrations.celery.install() sends; check that both sides run "
        "compatible versions of contextual. Later problems of the same kind are not reported.",
        header,
        _name(task_name),
        _name(task_id),
        "; ".join(new[:_SHOWN_PROBLEMS]),
        f" (and {more} more)" if more > 0 else "",
    )


def _on_task_postrun(*, task_id: object = None, **_signal: object) -> None:
    """Put the worker's stores back as they were before the task: Celery's ``task_postrun``."""
    running = _running_here()
    for index in range(len(running) - 1, -1, -1):
        if running[index][0] == task_id:
            break
    else:
        return  # not one of ours (its app was not installed when it started)
    # Tasks above it missed their postrun (not something Celery does): undo
    # them too, innermost first, so that nothing stays applied.
    finished = running[index:]
    del running[index:]
    for _, exits in reversed(finished):
        exits.close()


# -- transactions ------------------------------------------------------------------


def enqueue_on_commit(
    task_or_signature: object, /, *args: Any, manager: TransactionManager, **kwargs: Any
) -> Any:
    """Publish a task once the current transaction commits; never if it rolls back.

    ``enqueue_on_commit(send_receipt, order_id, manager=db.transactions)``
    inside ``with db.transaction():`` publishes ``send_receipt.delay(order_id)``
    after the outermost transaction commits, so the worker finds the rows
    the task is about; when the transaction rolls back, nothing is
    published. Outside any transaction it publishes at once.

    The context travels as it is now, at the call, not as it is when the
    transaction commits: the message carries the values allowed by
    :func:`install` that the calling code sees here. The transaction itself
    does not: publishing (and a task run eagerly with
    ``task_always_eager``) sees no current transaction of ``manager``.

    A signature given is copied, never changed: the same signature can be
    enqueued again, each time as a new task with an ID of its own.

    Args:
        task_or_signature: A task (called with ``*args`` and ``**kwargs``),
            or a signature or canvas (``task.s(...)``, ``chain(...)``...;
            ``args`` and ``kwargs`` complete it, as for ``delay()``). Set
            publishing options (``countdown``, ``queue``...) on a signature:
            ``task.s(order_id).set(countdown=10)``.
        *args: Positional arguments of the task.
        manager: The transactions to wait for: ``db.transactions`` for a
            :class:`~contextual.db.ThreadLocalDB`, or a
            :class:`~contextual.db.TransactionManager`.
        **kwargs: Keyword arguments of the task.

    Returns:
        The result the task will have (an ``AsyncResult``, or a
        ``GroupResult`` for a group), its ID known at once. After a
        rollback, no task will ever have that ID.

    Raises:
        TypeError: ``task_or_signature`` is not a Celery task or signature,
            or ``manager`` is not a TransactionManager.
        TransactionError: Called from a thread or task that did not open the
            current transaction (a pool worker that inherited the context);
            see :meth:`~contextual.db.TransactionManager.on_commit`.

    When publishing fails after the commit, the commit stands and the task
    is lost: no worker will run it, and the returned result never
    completes. That is logged as an ERROR on the
    ``contextual.transactions`` logger (where every failed after-commit
    hook is reported), with the exception and its traceback, naming the
    task (``shop.send_receipt``; for a canvas, its kind and its tasks:
    ``chain(shop.a, group(shop.b, shop.c))``), its task ID and every task
    ID it froze, and the request it was enqueued from. The record carries
    them as attributes too, ``task_name``, ``task_id`` (the returned
    result's ID) and ``task_ids`` (every ID, the root first, ``task_id``
    last), and is logged inside the context of the call, so a
    :class:`~contextual.ContextFilter` gives it that request's
    ``request_id``. Publish the task again with the same ID
    (``task.apply_async(args, kwargs, task_id=record.task_id)``); the how-to
    :doc:`/howto/celery` shows that, and an outbox for tasks that must not
    be lost. Outside a transaction, a failure to publish propagates to the
    caller instead.

    .. versionadded:: 0.1.0

    .. versionchanged:: 0.2.0
       A task that fails to publish after the commit is logged with its
       name, its task IDs and its request ID, once, instead of as a failed
       hook with no name.
    """
    given: object = manager  # checked at run time too: the error would come only at commit
    if not isinstance(given, TransactionManager):
        msg = (
            f"manager must be a TransactionManager (db.transactions for a ThreadLocalDB), "
            f"got {type(manager).__name__} {manager!r}."
        )
        raise TypeError(msg)
    signature = _signature(task_or_signature, args, kwargs)
    result = signature.freeze()  # fixes the task IDs now: the result is known before sending
    publication = _Publication(signature, result, capture())
    manager.on_commit(publication)
    # Run from here on, it runs after a commit, with no caller left to raise to.
    publication.deferred = True
    return result


@final
class _Publication:
    """The hook of :func:`enqueue_on_commit`: publish, and report a task lost after a commit.

    A failure of a hook that runs after the commit is its own to report:
    the transaction's generic log line would name a function, not the task
    that will never run.
    """

    __slots__ = ("deferred", "result", "signature", "snapshot")

    def __init__(self, signature: _SignatureLike, result: object, snapshot: Snapshot) -> None:
        self.signature = signature
        self.result = result
        self.snapshot = snapshot
        self.deferred = False

    def __call__(self) -> None:
        # In the context of the call, also when reporting: a ContextFilter
        # then gives the report the request ID the task was enqueued from.
        self.snapshot.run(self._publish)

    def _publish(self) -> None:
        # The snapshot, taken inside the transaction, still holds it, but
        # ended: ``manager.current`` is None here, and a transaction begun
        # here is an outermost one, as TransactionManager passes over ended
        # ones.
        try:
            self.signature.apply_async()
        except Exception as exc:
            if not self.deferred:
                raise  # run at once, outside a transaction: the caller handles it
            _report_lost(self.signature, self.result, exc)


def _report_lost(signature: _SignatureLike, result: object, exc: Exception) -> None:
    """Log that publishing failed with ``exc`` after the commit, with what it was to publish."""
    name = _describe(signature)
    ids = _frozen_ids(result)
    request_id = get_request_id()
    _transactions_logger.error(
        "Lost task %s[%s] (task IDs, root first: %s), enqueued %s: the transaction committed, "
        "then publishing the task failed, so no worker will run it and no result will ever "
        "come for its ID. Publish it again with the same task ID once the broker is "
        "back (task.apply_async(args, kwargs, task_id=...)); to lose none, write the tasks "
        "to an outbox table in the transaction and publish from there (see the Celery how-to).",
        _name(name),
        _name(ids[-1]),
        ", ".join(_name(task_id) for task_id in ids),
        "outside any request" if request_id is None else f"in request {_name(request_id)}",
        exc_info=exc,
        # Not task_id: task_fields() gives every record of a task that name.
        extra={"lost_task_name": name, "lost_task_id": ids[-1], "lost_task_ids": ids},
    )


def _describe(signature: object) -> str:
    """A signature's task name; for a canvas, its kind and its tasks: ``chain(a, group(b, c))``."""
    given: Any = signature  # a Signature, a dict too: canvas nests either
    kind = given.get("subtask_type")
    kwargs: Any = given.get("kwargs") or {}
    if kind == "chord":
        parts = [kwargs["header"], kwargs["body"]]
    elif kind in ("chain", "group"):
        parts = kwargs["tasks"]
    else:
        return str(given.get("task"))
    return f"{kind}({', '.join(_describe(part) for part in parts)})"


def _frozen_ids(result: object) -> list[str]:
    """Every task ID that a frozen signature's result knows: the root first, its own last."""
    ids: dict[str, None] = {}
    # (result, whether its parent and members are listed already); no
    # recursion, so that a chain of any length is walked.
    pending: list[tuple[Any, bool]] = [(result, False)]
    while pending:
        node, expanded = pending.pop()
        if expanded:
            ids.setdefault(str(node.id))
            continue
        pending.append((node, True))
        pending.extend((member, False) for member in reversed(getattr(node, "results", ()) or ()))
        if getattr(node, "parent", None) is not None:
            pending.append((node.parent, False))
    return list(ids)


def _signature(
    task_or_signature: object, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _SignatureLike:
    if isinstance(task_or_signature, _Signature):
        given: Any = task_or_signature
        # freeze() writes the task IDs into the signature: never into the caller's.
        return cast("_SignatureLike", given.clone(args, kwargs))
    if isinstance(task_or_signature, _Task):
        task: Any = task_or_signature
        return cast("_SignatureLike", task.signature(args, kwargs))
    msg = (
        f"enqueue_on_commit() takes a Celery task or signature (task.s(...), a chain...), got "
        f"{type(task_or_signature).__name__} {task_or_signature!r}."
    )
    raise TypeError(msg)
