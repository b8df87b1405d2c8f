"""Helpers for the sealing, checkpoint and detection tests: an injectable clock, a real
handler whose records carry the clock's time, and the attacker's file edits."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import orjson

from immutable_logging.entry import GENESIS_HASH, canonical_payload, make_line
from immutable_logging.handler import ImmutableHandler
from immutable_logging.layout import list_segments
from immutable_logging.seal import CheckpointSigner, encode_seed, generate_signing_key
from immutable_logging.sealing import init_tenant_sealing

from .helpers import read_lines, write_lines

E = 300.0
START = 1_700_000_000.0


class FakeClock:
    """A clock the test moves by hand (epochs pass without sleeping)."""

    def __init__(self, t: float = START) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class ClockFilter(logging.Filter):
    """Stamp records with the fake clock, as the real clock would have."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        record.created = self.clock()
        return True


class Keys:
    """A tenant's seal seed (from keygen) and a checkpoint signing key."""

    def __init__(self, root: Path, tenant: str, clock: FakeClock, epoch_seconds: float = E):
        raw, self.grid = init_tenant_sealing(root / tenant, epoch_seconds=epoch_seconds,
                                             clock=clock)
        self.seed = encode_seed(raw)
        self.signing = generate_signing_key()
        self.signer = CheckpointSigner(self.signing, "immutable-logging")
        self.vkey = self.signer.vkey
        self.checkpoint_key = base64.b64encode(self.signing).decode()


def open_handler(
    root: Path, tenant: str, clock: FakeClock, name: str, **options: Any
) -> tuple[ImmutableHandler, logging.Logger]:
    """A real handler with sealing (state must exist) on a fresh logger."""
    handler = ImmutableHandler(root, tenant, seal_clock=clock, **options)
    handler.addFilter(ClockFilter(clock))
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    return handler, logger


def log_epochs(
    handler: ImmutableHandler,
    logger: logging.Logger,
    clock: FakeClock,
    epochs: int,
    per_epoch: int = 5,
    epoch_seconds: float = E,
    tag: str = "event",
) -> None:
    """Log ``per_epoch`` records spread over each of ``epochs`` epochs; the idle sealer is
    poked at each boundary like the background thread would."""
    step = epoch_seconds / (per_epoch + 1)
    for epoch in range(epochs):
        for i in range(per_epoch):
            clock.advance(step)
            logger.info("%s %d.%d", tag, epoch, i, extra={"epoch": epoch, "i": i})
        clock.advance(epoch_seconds - per_epoch * step)
        handler.writer.seal_if_due()


def all_lines(stream: Path) -> list[tuple[Path, list[bytes]]]:
    """Every segment of a stream with its lines."""
    return [(seg.path, read_lines(seg.path)) for seg in list_segments(stream)]


def entries(stream: Path) -> list[dict[str, Any]]:
    """Every entry of a stream, decoded, in order."""
    return [orjson.loads(line) for _, lines in all_lines(stream) for line in lines]


def rewrite_stream(stream: Path, edit: Any) -> None:
    """Rewrite a whole stream as a careful attacker would: ``edit(entries)`` returns the new
    list of payloads (without seq/prev/hash); seqs and hashes are recomputed from scratch
    and the entries are put back into the same segment files (same counts per file, at
    least one each; the last file takes the rest)."""
    segments = all_lines(stream)
    payloads = [
        {k: v for k, v in e.items() if k not in ("seq", "prev", "hash")} for e in entries(stream)
    ]
    payloads = edit(payloads)
    prev = GENESIS_HASH
    lines: list[bytes] = []
    for seq, payload in enumerate(payloads, start=1):
        line, prev = make_line(seq, prev, canonical_payload(payload))
        lines.append(line)
    start = 0
    for index, (path, old) in enumerate(segments):
        left_after = len(segments) - index - 1
        if left_after:
            count = max(1, min(len(old), len(lines) - start - left_after))
        else:
            count = len(lines) - start
        write_lines(path, lines[start : start + count])
        start += count
