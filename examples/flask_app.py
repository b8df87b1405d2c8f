"""A Flask app whose routes log into the chain through the standard ``logging`` module.

Run the self-contained demo (requests go through Flask's test client, no server)::

    python examples/flask_app.py [LOG_DIR]

or serve it: ``IMMUTABLE_LOG_DIR=/tmp/chain flask --app examples/flask_app.py run``.
``LOG_DIR`` defaults to ``$IMMUTABLE_LOG_DIR`` or a new temporary directory.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

import immutable_logging
from immutable_logging import ImmutableHandler
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant

TENANT = "flask-demo"
LOGGER_NAME = "shop.flask"

immutable_logging.install()
log = logging.getLogger(LOGGER_NAME)


def create_app(directory: str | None = None, tenant: str = TENANT) -> Flask:
    """Build the app; its ``shop.flask`` logger writes to ``directory``/``tenant``.

    ``directory`` defaults to ``$IMMUTABLE_LOG_DIR`` (``flask run`` calls ``create_app()``)
    or ``./logs``. The handler is stored as ``app.extensions["immutable_logging"]``; close it
    on shutdown.
    """
    directory = directory or os.environ.get("IMMUTABLE_LOG_DIR") or "logs"
    app = Flask(__name__)
    handler = ImmutableHandler(directory, tenant=tenant)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    app.extensions["immutable_logging"] = handler

    @app.post("/orders/<int:order_id>/pay")
    def pay(order_id: int) -> ResponseReturnValue:
        body = request.get_json(silent=True) or {}
        amount = int(body.get("amount_cents", 0))
        if amount <= 0:
            log.security(  # type: ignore[attr-defined]
                "rejected payment", extra={"order_id": order_id, "remote": request.remote_addr}
            )
            return jsonify(error="amount must be positive"), 400
        log.revenue(  # type: ignore[attr-defined]
            "order paid", extra={"order_id": order_id, "amount_cents": amount}
        )
        return jsonify(order_id=order_id, paid=amount)

    @app.get("/health")
    def health() -> ResponseReturnValue:
        log.info("health checked")
        return jsonify(ok=True)

    return app


def shutdown(app: Flask) -> None:
    """Detach and close the app's chain handler."""
    handler = app.extensions.pop("immutable_logging")
    log.removeHandler(handler)
    handler.close()


def main(argv: list[str]) -> int:
    """Serve a few requests through the test client, verify the chain, print a summary."""
    directory = argv[1] if len(argv) > 1 else os.environ.get("IMMUTABLE_LOG_DIR")
    directory = directory or tempfile.mkdtemp(prefix="immutable-flask-")
    app = create_app(directory)
    client = app.test_client()
    statuses = [
        client.post("/orders/1/pay", json={"amount_cents": 1999}).status_code,
        client.post("/orders/2/pay", json={"amount_cents": -5}).status_code,
        client.get("/health").status_code,
    ]
    shutdown(app)
    report = verify_tenant(directory, TENANT, parse=True)
    entries = list(iter_entries(directory, TENANT))
    print(
        json.dumps(
            {
                "directory": directory,
                "tenant": TENANT,
                "statuses": statuses,
                "entries": len(entries),
                "levels": [e["level"] for e in entries],
                "verified": report.ok,
            }
        )
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
