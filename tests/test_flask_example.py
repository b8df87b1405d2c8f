"""The example Flask app through ``app.test_client()``: routes log into a verified chain."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("flask")

from immutable_logging import REVENUE, SECURITY
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flask_app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example() -> ModuleType:
    return load_example()


@pytest.fixture
def app(example: ModuleType, tmp_path: Path) -> Iterator[Any]:
    application = example.create_app(str(tmp_path), tenant="flask-test")
    yield application
    if "immutable_logging" in application.extensions:
        example.shutdown(application)


def chain(tmp_path: Path) -> list[dict[str, Any]]:
    report = verify_tenant(tmp_path, "flask-test", parse=True)
    assert report.ok, report.problems
    return list(iter_entries(tmp_path, "flask-test"))


def route_lines(name: str) -> int:
    lines = EXAMPLE.read_text().splitlines()
    [index] = [i for i, line in enumerate(lines) if f"log.{name}(" in line]
    return index + 1


def test_pay_route_logs_revenue(app: Any, example: ModuleType, tmp_path: Path) -> None:
    response = app.test_client().post("/orders/12/pay", json={"amount_cents": 4200})
    assert response.status_code == 200
    assert response.get_json() == {"order_id": 12, "paid": 4200}
    example.shutdown(app)

    [entry] = chain(tmp_path)
    assert (entry["level"], entry["levelno"]) == ("REVENUE", REVENUE)
    assert entry["message"] == "order paid"
    assert entry["metadata"] == {"order_id": 12, "amount_cents": 4200}
    assert entry["logger"] == "shop.flask"
    assert entry["func"] == "pay"
    assert entry["line"] == route_lines("revenue")


def test_rejected_payment_logs_security(app: Any, example: ModuleType, tmp_path: Path) -> None:
    client = app.test_client()
    assert client.post("/orders/3/pay", json={"amount_cents": 0}).status_code == 400
    assert client.get("/health").status_code == 200
    example.shutdown(app)

    security, health = chain(tmp_path)
    assert (security["level"], security["levelno"]) == ("SECURITY", SECURITY)
    assert security["metadata"]["order_id"] == 3
    assert security["metadata"]["remote"] == "127.0.0.1"
    assert security["line"] == route_lines("security")
    assert (health["level"], health["message"], health["func"]) == ("INFO", "health checked",
                                                                     "health")


def test_shutdown_detaches_the_handler(app: Any, example: ModuleType, tmp_path: Path) -> None:
    handler = app.extensions["immutable_logging"]
    assert handler in logging.getLogger("shop.flask").handlers
    example.shutdown(app)
    assert handler not in logging.getLogger("shop.flask").handlers
    assert handler.writer.closed
    app.test_client().get("/health")  # no handler left: nothing written, nothing raised
    assert chain(tmp_path) == []
