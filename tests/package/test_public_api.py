"""The public surface: what `import contextual` exports, and what it doesn't import."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from importlib.resources import files

import pytest

import contextual


def test_all_is_sorted_and_complete():
    public = {name for name in dir(contextual) if not name.startswith("_")}
    for name in contextual.__all__:
        assert getattr(contextual, name) is not None, name
    modules = {name for name in public if inspect.ismodule(getattr(contextual, name))}
    assert contextual.__all__ == sorted(contextual.__all__)
    assert set(contextual.__all__) - {"__version__"} == public - modules


def test_public_objects_report_the_public_module():
    for name in contextual.__all__:
        obj = getattr(contextual, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "contextual", name


def test_every_public_object_is_documented():
    for name in contextual.__all__:
        obj = getattr(contextual, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name
            assert "versionadded" in (obj.__doc__ or ""), name


def test_store_defaults_error_is_exported_under_both_of_its_bases():
    error = contextual.StoreDefaultsError
    assert "StoreDefaultsError" in contextual.__all__
    assert error.__module__ == "contextual"
    # except ContextualError and except RuntimeError both catch it.
    assert issubclass(error, contextual.ContextualError)
    assert issubclass(error, RuntimeError)


def test_version_is_a_string():
    assert isinstance(contextual.__version__, str)
    assert contextual.__version__


def test_import_pulls_in_the_standard_library_only():
    code = (
        "import sys; before = set(sys.modules); import contextual; "
        "new = sorted(set(sys.modules) - before); print('\\n'.join(new))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    stdlib = sys.stdlib_module_names
    foreign = [m for m in out if m.split(".")[0] not in stdlib and m.split(".")[0] != "contextual"]
    assert foreign == []
    assert not any(m.startswith("contextual.integrations") for m in out)
    # Nor the helpers built on the package: the DB layer, the spinner, the test helpers.
    assert not any(m.startswith(("contextual.db", "contextual.spinner")) for m in out)
    assert "contextual.testing" not in out
    # The heavy modules load on first use of the names that need them.
    assert {"asyncio", "concurrent.futures", "multiprocessing", "sqlite3"}.isdisjoint(out)


def test_lazy_names_load_on_first_use_and_unknown_names_fail():
    code = (
        "import sys, contextual; assert 'concurrent.futures' not in sys.modules; "
        "from contextual import ContextExecutor; "
        "assert ContextExecutor.__module__ == 'contextual'; "
        "assert 'ContextExecutor' in dir(contextual); print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "ok"
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        contextual.nothing_here  # noqa: B018


def test_package_is_typed():
    assert files("contextual").joinpath("py.typed").is_file()


MOVED = {
    "contextual.db": [
        "CommitOutcomeUnknownError",
        "DBAPIConnection",
        "ThreadLocalDB",
        "Transaction",
        "TransactionError",
        "TransactionManager",
        "TransactionState",
    ],
    "contextual.spinner": ["Spinner", "SpinnerHandler"],
}


@pytest.mark.parametrize(("module", "name"), [(m, n) for m, ns in MOVED.items() for n in ns])
def test_a_name_moved_to_a_helper_module_says_where_it_went(module, name):
    assert name not in contextual.__all__
    assert name not in dir(contextual)
    with pytest.raises(AttributeError, match=rf"from {module} import {name}$"):
        getattr(contextual, name)


@pytest.mark.parametrize("module", sorted(MOVED))
def test_the_helper_modules_export_the_moved_names_under_their_own_name(module):
    helper = importlib.import_module(module)
    assert helper.__all__ == sorted(MOVED[module])
    for name in helper.__all__:
        obj = getattr(helper, name)
        if inspect.isclass(obj):
            assert obj.__module__ == module, name
            assert "versionadded" in (obj.__doc__ or ""), name


def test_importing_a_helper_module_loads_the_package_and_not_the_other_helper():
    code = (
        "import sys, contextual.spinner; "
        "print(sorted(m for m in sys.modules if m.startswith('contextual.db')), "
        "'sqlite3' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[] False"
