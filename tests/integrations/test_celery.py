"""contextual.integrations.celery: from publisher to task, with a real broker and worker.

The first part runs in this process, on apps with the in-memory broker:
what each message carries, and what the worker side applies and restores
(through Celery's own tracer, with ``task.apply()``). The second part
starts real ``celery worker`` processes (prefork and threads pools) on a
real Redis server (``CONTEXTUAL_TEST_REDIS_URL``; ``.ci/start-redis`` starts
one), publishes from several requests at once, and reads what each task
saw, its result, and the worker's log file: request IDs, new ones for tasks
that came without, task IDs, carriers' text maps, and OpenTelemetry spans
(the real SDK on both sides). The in-process tests of task IDs and new
request IDs are in test_celery_ids.py, those of carriers in
test_celery_carriers.py.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.signals import after_task_publish
from kombu.exceptions import OperationalError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contextual import (
    ContextExecutor,
    ContextFilter,
    ContextStore,
    current_request,
    get_current_user,
    get_request_id,
    install_record_factory,
    request_context,
)
from contextual._propagation.carriers import register_carrier, unregister_carrier
from contextual._propagation.wire import CONTROL_CHARACTERS, MAX_BYTES, MAX_VALUE_BYTES
from contextual.db import ThreadLocalDB, TransactionError, TransactionManager
from contextual.integrations import celery as integration
from contextual.integrations import opentelemetry as contextual_otel
from contextual.integrations.celery import HEADER, enqueue_on_commit, install
from support import carriers
from support import celery_app as tasks
from support.servers import redis_url

TESTS = Path(__file__).resolve().parents[1]
SESSION = uuid.uuid4().hex[:10]
ALLOW = {"tests.celery.tenant": True, "contextual.request": ["user_id"]}
# What the stores hold in a worker between tasks.
BASELINE = {
    "request_id": None,
    "current_request": None,
    "user": None,
    "tenant": {},
    "secret": {},
    "scratch": {},
}


def payload(stores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"format": 1, "stores": stores}


def request_values(request_id: object, **more: object) -> dict[str, Any]:
    return payload({"contextual.request": {"request_id": request_id, **more}})


NEW_ID = re.compile(r"[0-9a-f]{32}")


def is_new_id(value: object) -> bool:
    """Whether ``value`` is a request ID that new_request_id() made."""
    return isinstance(value, str) and NEW_ID.fullmatch(value) is not None


def with_new_request(seen: dict[str, Any]) -> dict[str, Any]:
    """``seen`` with the request ID made for a task that came without one checked, as "new"."""
    assert is_new_id(seen["request_id"]), seen
    assert seen["current_request"] == seen["request_id"]
    return {**seen, "request_id": "new", "current_request": "new"}


# -- in this process: apps on the in-memory broker ----------------------------------

local = Celery(
    "contextual_local", broker="memory://", backend="cache+memory://", set_as_current=False
)
local.conf.task_default_queue = f"contextual-local-{SESSION}"
install(local, allow=ALLOW)
kept = ContextStore("tests.celery.kept", backend="thread", propagate=False)


def _seen() -> dict[str, Any]:
    request = current_request()
    return {
        "request_id": get_request_id(),
        "current_request": None if request is None else request.request_id,
        "user": get_current_user(),
        "tenant": dict(tasks.tenant),
        "secret": dict(tasks.secret),
        "scratch": dict(tasks.scratch),
    }


@local.task(bind=True)
def local_look(self: Any, tag: str, *, leave: bool = False) -> dict[str, Any]:
    del self
    seen = _seen()
    if leave:
        tasks.tenant["left_by"] = tag
        tasks.secret["left_by"] = tag
        tasks.scratch["left_by"] = tag
        kept["connection"] = tag
    return seen


@local.task(bind=True)
def local_fail(self: Any, tag: str) -> None:
    del self
    tasks.tenant["left_by"] = tag
    msg = f"failing on purpose: {tag}"
    raise RuntimeError(msg)


local_attempts: list[dict[str, Any]] = []


@local.task(bind=True, max_retries=1)
def local_retry(self: Any, tag: str) -> str:
    local_attempts.append({**_seen(), "retries": self.request.retries})
    tasks.tenant["left_by"] = tag
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "done"


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """The headers of every message published during the test, in order."""
    messages: list[dict[str, Any]] = []

    def record(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        messages.append({"task": sender, **(headers or {})})

    after_task_publish.connect(record, weak=False)
    yield messages
    after_task_publish.disconnect(record)


@pytest.fixture(autouse=True)
def _clean_stores() -> Iterator[None]:
    integration._unsendable_reported.clear()
    integration._incoming_reported.clear()
    yield
    for store in (tasks.tenant, tasks.secret, tasks.scratch, kept):
        store.clear()


def test_import_without_celery_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, "contextual.integrations.celery")
    monkeypatch.setitem(sys.modules, "celery.signals", None)
    with pytest.raises(ImportError, match=r"needs Celery.*pip install 'contextual\[celery\]'"):
        importlib.import_module("contextual.integrations.celery")


def test_importing_contextual_does_not_import_celery():
    code = "import sys, contextual, contextual.integrations; print('celery' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_all_names_what_the_module_defines():
    assert integration.__all__ == sorted(integration.__all__)
    defined = {
        name
        for name, value in vars(integration).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == integration.__name__
    }
    assert set(integration.__all__) == defined | {"CARRIERS_HEADER", "HEADER"}


def test_install_refuses_what_is_not_a_celery_app():
    with pytest.raises(TypeError, match=r"install\(\) takes a Celery app .* got object"):
        install(object())  # type: ignore[arg-type]


def test_install_refuses_a_malformed_allow_list():
    app = Celery("contextual_bad_allow", broker="memory://", set_as_current=False)
    with pytest.raises(TypeError, match="write allow="):
        install(app, allow="tests.celery.tenant")
    assert "send_task" not in vars(app)  # nothing installed


def test_a_message_carries_the_request_id_and_nothing_else_by_default(published):
    app = Celery("contextual_default", broker="memory://", set_as_current=False)
    install(app)
    with (
        request_context(request_id="r-default", user_id="ada"),
        tasks.tenant.scope({"name": "acme"}),
    ):
        app.send_task("anything", queue=f"default-{SESSION}")
    assert published[-1][HEADER] == request_values("r-default")


def test_send_task_takes_its_options_by_position_too(published):
    with request_context(request_id="r-position"):
        local.send_task("anything", ("a",), {"b": 1}, 60, queue=f"position-{SESSION}")
    assert published[-1]["eta"] is not None  # countdown, the fourth parameter
    assert published[-1][HEADER] == request_values("r-position")


def test_a_message_outside_any_request_carries_no_header(published):
    local_look.apply_async(("outside",))
    assert HEADER not in published[-1]


def test_allowed_stores_and_keys_travel_and_nothing_else(published):
    with (
        request_context(request_id="r-allowed", user_id="ada", note="not sent"),
        tasks.tenant.scope({"name": "acme"}, plan=["a", 1, {"b": None}]),
        tasks.secret.scope(token="s3cret"),
    ):
        local_look.delay("allowed")
    assert published[-1][HEADER] == payload(
        {
            "contextual.request": {"request_id": "r-allowed", "user_id": "ada"},
            "tests.celery.tenant": {"name": "acme", "plan": ["a", 1, {"b": None}]},
        }
    )


def test_apps_in_one_process_keep_their_own_settings(published):
    bare = Celery("contextual_bare", broker="memory://", set_as_current=False)
    default = Celery("contextual_other", broker="memory://", set_as_current=False)
    install(default)
    with request_context(request_id="r-apps", user_id="ada"), tasks.tenant.scope({"name": "acme"}):
        bare.send_task("anything", queue=f"bare-{SESSION}")
        default.send_task("anything", queue=f"other-{SESSION}")
        local_look.delay("apps")
    bare_message, default_message, local_message = published[-3:]
    assert HEADER not in bare_message
    assert default_message[HEADER] == request_values("r-apps")
    assert local_message[HEADER]["stores"]["tests.celery.tenant"] == {"name": "acme"}


def test_installing_twice_wraps_once_and_replaces_allow(published):
    app = Celery("contextual_twice", broker="memory://", set_as_current=False)
    install(app, allow=["tests.celery.tenant"])
    wrapper = app.send_task
    install(app)
    assert app.send_task is wrapper
    with request_context(request_id="r-twice"), tasks.tenant.scope({"name": "acme"}):
        app.send_task("anything", queue=f"twice-{SESSION}")
    assert published[-1][HEADER] == request_values("r-twice")


def test_values_that_are_not_plain_data_stay_behind_with_one_warning(published, caplog):
    class Opaque:
        pass

    caplog.set_level(logging.WARNING, "contextual.integrations")
    with (
        request_context(request_id="r-plain"),
        tasks.tenant.scope(obj=Opaque(), when=(1, [Opaque()])),
    ):
        local_look.delay("plain")
        local_look.delay("plain again")
    assert published[-1][HEADER] == request_values("r-plain")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # one per key, not one per message
    assert "'tests.celery.tenant'['obj']" in warnings[0]
    assert "its value (a Opaque) is not, or holds something that is not, plain data" in warnings[0]
    assert "(a tuple)" in warnings[1]
    assert "leave it out of install(allow=...)" in warnings[0]


def test_an_int_too_long_for_json_stays_behind_with_one_warning(published, caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    with request_context(request_id="r-big"), tasks.tenant.scope(big=10**5000, nested=[10**5000]):
        local_look.delay("big")
    assert published[-1][HEADER] == request_values("r-big")
    assert len(caplog.records) == 2
    assert "get_int_max_str_digits" in caplog.records[0].getMessage()


def test_unsendable_values_are_reported_for_a_bounded_number_of_keys(published, caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    limit = integration._MAX_UNSENDABLE_REPORTED
    with request_context(request_id="r-bound"):
        for n in range(limit + 20):
            with tasks.tenant.scope(**{f"k{n}": object()}):
                local_look.delay("bound")
    assert len(caplog.records) == limit
    assert len(integration._unsendable_reported) == limit
    assert published[-1][HEADER] == request_values("r-bound")


def test_deeply_nested_values_are_not_plain_data(published):
    nested: list[Any] = []
    for _ in range(40):
        nested = [nested]
    with request_context(request_id="r-deep"), tasks.tenant.scope(nested=nested, keyed={1: 2}):
        local_look.delay("deep")
    assert published[-1][HEADER] == request_values("r-deep")


def test_a_header_the_caller_gives_is_sent_as_given(published):
    given = request_values("r-given")
    with request_context(request_id="r-current"):
        local_look.apply_async(("given",), headers={HEADER: given, "other": 1})
        local_look.apply_async(("merged",), headers={"other": 2})
    assert published[-2][HEADER] == given
    assert published[-2]["other"] == 1
    assert published[-1][HEADER] == request_values("r-current")
    assert published[-1]["other"] == 2


def test_headers_that_are_not_a_mapping_go_to_celery_untouched(published):
    with request_context(request_id="r-pairs"):
        local.send_task("anything", headers=[("x-pair", "kept")], queue=f"pairs-{SESSION}")
    assert published[-1]["x-pair"] == "kept"  # Celery made them a dict
    assert HEADER not in published[-1]


def test_canvas_messages_carry_the_context(published):
    with request_context(request_id="r-canvas"):
        group(local_look.s("g1"), local_look.s("g2")).apply_async()
        chain(local_look.s("c1"), local_look.si("c2")).apply_async()
    assert [m[HEADER] for m in published[-3:]] == [request_values("r-canvas")] * 3


# -- in this process: the worker side, through Celery's tracer ------------------------


def test_a_task_runs_with_the_header_and_the_worker_gets_its_state_back():
    header = payload(
        {
            "contextual.request": {"request_id": "r-run", "user_id": "ada"},
            "tests.celery.tenant": {"name": "acme"},
            "tests.celery.secret": {"token": "forged"},
            "nowhere.store": {"x": 1},
        }
    )
    with tasks.tenant.scope(worker="w1"):
        seen = local_look.apply(("run",), kwargs={"leave": True}, headers={HEADER: header}).get()
        assert _seen() == {**BASELINE, "tenant": {"worker": "w1"}}
    assert seen == {
        "request_id": "r-run",
        "current_request": "r-run",
        "user": "ada",
        "tenant": {"worker": "w1", "name": "acme"},
        "secret": {},
        "scratch": {},
    }
    assert kept["connection"] == "run"  # propagate=False: the thread's own, kept


def test_a_task_without_a_header_keeps_nothing_it_wrote():
    seen = local_look.apply(("bare",), kwargs={"leave": True}).get()
    assert with_new_request(seen) == {**BASELINE, "request_id": "new", "current_request": "new"}
    assert _seen() == BASELINE


def test_a_failing_task_restores_the_state():
    header = request_values("r-fail")
    result = local_fail.apply(("fail",), headers={HEADER: header}, throw=False)
    assert isinstance(result.result, RuntimeError)
    assert _seen() == BASELINE


def test_a_retried_task_runs_each_attempt_with_the_header_and_restores():
    local_attempts.clear()
    header = payload(
        {"contextual.request": {"request_id": "r-retry"}, "tests.celery.tenant": {"n": 1}}
    )
    local_retry.apply(("retry",), headers={HEADER: header}).get()
    # Eagerly, the retry runs inside the first attempt: it gets the header again.
    assert [(a["request_id"], a["tenant"], a["retries"]) for a in local_attempts] == [
        ("r-retry", {"n": 1}, 0),
        ("r-retry", {"n": 1}, 1),
    ]
    assert _seen() == BASELINE


def test_a_task_applied_inside_a_request_of_this_process_sees_it_and_changes_nothing():
    with request_context(request_id="r-eager", user_id="ada"), tasks.tenant.scope({"name": "acme"}):
        seen = local_look.apply(("eager",), kwargs={"leave": True}).get()
        assert _seen()["tenant"] == {"name": "acme"}
    assert seen["request_id"] == "r-eager"
    assert seen["tenant"] == {"name": "acme"}


def test_a_worker_request_holds_the_header_as_an_attribute():
    # What a real worker does with message headers (the end-to-end tests
    # below go through it); here without a worker, to see each step.
    local_look.push_request(id="t-attribute", contextual=request_values("r-attribute"))
    try:
        integration._on_task_prerun(task_id="t-attribute", task=local_look)
        assert get_request_id() == "r-attribute"
        integration._on_task_postrun(task_id="t-attribute", task=local_look)
    finally:
        local_look.pop_request()
    assert get_request_id() is None


def test_the_worker_applies_only_what_its_own_allow_list_names():
    narrow = Celery("contextual_narrow", broker="memory://", set_as_current=False)
    install(narrow)

    @narrow.task
    def narrow_look() -> dict[str, Any]:
        return _seen()

    header = payload(
        {
            "contextual.request": {"request_id": "r-narrow", "user_id": "ada"},
            "tests.celery.tenant": {"name": "acme"},
        }
    )
    seen = narrow_look.apply(headers={HEADER: header}).get()
    assert (seen["request_id"], seen["user"], seen["tenant"]) == ("r-narrow", None, {})


def test_tasks_of_apps_without_install_run_untouched():
    bare = Celery("contextual_bare_worker", broker="memory://", set_as_current=False)

    @bare.task
    def bare_look() -> dict[str, Any]:
        tasks.tenant["left_by"] = "bare"
        return _seen()

    seen = bare_look.apply(headers={HEADER: request_values("r-bare")}).get()
    assert seen["request_id"] is None
    assert tasks.tenant["left_by"] == "bare"  # nothing scoped it


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("garbage", "the header is a str, not a mapping"),
        ({"format": 2, "stores": {}}, "format 2, where this contextual reads 1"),
        ({"stores": {}}, "format None"),
        ({"format": True, "stores": {}}, "format True"),
        ({"format": 1, "stores": ["a"]}, "'stores' is a list, not a mapping"),
        ({"format": 1, "stores": {"a": 1}}, "the entry 'a' is not store name: mapping"),
        ({"format": 1, "stores": {3: {}}}, "the entry 3 is not store name: mapping"),
        (
            {"format": 1, "stores": {"tests.celery.tenant": {1: "x", "ok": "y"}}},
            "store 'tests.celery.tenant' has a key that is not a str (1)",
        ),
        (request_values("bad\r\nINFO forged line"), r"the request ID 'bad\r\nINFO forged line'"),
        (request_values(""), "the request ID '' is not valid"),
        (request_values("x" * 129), "the request ID 'xxxx"),
        (request_values(42), "the request ID 42 is not valid"),
    ],
)
def test_a_malformed_header_is_ignored_with_one_warning_and_the_task_runs(caplog, header, problem):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    seen = local_look.apply(("malformed",), headers={HEADER: header}).get()
    assert is_new_id(seen["request_id"])
    assert seen["tenant"] in ({}, {"ok": "y"})
    (record,) = caplog.records
    message = record.getMessage()
    assert f"Ignored part of the 'contextual' header of task {local_look.name}[" in message
    assert problem in message
    assert "\n" not in message
    assert "compatible versions of contextual" in message
    assert "Later problems of the same kind are not reported" in message
    local_look.apply(("malformed again",), headers={HEADER: header}).get()
    assert len(caplog.records) == 1


def test_a_warning_lists_five_problems_and_counts_the_rest(caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    header = payload({f"s{i}": i for i in range(8)})  # type: ignore[dict-item]
    local_look.apply(("many",), headers={HEADER: header}).get()
    (record,) = caplog.records
    assert record.getMessage().count("is not store name: mapping") == 5
    assert "(and 3 more)" in record.getMessage()


def test_the_warning_about_a_header_carries_the_tasks_request_id(caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    seen_ids: list[str | None] = []
    handler = logging.Handler()
    handler.emit = lambda _record: seen_ids.append(get_request_id())  # type: ignore[method-assign]
    logging.getLogger("contextual.integrations").addHandler(handler)
    try:
        header = payload({"contextual.request": {"request_id": "r-warn"}, "bad": 1})
        local_look.apply(("warn",), headers={HEADER: header}).get()
    finally:
        logging.getLogger("contextual.integrations").removeHandler(handler)
    assert seen_ids == ["r-warn"]


def test_a_request_id_of_none_is_no_problem_and_the_task_gets_a_new_one(caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    seen = local_look.apply(("none",), headers={HEADER: request_values(None, user_id="ada")}).get()
    assert (with_new_request(seen)["current_request"], seen["user"]) == ("new", "ada")
    assert not caplog.records


@pytest.mark.parametrize(
    "value",
    [
        "ada\nINFO forged line",
        "cr\r",
        "nul\x00",
        "del\x7f",
        "c1\x85",
        "ls\u2028",
        "ps\u2029",
        "rlo\u202e",
        "zero width\u200b",
        "lone surrogate\ud800",
        ["ok", "bad\n"],
        ("ok", "bad\n"),
        {"k": {"deeper": ["bad\r\n"]}},
        {"bad\nkey": 1},
    ],
    ids=repr,
)
def test_incoming_values_with_control_characters_are_dropped(caplog, value):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    header = payload(
        {
            "contextual.request": {"request_id": "r-ctl", "user_id": value},
            "tests.celery.tenant": {"bad": value, "ok": "fine", "n": 1, "list": [1, "two"]},
        }
    )
    seen = local_look.apply(("control",), headers={HEADER: header}).get()
    assert (seen["request_id"], seen["current_request"], seen["user"]) == ("r-ctl", "r-ctl", None)
    assert seen["tenant"] == {"ok": "fine", "n": 1, "list": [1, "two"]}
    (record,) = caplog.records
    message = record.getMessage()
    assert f"'contextual.request'['user_id'] holds {CONTROL_CHARACTERS}" in message
    assert f"'tests.celery.tenant'['bad'] holds {CONTROL_CHARACTERS}" in message
    assert "\n" not in message
    assert "\r" not in message


# Sizes as the limits measure them: a key and its value, each as compact JSON
# in UTF-8. '"k"' takes 3 bytes, so "k" with a str of n ASCII characters takes n + 5.
KEY_BYTES = len('"k"')
REQUEST_ID_BYTES = len('"request_id""r-size"')
# What "c": 1 takes; the total tests put it last.
C_BYTES = len('"c"1')


def text_of(entry_bytes: int) -> str:
    """A str that, under the key "k", makes an entry of exactly ``entry_bytes``."""
    return "x" * (entry_bytes - KEY_BYTES - 2)


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (text_of(MAX_VALUE_BYTES), True),
        (text_of(MAX_VALUE_BYTES + 1), False),
        # UTF-8, not \u escapes: each "\u00eb" is 2 bytes.
        ("\u00eb" * ((MAX_VALUE_BYTES - 5) // 2) + "x", True),
        ("\u00eb" * ((MAX_VALUE_BYTES - 5) // 2 + 1), False),
        # Compact JSON: '["', '"]' around the text, no spaces.
        ([text_of(MAX_VALUE_BYTES - 2)], True),
        ([text_of(MAX_VALUE_BYTES - 1)], False),
    ],
    ids=["ascii at the limit", "ascii over", "utf-8 at", "utf-8 over", "list at", "list over"],
)
def test_an_incoming_entry_over_the_value_limit_is_dropped(value, kept):
    header = payload(
        {
            "contextual.request": {"request_id": "r-size"},
            "tests.celery.tenant": {"k": value, "after": 1},
        }
    )
    stores, problems = integration._incoming(header, integration.AllowList(ALLOW))
    expected = {"k": value, "after": 1} if kept else {"after": 1}
    assert stores["tests.celery.tenant"] == expected
    if kept:
        assert problems == []
    else:
        ((kind, text),) = problems
        assert kind == "value size"
        assert f"'tests.celery.tenant'['k'] takes {MAX_VALUE_BYTES + 1} bytes" in text


# The total tests carry the request ID, then "a" (the most one entry may
# take), "b" of size TOTAL_ROOM + extra, and "c": 1: with extra 0 the three
# fill MAX_BYTES exactly.
TOTAL_ROOM = MAX_BYTES - REQUEST_ID_BYTES - MAX_VALUE_BYTES - C_BYTES
TOTAL_CASES = pytest.mark.parametrize(
    ("extra", "kept"),
    [(0, ["a", "b", "c"]), (1, ["a", "b"]), (C_BYTES + 1, ["a"])],
    # In the last, "c" would fit in the room "b" leaves; it goes with the rest.
    ids=["at the limit", "one byte over", "the rest after the first over"],
)


def total_tenant(extra: int) -> dict[str, Any]:
    return {"a": text_of(MAX_VALUE_BYTES), "b": text_of(TOTAL_ROOM + extra), "c": 1}


@TOTAL_CASES
def test_incoming_entries_past_the_total_limit_are_dropped_with_the_rest(extra, kept):
    # The request store counts first, wherever the header puts it.
    header = payload(
        {
            "tests.celery.tenant": {**total_tenant(extra)},
            "contextual.request": {"request_id": "r-size"},
        }
    )
    stores, problems = integration._incoming(header, integration.AllowList(ALLOW))
    assert stores["contextual.request"]["request_id"] == "r-size"
    assert list(stores["tests.celery.tenant"]) == kept
    if len(kept) == 3:
        assert problems == []
    else:
        ((kind, text),) = problems
        assert kind == "total size"
        first = "abc"[len(kept)]
        shown = f"the entries from 'tests.celery.tenant'['{first}'] on ({3 - len(kept)} of them)"
        assert shown in text
        assert f"past the {MAX_BYTES} bytes" in text


def test_an_incoming_value_that_is_not_plain_data_is_dropped():
    # What a pickle or msgpack serializer may carry, and no publisher of ours sends.
    header = payload({"tests.celery.tenant": {"bytes": b"raw", "ok": "y"}})
    stores, problems = integration._incoming(header, integration.AllowList(ALLOW))
    assert stores["tests.celery.tenant"] == {"ok": "y"}
    assert problems == [
        ("entry", "the value of 'tests.celery.tenant'['bytes'] is not plain data (a bytes)")
    ]


@pytest.mark.parametrize(
    ("value", "sent"),
    [(text_of(MAX_VALUE_BYTES), True), (text_of(MAX_VALUE_BYTES + 1), False)],
    ids=["at the limit", "one byte over"],
)
def test_an_outgoing_value_over_the_limit_stays_behind_with_one_warning(caplog, value, sent):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    with request_context(request_id="r-size"), tasks.tenant.scope(k=value, after=1):
        header = integration._outgoing(integration.AllowList(ALLOW), "shop.task")
        integration._outgoing(integration.AllowList(ALLOW), "shop.task")
    assert header is not None
    expected = {"k": value, "after": 1} if sent else {"after": 1}
    assert header["stores"]["tests.celery.tenant"] == expected
    if sent:
        assert not caplog.records
    else:
        (record,) = caplog.records
        message = record.getMessage()
        assert "Did not send 'tests.celery.tenant'['k'] with task shop.task" in message
        assert f"takes {MAX_VALUE_BYTES + 1} bytes as JSON" in message
        assert "leave it out of install(allow=...)" in message


def test_a_lone_surrogate_in_an_outgoing_value_never_fails_the_publish(caplog):
    # No UTF-8 can hold it, yet measuring it must not raise: the worker
    # refuses it by the character rule, and the publish goes on.
    caplog.set_level(logging.WARNING, "contextual.integrations")
    with request_context(request_id="r-sur"), tasks.tenant.scope(k="a\ud800"):
        header = integration._outgoing(integration.AllowList(ALLOW), "shop.task")
    assert header is not None
    assert header["stores"]["tests.celery.tenant"] == {"k": "a\ud800"}
    assert not caplog.records


@TOTAL_CASES
def test_outgoing_entries_past_the_total_limit_stay_behind_with_a_warning(caplog, extra, kept):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    # The tenant first in the context: the request ID still counts first.
    with tasks.tenant.scope(**total_tenant(extra)), request_context(request_id="r-size"):
        header = integration._outgoing(integration.AllowList(ALLOW), "shop.task")
    assert header is not None
    assert header["stores"]["contextual.request"] == {"request_id": "r-size"}
    assert list(header["stores"]["tests.celery.tenant"]) == kept
    # What the publisher sends, the worker takes whole.
    assert integration._incoming(header, integration.AllowList(ALLOW))[1] == []
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"Did not send 'tests.celery.tenant'[{key!r}] with task shop.task"
        for key in "abc"[len(kept) :]
    ]
    for record in caplog.records:
        assert f"more than the {MAX_BYTES} bytes of context" in record.getMessage()


def test_a_key_with_control_characters_is_dropped(caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    header = payload({"tests.celery.tenant": {"bad\nkey": "x", "ok": "y"}})
    seen = local_look.apply(("control key",), headers={HEADER: header}).get()
    assert seen["tenant"] == {"ok": "y"}
    assert "'bad\\nkey'" in caplog.records[0].getMessage()


def test_a_store_left_with_no_value_is_not_applied_and_deep_values_are_dropped(caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    deep: list[Any] = ["ok"]
    for _ in range(40):
        deep = [deep]
    header = payload(
        {
            "contextual.request": {"request_id": "r-deep", "user_id": "a\u2028b"},
            "tests.celery.tenant": {"deep": deep},
        }
    )
    seen = local_look.apply(("deep",), headers={HEADER: header}).get()
    assert (seen["request_id"], seen["user"], seen["tenant"]) == ("r-deep", None, {})
    assert "'tests.celery.tenant'['deep']" in caplog.records[0].getMessage()


def test_the_task_id_in_a_warning_is_escaped(caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    local_look.apply(("id",), headers={HEADER: "garbage"}, task_id="forged\nINFO line").get()
    (record,) = caplog.records
    assert "['forged\\nINFO line']" in record.getMessage()
    assert "\n" not in record.getMessage()


def uuid_only(value: str) -> bool:
    return len(value) == 36 and value.count("-") == 4


@pytest.fixture
def validating() -> Any:
    """A task of an app whose worker takes UUIDs alone as request IDs."""
    app = Celery("contextual_validating", broker="memory://", set_as_current=False)
    install(app, validator=uuid_only)

    @app.task
    def validated_look() -> dict[str, Any]:
        return _seen()

    return validated_look


def test_the_worker_checks_request_ids_with_the_validator_given(validating, caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")
    request_id = "123e4567-e89b-12d3-a456-426614174000"
    assert (
        validating.apply(headers={HEADER: request_values(request_id)}).get()["request_id"]
        == request_id
    )
    assert is_new_id(validating.apply(headers={HEADER: request_values("r-1")}).get()["request_id"])
    assert "the request ID 'r-1' is not valid" in caplog.records[0].getMessage()


def test_a_validator_accepts_ids_the_default_check_refuses(validating):
    install(validating.app, validator=lambda _value: True)
    wide_id = "an id with spaces " + "x" * 200
    seen = validating.apply(headers={HEADER: request_values(wide_id)}).get()
    assert seen["request_id"] == wide_id
    seen = validating.apply(headers={HEADER: request_values("caf\u00e9")}).get()
    assert is_new_id(seen["request_id"]), "printable ASCII only, whatever the validator says"


def test_a_validator_that_raises_refuses_the_id_and_the_task_runs(validating, caplog):
    caplog.set_level(logging.WARNING, "contextual.integrations")

    def broken(value: str) -> bool:
        raise RuntimeError(value)

    install(validating.app, validator=broken)
    seen = validating.apply(headers={HEADER: request_values("r-broken")}).get()
    assert is_new_id(seen["request_id"])
    assert "the validator raised \"RuntimeError('r-broken')\"" in caplog.records[0].getMessage()


def test_install_refuses_a_validator_that_is_not_a_plain_callable():
    async def check(value: str) -> bool:
        return bool(value)

    with pytest.raises(TypeError, match="validator must be callable or None"):
        install(local, validator="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="validator must be a plain function"):
        install(local, validator=check)  # type: ignore[arg-type]


@pytest.fixture
def wide() -> Any:
    """A task of an app that allows every key of the request store."""
    app = Celery("contextual_wide", broker="memory://", set_as_current=False)
    install(app, allow=["contextual.request"])

    @app.task
    def wide_look() -> dict[str, Any]:
        return _seen()

    return wide_look


def test_a_sent_request_object_is_never_applied(wide):
    header = request_values("r-object", request=["forged", "by", "sender"])
    seen = wide.apply(headers={HEADER: header}).get()
    assert seen["current_request"] == "r-object"


def test_a_user_without_a_request_id_runs_under_a_new_request_with_that_user(wide):
    seen = wide.apply(headers={HEADER: payload({"contextual.request": {"user_id": "ada"}})}).get()
    assert (with_new_request(seen)["current_request"], seen["user"]) == ("new", "ada")


def test_without_a_generator_a_user_without_a_request_id_is_applied_alone(wide):
    install(wide.app, allow=["contextual.request"], generator=None)
    seen = wide.apply(headers={HEADER: payload({"contextual.request": {"user_id": "ada"}})}).get()
    assert (seen["request_id"], seen["current_request"], seen["user"]) == (None, None, "ada")


def test_the_request_object_stays_behind_and_is_rebuilt_in_the_worker(wide, published):
    with request_context(request_id="r-wide", user_id="ada", note="extra"):
        wide.delay()
    sent = published[-1][HEADER]
    assert sent == request_values("r-wide", user_id="ada")
    seen = wide.apply(headers={HEADER: sent}).get()
    assert (seen["current_request"], seen["user"]) == ("r-wide", "ada")


def test_postrun_of_a_task_that_never_started_here_changes_nothing():
    with tasks.tenant.scope({"name": "acme"}):
        integration._on_task_postrun(task_id="unknown")
        assert tasks.tenant["name"] == "acme"


def test_prerun_ignores_senders_that_are_not_tasks_of_an_installed_app():
    integration._on_task_prerun(task_id="t-none", task=None)
    integration._on_task_prerun(task_id="t-int", task=3)  # type: ignore[arg-type]
    assert integration._running_here() == []


def test_postrun_also_undoes_tasks_above_it_that_missed_their_postrun():
    local_look.push_request(id="outer", contextual=request_values("r-outer"))
    local_look.push_request(id="inner", contextual=request_values("r-inner"))
    try:
        integration._on_task_prerun(task_id="outer", task=local_look)
        integration._on_task_prerun(task_id="inner", task=local_look)
        assert get_request_id() == "r-inner"
        integration._on_task_postrun(task_id="outer")
    finally:
        local_look.pop_request()
        local_look.pop_request()
    assert get_request_id() is None
    assert integration._running_here() == []


def test_a_failure_while_applying_undoes_what_was_applied(monkeypatch):
    def broken() -> list[ContextStore]:
        raise RuntimeError("broken registry")

    monkeypatch.setattr(integration, "propagating_stores", broken)
    local_look.push_request(id="t-broken", contextual=request_values("r-broken"))
    try:
        with pytest.raises(RuntimeError, match="broken registry"):
            integration._on_task_prerun(task_id="t-broken", task=local_look)
    finally:
        local_look.pop_request()
    assert get_request_id() is None
    assert integration._running_here() == []


# -- in this process: enqueue_on_commit ------------------------------------------------


# The db fixture's file, in the test's tmp_path.
ITEMS = "items.sqlite3"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[ThreadLocalDB]:
    path = tmp_path / ITEMS
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE items (k INTEGER PRIMARY KEY, v TEXT)")
    setup.commit()
    setup.close()
    db = ThreadLocalDB(str(path))
    yield db
    db.close_all()


def test_enqueue_on_commit_publishes_after_the_outermost_commit(db, published):
    with request_context(request_id="r-commit"):
        with db.transaction():
            with db.transaction():
                result = enqueue_on_commit(local_look, "commit", manager=db.transactions)
            assert published == []
        assert [m["id"] for m in published] == [result.id]
    assert published[0][HEADER] == request_values("r-commit")


def test_enqueue_on_commit_never_publishes_after_a_rollback(db, published):
    with pytest.raises(ZeroDivisionError), db.transaction():
        enqueue_on_commit(local_look, "rolled back", manager=db.transactions)
        1 / 0  # noqa: B018
    with db.transaction(), pytest.raises(ZeroDivisionError), db.transaction():  # a savepoint
        enqueue_on_commit(local_look, "savepoint", manager=db.transactions)
        1 / 0  # noqa: B018
    assert published == []


def test_enqueue_on_commit_outside_a_transaction_publishes_at_once(published):
    result = enqueue_on_commit(local_look, "now", manager=TransactionManager())
    assert [m["id"] for m in published] == [result.id]


def test_enqueue_on_commit_sends_the_context_of_the_call_not_of_the_commit(db, published):
    with db.transaction():
        with request_context(request_id="r-enqueued"), tasks.tenant.scope({"name": "acme"}):
            enqueue_on_commit(local_look, "enqueued", manager=db.transactions)
        with request_context(request_id="r-committing"):
            pass
    assert published[0][HEADER] == payload(
        {
            "contextual.request": {"request_id": "r-enqueued"},
            "tests.celery.tenant": {"name": "acme"},
        }
    )


def test_enqueue_on_commit_completes_signatures_and_keeps_their_options(published):
    result = enqueue_on_commit(
        local_look.s().set(countdown=60), "signature", manager=TransactionManager(), leave=True
    )
    (message,) = published
    assert message["id"] == result.id
    assert message["eta"] is not None
    assert message["argsrepr"] == "('signature',)"
    assert message["kwargsrepr"] == "{'leave': True}"
    enqueue_on_commit(local_look.s("as is"), manager=TransactionManager())
    assert published[-1]["argsrepr"] == "('as is',)"


@pytest.mark.parametrize(
    "make",
    [
        lambda: local_look.si("reused"),
        lambda: local_look.s("reused").set(link=local_look.si("linked")),
        lambda: group(local_look.si("g1"), local_look.si("g2")),
        lambda: chain(local_look.si("c1"), local_look.si("c2")),
    ],
    ids=["signature", "with a link", "group", "chain"],
)
def test_enqueue_on_commit_never_changes_the_signature_given(published, make):
    signature = make()
    before = json.dumps(signature, sort_keys=True)
    first = enqueue_on_commit(signature, manager=TransactionManager())
    second = enqueue_on_commit(signature, manager=TransactionManager())
    assert json.dumps(signature, sort_keys=True) == before
    assert first.id != second.id
    ids = [m["id"] for m in published]
    assert len(ids) == len(set(ids))


def test_enqueue_on_commit_publishes_with_no_current_transaction(db):
    seen: list[object] = []
    eager = Celery("contextual_eager", broker="memory://", set_as_current=False)
    eager.conf.task_always_eager = True
    install(eager)

    @eager.task
    def follow_up() -> None:
        seen.append(db.transactions.current)
        with db.transaction():  # a transaction of its own, not a savepoint of the committed one
            db.execute("INSERT INTO items VALUES (2, 'follow-up')")
        seen.append(get_request_id())

    with request_context(request_id="r-eager"), db.transaction() as transaction:
        db.execute("INSERT INTO items VALUES (1, 'first')")
        enqueue_on_commit(follow_up, manager=db.transactions)
        assert seen == []
    assert seen == [None, "r-eager"]
    assert transaction.state == "committed"
    assert db.execute("SELECT count(*) FROM items") == [(2,)]
    assert db.transactions.current is None


def test_enqueue_on_commit_returns_a_group_result_for_a_group(published):
    result = enqueue_on_commit(
        group(local_look.s("g1"), local_look.s("g2")), manager=TransactionManager()
    )
    assert sorted(r.id for r in result.results) == sorted(m["id"] for m in published)


def test_enqueue_on_commit_refuses_what_is_not_a_task_or_a_manager():
    with pytest.raises(TypeError, match=r"takes a Celery task or signature .* got function"):
        enqueue_on_commit(lambda: None, manager=TransactionManager())
    with pytest.raises(TypeError, match=r"db\.transactions for a ThreadLocalDB\), got str"):
        enqueue_on_commit(local_look, manager="db")  # type: ignore[arg-type]


def test_enqueue_on_commit_from_a_thread_that_inherited_the_transaction_raises(db):
    with db.transaction(), ContextExecutor(1) as pool:
        future = pool.submit(enqueue_on_commit, local_look, "x", manager=db.transactions)
        with pytest.raises(TransactionError, match="did not open the current transaction"):
            future.result()


@dataclass
class Unreachable:
    """An installed app whose Redis broker refuses every connection, and two of its tasks."""

    app: Celery
    send_receipt: Any
    notify: Any


@pytest.fixture
def unreachable() -> Iterator[Unreachable]:
    # A socket bound to a loopback port, never listening: every connection
    # to the port is refused at once, and no other process can take it.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    app = Celery(
        "contextual_unreachable", broker=f"redis://127.0.0.1:{port}/0", set_as_current=False
    )
    app.conf.update(
        task_default_queue=f"unreachable-{SESSION}",
        task_publish_retry=False,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        # Without max_retries, kombu retries the connection for seconds.
        broker_transport_options={"max_retries": 0, "socket_connect_timeout": 2},
    )
    install(app, allow=ALLOW)

    @app.task(name="tests.unreachable.send_receipt")
    def send_receipt(order_id: int) -> None:
        del order_id

    @app.task(name="tests.unreachable.notify")
    def notify(*args: object) -> None:
        del args

    try:
        yield Unreachable(app, send_receipt, notify)
    finally:
        app.close()
        holder.close()


def watch_lost(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the ERROR records of contextual.transactions, each through a ContextFilter."""
    # In the test's body: pytest gives each phase a handler of its own.
    caplog.set_level(logging.ERROR, "contextual.transactions")
    caplog.handler.addFilter(ContextFilter())


