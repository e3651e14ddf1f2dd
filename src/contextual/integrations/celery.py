"""Celery: carry the request ID and allowed context from publisher to task (extra ``celery``).

One call per app, where the app is created, on the publishing side and in
the worker alike (both usually import the same module)::

    from celery import Celery
    from contextual.integrations.celery import install

    app = Celery("shop", broker="redis://localhost:6379/0")
    install(app, allow={"myapp.tenant": ["tenant"]})

Every task published through ``app`` from inside a request then carries the
request ID (and the allowed stores and keys) in a message header, and the
worker runs the task with them. To log them, attach a
:class:`~contextual.ContextFilter` to the worker's handlers; the how-to
:doc:`/howto/celery` shows how.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, TypeAlias, cast, final

from contextual._fork import renew_locks_after_fork
from contextual._propagation import capture
from contextual._registry import propagating_stores
from contextual._request import RequestContext
from contextual._transaction import TransactionManager
from contextual.integrations._carrier import (
    REQUEST_ID_KEY,
    REQUEST_STORE_NAME,
    AllowList,
    AllowSpec,
    applied,
    has_control,
)
from contextual.integrations._headers import (
    LOGGED_CHARS,
    accepts_request_id,
    check_callable,
    escape_for_log,
    is_printable_ascii,
)

__all__ = ["HEADER", "enqueue_on_commit", "install"]

# Celery ships no type information (no py.typed). Imported through importlib,
# its objects are Any, narrowed below to the few Protocols this module uses:
# mypy --strict holds whether or not Celery is installed where it runs.
try:
    _signals: Any = importlib.import_module("celery.signals")
    _Celery: Any = importlib.import_module("celery").Celery
    _Signature: Any = importlib.import_module("celery.canvas").Signature
    _Task: Any = importlib.import_module("celery.app.task").Task
except ImportError as exc:
    msg = (
        "contextual.integrations.celery needs Celery, which is not installed here: "
        "install it with the 'celery' extra (pip install 'contextual[celery]')."
    )
    raise ImportError(msg, name=exc.name) from exc

#: The message header that carries the context: ``{"format": 1, "stores":
#: {store name: {key: value}}}``, the allowed part of
#: :meth:`Snapshot.to_dict() <contextual.Snapshot.to_dict>`.
#:
#: .. versionadded:: 0.1.0
HEADER: Final = "contextual"

_FORMAT: Final = 1
# Where problems with headers and values are reported, as warnings: the
# middleware's logger, so one logging rule covers every boundary.
_logger: Final = logging.getLogger("contextual.integrations")
# The types every Celery transport and serializer carries as they are: JSON's.
_PLAIN: Final = (str, int, float, bool, type(None))
_PLAIN_DEPTH: Final = 32
# The request store's RequestContext is rebuilt on arrival from the ID and
# user, never sent: it is not plain data.
_REQUEST_KEY: Final = "request"
_USER_KEY: Final = "user_id"
_SHOWN_PROBLEMS: Final = 5
_CONTROL_PROBLEM: Final = (
    "the value of {} holds a control character (a line break, DEL, U+2028...), which "
    "would forge or garble log lines"
)


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

    __slots__ = ("allow", "validator")

    def __init__(self, allow: AllowList, validator: Callable[[str], bool] | None) -> None:
        self.allow = allow
        self.validator = validator


# The apps install() was called on. Weak: an app that goes away takes its
# entry with it.
_installed: weakref.WeakKeyDictionary[object, _Installed] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()
# What was reported already, to say it once per process: the (store, key)
# pairs that could not be sent, and the kinds of problems met in headers.
# A publisher that sends the same bad header with every task can't flood
# the worker's log. The pairs are bounded: a store allowed whole may have
# keys without end.
_unsendable_reported: set[tuple[str, str]] = set()
_MAX_UNSENDABLE_REPORTED: Final = 100
_incoming_reported: set[str] = set()
_report_lock = threading.Lock()


renew_locks_after_fork(globals(), "_install_lock", "_report_lock")

# Per thread: (task ID, the exits that undo what task_prerun applied), one
# entry per task running in this thread (tasks applied eagerly nest).
_running = threading.local()


def install(
    app: _CeleryApp, *, allow: AllowSpec = None, validator: Callable[[str], bool] | None = None
) -> None:
    """Carry the allowed context from publishers to the tasks of ``app``.

    Call it once where the app is created, in a module that both the
    publishing processes and the worker import. Calling it again for the
    same app only replaces ``allow`` and ``validator``; other apps in the
    process are not affected.

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
    keys). Request fields that are ``None`` (no request, no user) are not
    sent, and a message with nothing to carry has no header. A ``headers``
    option that already holds :data:`HEADER` is sent as given.

    **In the worker.** For each task of ``app``, from ``task_prerun`` to
    ``task_postrun``, the header's values that the worker's own ``allow``
    accepts are set, each in the worker's store of the same name. The
    request store gets the publisher's request ID (and user, if allowed),
    and :func:`~contextual.current_request` returns a
    :class:`~contextual.RequestContext` with them. That span covers the
    task's body, its ``on_failure``, ``on_retry`` and ``after_return``
    handlers, and Celery's own log lines about the task ("succeeded",
    "raised unexpected", "Retry in"), so a :class:`~contextual.ContextFilter`
    on the worker's handlers puts the request ID in all of them.

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
    128 characters from ``A-Z a-z 0-9 . _ : -``, or ``validator``), a value
    holding a str with a control character (a line break would forge log
    lines), in it or in a list or dict in it, is dropped, and a malformed
    header or entry is ignored. Each kind of problem is reported once per process, as
    a warning on the ``contextual.integrations`` logger logged inside the
    task, so a misbehaving publisher can't flood the log. The task always
    runs.

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

    Raises:
        TypeError: ``app`` is not a Celery app, ``allow`` is malformed, or
            ``validator`` is not a plain callable.

    .. versionadded:: 0.1.0
    """
    if not isinstance(app, _Celery):
        msg = (
            f"install() takes a Celery app (a celery.Celery instance), got "
            f"{type(app).__name__} {app!r}."
        )
        raise TypeError(msg)
    allow_list = AllowList(allow)
    check_callable("validator", validator)
    _connect_signals()
    with _install_lock:
        installed = _installed.get(app)
        if installed is not None:
            installed.allow = allow_list
            installed.validator = validator
            return
        installed = _Installed(allow_list, validator)
        app.send_task = _with_context(app.send_task, installed)
        _installed[app] = installed


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
        if headers is None or (isinstance(headers, Mapping) and HEADER not in headers):
            payload = _outgoing(installed.allow, name)
            if payload is not None:
                options["headers"] = {**(headers or {}), HEADER: payload}
        return send_task(name, args, kwargs, *more, **options)

    return send_task_with_context


def _outgoing(allow: AllowList, task_name: str) -> dict[str, Any] | None:
    """The header value for a message published here and now, or ``None`` for no header."""
    stores = allow.outgoing()
    request = stores.get(REQUEST_STORE_NAME)
    if request is not None:
        request.pop(_REQUEST_KEY, None)
        for key in [key for key, value in request.items() if value is None]:
            del request[key]  # no request or no user: nothing to send
    for name, values in list(stores.items()):
        for key, value in list(values.items()):
            if not _is_plain(value, _PLAIN_DEPTH):
                del values[key]
                _report_unsendable(name, key, value, task_name)
        if not values:
            del stores[name]
    if not stores:
        return None
    return {"format": _FORMAT, "stores": stores}


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


def _report_unsendable(store: str, key: str, value: object, task_name: str) -> None:
    with _report_lock:
        if (store, key) in _unsendable_reported or len(
            _unsendable_reported
        ) >= _MAX_UNSENDABLE_REPORTED:
            return
        _unsendable_reported.add((store, key))
    _logger.warning(
        "Did not send %s[%s] with task %s, nor will it with later tasks: its value (a %s) "
        "is not, or holds something that is not, plain data (str, int, float, bool, None, "
        "and lists, tuples and dicts of those; no int past sys.get_int_max_str_digits()), "
        "which every Celery transport carries. Store plain data under that key, or leave "
        "it out of install(allow=...).",
        escape_for_log(store),
        escape_for_log(key),
        task_name,
        type(value).__name__,
    )


# -- in the worker ---------------------------------------------------------------


# A problem found in a received header: its kind, and what to say about it.
_Problem: TypeAlias = tuple[str, str]


def _incoming(
    raw: object, allow: AllowList, validator: Callable[[str], bool] | None = None
) -> tuple[dict[str, dict[str, Any]], list[_Problem]]:
    """What a task should apply of a received header, and what was wrong with it.

    Returns:
        The allowed values by store (a request ID comes with its
        RequestContext), and the kind and description of each malformed
        part, ignored.
    """
    if raw is None:
        return {}, []
    if not isinstance(raw, Mapping):
        return {}, [("header", f"the header is a {type(raw).__name__}, not a mapping")]
    version = raw.get("format")
    if type(version) is not int or version != _FORMAT:
        return {}, [("header", f"format {_shown(version)}, where this contextual reads {_FORMAT}")]
    stores = raw.get("stores")
    if not isinstance(stores, Mapping):
        return {}, [("header", f"'stores' is a {type(stores).__name__}, not a mapping")]
    problems: list[_Problem] = []
    clean = _well_formed(stores, problems)
    selected = allow.select(clean)
    selected = _without_control(selected, problems)
    request = selected.get(REQUEST_STORE_NAME)
    if request is not None:
        _rebuild_request(request, problems, validator)
        if not request:
            del selected[REQUEST_STORE_NAME]
    return selected, problems


def _well_formed(
    stores: Mapping[object, object], problems: list[_Problem]
) -> dict[str, dict[str, Any]]:
    """The well-formed entries of ``stores``; each malformed one is described in ``problems``."""
    clean: dict[str, dict[str, Any]] = {}
    for name, values in stores.items():
        if not isinstance(name, str) or not isinstance(values, Mapping):
            problems.append(("entry", f"the entry {_shown(name)} is not store name: mapping"))
            continue
        kept: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(key, str):
                kept[key] = value
            else:
                problems.append(
                    ("entry", f"store {_shown(name)} has a key that is not a str ({_shown(key)})")
                )
        clean[name] = kept
    return clean


def _without_control(
    stores: dict[str, dict[str, Any]], problems: list[_Problem]
) -> dict[str, dict[str, Any]]:
    """``stores`` without the entries whose key or value holds a control character."""
    clean: dict[str, dict[str, Any]] = {}
    for name, values in stores.items():
        kept: dict[str, Any] = {}
        for key, value in values.items():
            # The request ID has a check of its own, below: printable ASCII only.
            is_id = name == REQUEST_STORE_NAME and key == REQUEST_ID_KEY
            if not is_id and (
                _holds_control(key, _PLAIN_DEPTH) or _holds_control(value, _PLAIN_DEPTH)
            ):
                shown = f"{_shown(name)}[{_shown(key)}]"
                problems.append(("control", _CONTROL_PROBLEM.format(shown)))
            else:
                kept[key] = value
        if kept:
            clean[name] = kept
    return clean


def _holds_control(value: object, depth: int) -> bool:
    """Tell whether ``value``, or a str in the lists and dicts in it, holds a control character.

    Values nested deeper than ``depth`` count as holding one.
    """
    if isinstance(value, str):
        return has_control(value)
    if depth == 0:
        return True  # deeper than any publisher sends: refused, unread
    if isinstance(value, list):
        return any(_holds_control(item, depth - 1) for item in cast("list[object]", value))
    if isinstance(value, dict):
        items = cast("dict[object, object]", value).items()
        return any(_holds_control(k, depth - 1) or _holds_control(v, depth - 1) for k, v in items)
    return False


def _rebuild_request(
    request: dict[str, Any], problems: list[_Problem], validator: Callable[[str], bool] | None
) -> None:
    """Check the request ID and pair it with its RequestContext, in place."""
    request.pop(_REQUEST_KEY, None)  # ours to build, never the sender's
    if REQUEST_ID_KEY not in request:
        return
    request_id = request[REQUEST_ID_KEY]
    try:
        accepted = isinstance(request_id, str) and accepts_request_id(request_id, validator)
    except Exception as exc:  # noqa: BLE001 (a broken validator refuses; the task still runs)
        accepted = False
        problems.append(
            ("request ID", f"the validator raised {_shown(repr(exc))} on the request ID")
        )
    if accepted:
        request[_REQUEST_KEY] = RequestContext(request_id, request.get(_USER_KEY))
        return
    del request[REQUEST_ID_KEY]
    if request_id is not None:
        shown = _shown(request_id)
        problems.append(("request ID", f"the request ID {shown} is not valid"))


def _shown(value: object) -> str:
    """``value`` as a log line may show it: one line, escaped, cut short."""
    if isinstance(value, str):
        return escape_for_log(value)
    text = ascii(value)
    return text[:LOGGED_CHARS] + "..." if len(text) > LOGGED_CHARS else text


def _name(value: object) -> str:
    """A task's name or ID for a log line: as it is when it is short printable ASCII."""
    if isinstance(value, str) and len(value) <= LOGGED_CHARS and is_printable_ascii(value):
        return value
    return _shown(value)


