"""A forked child gets fresh module-level locks, whoever held them at the fork.

``os.fork()`` copies a lock in whatever state it is in, and only the forking
thread lives on in the child: a lock another thread held at that moment would
stay locked in the child for ever, and the child's first use of it would
hang. Each script below has a second thread hold one lock while the main
thread forks, then makes the child do something that needs that lock; an
alarm in the child turns a hang into a failure.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref

import pytest

SCRIPT = """
import importlib, logging, os, signal, threading
{setup}
lock = getattr(importlib.import_module({module!r}), {name!r})
holding, forked = threading.Event(), threading.Event()

def hold():
    with lock:  # another thread is inside the module...
        holding.set()
        forked.wait()

thread = threading.Thread(target=hold)
thread.start()
holding.wait()
pid = os.fork()  # ...when this thread forks
if pid == 0:
    signal.alarm(10)
    logging.disable()
{child}
    os._exit(0)
forked.set()
thread.join()
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""

CASES = {
    "store registry": (
        "contextual._core.registry",
        "_lock",
        "from contextual import ContextStore",
        'ContextStore("made.in.the.child")',
    ),
    "transaction hooks": (
        "contextual.db._transaction",
        "_hooks_lock",
        "from contextual.db import TransactionManager",
        "with TransactionManager().transaction() as txn:\n    txn.on_commit(lambda: None)",
    ),
    "header problem reports": (
        "contextual._propagation.wire",
        "_reported_lock",
        "from contextual.integrations._headers import report_once",
        'report_once([("child", "a problem in the child")])',
    ),
    "celery installs": (
        "contextual.integrations.celery",
        "_install_lock",
        "from celery import Celery\nfrom contextual.integrations.celery import install",
        'install(Celery("child"))',
    ),
    "celery problem reports": (
        "contextual._propagation.wire",
        "_reported_lock",
        "from contextual.integrations import celery",
        'celery._report_unsendable("store", "key", object(), "task")',
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_forked_child_gets_a_lock_nobody_holds(case: str) -> None:
    module, name, setup, child = CASES[case]
    script = SCRIPT.format(
        module=module, name=name, setup=setup, child=textwrap.indent(child, "    ")
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    # The child's exit code: 0, or -14 (SIGALRM) had it hung on the lock.
    assert (result.returncode, result.stdout, result.stderr) == (0, "0\n", "")


HOOK_FAILS = """
import os, threading
from contextual._core import fork

@fork.after_fork_in_child
def broken():
    raise RuntimeError("a broken hook")

namespace = {"lock": threading.Lock()}
fork.renew_locks_after_fork(namespace, "lock")
namespace["lock"].acquire()  # held at the fork: only the hook after the broken one frees it
pid = os.fork()
if pid == 0:
    os._exit(0 if namespace["lock"].acquire(timeout=5) else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_a_failing_after_fork_hook_is_reported_and_the_hooks_after_it_still_run() -> None:
    result = subprocess.run(
        [sys.executable, "-c", HOOK_FAILS], capture_output=True, text=True, check=False, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, "0\n")
    assert "Exception ignored in an after-fork hook of contextual" in result.stderr
    assert "RuntimeError: a broken hook" in result.stderr


def test_an_objects_after_fork_hook_is_held_weakly_and_ends_with_it() -> None:
    from contextual._core import fork  # noqa: PLC0415

    class Holder:
        def forget(self) -> None: ...

    holder = Holder()
    fork.after_fork_in_child(holder.forget)
    assert holder.forget in [entry() for entry in fork._hooks]
    gone = weakref.ref(holder)
    del holder
    gc.collect()
    assert gone() is None  # registering the hook did not keep its object alive
    fork.after_fork_in_child(Holder().forget)  # its object dies at once, after this line
    # The registration dropped every dead hook before adding its own, now dead too.
    assert [entry() for entry in fork._hooks].count(None) == 1
