"""The test project's views: sync and async, each logging lines that name its token.

Each view that logs names the token the client sent in ``X-Token`` in every
line, and returns what it saw (its request ID and user, and those of the
work it handed to the project's ContextExecutor), so that the tests can
check every line and every response against what they sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.db import connection
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from contextual import ContextExecutor, get_current_user, get_request_id, update_request

log = logging.getLogger(__name__)

#: The project's pool: work handed to it logs under the request that handed it.
POOL = ContextExecutor(max_workers=4, thread_name_prefix="django-project-pool")


def _token(request: HttpRequest) -> str:
    return request.headers.get("X-Token", "-")


def in_pool(token: str) -> dict[str, Any]:
    log.info("in pool %s", token)
    return {"id": get_request_id(), "user": get_current_user()}


def _seen(token: str, pool: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"token": token, "id": get_request_id(), "user": get_current_user(), "pool": pool}


def ready(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ready")


def quiet(request: HttpRequest) -> HttpResponse:
    """Log nothing and read no user."""
    return HttpResponse("quiet")


def work(request: HttpRequest) -> JsonResponse:
    token = _token(request)
    log.info("start %s", token)
    time.sleep(0.001)  # so that requests overlap
    pool = POOL.submit(in_pool, token).result(timeout=10)
    log.info("end %s", token)
    return JsonResponse(_seen(token, pool))


async def awork(request: HttpRequest) -> JsonResponse:
    token = _token(request)
    log.info("start %s", token)
    await asyncio.sleep(0.002)
    loop = asyncio.get_running_loop()
    pool = await loop.run_in_executor(POOL, in_pool, token)
    log.info("end %s", token)
    return JsonResponse(_seen(token, pool))


def pool_first(request: HttpRequest) -> JsonResponse:
    """The first line comes from the pool: the user is read there."""
    token = _token(request)
    pool = POOL.submit(in_pool, token).result(timeout=10)
    return JsonResponse(_seen(token, pool))


def query_then_log(token: str) -> dict[str, Any]:
    """Query (this thread's connection opens), then log: the user is read here."""
    User.objects.exists()
    log.info("in pool %s", token)
    kept = connection.connection is not None
    connection.close()  # a task's own connection: closing it is the task's business
    return {"id": get_request_id(), "user": get_current_user(), "kept open": kept}


def pool_queries_first(request: HttpRequest) -> JsonResponse:
    """The pool's thread has its own connection open when the user is read there."""
    token = _token(request)
    pool = POOL.submit(query_then_log, token).result(timeout=10)
    return JsonResponse(_seen(token, pool))


def update(request: HttpRequest) -> JsonResponse:
    token = _token(request)
    log.info("before %s", token)
    update_request(user_id=f"changed-{token}", plan="pro")
    log.info("after %s", token)
    pool = POOL.submit(in_pool, token).result(timeout=10)
    return JsonResponse(_seen(token, pool))


async def aupdate(request: HttpRequest) -> JsonResponse:
    token = _token(request)
    log.info("before %s", token)
    update_request(user_id=f"changed-{token}")
    log.info("after %s", token)
    loop = asyncio.get_running_loop()
    pool = await loop.run_in_executor(POOL, in_pool, token)
    return JsonResponse(_seen(token, pool))


def stream(request: HttpRequest) -> StreamingHttpResponse:
    token = _token(request)
    log.info("start %s", token)

    def body() -> Iterator[bytes]:
        for part in range(2):
            log.info("streaming %s", token)
            yield f"{part} {get_request_id()} {get_current_user()}\n".encode()

    return StreamingHttpResponse(body())


async def astream(request: HttpRequest) -> StreamingHttpResponse:
    token = _token(request)
    log.info("start %s", token)

    async def body() -> AsyncIterator[bytes]:
        for part in range(2):
            await asyncio.sleep(0)
            log.info("streaming %s", token)
            yield f"{part} {get_request_id()} {get_current_user()}\n".encode()

    return StreamingHttpResponse(body())


def file(request: HttpRequest) -> FileResponse:
    return FileResponse(Path(__file__).open("rb"))  # the response closes it


def fail(request: HttpRequest) -> HttpResponse:
    msg = f"the view failed for {_token(request)}"
    raise RuntimeError(msg)
