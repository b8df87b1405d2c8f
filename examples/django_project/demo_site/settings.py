"""Settings of the example project. The part that matters is ``LOGGING``: a handler of class
``immutable_logging.ImmutableHandler`` writing to ``IMMUTABLE_LOG_DIR`` (environment
variable; default ``<tmp>/immutable-django-demo``), tenant ``django-demo``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = ["audit_app"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "demo_site.urls"
WSGI_APPLICATION = "demo_site.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

IMMUTABLE_LOG_DIR = os.environ.get("IMMUTABLE_LOG_DIR") or os.path.join(
    tempfile.gettempdir(), "immutable-django-demo"
)
IMMUTABLE_LOG_TENANT = "django-demo"

LOGGING = {
    "version": 1,
    # Keep loggers created before Django configured logging (libraries, other apps) alive.
    "disable_existing_loggers": False,
    "handlers": {
        "chain": {
            "class": "immutable_logging.ImmutableHandler",
            "directory": IMMUTABLE_LOG_DIR,
            "tenant": IMMUTABLE_LOG_TENANT,
            "durability": "flush",
        },
    },
    "loggers": {
        # The application's audit trail.
        "audit_app": {"handlers": ["chain"], "level": "INFO", "propagate": True},
        # 4xx/5xx responses Django reports (404s, unhandled exceptions with traceback).
        "django.request": {"handlers": ["chain"], "level": "WARNING", "propagate": True},
    },
}
