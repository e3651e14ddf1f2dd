"""ContextFilter and the structlog/loguru integrations, with real formatters and handlers."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import logging.handlers
import queue
import threading
from collections.abc import Iterator

import pytest
import structlog
from loguru import logger as loguru_logger
from pythonjsonlogger.json import JsonFormatter

from contextual import ContextExecutor, ContextFilter, request_context
from contextual._request.logfilter import RESERVED_ATTRIBUTES
from contextual.integrations.loguru import patch_context
from contextual.integrations.structlog import add_context


@pytest.fixture
def capture_lines(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A logger whose one handler formats into a buffer the test reads."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger(f"tests.logfilter.{request.node.name}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log, stream, handler
    log.handlers.clear()


def _explode() -> dict[str, object]:
    msg = "store unreadable"
    raise RuntimeError(msg)


def _use(handler: logging.Handler, fmt: str, log_filter: logging.Filter) -> None:
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(log_filter)


def test_default_fields_inside_and_outside_a_request(capture_lines):
    log, stream, handler = capture_lines
    _use(handler, "%(request_id)s %(user_id)s %(message)s", ContextFilter())
    log.info("outside")
    with request_context(request_id="r-1", user_id="ada"):
        log.info("inside")
    with request_context(request_id="r-2"):
        log.info("no user")
    assert stream.getvalue().splitlines() == ["- - outside", "r-1 ada inside", "r-2 - no user"]


def test_a_cleared_value_prints_the_default_not_none(make_store, capture_lines):
    log, stream, handler = capture_lines
    store = make_store()
    _use(handler, "[%(tenant)s] %(message)s", ContextFilter(store, defaults={"tenant": "none"}))
    store["tenant"] = "acme"
    log.info("set")
    store["tenant"] = None
    log.info("cleared")
    del store["tenant"]
    log.info("unset")
    assert stream.getvalue().splitlines() == ["[acme] set", "[none] cleared", "[none] unset"]


def test_every_key_of_the_given_stores_first_store_wins(make_store, capture_lines):
    log, stream, handler = capture_lines
    first, second = make_store(), make_store("thread")
    first.update(a="first", shared="from first")
    second.update(b="second", shared="from second")
    _use(handler, "%(a)s %(b)s %(shared)s", ContextFilter([first, second]))
    log.info("x")
    assert stream.getvalue().splitlines() == ["first second from first"]


def test_extra_wins_over_the_context(capture_lines):
    log, stream, handler = capture_lines
    _use(handler, "%(request_id)s %(message)s", ContextFilter())
    with request_context(request_id="from-context"):
        log.info("explicit", extra={"request_id": "from-extra"})
    assert stream.getvalue().splitlines() == ["from-extra explicit"]


def test_a_context_key_named_like_a_record_attribute_cannot_corrupt_a_line(
    make_store, capture_lines
):
    log, stream, handler = capture_lines
    store = make_store()
    store.update(msg="FORGED %s %s", args=("x",), levelname="CRITICAL", name="evil")
    _use(handler, "%(levelname)s %(name)s %(message)s | %(ctx_msg)s", ContextFilter(store))
    log.info("real %s", "message")
    assert stream.getvalue().splitlines() == [f"INFO {log.name} real message | FORGED %s %s"]


def test_reserved_attributes_cover_the_record_and_formatter_fields():
    assert {
        "name",
        "msg",
        "args",
        "levelname",
        "exc_info",
        "message",
        "asctime",
    } <= RESERVED_ATTRIBUTES


def test_the_filter_never_raises_and_always_returns_true(make_store, capture_lines):
    log, stream, handler = capture_lines

    # A store whose defaults factory fails: reading it raises in the filter.
    unreadable = make_store(defaults=_explode)
    broken = ContextFilter(unreadable, defaults={"request_id": "-"})
    _use(handler, "%(request_id)s %(message)s", broken)
    record = logging.LogRecord("n", logging.INFO, "p", 0, "m", None, None)
    assert broken.filter(record) is True
    log.info("still logged")
    assert stream.getvalue().splitlines() == ["- still logged"]


def test_records_of_other_libraries_loggers_get_the_fields_on_the_handler(capture_lines):
    log, stream, handler = capture_lines
    _use(handler, "%(name)s %(request_id)s %(message)s", ContextFilter())
    child = logging.getLogger(f"{log.name}.thirdparty.urllib3")
    with request_context(request_id="r-lib"):
        child.warning("connection pool is full")
    assert stream.getvalue().splitlines() == [f"{child.name} r-lib connection pool is full"]


def test_store_names_resolve_on_first_use(make_store, capture_lines, unique_name):
    log, stream, handler = capture_lines
    _use(handler, "%(tenant)s %(message)s", ContextFilter(unique_name, defaults={"tenant": "-"}))
    log.info("before the store exists")
    store = make_store(name=unique_name)
    store["tenant"] = "acme"
    log.info("after")
    assert stream.getvalue().splitlines() == ["- before the store exists", "acme after"]


def test_dict_config_factory_form(make_store, unique_name):
    store = make_store(name=unique_name)
    stream = io.StringIO()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {
                "context": {
                    "()": "contextual.ContextFilter",
                    "stores": [unique_name, "contextual.request"],
                    "defaults": {"tenant": "none", "request_id": "-"},
                }
            },
            "formatters": {"plain": {"format": "%(request_id)s %(tenant)s %(message)s"}},
            "handlers": {
                "buffer": {
                    "class": "logging.StreamHandler",
                    "stream": stream,
                    "formatter": "plain",
                    "filters": ["context"],
                }
            },
            "loggers": {f"dictconfig.{unique_name}": {"handlers": ["buffer"], "level": "INFO"}},
        }
    )
    log = logging.getLogger(f"dictconfig.{unique_name}")
    log.propagate = False
    log.info("outside")
    store["tenant"] = "acme"
    with request_context(request_id="r-dc"):
        log.info("inside")
    assert stream.getvalue().splitlines() == ["- none outside", "r-dc acme inside"]
    log.handlers.clear()


@pytest.mark.parametrize(
    ("stores", "defaults", "match"),
    [
        (42, None, "stores must be a ContextStore, a store name"),
        ([42], None, "got int 42"),
        ((), ["tenant"], "defaults must be a mapping"),
        ((), {1: "x"}, "defaults must be a mapping"),
    ],
)
def test_bad_configuration_is_refused(stores, defaults, match):
    with pytest.raises(TypeError, match=match):
        ContextFilter(stores, defaults=defaults)


def test_queue_handler_reads_the_context_in_the_logging_thread(capture_lines):
    log, stream, target = capture_lines
    target.setFormatter(logging.Formatter("%(request_id)s %(user_id)s %(message)s"))
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    queue_handler = logging.handlers.QueueHandler(records)
    queue_handler.addFilter(ContextFilter())  # on the QueueHandler: read where the call happens
    log.handlers[:] = [queue_handler]
    listener = logging.handlers.QueueListener(records, target)
    listener.start()
    try:
        count = 4
        barrier = threading.Barrier(count)

        def handle(i: int) -> None:
            with request_context(request_id=f"r-{i}", user_id=f"u{i}"):
                barrier.wait(timeout=10)
                log.info("line %d", i)

        threads = [threading.Thread(target=handle, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        listener.stop()
    assert sorted(stream.getvalue().splitlines()) == [f"r-{i} u{i} line {i}" for i in range(count)]


def test_work_in_a_context_executor_logs_its_request(capture_lines):
    log, stream, handler = capture_lines
    _use(handler, "%(request_id)s %(message)s", ContextFilter())
    with ContextExecutor(max_workers=2) as pool:
        for i in range(3):
            with request_context(request_id=f"r-{i}"):
                pool.submit(log.info, "in worker").result()
        pool.submit(log.info, "no request").result()
    assert stream.getvalue().splitlines() == [
        "r-0 in worker",
        "r-1 in worker",
        "r-2 in worker",
        "- no request",
    ]


def test_python_json_logger_formats_the_fields(capture_lines):
    log, stream, handler = capture_lines
    handler.setFormatter(JsonFormatter("%(message)s %(request_id)s %(user_id)s"))
    handler.addFilter(ContextFilter())
    with request_context(request_id="r-json", user_id="ada"):
        log.info("hello")
    log.info("bye")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines == [
        {"message": "hello", "request_id": "r-json", "user_id": "ada"},
        {"message": "bye", "request_id": "-", "user_id": "-"},
    ]


def test_structlog_processor_formatter_renders_the_fields(capture_lines):
    log, stream, handler = capture_lines
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
            foreign_pre_chain=[structlog.stdlib.ExtraAdder()],
        )
    )
    handler.addFilter(ContextFilter())
    with request_context(request_id="r-sl", user_id="ada"):
        log.info("through stdlib")
    line = json.loads(stream.getvalue())
    assert line == {"event": "through stdlib", "request_id": "r-sl", "user_id": "ada"}


def test_structlog_processor_adds_the_fields(make_store):
    store = make_store()
    processor = add_context()
    with request_context(request_id="r-p", user_id="ada"):
        event = processor(None, "info", {"event": "x", "user_id": "explicit"})
    assert event == {"event": "x", "request_id": "r-p", "user_id": "explicit"}
    assert add_context(store, defaults={"tenant": "-"})(None, "info", {}) == {"tenant": "-"}

    failing = add_context(make_store(defaults=_explode), defaults={"request_id": "-"})
    assert failing(None, "info", {}) == {"request_id": "-"}


def test_structlog_end_to_end():
    stream = io.StringIO()
    structlog.configure(
        processors=[add_context(), structlog.processors.JSONRenderer(sort_keys=True)],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    try:
        with request_context(request_id="r-e2e"):
            structlog.get_logger().info("done")
    finally:
        structlog.reset_defaults()
    assert json.loads(stream.getvalue()) == {"event": "done", "request_id": "r-e2e", "user_id": "-"}


def test_loguru_patcher_fills_extra(make_store):
    stream = io.StringIO()
    patched = loguru_logger.patch(patch_context())
    sink = loguru_logger.add(stream, format="{extra[request_id]} {extra[user_id]} {message}")
    try:
        with request_context(request_id="r-lg", user_id="ada"):
            patched.info("inside")
        patched.bind(request_id="bound").info("bound wins")
        patched.info("outside")
    finally:
        loguru_logger.remove(sink)
    assert stream.getvalue().splitlines() == [
        "r-lg ada inside",
        "bound - bound wins",
        "- - outside",
    ]

    failing = patch_context(make_store(defaults=_explode), defaults={"request_id": "-"})
    record: dict[str, dict[str, object]] = {"extra": {}}
    failing(record)
    assert record == {"extra": {"request_id": "-"}}


def test_extra_wins_over_store_keys_too(make_store, capture_lines):
    log, stream, handler = capture_lines
    store = make_store()
    store["tenant"] = "from-store"
    _use(handler, "%(tenant)s %(message)s", ContextFilter(store))
    log.info("explicit", extra={"tenant": "from-extra"})
    log.info("implicit")
    assert stream.getvalue().splitlines() == ["from-extra explicit", "from-store implicit"]


def test_the_request_store_given_by_name_keeps_its_dash_defaults(make_store, capture_lines):
    log, stream, handler = capture_lines
    tenant = make_store()
    tenant["tenant"] = "acme"
    _use(
        handler,
        "%(request_id)s %(user_id)s %(tenant)s %(message)s",
        ContextFilter([tenant, "contextual.request"], defaults={"tenant": "-"}),
    )
    log.info("out")
    with request_context(request_id="r1"):
        log.info("in, no user")
    assert stream.getvalue().splitlines() == ["- - acme out", "r1 - acme in, no user"]


def test_the_request_object_itself_is_not_injected(capture_lines):
    log, _, handler = capture_lines
    seen: list[logging.LogRecord] = []
    handler.addFilter(ContextFilter("contextual.request"))
    handler.emit = seen.append  # type: ignore[method-assign]
    with request_context(request_id="r2"):
        log.info("x")
    assert seen[0].request_id == "r2"  # type: ignore[attr-defined]
    assert not hasattr(seen[0], "request")


def test_defaults_alone_keep_the_request_fields(capture_lines):
    log, stream, handler = capture_lines
    _use(
        handler, "%(request_id)s %(tenant)s %(message)s", ContextFilter(defaults={"tenant": "none"})
    )
    with request_context(request_id="r3"):
        log.info("in")
        log.info("extra", extra={"tenant": "from-extra", "request_id": "own"})
    assert stream.getvalue().splitlines() == ["r3 none in", "own from-extra extra"]
