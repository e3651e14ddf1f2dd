"""Random sequences of writes and scopes, on both backends, against a dict model."""

from __future__ import annotations

import contextvars
import itertools
import threading
from contextlib import AbstractContextManager
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from contextual import ContextStore

# Few keys, so operations collide; "get" and "name" also name store members.
keys = st.sampled_from(["a", "b", "c", "get", "name", "_hidden"])
attribute_keys = st.sampled_from(["a", "b", "c"])
values = st.one_of(st.integers(-3, 3), st.none(), st.text(max_size=2))
value_maps = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), values, max_size=3)

_names = itertools.count()


class StoreMachine(RuleBasedStateMachine):
    backend: str

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, Any] = {}
        self.defaults: dict[str, Any] = {}
        self.scopes: list[tuple[AbstractContextManager[ContextStore], dict[str, Any]]] = []
        self.store: ContextStore | None = None

    @initialize(defaults=value_maps)
    def create(self, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.model = dict(defaults)
        self.store = ContextStore(
            f"machine.{self.backend}.{next(_names)}",
            backend=self.backend,  # type: ignore[arg-type]
            defaults=defaults,
        )

    @property
    def s(self) -> ContextStore:
        assert self.store is not None
        return self.store

    @rule(key=keys, value=values)
    def set_item(self, key: str, value: Any) -> None:
        self.s[key] = value
        self.model[key] = value

    @rule(key=attribute_keys, value=values)
    def set_attribute(self, key: str, value: Any) -> None:
        setattr(self.s, key, value)
        self.model[key] = value

    @rule(key=keys)
    def delete(self, key: str) -> None:
        if key in self.model:
            del self.s[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.s[key]

    @rule(key=keys, default=values)
    def pop(self, key: str, default: Any) -> None:
        assert self.s.pop(key, default) == self.model.pop(key, default)

    @rule(key=keys, default=values)
    def setdefault(self, key: str, default: Any) -> None:
        assert self.s.setdefault(key, default) == self.model.setdefault(key, default)

    @rule(new=value_maps)
    def update(self, new: dict[str, Any]) -> None:
        self.s.update(new)
        self.model.update(new)

    @rule()
    def clear(self) -> None:
        self.s.clear()
        self.model.clear()

    @rule(scoped=value_maps)
    def enter_scope(self, scoped: dict[str, Any]) -> None:
        scope = self.s.scope(**scoped)
        scope.__enter__()
        self.scopes.append((scope, dict(self.model)))
        self.model.update(scoped)

    @precondition(lambda self: self.scopes)
    @rule()
    def exit_scope(self) -> None:
        scope, saved = self.scopes.pop()
        scope.__exit__(None, None, None)
        self.model = saved

    @rule(key=keys, value=values)
    def write_in_a_copied_context(self, key: str, value: Any) -> None:
        # Context backend: the copy's writes stay in the copy. Thread backend:
        # the copy runs on this thread, so its writes are this thread's.
        def write() -> dict[str, Any]:
            self.s[key] = value
            return dict(self.s)

        seen = contextvars.copy_context().run(write)
        if self.backend == "thread":
            self.model[key] = value
        assert seen == {**self.model, key: value}

    @rule(key=keys, value=values)
    def write_in_another_thread(self, key: str, value: Any) -> None:
        seen: list[dict[str, Any]] = []

        def write() -> None:
            seen.append(dict(self.s))
            self.s[key] = value
            seen.append(dict(self.s))

        thread = threading.Thread(target=write)
        # From an empty context, so a thread starts alike on interpreters
        # whose threads inherit their starter's context.
        contextvars.Context().run(thread.start)
        thread.join()
        assert seen == [self.defaults, {**self.defaults, key: value}]

    @invariant()
    def matches_the_model(self) -> None:
        if self.store is None:
            return
        assert dict(self.s) == self.model
        assert len(self.s) == len(self.model)
        assert list(self.s) == list(self.model)
        assert dict(self.s.snapshot()) == self.model
        for key in ("a", "b", "get"):
            assert (key in self.s) == (key in self.model)
            assert self.s.get(key, "absent") == self.model.get(key, "absent")

    def teardown(self) -> None:
        while self.scopes:
            scope, _ = self.scopes.pop()
            scope.__exit__(None, None, None)


class ContextBackendMachine(StoreMachine):
    backend = "context"


class ThreadBackendMachine(StoreMachine):
    backend = "thread"


machine_settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestContextBackend = ContextBackendMachine.TestCase
TestContextBackend.settings = machine_settings
TestThreadBackend = ThreadBackendMachine.TestCase
TestThreadBackend.settings = machine_settings
