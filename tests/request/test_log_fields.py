"""Log fields beyond stores: sources, unknown store names, and the opt-in record factory."""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Iterator, Mapping

import pytest
from loguru import logger as loguru_logger

from contextual import (
    ContextFilter,
    ContextStore,
    RecordFactory,
    install_record_factory,
    request_context,
)
from contextual._request.logfilter import FieldCollector
from contextual.integrations.loguru import patch_context
from contextual.integrations.structlog import add_context

_job = ContextStore("tests.log_fields.job", defaults={"job": None})


def _job_fields() -> Mapping[str, object]:
    return {"job": _job["job"] or "none", "name": "source"}


def _broken() -> Mapping[str, object]:
    msg = "source down"
    raise RuntimeError(msg)


@pytest.fixture
def lines(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger(f"tests.log_fields.{request.node.name}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log, stream
    log.handlers.clear()


def _format(log: logging.Logger, fmt: str, log_filter: logging.Filter | None = None) -> None:
    handler = log.handlers[0]
    handler.setFormatter(logging.Formatter(fmt))
    if log_filter is not None:
        handler.addFilter(log_filter)


# -- sources ------------------------------------------------------------------------------


def test_a_source_adds_its_fields_to_every_record(lines):
    log, stream = lines
    _format(
        log, "%(request_id)s %(job)s %(ctx_name)s %(message)s", ContextFilter(sources=[_job_fields])
    )
    log.info("outside")
    with request_context(request_id="r-1"), _job.scope(job="nightly"):
        log.info("inside")
    assert stream.getvalue().splitlines() == ["- none source outside", "r-1 nightly source inside"]


def test_a_store_value_and_extra_win_over_a_source(lines):
    log, stream = lines
    tenant = ContextStore("tests.log_fields.tenant")
    _format(log, "%(job)s %(message)s", ContextFilter([tenant], sources=[_job_fields]))
    with tenant.scope(job="from-store"):
        log.info("store")
    log.info("extra", extra={"job": "from-call"})
    log.info("source")
    assert stream.getvalue().splitlines() == ["from-store store", "from-call extra", "none source"]


def test_a_raising_source_adds_nothing_and_the_record_keeps_its_defaults(lines):
    log, stream = lines
    _format(
        log,
        "%(request_id)s %(job)s %(message)s",
        ContextFilter(defaults={"job": "?"}, sources=[_broken]),
    )
    with request_context(request_id="r-1"):
        log.info("still logged")
    assert stream.getvalue().splitlines() == ["r-1 ? still logged"]


def test_sources_reach_structlog_and_loguru():
    processor = add_context(sources=[_job_fields])
    with _job.scope(job="nightly"):
        event = processor(None, "info", {"event": "e", "job": "mine"})
        assert event == {
            "event": "e",
            "job": "mine",
            "name": "source",
            "request_id": "-",
            "user_id": "-",
        }
        out: list[str] = []
        sink = loguru_logger.add(out.append, format="{extra[job]} {message}")
        try:
            loguru_logger.configure(patcher=patch_context(sources=[_job_fields]))
            loguru_logger.info("hello")
        finally:
            loguru_logger.remove(sink)
            loguru_logger.configure(patcher=lambda _record: None)
    assert [line.strip() for line in out] == ["nightly hello"]


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ("trace_fields", r"sources must be an iterable of callables"),
        (42, r"sources must be an iterable of callables"),
        ([{"job": 1}], r"each source must be a callable"),
    ],
)
def test_bad_sources_are_refused_with_what_is_expected(sources, message):
    with pytest.raises(TypeError, match=message):
        ContextFilter(sources=sources)
    with pytest.raises(TypeError, match=message):
        FieldCollector(sources=sources)


# -- store names that no store has ------------------------------------------------------------


