"""The Flask app that the Flask tests serve: Flask-Login sessions, a pool, a stream, teardowns.

``make_app`` builds a real Flask app with a real ``flask_login.LoginManager``
(users in a dict, logged in with a session cookie) and
:func:`contextual.integrations.flask.install` on it. The user reaches the
request context one of two ways, as the how-to shows them:

* ``"before_request"``: a ``before_request`` hook calls
  ``update_request(user_id=...)`` for every logged-in request;
* ``"user_loader"``: the Flask-Login user loader does, when it loads the
  user (only the requests that use ``current_user``).

``/work`` logs the lines of :data:`WORK_LINES`, each naming the token the
client sent in ``X-Token``: in the view, in a ContextExecutor task, in
``teardown_request`` and ``teardown_appcontext`` handlers, and while the
server iterates its streamed body, after Flask's own request context has
gone. The test knows the request ID and user of each token and checks
every line against them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any, Literal

import flask_login
from flask import Flask, Response, g, request, stream_with_context
from flask_login import LoginManager, current_user, login_required, login_user

from contextual import current_request, get_current_user, get_request_id, update_request
from contextual.integrations.flask import install

LOGGER = "tests.flask_app"
log = logging.getLogger(LOGGER)

#: The lines every /work request logs, in this order.
WORK_LINES = ("start", "in pool", "end", "teardown_request", "teardown_appcontext", "streaming")

UserFrom = Literal["before_request", "user_loader"]


class User(flask_login.UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def _seen() -> dict[str, Any]:
    return {"id": get_request_id(), "user": get_current_user()}


def _in_pool(token: str) -> dict[str, Any]:
    log.info("in pool %s", token)
    return _seen()


def set_user() -> None:
    """The before_request hook of the how-to's recipe."""
    if current_user.is_authenticated:
        update_request(user_id=current_user.get_id())


def ready() -> str:
    return "ok"


def streamed_with_context() -> Response:
    @stream_with_context
    def body() -> Iterator[bytes]:
        log.info("streaming %s", request.headers["X-Token"])
        user = current_user.get_id() if current_user.is_authenticated else None
        yield json.dumps({**_seen(), "current_user": user}).encode()

    return Response(body(), mimetype="application/json")


def teardown_request(_exc: BaseException | None) -> None:
    if "token" in g:
        log.info("teardown_request %s", g.token)


def teardown_appcontext(_exc: BaseException | None) -> None:
    if "token" in g:
        log.info("teardown_appcontext %s", g.token)


class FlaskApp:
    """A Flask app with contextual installed, and what the tests read of it.

    ``users`` maps each user ID to its user (a user logs in at ``POST
    /login/<id>``); ``loads`` counts the user loader's calls.
    ``in_flight``/``most_in_flight`` count the /work requests inside the
    view at once. ``hold`` and ``release`` order two requests: a request for
    ``/hold`` sets ``hold`` once inside the view, then waits for ``release``.
    """

    def __init__(self, pool: Executor, user_from: UserFrom, **options: Any) -> None:
        self.pool = pool
        self.user_from = user_from
        self.users: dict[str, User] = {}
        self.loads = 0
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.hold = threading.Event()
        self.release = threading.Event()
        self.app = self._build(**options)

    def _build(self, **options: Any) -> Flask:
        app = Flask(__name__)
        app.secret_key = "tests only"
        LoginManager(app).user_loader(self.load_user)
        if self.user_from == "before_request":
            app.before_request(set_user)
        app.get("/ready")(ready)
        app.post("/login/<user_id>")(self.login)
        app.get("/work")(login_required(self.work))
        app.get("/hold")(login_required(self.held))
        app.get("/stream-with-context")(streamed_with_context)
        app.teardown_request(teardown_request)
        app.teardown_appcontext(teardown_appcontext)
        install(app, **options)
        return app

    def load_user(self, user_id: str) -> User | None:
        """The Flask-Login user loader; with ``"user_loader"``, the how-to's recipe."""
        with self.lock:
            self.loads += 1
        user = self.users.get(user_id)
        # The loader also runs where no request is open
        # (app.test_request_context()), where update_request raises.
        if self.user_from == "user_loader" and user is not None and current_request():
            update_request(user_id=user.get_id())
        return user

    def login(self, user_id: str) -> str:
        with self.lock:
            user = self.users.setdefault(user_id, User(user_id))
        login_user(user)
        return "logged in"

    def work(self) -> Response:
        token = g.token = request.headers["X-Token"]
        self._enter()
        try:
            log.info("start %s", token)
            pool = self.pool.submit(_in_pool, token).result(timeout=20)
            log.info("end %s", token)
        finally:
            self._leave()
        view = _seen()

        def body() -> Iterator[bytes]:
            # Iterated by the server after Flask's request context has gone.
            log.info("streaming %s", token)
            seen = {"token": token, "view": view, "pool": pool, "stream": _seen()}
            yield json.dumps(seen).encode()

        return Response(body(), mimetype="application/json")

    def held(self) -> dict[str, Any]:
        token = g.token = request.headers["X-Token"]
        log.info("start %s", token)
        self.hold.set()
        if not self.release.wait(20):
            msg = "nothing released the held request"
            raise TimeoutError(msg)
        log.info("released %s", token)
        return _seen()

    def _enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1
