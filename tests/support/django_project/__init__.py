"""A real Django project for the Django integration tests, set up once per process.

Django's settings can be configured once in a process, so every test shares
one project: :func:`setup` configures it from ``settings.py``, with its
sqlite database in a folder the caller gives, runs the migrations, and
creates ``USERS`` users, each logged in with a session of its own; later
calls return the same project. Tests that need other settings build the
middleware (or a test client) under ``django.test.override_settings``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import django
from django.conf import settings as django_settings

from . import settings as project_settings

USERS = 50


@dataclass(frozen=True)
class User:
    """One of the project's users, with the session that logs them in."""

    username: str
    pk: int
    session: str  # the value of the session cookie


@dataclass(frozen=True)
class Project:
    users: list[User]
    cookie: str  # the session cookie's name

    def cookies(self, user: User) -> dict[str, str]:
        return {self.cookie: user.session}


_lock = threading.Lock()
_project: list[Project] = []


def setup(folder: Path) -> Project:
    """Configure Django and create the database in ``folder``, once; return the project."""
    with _lock:
        if not _project:
            _project.append(_create(folder))
        return _project[0]


def _create(folder: Path) -> Project:
    values = {name: getattr(project_settings, name) for name in dir(project_settings)}
    values = {name: value for name, value in values.items() if name.isupper()}
    database = {**project_settings.DATABASES["default"], "NAME": str(folder / "db.sqlite3")}
    django_settings.configure(**{**values, "DATABASES": {"default": database}})
    django.setup()
    # Imported here: they need configured settings.
    from django.contrib.auth.models import User as DjangoUser  # noqa: PLC0415
    from django.core.management import call_command  # noqa: PLC0415
    from django.db import connections  # noqa: PLC0415
    from django.test import Client  # noqa: PLC0415

    # django.setup() routes warnings to logging for the rest of the process;
    # the test suite wants them raised as errors, as pytest configures them.
    logging.captureWarnings(False)  # noqa: FBT003 (the stdlib's signature)
    call_command("migrate", verbosity=0, interactive=False)
    users = []
    for n in range(USERS):
        user = DjangoUser.objects.create_user(f"user-{n:02}", password=f"password-{n}")
        client = Client()
        client.force_login(user)
        session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
        users.append(User(user.username, user.pk, session))
    connections.close_all()
    return Project(users, django_settings.SESSION_COOKIE_NAME)