def _received(request: object) -> object:
    """The header as the task's request holds it, or None."""
    # A worker makes each message header an attribute of the request;
    # task.apply(headers=...) keeps them in request.headers.
    value = getattr(request, HEADER, None)
    if value is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, Mapping):
            value = headers.get(HEADER)
    return value


def _running_here() -> list[tuple[object, contextlib.ExitStack]]:
    stack: list[tuple[object, contextlib.ExitStack]] | None = getattr(_running, "tasks", None)
    if stack is None:
        stack = _running.tasks = []
    return stack


def _on_task_prerun(
    *, task_id: object = None, task: _TaskLike | None = None, **_signal: object
) -> None:
    """Apply the task's header for the length of the task: Celery's ``task_prerun``."""
    try:
        installed = _installed.get(getattr(task, "app", None))
    except TypeError:  # not an object a weak reference can point to: not an app
        return
    if installed is None or task is None:
        return
    stores, problems = _incoming(_received(task.request), installed.allow, installed.validator)
    exits = contextlib.ExitStack()
    try:
        exits.enter_context(applied(stores))
        # Scope the other stores too, empty: whatever the task writes in any
        # of them is undone when it ends, so the next task never sees it.
        for store in propagating_stores():
            if store.name not in stores:
                exits.enter_context(store.scope())
        if problems:
            _report_incoming(problems, getattr(task, "name", "?"), task_id)
    except BaseException:
        exits.close()
        raise
    _running_here().append((task_id, exits))