def test_the_lost_task_report_survives_a_record_factory_with_task_fields(db, unreachable, caplog):
    watch_lost(caplog)
    factory = install_record_factory(sources=[integration.task_fields])
    try:
        with request_context(request_id="r-lost"), db.transaction():
            result = enqueue_on_commit(unreachable.send_receipt, 1, manager=db.transactions)
    finally:
        factory.uninstall()
    (record,) = caplog.records
    assert (record.lost_task_id, record.task_id, record.request_id) == (result.id, "-", "r-lost")


def test_a_publish_that_fails_after_the_commit_logs_the_lost_task(db, unreachable, caplog):
    watch_lost(caplog)
    with request_context(request_id="r-lost"), db.transaction():
        db.execute("INSERT INTO items VALUES (1, 'committed')")
        result = enqueue_on_commit(unreachable.send_receipt, 1, manager=db.transactions)
    assert db.execute("SELECT v FROM items WHERE k = 1") == [("committed",)]
    (record,) = caplog.records  # one: the transaction's generic record is not added
    name = "tests.unreachable.send_receipt"
    assert (record.levelno, record.name) == (logging.ERROR, "contextual.transactions")
    assert (record.lost_task_name, record.lost_task_id, record.lost_task_ids) == (
        name,
        result.id,
        [result.id],
    )
    assert record.request_id == "r-lost"  # logged inside the context of the call
    assert record.exc_info is not None
    assert record.exc_info[0] is OperationalError
    message = record.getMessage()
    assert f"{name}[{result.id}]" in message
    assert "request r-lost" in message
    assert "apply_async" in message
    assert "\n" not in message


