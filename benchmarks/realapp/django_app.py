"""A one-file Django app for the real-app benchmark: ``gunicorn django_app:application``."""

from __future__ import annotations

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="realapp-benchmark",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
    LOGGING_CONFIG=None,  # the events module sets up its own logger
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from events import log_events, stats  # noqa: E402


def play(request: HttpRequest) -> JsonResponse:
    log_events(request.GET.get("user", "user-1234"), request.GET.get("song", "Hey Jude"))
    return JsonResponse({"ok": True})


def counters(request: HttpRequest) -> JsonResponse:
    return JsonResponse(stats())


urlpatterns = [path("play", play), path("stats", counters)]
application = get_wsgi_application()