def _report_incoming(problems: list[_Problem], task_name: str, task_id: object) -> None:
    """Warn about the problems of kinds not reported yet in this process."""
    with _report_lock:
        new = [text for kind, text in problems if kind not in _incoming_reported]
        _incoming_reported.update(kind for kind, _ in problems)
    if not new:
        return
    more = len(new) - _SHOWN_PROBLEMS
    _logger.warning(
        "Ignored part of the %r header of task %s[%s]: %s%s. Publishers should send what "
        "contextual.integrations.celery.install() sends; check that both sides run "
        "compatible versions of contextual. Later problems of the same kind are not reported.",
        HEADER,
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
            :class:`~contextual.ThreadLocalDB`, or a
            :class:`~contextual.TransactionManager`.
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
            see :meth:`~contextual.TransactionManager.on_commit`.

    When publishing fails after the commit, the error is logged on the
    ``contextual.transactions`` logger (the commit stands); outside a
    transaction it propagates to the caller.

    .. versionadded:: 0.1.0
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
    snapshot = capture()

    def publish() -> None:
        snapshot.run(_outside_transactions, manager, signature.apply_async)

    manager.on_commit(publish)
    return result


def _outside_transactions(manager: TransactionManager, fn: Callable[[], object]) -> None:
    """Call ``fn`` with no current transaction of ``manager``: the committed one is over."""
    # The snapshot, taken inside the transaction, holds it as current.
    var = manager._var  # noqa: SLF001
    token = var.set(None)
    try:
        fn()
    finally:
        var.reset(token)


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
