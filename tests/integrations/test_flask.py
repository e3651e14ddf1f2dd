"""contextual.integrations.flask.install, on real Flask apps called in-process.

The requests go through ``app.test_client()``, which calls the app's WSGI
callable as a server does (tests/integrations/test_flask_server.py serves
the same app with waitress, under load).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import flask_login
import pytest
from flask import Blueprint, Flask, Response, g, request_finished, request_started
from flask_login import current_user
from werkzeug.middleware.proxy_fix import ProxyFix

import contextual.integrations.flask as integration
from contextual import (
    ContextExecutor,
    NoRequestError,
    current_request,
    get_current_user,
    get_request_id,
    update_request,
)
from contextual.integrations.flask import EXTENSION, install
from contextual.integrations.wsgi import RequestContextMiddleware
from support.flask_app import LOGGER, FlaskApp, User
from support.middleware import FRESH_ID, WARNINGS_LOGGER, recording

log = logging.getLogger(LOGGER)


def seen() -> dict[str, Any]:
    request = current_request()
    return {
        "id": get_request_id(),
        "user": get_current_user(),
        "request": None if request is None else (request.request_id, request.user_id),
    }


def make_app(**options: Any) -> Flask:
    app = Flask("tests.flask")

    @app.get("/")
    def index() -> dict[str, Any]:
        log.info("view")
        return seen()

    install(app, **options)
    return app


@pytest.fixture
def pool() -> Iterator[ContextExecutor]:
    with ContextExecutor(max_workers=2) as executor:
        yield executor


@pytest.fixture
def login_app(pool: ContextExecutor) -> FlaskApp:
    return FlaskApp(pool, "user_loader")


# -- install -----------------------------------------------------------------------


def test_install_wraps_the_wsgi_callable_and_records_the_middleware():
    app = Flask("tests.flask")
    original = app.wsgi_app
    install(app)
    middleware = app.extensions[EXTENSION]
    assert EXTENSION == "contextual"
    assert isinstance(middleware, RequestContextMiddleware)
    assert app.wsgi_app is middleware
    assert middleware._app == original


def test_a_request_runs_with_the_id_it_came_with_echoed():
    app = make_app()
    with recording(LOGGER) as recorder:
        response = app.test_client().get("/", headers={"X-Request-ID": "req-1"})
    assert response.headers.getlist("X-Request-ID") == ["req-1"]
    assert response.json == {"id": "req-1", "user": None, "request": ["req-1", None]}
    assert [(line.message, line.request_id) for line in recorder.lines] == [("view", "req-1")]
    assert get_request_id() is None


def test_a_request_without_an_id_gets_a_fresh_one():
    app = make_app()
    response = app.test_client().get("/")
    echoed = response.headers["X-Request-ID"]
    assert FRESH_ID.fullmatch(echoed)
    assert response.json["id"] == echoed


def test_a_bad_id_is_replaced_and_reported_inside_the_request():
    app = make_app()
    with recording(LOGGER, WARNINGS_LOGGER) as recorder:
        response = app.test_client().get("/", headers={"X-Request-ID": "r-1 user=admin"})
    echoed = response.headers["X-Request-ID"]
    assert FRESH_ID.fullmatch(echoed)
    assert response.json["id"] == echoed
    (warning,) = recorder.of(WARNINGS_LOGGER)
    assert warning.request_id == echoed
    assert "'r-1 user=admin'" in warning.message


def test_the_middleware_options_apply():
    app = make_app(
        header="X-Correlation-ID",
        get_user=lambda environ: environ.get("REMOTE_USER"),
        validator=lambda value: value.startswith("c-"),
        generator=lambda: "generated",
        echo=False,
    )
    client = app.test_client()
    kept = client.get("/", headers={"X-Correlation-ID": "c-1"}, environ_base={"REMOTE_USER": "ada"})
    assert kept.json == {"id": "c-1", "user": "ada", "request": ["c-1", "ada"]}
    assert "X-Correlation-ID" not in kept.headers
    refused = client.get("/", headers={"X-Correlation-ID": "x-1"})
    assert refused.json["id"] == "generated"


def test_baggage_is_taken_only_when_allowed():
    header = {"X-Request-ID": "req-1", "baggage": "contextual.request|user_id=ada"}
    assert make_app().test_client().get("/", headers=header).json["user"] is None
    allowed = make_app(baggage={"contextual.request": ["user_id"]})
    assert allowed.test_client().get("/", headers=header).json["user"] == "ada"


# -- what runs inside the request ----------------------------------------------------


def test_every_part_of_a_request_sees_it(pool: ContextExecutor):
    app = Flask("tests.flask")
    parts: list[tuple[str, dict[str, Any]]] = []

    def saw(part: str) -> None:
        parts.append((part, seen()))

    @app.before_request
    def set_user() -> None:
        saw("before_request (before update_request)")
        update_request(user_id="ada", plan="pro")
        saw("before_request")

    @app.after_request
    def after(response: Response) -> Response:
        saw("after_request")
        return response

    @app.teardown_request
    def teardown_request(_exc: BaseException | None) -> None:
        saw("teardown_request")

    @app.teardown_appcontext
    def teardown_appcontext(_exc: BaseException | None) -> None:
        saw("teardown_appcontext")

    @app.get("/")
    def index() -> Response:
        saw("view")
        parts.append(("pool", pool.submit(seen).result(timeout=10)))
        extra = current_request().extra  # type: ignore[union-attr]

        def body() -> Iterator[bytes]:
            saw("streamed body")
            yield str(extra["plan"]).encode()

        response = Response(body())
        response.call_on_close(lambda: saw("call_on_close"))
        return response

    install(app)
    with (
        request_started.connected_to(lambda _app, **_: saw("request_started"), app),
        request_finished.connected_to(lambda _app, **_: saw("request_finished"), app),
    ):
        response = app.test_client().get("/", headers={"X-Request-ID": "req-1"})
        assert response.text == "pro"
        response.close()
    inside = {"id": "req-1", "user": "ada", "request": ("req-1", "ada")}
    before = {"id": "req-1", "user": None, "request": ("req-1", None)}
    assert parts == [
        ("request_started", before),
        ("before_request (before update_request)", before),
        ("before_request", inside),
        ("view", inside),
        ("pool", inside),
        ("after_request", inside),
        ("request_finished", inside),
        ("teardown_request", inside),
        ("teardown_appcontext", inside),
        ("streamed body", inside),
        ("call_on_close", inside),
    ]
    assert seen() == {"id": None, "user": None, "request": None}


def test_a_body_streamed_with_stream_with_context_sees_the_request_and_flask_login(
    login_app: FlaskApp,
):
    client = login_app.app.test_client()
    client.post("/login/ada")
    with recording(LOGGER) as recorder:
        response = client.get(
            "/stream-with-context", headers={"X-Request-ID": "req-1", "X-Token": "t-1"}
        )
    # The view itself never used current_user: the stream's use loads the user.
    assert response.json == {"id": "req-1", "user": "ada", "current_user": "ada"}
    assert [(line.request_id, line.user) for line in recorder.lines] == [("req-1", None)]


def test_an_async_view_sees_the_request_and_its_update_holds_after_it():
    # Flask runs async views with asgiref, in an event loop of their own;
    # asgiref copies the view's context changes back.
    app = make_app()
    after: list[dict[str, Any]] = []

    @app.get("/async")
    async def view() -> dict[str, Any]:
        log.info("async view")
        await asyncio.sleep(0)
        update_request(user_id="ada")
        return seen()

    @app.after_request
    def after_request(response: Response) -> Response:
        after.append(seen())
        return response

    with recording(LOGGER) as recorder:
        response = app.test_client().get("/async", headers={"X-Request-ID": "req-1"})
    inside = {"id": "req-1", "user": "ada", "request": ["req-1", "ada"]}
    assert response.json == inside
    assert after == [{**inside, "request": ("req-1", "ada")}]
    assert [(line.message, line.request_id) for line in recorder.lines] == [("async view", "req-1")]
    assert seen() == {"id": None, "user": None, "request": None}


def test_flask_logs_an_unhandled_error_under_the_request():
    app = make_app()

    @app.get("/boom")
    def boom() -> str:
        update_request(user_id="ada")
        msg = "boom"
        raise RuntimeError(msg)

    with recording(app.logger.name) as recorder:
        response = app.test_client().get("/boom", headers={"X-Request-ID": "req-1"})
    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "req-1"
    (line,) = recorder.of(app.logger.name, logging.ERROR)
    assert line.message == "Exception on /boom [GET]"
    assert (line.request_id, line.user) == ("req-1", "ada")


def test_an_error_flask_propagates_closes_the_request():
    app = make_app()
    app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.get("/boom")
    def boom() -> str:
        msg = "boom"
        raise RuntimeError(msg)

    with pytest.raises(RuntimeError, match="boom"):
        app.test_client().get("/boom", headers={"X-Request-ID": "req-1"})
    assert seen() == {"id": None, "user": None, "request": None}


def test_middleware_wrapped_before_install_runs_inside_the_request():
    app = Flask("tests.flask")

    @app.get("/")
    def index() -> dict[str, Any]:
        return {"remote": app.config["SEEN_REMOTE"]}

    inner = app.wsgi_app

    def remote_user_from_header(environ: dict[str, Any], start_response: Any) -> Any:
        # Stands for an auth middleware: sets REMOTE_USER, which get_user reads.
        environ["REMOTE_USER"] = environ.get("HTTP_X_AUTH_USER")
        app.config["SEEN_REMOTE"] = get_current_user()
        return inner(environ, start_response)

    app.wsgi_app = ProxyFix(remote_user_from_header)  # type: ignore[method-assign]
    install(app, get_user=lambda environ: environ.get("HTTP_X_AUTH_USER"))
    assert app.test_client().get("/", headers={"X-Auth-User": "ada"}).json == {"remote": "ada"}


# -- the user ----------------------------------------------------------------------


def test_update_request_from_before_request_sets_the_user_for_the_request(pool: ContextExecutor):
    flask = FlaskApp(pool, "before_request")
    client = flask.app.test_client()
    client.post("/login/ada")
    with recording(LOGGER) as recorder:
        response = client.get("/work", headers={"X-Request-ID": "req-1", "X-Token": "t-1"})
    seen_there = {"id": "req-1", "user": "ada"}
    assert response.json == {
        "token": "t-1",
        "view": seen_there,
        "pool": seen_there,
        "stream": seen_there,
    }
    assert {(line.request_id, line.user) for line in recorder.lines} == {("req-1", "ada")}
    assert len(recorder.lines) == 6


def test_the_user_loader_sets_the_user_only_when_the_app_loads_it(login_app: FlaskApp):
    client = login_app.app.test_client()
    client.post("/login/ada")
    loads = login_app.loads
    # /ready never uses current_user: no user, and the loader never ran.
    assert client.get("/ready").status_code == 200
    assert login_app.loads == loads
    response = client.get("/work", headers={"X-Request-ID": "req-1", "X-Token": "t-1"})
    assert response.json["view"] == {"id": "req-1", "user": "ada"}
    assert login_app.loads == loads + 1


def test_the_user_loader_recipe_works_where_no_request_is_open(login_app: FlaskApp):
    login_app.users["ada"] = User("ada")
    with login_app.app.test_request_context():
        flask_login.login_user(login_app.users["ada"])
        g.pop("_login_user")  # as on the next request: the session holds the user
        loads = login_app.loads
        assert current_user.get_id() == "ada"
        assert login_app.loads == loads + 1
        assert get_request_id() is None
        # What the recipe's guard avoids:
        with pytest.raises(NoRequestError, match="needs an open request"):
            update_request(user_id="ada")


def test_anonymous_requests_have_no_user(login_app: FlaskApp):
    client = login_app.app.test_client()
    response = client.get("/stream-with-context", headers={"X-Token": "t-1"})
    assert response.json["user"] is None
    assert response.json["current_user"] is None
    assert client.get("/work", headers={"X-Token": "t-2"}).status_code == 401


def test_a_user_set_in_one_request_is_not_seen_by_the_next(login_app: FlaskApp):
    client = login_app.app.test_client()
    client.post("/login/ada")
    assert client.get("/work", headers={"X-Token": "t-1"}).json["view"]["user"] == "ada"
    client.delete_cookie("session")
    response = client.get("/stream-with-context", headers={"X-Token": "t-2"})
    assert response.json["user"] is None


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "app",
    [
        pytest.param(lambda _environ, _start_response: [], id="a WSGI function"),
        pytest.param(Blueprint("shop", __name__), id="a blueprint"),
        pytest.param(None, id="None"),
    ],
)
def test_install_refuses_anything_but_a_flask_app(app: Any):
    with pytest.raises(TypeError, match=r"install\(\) takes a flask\.Flask app, got ") as error:
        install(app)
    assert "RequestContextMiddleware" in str(error.value)


def test_install_refuses_a_flask_apps_wsgi_callable():
    app = Flask("tests.flask")
    with pytest.raises(TypeError, match=r"got method .*not a blueprint, nor app\.wsgi_app"):
        install(app.wsgi_app)  # type: ignore[arg-type]


def test_a_second_install_on_the_same_app_is_refused():
    app = Flask("tests.flask")
    install(app)
    first = app.wsgi_app
    with pytest.raises(
        RuntimeError, match=r"contextual is installed on <Flask 'tests.flask'> already"
    ):
        install(app, echo=False)
    assert app.wsgi_app is first
    assert app.extensions[EXTENSION] is first


def test_install_on_an_app_wrapped_by_hand_is_refused():
    app = Flask("tests.flask")
    app.wsgi_app = RequestContextMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    wrapped = app.wsgi_app
    with pytest.raises(RuntimeError, match=r"app\.wsgi_app is a RequestContextMiddleware"):
        install(app)
    assert app.wsgi_app is wrapped
    assert EXTENSION not in app.extensions


def test_installs_on_two_apps_are_independent():
    first, second = make_app(), make_app(echo=False)
    assert "X-Request-ID" in first.test_client().get("/").headers
    assert "X-Request-ID" not in second.test_client().get("/").headers


def test_concurrent_installs_on_one_app_wrap_it_once():
    app = Flask("tests.flask")
    original = app.wsgi_app
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def try_install() -> None:
        start.wait()
        try:
            install(app)
        except RuntimeError:
            outcomes.append("refused")
        else:
            outcomes.append("installed")

    threads = [threading.Thread(target=try_install) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["installed"] + ["refused"] * 7
    assert app.wsgi_app is app.extensions[EXTENSION]
    assert app.wsgi_app._app == original  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"header": "X Request ID"}, ValueError, "header must be an HTTP field name"),
        ({"get_user": "REMOTE_USER"}, TypeError, "get_user must be callable"),
        ({"validator": 1}, TypeError, "validator must be callable"),
        ({"baggage": 42}, TypeError, "allow must be None, store names, or a mapping"),
    ],
)
def test_bad_options_are_refused_and_leave_the_app_as_it_was(options, error, message):
    app = Flask("tests.flask")
    original = app.wsgi_app
    with pytest.raises(error, match=message):
        install(app, **options)
    assert app.wsgi_app == original
    assert EXTENSION not in app.extensions
    install(app)  # the app can still be installed on


# -- the module --------------------------------------------------------------------


def test_import_without_flask_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, "contextual.integrations.flask")
    monkeypatch.setitem(sys.modules, "flask", None)
    with pytest.raises(ImportError, match=r"needs Flask.*pip install 'contextual\[flask\]'"):
        importlib.import_module("contextual.integrations.flask")


def test_importing_contextual_does_not_import_flask():
    code = "import sys, contextual, contextual.integrations; print('flask' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_all_names_what_the_module_defines():
    assert integration.__all__ == sorted(integration.__all__)
    defined = {
        name
        for name, value in vars(integration).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == integration.__name__
    }
    assert set(integration.__all__) == defined | {"EXTENSION"}
