"""Object names in the replica (the *remote layout*), shared by replicator and restore.

::

    <tenant>/<stream>/batches/<first_seq:012d>-<last_seq:012d>.jsonl.gz
    <tenant>/<stream>/segments/<segment:08d>.log.gz      sealed segment archives
    <tenant>/<stream>/checkpoints/<tree_size:012d>.note  signed checkpoints
    <tenant>/<stream>/stream.json
    <tenant>/<stream>/torn/<name>                          torn tails moved aside

Sequence numbers are zero-padded so that the lexicographic listing order is numeric order.
The backend's own prefix comes in front of all of these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BATCH = re.compile(r"^([^/]+)/([^/]+)/batches/(\d{12})-(\d{12})\.jsonl\.gz$")
_SEGMENT = re.compile(r"^([^/]+)/([^/]+)/segments/(\d{8,})\.log\.gz$")
_CHECKPOINT = re.compile(r"^([^/]+)/([^/]+)/checkpoints/(\d{12})\.note$")


def batch_key(tenant: str, stream: str, first_seq: int, last_seq: int) -> str:
    """Name of the batch object holding entries ``first_seq..last_seq``."""
    return f"{tenant}/{stream}/batches/{first_seq:012d}-{last_seq:012d}.jsonl.gz"


def segment_key(tenant: str, stream: str, number: int) -> str:
    """Name of the archive of sealed segment ``number``."""
    return f"{tenant}/{stream}/segments/{number:08d}.log.gz"


def checkpoint_key(tenant: str, stream: str, tree_size: int) -> str:
    """Name of the signed checkpoint at ``tree_size``."""
    return f"{tenant}/{stream}/checkpoints/{tree_size:012d}.note"


def torn_key(tenant: str, stream: str, name: str) -> str:
    """Name of a torn tail the writer moved aside (kept as evidence, restored too)."""
    return f"{tenant}/{stream}/torn/{name}"


def torn_prefix(tenant: str, stream: str) -> str:
    """Listing prefix of a stream's torn tails."""
    return f"{tenant}/{stream}/torn/"


def salt_key(tenant: str, stream: str) -> str:
    """The tenant's passphrase salt (not secret), kept with each stream that used it."""
    return f"{tenant}/{stream}/salt.json"


def stream_meta_key(tenant: str, stream: str) -> str:
    """Name of the stream's ``stream.json`` copy."""
    return f"{tenant}/{stream}/stream.json"


def batches_prefix(tenant: str, stream: str | None = None) -> str:
    """Listing prefix for the batches of a stream (or of a whole tenant when None)."""
    return f"{tenant}/" if stream is None else f"{tenant}/{stream}/batches/"


@dataclass(frozen=True)
class BatchName:
    """The parts of a batch object's name."""

    tenant: str
    stream: str
    first_seq: int
    last_seq: int
    key: str


def parse_batch_key(key: str) -> BatchName | None:
    """Parse a batch object name, or None if ``key`` is not one."""
    match = _BATCH.match(key)
    if match is None:
        return None
    tenant, stream, first, last = match.groups()
    return BatchName(tenant, stream, int(first), int(last), key)


def parse_segment_key(key: str) -> tuple[str, str, int] | None:
    """``(tenant, stream, segment number)`` of a segment archive name, or None."""
    match = _SEGMENT.match(key)
    return None if match is None else (match.group(1), match.group(2), int(match.group(3)))


def parse_checkpoint_key(key: str) -> tuple[str, str, int] | None:
    """``(tenant, stream, tree size)`` of a checkpoint name, or None."""
    match = _CHECKPOINT.match(key)
    return None if match is None else (match.group(1), match.group(2), int(match.group(3)))
