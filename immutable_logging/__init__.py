"""immutable_logging: tamper-evident, optionally encrypted, replicated stdlib logging.

Add :class:`ImmutableHandler` to your logging configuration, or use the
:class:`ImmutableLogger` facade. See the README for the threat model.
"""

from __future__ import annotations

from .errors import (
    ConfigurationError,
    DecryptionError,
    ImmutableLogError,
    InvalidTenantError,
    QueryError,
    ReplicationError,
    VerificationError,
)
from .facade import ImmutableLogger
from .handler import ImmutableHandler
from .levels import AUDIT, REVENUE, SECURITY, SYSTEM, install
from .queueing import ChainQueueHandler
from .verify import VerificationReport, verify_directory, verify_tenant

__all__ = [
    "AUDIT",
    "REVENUE",
    "SECURITY",
    "SYSTEM",
    "ChainQueueHandler",
    "ConfigurationError",
    "DecryptionError",
    "ImmutableHandler",
    "ImmutableLogError",
    "ImmutableLogger",
    "InvalidTenantError",
    "QueryError",
    "ReplicationError",
    "VerificationError",
    "VerificationReport",
    "install",
    "verify_directory",
    "verify_tenant",
]
__version__ = "0.1.0"