def test_a_lost_canvas_is_logged_with_every_task_id_it_froze(db, unreachable, caplog):
    watch_lost(caplog)
    receipt, notify = unreachable.send_receipt, unreachable.notify
    with db.transaction():
        result = enqueue_on_commit(
            chain(receipt.s(1), group(notify.si(), notify.si())), manager=db.transactions
        )
    (record,) = caplog.records
    assert record.lost_task_id == result.id
    frozen = [result.parent.id, *(r.id for r in result.results), result.id]
    assert record.lost_task_ids == frozen
    assert record.lost_task_name == (
        "chain(tests.unreachable.send_receipt, group(tests.unreachable.notify, "
        "tests.unreachable.notify))"
    )
    assert record.request_id == "-"
    assert "outside any request" in record.getMessage()


def test_a_chord_is_named_and_counted_by_its_parts():
    signature = chord([local_look.si("h1"), local_look.si("h2")], local_look.s("body"))
    result = signature.freeze()
    name = local_look.name
    assert integration._describe(signature) == f"chord(group({name}, {name}), {name})"
    header = result.parent
    assert integration._frozen_ids(result) == [
        *(r.id for r in header.results),
        header.id,
        result.id,
    ]


def test_a_publish_that_fails_outside_a_transaction_raises_to_the_caller(unreachable, caplog):
    watch_lost(caplog)
    with pytest.raises(OperationalError):
        enqueue_on_commit(unreachable.send_receipt, 1, manager=TransactionManager())
    assert caplog.records == []


