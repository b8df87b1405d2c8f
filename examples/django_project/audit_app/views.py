"""Views of the example app. ``immutable_logging.install()`` adds ``Logger.audit`` & co."""

from __future__ import annotations

import logging

from django.http import HttpRequest, JsonResponse

import immutable_logging

immutable_logging.install()
logger = logging.getLogger(__name__)


def approve_refund(request: HttpRequest, order_id: int) -> JsonResponse:
    """Approve a refund and leave a tamper-evident AUDIT entry of who did it."""
    actor = request.headers.get("X-User", "anonymous")
    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    logger.audit(  # type: ignore[attr-defined]
        "refund approved", extra={"order_id": order_id, "actor": actor}
    )
    return JsonResponse({"order_id": order_id, "approved": True, "actor": actor})
