"""The test project's URLs."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("ready", views.ready),
    path("quiet", views.quiet),
    path("work", views.work),
    path("awork", views.awork),
    path("pool-first", views.pool_first),
    path("pool-queries-first", views.pool_queries_first),
    path("update", views.update),
    path("aupdate", views.aupdate),
    path("stream", views.stream),
    path("astream", views.astream),
    path("file", views.file),
    path("fail", views.fail),
]
