"""The example Django project, in-process: its LOGGING config chains the view's AUDIT entries."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from immutable_logging import AUDIT, ImmutableHandler
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant

PROJECT = Path(__file__).resolve().parents[1] / "examples" / "django_project"
VIEWS = PROJECT / "audit_app" / "views.py"
TENANT = "django-demo"


@pytest.fixture(scope="module")
def django_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Configure Django once for this module with the example settings and a temp log dir."""
    import django
    from django.conf import settings

    if settings.configured:
        pytest.skip("Django was already configured by another test in this process")
    log_dir = tmp_path_factory.mktemp("django-chain")
    patch = pytest.MonkeyPatch()
    patch.syspath_prepend(str(PROJECT))
    patch.setenv("IMMUTABLE_LOG_DIR", str(log_dir))
    patch.setenv("DJANGO_SETTINGS_MODULE", "demo_site.settings")
    django.setup()  # runs dictConfig(settings.LOGGING)
    try:
        yield log_dir
    finally:
        for name in ("audit_app", "django.request"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if isinstance(handler, ImmutableHandler):
                    logger.removeHandler(handler)
                    handler.close()
        logging.captureWarnings(False)  # Django's setup turned it on
        patch.undo()


def chain_handler() -> ImmutableHandler:
    [handler] = [h for h in logging.getLogger("audit_app").handlers
                 if isinstance(h, ImmutableHandler)]
    return handler


def entries(log_dir: Path) -> list[dict[str, Any]]:
    chain_handler().flush()
    report = verify_tenant(log_dir, TENANT, parse=True)
    assert report.ok, report.problems
    return list(iter_entries(log_dir, TENANT))


def audit_call_line() -> int:
    lines = VIEWS.read_text().splitlines()
    [index] = [i for i, line in enumerate(lines) if "logger.audit(" in line]
    return index + 1


def test_settings_logging_uses_the_handler(django_log_dir: Path) -> None:
    handler = chain_handler()
    assert handler.directory == str(django_log_dir)
    assert handler.tenant == TENANT
    request_handlers = logging.getLogger("django.request").handlers
    assert any(isinstance(h, ImmutableHandler) for h in request_handlers)


def test_view_writes_audit_entry(django_log_dir: Path) -> None:
    from django.test import Client

    before = len(entries(django_log_dir))
    response = Client().post("/orders/41/refund", headers={"X-User": "dora"})
    assert response.status_code == 200
    assert response.json() == {"order_id": 41, "approved": True, "actor": "dora"}

    new = entries(django_log_dir)[before:]
    [entry] = new
    assert entry["level"] == "AUDIT" and entry["levelno"] == AUDIT
    assert entry["message"] == "refund approved"
    assert entry["metadata"] == {"order_id": 41, "actor": "dora"}
    assert entry["logger"] == "audit_app.views"
    assert entry["module"] == "views"
    assert entry["func"] == "approve_refund"
    assert entry["line"] == audit_call_line()
    assert entry["tenant"] == TENANT


def test_rejected_request_writes_nothing_and_404_is_chained(django_log_dir: Path) -> None:
    from django.test import Client

    client = Client()
    before = len(entries(django_log_dir))
    assert client.get("/orders/5/refund").status_code == 405  # no audit entry for GET
    assert client.get("/missing").status_code == 404
    new = entries(django_log_dir)[before:]
    assert [(e["logger"], e["level"]) for e in new] == [
        ("django.request", "WARNING"),
        ("django.request", "WARNING"),
    ]
    assert [e["metadata"]["status_code"] for e in new] == [405, 404]


def test_many_requests_one_verified_chain(django_log_dir: Path) -> None:
    from django.test import Client

    client = Client()
    before = len(entries(django_log_dir))
    for order in range(50):
        assert client.post(f"/orders/{order}/refund", headers={"X-User": "eve"}).status_code == 200
    new = entries(django_log_dir)[before:]
    assert [e["metadata"]["order_id"] for e in new] == list(range(50))
    seqs = [e["seq"] for e in new]
    assert seqs == list(range(seqs[0], seqs[0] + 50))
