"""Code the tests share: stores, apps, servers and helpers, none of them tests.

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml's pytest
settings), so test modules import these as ``support.<module>``. Child
processes import them by the same names: ``spawn`` and ``forkserver`` workers
inherit the parent's ``sys.path``, and the subprocesses the tests start (the
Celery worker, the spinner's script) get ``tests/`` on ``PYTHONPATH``.
"""