def test_an_unknown_store_name_warns_once_at_first_use_and_names_the_stores(lines):
    log, stream = lines
    _format(log, "%(message)s", ContextFilter(["tests.log_fields.nope"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log.info("one")
        log.info("two")
    assert [type(warning.message) for warning in caught] == [RuntimeWarning]
    assert "no store is named 'tests.log_fields.nope'" in str(caught[0].message)
    assert "'contextual.request'" in str(caught[0].message)
    assert stream.getvalue().splitlines() == ["one", "two"]


def test_a_store_created_after_the_warning_is_read_from_then_on(lines):
    log, stream = lines
    _format(
        log,
        "%(late)s %(message)s",
        ContextFilter(["tests.log_fields.late"], defaults={"late": "-"}),
    )
    with pytest.warns(RuntimeWarning, match="tests.log_fields.late"):
        log.info("before")
    late = ContextStore("tests.log_fields.late")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with late.scope(late="yes"):
            log.info("after")
    assert stream.getvalue().splitlines() == ["- before", "yes after"]


def test_the_unknown_store_warning_logged_through_logging_does_not_recurse(lines):
    log, stream = lines
    _format(log, "%(message)s", ContextFilter(["tests.log_fields.nope2"]))
    warned = logging.getLogger("py.warnings")
    warned.addHandler(log.handlers[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            logging.captureWarnings(capture=True)
            log.info("hello")
    finally:
        logging.captureWarnings(capture=False)
        warned.removeHandler(log.handlers[0])
    printed = stream.getvalue().splitlines()
    assert printed[-1] == "hello"
    assert sum("no store is named 'tests.log_fields.nope2'" in line for line in printed) == 1


# -- the record factory -----------------------------------------------------------------------


@pytest.fixture
def factory_restored() -> Iterator[None]:
    before = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(before)


def test_the_record_factory_fills_records_a_logger_filter_would_miss(lines, factory_restored):
    log, stream = lines
    child = logging.getLogger(log.name + ".child")
    # The trap: a filter on the parent logger never sees the child's records.
    log.addFilter(ContextFilter())
    _format(log, "%(request_id)s %(user_id)s %(message)s")
    with (
        request_context(request_id="r-1", user_id="ada"),
        pytest.raises(ValueError, match="request_id"),
    ):
        log.handlers[0].format(child.makeRecord(child.name, logging.INFO, "f", 1, "m", None, None))
    factory = install_record_factory()
    try:
        with request_context(request_id="r-1", user_id="ada"):
            child.info("from the child")
        child.info("outside")
    finally:
        factory.uninstall()
    assert stream.getvalue().splitlines() == ["r-1 ada from the child", "- - outside"]


def test_the_record_factory_composes_with_the_factory_before_it(factory_restored):
    made: list[str] = []
    previous = logging.getLogRecordFactory()

    def tagging(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.tag = "mine"
        made.append(record.getMessage())
        return record

    logging.setLogRecordFactory(tagging)
    factory = install_record_factory(sources=[_job_fields])
    assert isinstance(factory, RecordFactory)
    log = logging.getLogger("tests.log_fields.compose")
    with request_context(request_id="r-1"), _job.scope(job="nightly"):
        record = log.makeRecord(log.name, logging.INFO, "f", 1, "hello", None, None)
    assert (record.tag, record.request_id, record.job) == ("mine", "r-1", "nightly")
    assert made == ["hello"]
    factory.uninstall()
    assert logging.getLogRecordFactory() is tagging


def test_uninstalling_under_a_later_factory_leaves_the_chain_but_adds_nothing(factory_restored):
    factory = install_record_factory()
    outer_previous = logging.getLogRecordFactory()

    def later(*args: object, **kwargs: object) -> logging.LogRecord:
        return outer_previous(*args, **kwargs)

    logging.setLogRecordFactory(later)
    factory.uninstall()
    factory.uninstall()
    assert logging.getLogRecordFactory() is later
    record = logging.getLogger("x").makeRecord("x", logging.INFO, "f", 1, "m", None, None)
    assert "request_id" not in record.__dict__


def test_a_field_the_factory_set_cannot_also_come_in_extra(factory_restored):
    factory = install_record_factory()
    try:
        with pytest.raises(KeyError, match="Attempt to overwrite 'request_id'"):
            logging.getLogger("tests.log_fields.extra").error("x", extra={"request_id": "mine"})
    finally:
        factory.uninstall()


def test_installs_from_two_threads_at_once_are_both_kept(factory_restored):
    barrier = threading.Barrier(2)
    installed: list[RecordFactory] = []

    def install(name: str) -> None:
        barrier.wait(10)
        installed.append(install_record_factory(defaults={name: name}))

    threads = [threading.Thread(target=install, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    record = logging.getLogger("x").makeRecord("x", logging.INFO, "f", 1, "m", None, None)
    assert (record.a, record.b) == ("a", "b")
    for factory in reversed(installed):
        factory.uninstall()


def test_the_request_fields_given_in_extra_keep_the_callers_values(lines):
    log, stream = lines
    _format(log, "%(request_id)s %(user_id)s %(message)s", ContextFilter())
    with request_context(request_id="r-1", user_id="ada"):
        log.info("user", extra={"user_id": "bob"})
        log.info("both", extra={"request_id": "r-9", "user_id": None})
    assert stream.getvalue().splitlines() == ["r-1 bob user", "r-9 None both"]


def test_a_source_fills_a_field_that_has_a_default(lines):
    log, stream = lines
    _format(
        log,
        "%(request_id)s %(job)s %(message)s",
        ContextFilter(defaults={"job": "?"}, sources=[_job_fields]),
    )
    with _job.scope(job="nightly"):
        log.info("from the source")
    processor = add_context(defaults={"job": "?"}, sources=[_job_fields])
    assert processor(None, "info", {})["job"] == "none"
    assert stream.getvalue().splitlines() == ["- nightly from the source"]


def test_with_warnings_made_errors_an_unknown_store_name_still_leaves_the_fields(lines):
    log, stream = lines
    _format(
        log,
        "%(request_id)s %(message)s",
        ContextFilter(["contextual.request", "tests.log_fields.nope3"]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with request_context(request_id="r-1"):
            log.info("kept")
    assert stream.getvalue().splitlines() == ["r-1 kept"]


def test_sources_may_come_from_any_iterable(lines):
    log, stream = lines
    _format(log, "%(job)s %(message)s", ContextFilter(sources=iter([_job_fields])))
    log.info("iterated")
    assert stream.getvalue().splitlines() == ["none iterated"]


def test_request_fields_given_in_extra_win_over_sources_too(lines):
    log, stream = lines
    _format(log, "%(request_id)s %(job)s %(message)s", ContextFilter(sources=[_job_fields]))
    with request_context(request_id="r-1"), _job.scope(job="nightly"):
        log.info("mine", extra={"request_id": "r-9", "job": "given"})
    assert stream.getvalue().splitlines() == ["r-9 given mine"]
