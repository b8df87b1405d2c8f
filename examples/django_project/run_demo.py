"""Run the example Django project in-process and check its audit trail.

::

    python examples/django_project/run_demo.py [LOG_DIR]

``LOG_DIR`` defaults to ``$IMMUTABLE_LOG_DIR`` or a new temporary directory. Requests go
through ``django.test.Client`` (no server); the script then closes the handlers, verifies
the chain and prints a JSON summary. For a real server: ``python manage.py runserver``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    """Set up Django, call the view, verify the chain; print a summary."""
    directory = argv[1] if len(argv) > 1 else os.environ.get("IMMUTABLE_LOG_DIR")
    directory = directory or tempfile.mkdtemp(prefix="immutable-django-")
    os.environ["IMMUTABLE_LOG_DIR"] = directory
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")
    sys.path.insert(0, str(PROJECT_DIR))

    import django
    from django.conf import settings
    from django.test import Client

    from immutable_logging.query import iter_entries
    from immutable_logging.verify import verify_tenant

    django.setup()  # applies settings.LOGGING: the chain handler is created here
    client = Client()
    statuses = [
        client.post("/orders/7/refund", headers={"X-User": "alice"}).status_code,
        client.post("/orders/8/refund", headers={"X-User": "bob"}).status_code,
        client.get("/no-such-page").status_code,
    ]
    logging.shutdown()  # flush and close the chain handler

    tenant = settings.IMMUTABLE_LOG_TENANT
    report = verify_tenant(directory, tenant, parse=True)
    entries = list(iter_entries(directory, tenant))
    print(
        json.dumps(
            {
                "directory": directory,
                "tenant": tenant,
                "statuses": statuses,
                "entries": len(entries),
                "audit": [e["metadata"] for e in entries if e["level"] == "AUDIT"],
                "levels": [e["level"] for e in entries],
                "verified": report.ok,
            }
        )
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