# -- real worker processes on a real Redis server ------------------------------------------


TIMEOUT = 20.0


@dataclass
class Worker:
    """One ``celery worker`` process and the files it writes."""

    pool: str
    queue: str
    process: subprocess.Popen[bytes]
    log: Path
    seen: Path
    output: Path

    def records(self) -> list[dict[str, Any]]:
        if not self.seen.exists():
            return []
        with self.seen.open(encoding="utf-8") as file:
            return [json.loads(line) for line in file if line.endswith("\n")]

    def lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").splitlines() if self.log.exists() else []

    def wait(self, condition: Callable[[], Any], what: str) -> Any:
        """Poll the worker's files until ``condition()`` is truthy; fail if it dies first."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            found = condition()
            if found:
                return found
            if self.process.poll() is not None:
                pytest.fail(f"the {self.pool} worker exited before {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not happen within {TIMEOUT} s:\n{self.tail()}")
            time.sleep(0.02)

    def record(self, event: str, task_id: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            matches = [r for r in self.records() if (r["event"], r["task_id"]) == (event, task_id)]
            return matches[-1] if matches else None

        found: dict[str, Any] = self.wait(find, f"a {event!r} record of task {task_id}")
        return found

    def line(self, *parts: str) -> str:
        def find() -> str | None:
            return next((ln for ln in self.lines() if all(p in ln for p in parts)), None)

        found: str = self.wait(find, f"a worker log line with {parts}")
        return found

    def result(self, result: Any) -> Any:
        """``result.get()``; a result that never comes fails the test with the worker's log.

        Celery's Redis backend subscribes to a result's channel, then reads
        the stored result once. The two commands travel on different
        connections, so a result stored and published between the server's
        handling of one and of the other is never heard, and ``get()`` would
        wait out its whole timeout. Each ``get()`` reads the stored result
        again, so short ones in a loop hear it. (Polling the stored state
        alone won't do: a retried task's first attempt may store RETRY after
        its second has stored SUCCESS.)
        """
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                return result.get(timeout=1.0)
            except CeleryTimeoutError:
                if self.process.poll() is None and time.monotonic() < deadline:
                    continue
            # The stored state tells a task that never ran from a result
            # that never reached us.
            status = result.backend.get_task_meta(result.id, cache=False)["status"]
            pytest.fail(
                f"no result for task {result.id} within {TIMEOUT} s; "
                f"the result backend holds {status}:\n{self.tail()}"
            )

    def tail(self) -> str:
        output = self.output.read_text(encoding="utf-8", errors="replace")
        return "\n".join([*output.splitlines()[-30:], *self.lines()[-60:]])


def _stop(process: subprocess.Popen[bytes]) -> None:
    # The worker's pool processes share its process group: end them all.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture(scope="module", params=["prefork", "threads"])
def worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    url = redis_url()
    pool: str = request.param
    directory = tmp_path_factory.mktemp(f"celery-{pool}")
    queue = f"contextual-test-{SESSION}-{pool}"
    env = {
        **os.environ,
        tasks.REDIS_VARIABLE: url,
        tasks.SEEN_VARIABLE: str(directory / "seen.jsonl"),
        tasks.QUEUE_VARIABLE: queue,
        tasks.WORKER_VARIABLE: "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    env.pop("COVERAGE_PROCESS_START", None)
    command = [
        sys.executable, "-m", "celery", "-A", "support.celery_app", "worker",
        f"--pool={pool}", f"--concurrency={2 if pool == 'prefork' else 3}",
        f"--queues={queue}", f"--hostname={pool}-{SESSION}@%h",
        "--loglevel=INFO", f"--logfile={directory / 'worker.log'}",
        "--without-heartbeat", "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    output = directory / "output.txt"
    with output.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, cwd=TESTS, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    running = Worker(
        pool, queue, process, directory / "worker.log", directory / "seen.jsonl", output
    )
    try:
        running.line("ready.")
        yield running
    finally:
        _stop(process)


def _seen_part(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in BASELINE}


def test_each_task_carries_its_publishers_request_id(worker):
    count = 8
    barrier = threading.Barrier(count)
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def publish(i: int) -> None:
        try:
            with (
                request_context(request_id=f"req-{SESSION}-{i}", user_id=f"user-{i}"),
                tasks.tenant.scope({"name": f"tenant-{i}"}),
                tasks.secret.scope(token=f"secret-{i}"),
            ):
                barrier.wait(timeout=TIMEOUT)
                results[i] = tasks.look.apply_async((f"tag-{i}",), queue=worker.queue)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for i, result in results.items():
        seen = worker.result(result)
        request_id = f"req-{SESSION}-{i}"
        assert _seen_part(seen) == {
            "request_id": request_id,
            "current_request": request_id,
            "user": f"user-{i}",
            "tenant": {"name": f"tenant-{i}"},
            "secret": {},
            "scratch": {},
        }
        assert f"[{request_id}]" in worker.line("look", f"tag-{i}")
        worker.line(f"[{request_id}]", "succeeded", result.id)
        assert _seen_part(worker.record("after", result.id)) == BASELINE


def test_nothing_a_task_writes_reaches_the_next_task_in_the_process(worker):
    with (
        request_context(request_id=f"leave-{SESSION}", user_id="ada"),
        tasks.tenant.scope({"name": "x"}),
    ):
        leaving = [
            tasks.look.apply_async((f"leave-{i}",), {"leave": True}, queue=worker.queue)
            for i in range(6)
        ]
    places = {(r["pid"], r["thread"]) for r in (worker.result(res) for res in leaving)}
    outside = [tasks.look.apply_async((f"outside-{i}",), queue=worker.queue) for i in range(6)]
    seen = [worker.result(res) for res in outside]
    # Each under a request ID of its own, made for it.
    assert [with_new_request(_seen_part(s)) for s in seen] == [
        {**BASELINE, "request_id": "new", "current_request": "new"}
    ] * 6
    assert len({s["request_id"] for s in seen}) == 6
    # The check means something: some ran where values were left behind.
    assert places & {(s["pid"], s["thread"]) for s in seen}
    for result in leaving:
        assert _seen_part(worker.record("after", result.id)) == BASELINE


def test_a_failing_task_logs_with_the_request_id_and_restores(worker):
    with request_context(request_id=f"fail-{SESSION}"):
        result = tasks.fail.apply_async(("fail",), queue=worker.queue)
    with pytest.raises(RuntimeError, match="failing on purpose"):
        worker.result(result)
    assert worker.record("seen", result.id)["request_id"] == f"fail-{SESSION}"
    worker.line(f"[fail-{SESSION}]", "ERROR", "raised unexpected", "failing on purpose")
    assert _seen_part(worker.record("after", result.id)) == BASELINE


def test_a_retried_task_gets_the_original_context_on_each_attempt(worker):
    with request_context(request_id=f"retry-{SESSION}", user_id="ada"), tasks.tenant.scope(n=1):
        result = tasks.retry_once.apply_async(("retry",), queue=worker.queue)
    final = worker.result(result)
    attempts = [r for r in worker.records() if r["task_id"] == result.id and r["event"] == "seen"]
    assert [(a["retries"], a["request_id"], a["user"], a["tenant"]) for a in attempts] == [
        (0, f"retry-{SESSION}", "ada", {"n": 1}),
        (1, f"retry-{SESSION}", "ada", {"n": 1}),
    ]
    assert final["retries"] == 1
    worker.line(f"[retry-{SESSION}]", "Retry in")

    def afters() -> list[dict[str, Any]]:
        found = [r for r in worker.records() if (r["task_id"], r["event"]) == (result.id, "after")]
        return found if len(found) == 2 else []

    assert [_seen_part(a) for a in worker.wait(afters, "both attempts' postrun")] == [BASELINE] * 2


# Only the prefork pool can terminate a running task.
@pytest.mark.parametrize("worker", ["prefork"], indirect=True)
def test_a_task_revoked_with_terminate_restores(worker):
    with request_context(request_id=f"revoke-{SESSION}"):
        result = tasks.wait_to_be_revoked.apply_async(("revoke",), queue=worker.queue)
    assert worker.record("seen", result.id)["request_id"] == f"revoke-{SESSION}"
    tasks.app.control.revoke(result.id, terminate=True, signal="SIGUSR1")
    assert _seen_part(worker.record("after", result.id)) == BASELINE
    worker.line(f"[revoke-{SESSION}]", "SoftTimeLimitExceeded")


def test_canvas_carries_the_request_to_every_task(worker):
    def on_queue(signature: Any) -> Any:
        return signature.set(queue=worker.queue)

    with request_context(request_id=f"canvas-{SESSION}"):
        grouped = group(on_queue(tasks.look.s(f"group-{i}")) for i in range(3)).apply_async()
        chained = chain(
            on_queue(tasks.look.s("chain-1")), on_queue(tasks.look_after.s("chain-2"))
        ).apply_async()
        chorded = chord(
            [on_queue(tasks.look.s(f"chord-{i}")) for i in range(2)],
            on_queue(tasks.collect.s("chord-body")),
        ).apply_async()
    request_id = f"canvas-{SESSION}"
    # The worker's own records first: they show which task did not run, if one didn't.
    for task_id in (chained.parent.id, chained.id, chorded.id):
        assert worker.record("seen", task_id)["request_id"] == request_id
    assert [worker.result(r)["request_id"] for r in grouped.results] == [request_id] * 3
    assert worker.result(chained)["request_id"] == request_id
    assert worker.result(chained.parent)["request_id"] == request_id
    body = worker.result(chorded)
    assert body["request_id"] == request_id
    assert body["header_request_ids"] == [request_id] * 2


def test_link_and_link_error_callbacks_carry_the_request_id(worker):
    with request_context(request_id=f"link-{SESSION}"):
        succeeded = tasks.look.apply_async(
            ("linked",), queue=worker.queue, link=tasks.look.si("callback").set(queue=worker.queue)
        )
        failed = tasks.fail.apply_async(
            ("failing",),
            queue=worker.queue,
            link_error=tasks.look.si("errback").set(queue=worker.queue),
        )
    worker.result(succeeded)
    with pytest.raises(RuntimeError):
        worker.result(failed)

    def callbacks() -> list[dict[str, Any]]:
        tags = {"callback", "errback"}
        found = [r for r in worker.records() if r["event"] == "seen" and r["tag"] in tags]
        return found if len(found) == len(tags) else []

    records = worker.wait(callbacks, "the callback and the errback")
    assert {(r["tag"], r["request_id"]) for r in records} == {
        ("callback", f"link-{SESSION}"),
        ("errback", f"link-{SESSION}"),
    }


def test_a_task_publishes_subtasks_with_its_own_context(worker):
    with request_context(request_id=f"parent-{SESSION}"), tasks.tenant.scope({"name": "acme"}):
        parent = tasks.publish_child.apply_async(("parent",), queue=worker.queue)
    child_id = worker.result(parent)
    child = worker.result(tasks.look.AsyncResult(child_id))
    assert child["request_id"] == f"parent-{SESSION}"
    assert child["tenant"] == {"name": "acme", "changed_by": "parent"}


def test_enqueue_on_commit_reaches_the_worker_after_the_commit_only(
    worker, db, tmp_path, published
):
    path = tmp_path / ITEMS
    signature = tasks.row_exists.s().set(queue=worker.queue)
    with (
        request_context(request_id=f"rollback-{SESSION}"),
        pytest.raises(ZeroDivisionError),
        db.transaction(),
    ):
        db.execute("INSERT INTO items VALUES (1, 'rolled back')")
        rolled_back = enqueue_on_commit(
            signature, "rollback", str(path), 1, manager=db.transactions
        )
        1 / 0  # noqa: B018
    with request_context(request_id=f"commit-{SESSION}"), db.transaction():
        db.execute("INSERT INTO items VALUES (2, 'committed')")
        committed = enqueue_on_commit(signature, "commit", str(path), 2, manager=db.transactions)
    seen = worker.result(committed)
    assert (seen["request_id"], seen["row_exists"]) == (f"commit-{SESSION}", True)
    assert [m["id"] for m in published] == [committed.id]
    assert rolled_back.id not in {r["task_id"] for r in worker.records()}


def test_an_oversized_value_from_a_foreign_publisher_is_not_applied_nor_carried_on(worker):
    # Published with the header given, as a producer without install() would.
    request_id = f"big-{SESSION}"
    header = payload(
        {
            "contextual.request": {"request_id": request_id},
            "tests.celery.tenant": {"big": "x" * 2_000_000, "small": "ok"},
        }
    )
    parents = [
        tasks.publish_child.apply_async((f"big-{i}",), queue=worker.queue, headers={HEADER: header})
        for i in range(3)
    ]
    for parent in parents:
        child = worker.result(tasks.look.AsyncResult(worker.result(parent)))
        assert (child["request_id"], child["tenant"]) == (
            request_id,
            {"small": "ok", "changed_by": "parent"},
        )
        seen = worker.record("seen", parent.id)
        assert (seen["request_id"], seen["tenant"]) == (request_id, {"small": "ok"})
    warnings = [ln for ln in worker.lines() if "'tests.celery.tenant'['big'] takes" in ln]
    assert warnings
    assert all(f"[{request_id}]" in ln and "WARNING" in ln for ln in warnings)
    processes = [ln.split()[1] for ln in warnings]
    assert len(processes) == len(set(processes)), "reported once per process"


def test_format_characters_are_refused_by_the_worker_and_other_letters_travel(worker):
    refused_id, kept_id = f"bidi-{SESSION}", f"zoe-{SESSION}"
    with (
        request_context(request_id=refused_id, user_id="ada\u202eevil"),
        tasks.tenant.scope(bad="txt.exe\u202egpj", ok="fine"),
    ):
        refused = tasks.look.apply_async(("bidi",), queue=worker.queue)
    with (
        request_context(request_id=kept_id, user_id="Zo\u00eb"),
        tasks.tenant.scope({"name": "Zo\u00eb"}),
    ):
        kept = tasks.look.apply_async(("zoe",), queue=worker.queue)
    seen = worker.result(refused)
    assert (seen["request_id"], seen["user"], seen["current_user"], seen["tenant"]) == (
        refused_id,
        None,
        None,
        {"ok": "fine"},
    )
    seen = worker.result(kept)
    assert (seen["request_id"], seen["user"], seen["current_user"], seen["tenant"]) == (
        kept_id,
        "Zo\u00eb",
        "Zo\u00eb",
        {"name": "Zo\u00eb"},
    )
    line = worker.line(f"[{refused_id}]", "'tests.celery.tenant'['bad']")
    assert f"'contextual.request'['user_id'] holds {CONTROL_CHARACTERS}" in line
    assert "\u202e" not in "\n".join(worker.lines())


# -- real workers: task IDs, new request IDs, carriers and spans ------------------------


def test_task_ids_are_in_the_log_lines_of_a_task_and_of_the_child_it_publishes(worker):
    with request_context(request_id=f"ids-{SESSION}"):
        parent = tasks.publish_child.apply_async(("ids",), queue=worker.queue)
    child_id = worker.result(parent)
    worker.result(tasks.look.AsyncResult(child_id))
    assert worker.record("seen", parent.id)["task_fields"] == {
        "task_id": parent.id,
        "parent_task_id": "-",
    }
    assert worker.record("seen", child_id)["task_fields"] == {
        "task_id": child_id,
        "parent_task_id": parent.id,
    }
    assert f"task={child_id} parent={parent.id} " in worker.line("look ids-child")
    worker.line(f"[ids-{SESSION}] task={child_id} parent={parent.id} ", "succeeded")
    worker.line(f"[ids-{SESSION}] task={parent.id} parent=- ", "succeeded")
    # The main process receives the task before it runs: no task there yet.
    assert "task=- parent=- " in worker.line("received", child_id)
    for task_id in (parent.id, child_id):
        assert worker.record("after", task_id)["task_fields"] == {
            "task_id": "-",
            "parent_task_id": "-",
        }


def test_a_context_executor_thread_of_a_task_logs_the_tasks_ids(worker):
    result = tasks.hand_off.apply_async(("pool",), queue=worker.queue)
    seen = worker.result(result)
    assert seen["thread"] != worker.record("after", result.id)["thread"]
    assert seen["task_fields"] == {"task_id": result.id, "parent_task_id": "-"}
    assert f"task={result.id} parent=- " in worker.line("handed off pool")


def test_a_task_published_outside_any_request_gets_a_new_id_and_passes_it_on(worker):
    parent = tasks.publish_child.apply_async(("fresh",), queue=worker.queue)
    child = worker.result(tasks.look.AsyncResult(worker.result(parent)))
    new_id = worker.record("seen", parent.id)["request_id"]
    assert is_new_id(new_id)
    assert child["request_id"] == new_id
    line = worker.line("arrived without a request ID", parent.id)
    assert "DEBUG" in line
    assert f"[{new_id}] task={parent.id} parent=- contextual.integrations.celery: " in line
    assert line.endswith(f"it runs under the new request ID {new_id}.")
    # The child came with the ID: nothing said of it.
    assert not [ln for ln in worker.lines() if "arrived" in ln and child["task_id"] in ln]


@pytest.fixture
def worker_carrier() -> Iterator[Any]:
    """The worker's test carrier, registered in this process for the test."""
    carrier = carriers.named(tasks.CARRIER_NAME)
    register_carrier(carrier)
    yield carrier
    unregister_carrier(carrier.name)


