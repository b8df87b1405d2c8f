"""Issue 3 detection tests: attacks that a plain hash chain cannot see.

Every attacker here has full write access to the log directory and recomputes every hash,
so the chain alone verifies clean; the seals (seed kept off-host) and the checkpoints held
elsewhere (the anchors directory stands for the replica) must catch it.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from immutable_logging.cli import main
from immutable_logging.entry import canonical_payload, make_line
from immutable_logging.layout import list_segments
from immutable_logging.seal import (
    Checkpoint,
    CheckpointSigner,
    EpochKey,
    SealRecord,
    generate_signing_key,
)
from immutable_logging.sealing import STREAM_STATE, EpochGrid
from immutable_logging.verify import Problem, verify_tenant

from .helpers import read_lines, write_lines
from .seal_helpers import (
    E,
    FakeClock,
    Keys,
    all_lines,
    entries,
    log_epochs,
    open_handler,
    rewrite_stream,
)

TENANT = "acme"


@dataclass
class Site:
    root: Path
    anchors: Path
    stream: Path
    keys: Keys
    clock: FakeClock

    def verify(self, **extra: Any) -> list[Problem]:
        report = verify_tenant(
            self.root, TENANT, seed=self.keys.seed, checkpoint_key=self.keys.vkey,
            anchors=self.anchors, **extra,
        )
        return report.problems

    def chain_only_ok(self) -> bool:
        return verify_tenant(self.root, TENANT).ok

    def reopen(self, name: str) -> Any:
        return open_handler(
            self.root, TENANT, self.clock, name, stream=self.stream.name,
            checkpoint_key=self.keys.checkpoint_key, max_bytes=1500,
        )


def seal_location(stream: Path, epoch: int) -> tuple[Path, int]:
    """(segment path, seq) of the seal entry of *epoch*."""
    for path, lines in all_lines(stream):
        for line in lines:
            entry = json.loads(line)
            if entry.get("kind") == "seal" and entry["epoch"] == epoch:
                return path, entry["seq"]
    raise AssertionError(f"no seal of epoch {epoch}")


def segment_of(stream: Path, seq: int) -> Path:
    for path, lines in all_lines(stream):
        if any(json.loads(line)["seq"] == seq for line in lines):
            return path
    raise AssertionError(seq)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """Six epochs of logging with rotation (gzip), a checkpoint per epoch copied to the
    anchors directory as a replica would hold them; the process then stops."""
    clock = FakeClock()
    keys = Keys(tmp_path / "logs", TENANT, clock)
    handler, logger = open_handler(
        tmp_path / "logs", TENANT, clock, "detect.site", stream="app.0",
        checkpoint_key=keys.checkpoint_key, max_bytes=1500,
    )
    for k in range(6):
        log_epochs(handler, logger, clock, epochs=1, per_epoch=5, tag=f"event {k}")
        assert handler.checkpoint() is not None
    logger.info("trailing, not sealed yet")
    handler.close()
    stream = tmp_path / "logs" / TENANT / "app.0"
    anchors = tmp_path / "replica"
    shutil.copytree(stream / "checkpoints", anchors / TENANT / "app.0" / "checkpoints",
                    ignore=shutil.ignore_patterns("state.json"))
    assert len(list_segments(stream)) >= 3
    return Site(tmp_path / "logs", anchors, stream, keys, clock)


def reasons(problems: list[Problem]) -> set[str]:
    return {p.reason for p in problems}


# (e) ----------------------------------------------------------------------------------
def test_e_untampered_log_with_rotations_and_restart_is_clean(site: Site) -> None:
    site.clock.advance(3 * E)  # downtime, then the application starts again
    handler, logger = site.reopen("detect.e")
    log_epochs(handler, logger, site.clock, epochs=2)
    logger.info("tail")
    handler.close()
    report = verify_tenant(
        site.root, TENANT, seed=site.keys.seed, checkpoint_key=site.keys.vkey,
        anchors=site.anchors, parse=True,
    )
    assert report.ok, report.problems
    stream = report.streams[0]
    grid = site.keys.grid
    assert stream.sealed_from == grid.start(1) and stream.sealed_to == grid.start(12)
    assert stream.unsealed_trailing == 1
    assert stream.checkpoints_verified is not None and stream.checkpoints_verified >= 13
    assert stream.segments >= 5


# (a) ----------------------------------------------------------------------------------
def test_a_full_rewrite_with_recomputed_hashes_detected_by_seals_and_anchor(site: Site) -> None:
    victim = next(e for e in entries(site.stream) if e.get("message") == "event 1 0.2")

    def edit(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for p in payloads:
            if p.get("message") == "event 1 0.2":
                p["message"] = "event 1 0.2 (nothing to see here)"
        return payloads

    rewrite_stream(site.stream, edit)
    assert site.chain_only_ok()  # the hash chain alone cannot tell
    problems = site.verify()
    seal_file, seal_seq = seal_location(site.stream, 2)  # epoch 2 holds "event 1 0.2"
    first_seal_problem = next(p for p in problems if p.reason.startswith("seal_"))
    assert (first_seal_problem.reason, first_seal_problem.file, first_seal_problem.seq) == (
        "seal_head", str(seal_file), seal_seq,
    )
    assert seal_seq > victim["seq"]
    anchored = [p for p in problems if p.reason == "checkpoint_mismatch"
                and p.file.startswith(str(site.anchors))]
    assert anchored and min(p.seq or 0 for p in anchored) >= victim["seq"]
    # the same detection from the replica alone (no seed at hand)
    only_anchor = verify_tenant(site.root, TENANT, checkpoint_key=site.keys.vkey,
                                anchors=site.anchors)
    assert "checkpoint_mismatch" in reasons(only_anchor.problems)


def test_a2_rewrite_that_also_patches_seal_heads_fails_the_tags(site: Site) -> None:
    def edit(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for p in payloads:
            if p.get("message") == "event 1 0.2":
                p["message"] = "forged"
        return payloads

    rewrite_stream(site.stream, edit)
    # second pass: copy each recomputed head into the seal that follows it
    all_entries = entries(site.stream)

    def patch(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, p in enumerate(payloads):
            if p.get("kind") == "seal" and index > 0:
                p["head"] = all_entries[index - 1]["hash"]
        return payloads

    for _ in range(10):  # each pass fixes one more head (hashes shift after each patch)
        rewrite_stream(site.stream, patch)
        all_entries = entries(site.stream)
    problems = site.verify()
    seal_file, seal_seq = seal_location(site.stream, 2)
    assert ("seal_forged", str(seal_file), seal_seq) in {(p.reason, p.file, p.seq)
                                                         for p in problems}
    assert "seal_head" not in reasons(problems)


# (b) ----------------------------------------------------------------------------------
def test_b_strip_all_seals_and_reseal_with_current_key(site: Site) -> None:
    """journald CVE-2023-31439 class: the attacker holds the key of the current epoch."""
    state_path = site.stream / STREAM_STATE
    state = json.loads(state_path.read_bytes())
    grid = EpochGrid.from_json(state)
    key = EpochKey(bytes.fromhex(state["key"]), state["epoch"])
    origin = state["origin"]

    def strip(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for p in payloads if p.get("kind") != "seal"]

    rewrite_stream(site.stream, strip)
    remaining = entries(site.stream)
    last = remaining[-1]
    n = key.epoch
    start, end = grid.start(n), grid.start(n + 1)
    tag = key.tag(start, end, 1, last["seq"], last["hash"], origin)
    record = SealRecord(n, start, end, 1, last["seq"], last["hash"], tag, origin)
    payload = {**record.to_payload(), "ts": end, "tenant": TENANT, **grid.to_json()}
    line, _ = make_line(last["seq"] + 1, last["hash"], canonical_payload(payload))
    active = list_segments(site.stream)[-1].path
    write_lines(active, [*read_lines(active), line])
    key.advance()
    state.update(epoch=key.epoch, key=key.hex(), sealed_seq=last["seq"])
    state_path.write_text(json.dumps(state))
    assert site.chain_only_ok()
    problems = site.verify()
    first = segment_of(site.stream, 1)
    assert ("seal_entry_time", str(first), 1) in {(p.reason, p.file, p.seq) for p in problems}
    assert "seal_missing" in reasons(problems)  # its state says sealing began at epoch 1
    assert "checkpoint_mismatch" in reasons(problems)


# (c) ----------------------------------------------------------------------------------
def test_c_truncate_then_keep_logging(site: Site) -> None:
    """journald CVE-2023-31438 class: cut the end off, then let logging (and sealing) go on."""
    cut_file, cut_seq = seal_location(site.stream, 3)
    for seg in list_segments(site.stream):
        if seg.path == cut_file:
            lines = read_lines(seg.path)
            keep = [ln for ln in lines if json.loads(ln)["seq"] <= cut_seq]
            write_lines(seg.path, keep)
        elif seg.number > int(cut_file.name[:8]):
            seg.path.unlink()
    assert site.chain_only_ok()
    handler, logger = site.reopen("detect.c")
    log_epochs(handler, logger, site.clock, epochs=2)
    handler.close()
    assert site.chain_only_ok()  # the chain continues seamlessly from the cut
    problems = site.verify()
    gap = next(p for p in problems if p.reason == "seal_epoch_gap")
    resumed_file, resumed_seq = seal_location(site.stream, 7)
    assert (gap.file, gap.seq) == (str(resumed_file), resumed_seq)
    assert "epochs 4..6" in gap.detail
    anchored = [p for p in problems if p.reason == "truncation"
                and p.file.startswith(str(site.anchors))]
    assert anchored


def test_c2_truncate_only_detected_from_key_state(site: Site) -> None:
    cut_file, cut_seq = seal_location(site.stream, 4)
    for seg in list_segments(site.stream):
        if seg.path == cut_file:
            write_lines(seg.path, [ln for ln in read_lines(seg.path)
                                   if json.loads(ln)["seq"] <= cut_seq])
        elif seg.number > int(cut_file.name[:8]):
            seg.path.unlink()
    problems = verify_tenant(site.root, TENANT, seed=site.keys.seed).problems
    assert [(p.reason, p.file, p.seq) for p in problems] == [
        ("truncation", str(cut_file), cut_seq)
    ]


# (d) ----------------------------------------------------------------------------------
def test_d_forged_checkpoint_signature_rejected(site: Site) -> None:
    notes = sorted((site.anchors / TENANT / "app.0" / "checkpoints").glob("*.note"),
                   key=lambda p: int(p.stem))
    # 1. a flipped signature byte
    text = notes[0].read_text()
    body, sig_line = text.rsplit("\n\n", 1)
    prefix, encoded = sig_line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(encoded))
    raw[10] ^= 0x01
    notes[0].write_text(f"{body}\n\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n")
    # 2. a note signed by another key under the same name, claiming a rewritten root
    other = CheckpointSigner(generate_signing_key(), "immutable-logging")
    forged = other.sign(Checkpoint(f"{TENANT}/app.0", int(notes[1].stem), b"\x07" * 32))
    notes[1].write_text(forged)
    # 3. the body changed under a genuine signature
    genuine = notes[2].read_text().split("\n")
    genuine[2] = base64.b64encode(b"\x01" * 32).decode()
    notes[2].write_text("\n".join(genuine))
    problems = site.verify()
    invalid = {(p.file, p.detail.split(":")[0]) for p in problems
               if p.reason == "checkpoint_invalid"}
    assert invalid == {
        (str(notes[0]), "checkpoint_bad_signature"),
        (str(notes[1]), "checkpoint_unknown_key"),
        (str(notes[2]), "checkpoint_bad_signature"),
    }
    assert reasons(problems) == {"checkpoint_invalid"}


def test_deleted_stream_detected_from_anchors(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(site.stream)
    problems = site.verify()
    assert [(p.reason, p.file) for p in problems] == [
        ("truncation", str(site.anchors / TENANT / "app.0" / "checkpoints"))
    ]
    # The CLI too: a deleted log is tampering (exit 1), not "nothing to verify" (exit 2).
    out = io.StringIO()
    code = main(["verify", str(site.root), "--tenant", TENANT,
                 "--checkpoint-key", site.keys.vkey, "--anchors", str(site.anchors)], out)
    assert code == 1, capsys.readouterr().err
    assert "truncation" in out.getvalue()
