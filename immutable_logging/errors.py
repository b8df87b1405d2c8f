"""The public error hierarchy.

Every error this package raises on purpose derives from :class:`ImmutableLogError`.
Verification problems carry the file, the sequence number and a reason, so that an
operator can go straight to the damaged place.
"""

from __future__ import annotations


def location(file: str | None, seq: int | None, *, kind: str = "file") -> str:
    """``"file F, seq N"`` with whichever parts are known ("" when neither is); ``kind``
    names what ``file`` is (``"object"`` for a replica's)."""
    parts = ([f"{kind} {file}"] if file is not None else []) + (
        [f"seq {seq}"] if seq is not None else []
    )
    return ", ".join(parts)


class ImmutableLogError(Exception):
    """Base class of every error raised by ``immutable_logging``."""


class ConfigurationError(ImmutableLogError):
    """A setting, argument or environment variable is invalid."""


class InvalidTenantError(ConfigurationError):
    """A tenant id is empty, too long, or could escape its directory."""


class StreamLockedError(ImmutableLogError):
    """Every stream slot of a tenant directory is held by another process."""


class SegmentReadError(ImmutableLogError):
    """A segment file cannot be read (corrupt or truncated compression, I/O error)."""


class QueryError(ImmutableLogError):
    """A query document is malformed (unknown operator, bad regex, wrong type)."""


class VerificationError(ImmutableLogError):
    """The log failed verification.

    Attributes:
        file: the segment (or object) where the problem was found, if known.
        seq: the sequence number of the first affected entry, if known.
        reason: a short machine-readable reason such as ``hash_mismatch``.
        detail: a human-readable explanation.
    """

    reason = "invalid"

    def __init__(
        self,
        detail: str,
        *,
        file: str | None = None,
        seq: int | None = None,
        reason: str | None = None,
    ) -> None:
        self.file = file
        self.seq = seq
        if reason is not None:
            self.reason = reason
        self.detail = detail
        where = location(file, seq)
        at = f" at {where}" if where else ""
        super().__init__(f"{self.reason}{at}: {detail}")


class HashMismatchError(VerificationError):
    """An entry's bytes do not hash to the hash stored with it."""

    reason = "hash_mismatch"


class ChainLinkError(VerificationError):
    """An entry does not commit to the previous entry's hash."""

    reason = "prev_mismatch"


class SequenceGapError(VerificationError):
    """Sequence numbers skip: entries (or whole segments) were deleted."""

    reason = "gap"


class ReorderError(VerificationError):
    """Sequence numbers go backwards or repeat: entries were reordered or inserted."""

    reason = "reorder"


class MalformedEntryError(VerificationError):
    """A line is not a well-formed, canonical entry."""

    reason = "malformed"


class TornTailError(VerificationError):
    """The last line of the active segment is incomplete (a crash mid-write)."""

    reason = "torn_tail"


class TruncationError(VerificationError):
    """The log ends before a point it is known to have reached (seal, checkpoint)."""

    reason = "truncation"


class SealError(VerificationError):
    """A forward-secure seal is missing, forged or inconsistent."""

    reason = "seal_invalid"


class CheckpointError(VerificationError):
    """A signed checkpoint is forged or disagrees with the log."""

    reason = "checkpoint_invalid"


class DecryptionError(ImmutableLogError):
    """An encrypted entry could not be decrypted (missing key, wrong key, bad tag)."""

    def __init__(
        self, detail: str, *, file: str | None = None, seq: int | None = None
    ) -> None:
        self.file = file
        self.seq = seq
        self.detail = detail
        where = location(file, seq)
        super().__init__(f"cannot decrypt entry at {where}: {detail}" if where else detail)


class KeyUnavailableError(DecryptionError):
    """No key with the entry's key id is configured."""


class ReplicationError(ImmutableLogError):
    """Replication to a remote bucket failed."""


class BackendUnavailableError(ReplicationError):
    """The remote storage could not be reached (network, server down)."""


class BucketNotFoundError(ReplicationError):
    """The configured bucket does not exist."""


class BackendAuthError(ReplicationError):
    """The remote storage rejected the credentials."""


class ObjectExistsError(ReplicationError):
    """A conditional write found the object already present."""


class RemoteIntegrityError(ReplicationError):
    """A remote object is corrupted or disagrees with the local chain."""
