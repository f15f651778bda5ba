"""A small Django project in one module: its URLs and views, and its settings for a server.

The tests configure Django in-process with ``ROOT_URLCONF = "django_shop"``;
``uvicorn django_shop:application`` and ``gunicorn django_shop:wsgi_application``
serve it (with ``DJANGO_SHOP_SERVER`` set, the module configures Django from the
environment).
"""

from __future__ import annotations

import logging
import os
from typing import Any, AsyncIterator, Dict, Iterator

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path

log = logging.getLogger("shop")


def header_user(request: HttpRequest) -> Any:
    """A user id hook: the user a test names in the X-User-Id header."""
    return request.headers.get("X-User-Id") or None


def cart(request: HttpRequest) -> HttpResponse:
    log.info("Cart Viewed")
    return HttpResponse("ok")


def quiet(request: HttpRequest) -> HttpResponse:
    return HttpResponse("quiet")


async def async_cart(request: HttpRequest) -> HttpResponse:
    log.info("Async Cart Viewed")
    return HttpResponse("ok")


async def async_health(request: HttpRequest) -> HttpResponse:
    log.info("Health Checked")
    return HttpResponse("ok")


def export(request: HttpRequest) -> StreamingHttpResponse:
    def rows() -> Iterator[str]:
        log.info("Export Streamed")
        yield "a\n"

    return StreamingHttpResponse(rows())


async def async_export(request: HttpRequest) -> StreamingHttpResponse:
    async def rows() -> AsyncIterator[str]:
        log.info("Async Export Streamed")
        yield "a\n"

    return StreamingHttpResponse(rows())


urlpatterns = [
    path("cart", cart),
    path("quiet", quiet),
    path("async-cart", async_cart),
    path("async-health", async_health),
    path("export", export),
    path("async-export", async_export),
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "segmentio_logging.contrib.django.SegmentMiddleware",
]


def settings(database: str, **more: Any) -> Dict[str, Any]:
    """The project's settings, with its SQLite file at ``database``."""
    return {
        "DEBUG": False,
        "SECRET_KEY": "tests-only",
        "ALLOWED_HOSTS": ["*"],
        "ROOT_URLCONF": "django_shop",
        "INSTALLED_APPS": [
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
        ],
        "MIDDLEWARE": MIDDLEWARE,
        "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": database}},
        "USE_TZ": True,
        "LOGGING": {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"segment": {"class": "segmentio_logging.SegmentHandler"}},
            "loggers": {"shop": {"handlers": ["segment"], "level": "INFO"}},
        },
        **more,
    }


if os.environ.get("DJANGO_SHOP_SERVER"):  # served: configure from the environment
    import django
    from django.conf import settings as django_settings
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application

    django_settings.configure(
        **settings(
            os.environ["DJANGO_SHOP_DATABASE"],
            SEGMENT_MIDDLEWARE={"user_id": "django_shop.header_user", "trusted_proxies": 1},
        )
    )
    django.setup()
    application = get_asgi_application()
    wsgi_application = get_wsgi_application()