def test_a_carrier_carries_its_text_map_to_the_task_and_on_to_its_subtasks(worker, worker_carrier):
    token = carriers.value.set(f"carried-{SESSION}")
    try:
        parent = tasks.publish_child.apply_async(("carried",), queue=worker.queue)
    finally:
        carriers.value.reset(token)
    child = worker.result(tasks.look.AsyncResult(worker.result(parent)))
    assert worker.record("seen", parent.id)["carried"] == f"carried-{SESSION}"
    assert child["carried"] == f"carried-{SESSION}"
    assert worker.record("after", parent.id)["carried"] is None


def test_a_carrier_the_worker_has_not_registered_is_ignored_and_reported_once(worker):
    unknown = carriers.named(f"tests-unknown-{worker.pool}")
    register_carrier(unknown)
    token = carriers.value.set("for nobody")
    try:
        results = [tasks.look.apply_async((f"unknown-{i}",), queue=worker.queue) for i in range(4)]
    finally:
        carriers.value.reset(token)
        unregister_carrier(unknown.name)
    assert [worker.result(r)["carried"] for r in results] == [None] * 4
    warnings = worker.wait(
        lambda: [ln for ln in worker.lines() if f"'tests-unknown-{worker.pool}'" in ln],
        "the warning about the unknown carrier",
    )
    assert all("WARNING" in ln and "no carrier is registered here as" in ln for ln in warnings)
    processes = [ln.split()[1] for ln in warnings]
    assert len(processes) == len(set(processes)), "reported once per process"


@pytest.fixture
def spans() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    """OpenTelemetry's carrier installed here; a tracer of a provider of the test's own."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    contextual_otel.install()
    yield provider.get_tracer(__name__), exporter
    contextual_otel.uninstall()
    provider.shutdown()


def test_a_task_span_is_a_child_of_the_publishers_span_and_the_parent_of_its_subtasks(
    worker, spans
):
    tracer, exporter = spans
    with request_context(request_id=f"traced-{SESSION}"), tracer.start_as_current_span("send"):
        result = tasks.traced.apply_async(("traced",), {"child": True}, queue=worker.queue)
    (sent,) = exporter.get_finished_spans()
    task = worker.result(result)
    child = worker.result(tasks.traced.AsyncResult(task["child_id"]))
    trace_id = f"{sent.context.trace_id:032x}"
    assert (task["trace_id"], task["parent_span_id"], task["parent_is_remote"]) == (
        trace_id,
        f"{sent.context.span_id:016x}",
        True,
    )
    assert (child["trace_id"], child["parent_span_id"], child["parent_is_remote"]) == (
        trace_id,
        task["span_id"],
        True,
    )
    assert child["request_id"] == task["request_id"] == f"traced-{SESSION}"
