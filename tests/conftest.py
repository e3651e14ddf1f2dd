from __future__ import annotations

import contextvars
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from contextual import ContextStore

# support.server_skips: one summary line for the tests skipped for lack of a
# server; pytester: the tests of that plugin run pytest on files of their own.
pytest_plugins = ["pytester", "support.server_skips"]

_counter = itertools.count()

BACKENDS = ["context", "thread"]

MakeStore = Callable[..., ContextStore]


def _unique(request: pytest.FixtureRequest) -> str:
    return f"test.{request.node.name}.{next(_counter)}"


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A store name no other store in this process has had."""
    return _unique(request)


@pytest.fixture
def run_in_new_thread() -> Callable[[Callable[[], Any]], Any]:
    """Run a function in a new thread started from an empty context; return its result.

    Starting the thread inside an empty Context gives the same start on every
    interpreter: where new threads inherit their starter's context
    (``sys.flags.thread_inherit_context``), they inherit an empty one.
    """

    def run(fn: Callable[[], Any]) -> Any:
        result: list[Any] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                result.append(fn())
            except BaseException as exc:  # reported to the test below
                errors.append(exc)

        thread = threading.Thread(target=target)
        contextvars.Context().run(thread.start)
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    return run


@pytest.fixture
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """Create stores with names unique to the test, so tests never collide."""
    created: list[ContextStore] = []

    def make(backend: str = "context", **kwargs: Any) -> ContextStore:
        name = kwargs.pop("name", None) or _unique(request)
        store = ContextStore(name, backend=backend, **kwargs)  # type: ignore[arg-type]
        created.append(store)
        return store

    yield make
    created.clear()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def store(make_store: MakeStore, backend: str) -> ContextStore:
    return make_store(backend)
