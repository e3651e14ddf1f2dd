"""The settings of the Django project the Django integration tests serve.

A project as a user would write it: sessions and Django's users in a
sqlite database (its file is set by ``support.django_project.setup``, in a
temporary folder), the request-context middleware after
``AuthenticationMiddleware``, and the ``LOGGING`` recipe of the how-to with
a handler that keeps the formatted lines for the tests to read.
"""

from __future__ import annotations

SECRET_KEY = "tests-only, never used for anything real"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "contextual.integrations.django.RequestContextMiddleware",
]
ROOT_URLCONF = "support.django_project.urls"
# NAME is set by setup(): a file in a temporary folder.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ""}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# Fast hashing: the tests create many users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
USE_TZ = True

# The defaults, written out.
CONTEXTUAL = {"HEADER": "X-Request-ID", "ECHO": True}

# The how-to's recipe: ContextFilter on the handler, the fields in the format.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request": {"()": "contextual.ContextFilter"}},
    "formatters": {"line": {"format": "%(request_id)s|%(user_id)s|%(name)s|%(message)s"}},
    "handlers": {
        "lines": {
            "class": "support.django_project.logs.Lines",
            "filters": ["request"],
            "formatter": "line",
        }
    },
    "loggers": {
        "support.django_project": {"handlers": ["lines"], "level": "INFO", "propagate": False},
        "django.request": {"handlers": ["lines"], "level": "WARNING"},
    },
}
