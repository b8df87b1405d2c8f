"""URL routes of the example project."""

from __future__ import annotations

from audit_app import views
from django.urls import path

urlpatterns = [
    path("orders/<int:order_id>/refund", views.approve_refund, name="approve-refund"),
]
