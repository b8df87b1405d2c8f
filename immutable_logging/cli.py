"""The ``immutable-log`` command line.

Exit codes: 0 success (log verified clean), 1 verification found tampering or damage,
2 usage or configuration error (also: nothing found to verify, read or restore),
141 (128 + SIGPIPE) the reader of the output went away (e.g. ``| head``).
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import orjson

from .checkpoint import (
    DEFAULT_KEY_NAME,
    ConsistencyProof,
    InclusionProof,
    prove_consistency,
    prove_inclusion,
)
from .config import BackupConfig
from .crypto import Keyring, key_from_env
from .encryption import EntryDecryptor, keyring_from_cli_env
from .errors import (
    BucketNotFoundError,
    DecryptionError,
    ImmutableLogError,
    KeyUnavailableError,
    RemoteIntegrityError,
    SegmentReadError,
    location,
)
from .layout import (
    DEFAULT_TENANT,
    list_segments,
    list_streams,
    list_tenants,
    tenant_dir,
    validate_stream_name,
)
from .levels import CUSTOM_LEVELS
from .matching import DocumentQuery, Match, TextSearch, find_entries
from .query import (
    Decryptor,
    Entry,
    ReadDamage,
    disk_usage,
    iso_utc,
    iter_entries,
    read_entries,
    summarise,
)
from .replication.backend import StorageBackend
from .replication.cloud import (
    find_entry,
    replica_tenants,
    restore_tenant,
    verify_cloud_backup,
)
from .replication.local import LocalDirectoryBackend
from .seal import CheckpointSigner, encode_seed, generate_signing_key, private_key_to_pem
from .sealing import TENANT_STATE, init_tenant_sealing, restored_seals_note
from .verify import StreamReport, VerificationReport, verify_tenant

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a process killed by SIGPIPE
LAYOUT = "DIR/<tenant>/<stream>/NNNNNNNN.log"

Command = Callable[[argparse.Namespace, TextIO], int]
_COMMANDS: dict[str, Command] = {}


def _command(name: str) -> Callable[[Command], Command]:
    def register(func: Command) -> Command:
        _COMMANDS[name] = func
        return func

    return register


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 itself; keep that contract
        self.print_usage(sys.stderr)
        raise _UsageError(message)


def _json_out(out: TextIO, value: Any) -> None:
    out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def _table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = min(max(widths[i], len(cell)), 80)
    line = "  ".join(h.ljust(widths[i]) for i, h in enumerate(headers))
    out.write(line.rstrip() + "\n" + "  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        text = "  ".join(
            (c if len(c) <= widths[i] else c[: widths[i] - 1] + "…").ljust(widths[i])
            for i, c in enumerate(row)
        )
        out.write(text.rstrip() + "\n")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _level(text: str) -> str | int:
    """``--level``: a level name (``AUDIT``) or number (``25``)."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return text


def _tenants(args: argparse.Namespace) -> list[str]:
    if args.tenant:
        return [args.tenant]
    return list_tenants(Path(args.directory))


def _require_streams(args: argparse.Namespace) -> None:
    """Refuse to run when the selected tenants hold no stream at all.

    Verifying (or reading) nothing must not look like success: pointed at the wrong
    directory, a CI job would otherwise pass a tampered log.
    """
    root = Path(args.directory)
    if not root.is_dir():
        raise _UsageError(f"no such log directory: {args.directory}")
    if any(list_streams(tenant_dir(root, t)) for t in _tenants(args)):
        return
    verb = "summarise" if args.command == "stats" else args.command
    if args.tenant:
        missing = f"{args.directory} holds no log stream of tenant {args.tenant!r}"
    else:
        missing = f"{args.directory} holds no tenant with a log stream"
    message = f"nothing to {verb}: {missing} (expected layout {LAYOUT})"
    here = root if root.name not in ("", ".", "..") else Path(os.path.abspath(root))
    if list_streams(here):
        message += (f"; {here} looks like the directory of tenant {here.name!r}: pass "
                    f"{here.parent} --tenant {here.name}")
    elif list_segments(here):
        tenant = here.parent
        message += (f"; {here} looks like the directory of stream {here.name!r} of tenant "
                    f"{tenant.name!r}: pass {tenant.parent} --tenant {tenant.name}")
    elif args.tenant:
        found = [t for t in list_tenants(root) if list_streams(root / t)]
        if found:
            message += f"; tenants with streams there: {', '.join(found)}"
    raise _UsageError(message)


def _keyring(
    key_envs: Sequence[str] | None, passphrase_env: str | None, tenant_directory: Path
) -> Keyring | None:
    """The keyring of ``--key-env`` (repeatable; the first is active) or ``--passphrase-env``.

    The first ``--key-env`` also brings the retired keys of ``IMMUTABLE_LOG_PREVIOUS_KEYS``.
    """
    if not key_envs:
        return keyring_from_cli_env(tenant_directory, None, passphrase_env)
    ring = keyring_from_cli_env(tenant_directory, key_envs[0], None)
    assert ring is not None
    for var in key_envs[1:]:
        ring.add(key_from_env(var))
    return ring


def _decryptor(args: argparse.Namespace, tenant: str) -> EntryDecryptor | None:
    """The decryptor of the keys given; None without one (encrypted entries are then read
    undecrypted: their clear fields and ``<encrypted>``)."""
    keyring = _keyring(args.key_env, args.passphrase_env, Path(args.directory) / tenant)
    return EntryDecryptor(keyring, tenant) if keyring is not None else None


class _MarkingDecryptor:
    """For ``read``: an entry whose ciphertext fails authentication is shown undecrypted,
    marked with ``decryption_error``, and counted, instead of ending the read there. A
    missing key (:class:`KeyUnavailableError`) still ends it: that is a usage error."""

    def __init__(self, inner: Decryptor, failures: list[DecryptionError]) -> None:
        self.inner = inner
        self.failures = failures

    def __call__(self, entry: Entry, stream: str, file: str) -> Entry:
        try:
            return self.inner(entry, stream, file)
        except KeyUnavailableError:
            raise
        except DecryptionError as exc:  # the entry is left as read: clear members + enc
            self.failures.append(exc)
            entry["decryption_error"] = str(exc)
            return entry


def _entries(
    args: argparse.Namespace,
    damage: list[ReadDamage],
    failures: list[DecryptionError] | None = None,
) -> Iterator[Entry]:
    """Every selected tenant's entries; what cannot be read is left out and collected in
    ``damage``; with ``failures``, entries that fail decryption are marked and collected
    there (see :class:`_MarkingDecryptor`)."""
    for tenant in _tenants(args):
        decrypt: Decryptor | None = _decryptor(args, tenant)
        if decrypt is not None and failures is not None:
            decrypt = _MarkingDecryptor(decrypt, failures)
        yield from iter_entries(args.directory, tenant, decrypt=decrypt, damage=damage)


def _report_damage(damage: list[ReadDamage]) -> int:
    """Name on stderr what a reading command left out; its exit code (1 when any)."""
    if not damage:
        return EXIT_OK
    for item in damage[:10]:
        sys.stderr.write(f"immutable-log: left out: {item}\n")
    more = f" ({len(damage) - 10} more not listed)" if len(damage) > 10 else ""
    sys.stderr.write(f"immutable-log: {len(damage)} damaged lines or unreadable segments were "
                     f"left out{more}; run `immutable-log verify`\n")
    return EXIT_TAMPERED


def _find(args: argparse.Namespace, match: Match, damage: list[ReadDamage]) -> list[Entry]:
    """Matches across the selected tenants, tenant by tenant, up to ``--limit``."""
    if args.limit is not None and args.limit < 0:
        raise _UsageError(f"--limit must be 0 or more, got {args.limit}")
    found: list[Entry] = []
    for tenant in _tenants(args):
        remaining = None if args.limit is None else args.limit - len(found)
        if remaining is not None and remaining <= 0:
            break
        found += find_entries(args.directory, tenant, match, decrypt=_decryptor(args, tenant),
                              limit=remaining, damage=damage)
    return found


def _print_entries(args: argparse.Namespace, out: TextIO, entries: list[Entry]) -> None:
    if args.json:
        _json_out(out, entries)
        return
    rows = [
        (
            e.get("timestamp") or e.get("ts", ""),  # the raw ts when no date has it
            e.get("tenant", ""),
            e.get("stream", ""),
            e.get("seq", ""),
            e.get("level", ""),
            e.get("logger", ""),
            e.get("message", _hidden_message(e)),
            orjson.dumps(e["metadata"]).decode() if e.get("metadata") else "",
        )
        for e in entries
    ]
    _table(out, ["time", "tenant", "stream", "seq", "level", "logger", "message", "metadata"], rows)
    out.write(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}\n")


def _hidden_message(entry: Entry) -> str:
    if "decryption_error" in entry:
        return "<cannot decrypt>"
    return "<encrypted>" if "enc" in entry else ""


def _print_report(out: TextIO, report: VerificationReport) -> None:
    rows = [
        (s.tenant, s.stream, s.segments, s.entries, s.last_seq or 0, "ok" if s.ok else "TAMPERED")
        for s in report.streams
    ]
    _table(out, ["tenant", "stream", "segments", "entries", "last seq", "status"], rows)
    for problem in report.problems:
        where = location(problem.file, problem.seq)
        out.write(f"FAIL {problem.reason}: {where}: {problem.detail}\n")
    for warning in report.warnings:
        out.write(f"note: {warning}\n")
    for stream in report.streams:
        _print_seal_line(out, stream)
    verdict = (
        "OK: every stream verified"
        if report.ok
        else f"TAMPERED: {len(report.problems)} problem(s)"
    )
    out.write(f"{verdict} ({report.entries} entries in {len(report.streams)} streams)\n")


@_command("verify")
def _verify(args: argparse.Namespace, out: TextIO) -> int:
    if not Path(args.directory).is_dir():
        raise _UsageError(f"no such log directory: {args.directory}")
    report = VerificationReport()
    for tenant in _tenants(args):
        decrypt = _decryptor(args, tenant) if (args.key_env or args.passphrase_env) else None
        report.streams.extend(
            verify_tenant(
                args.directory,
                tenant,
                parse=args.parse,
                decrypt=decrypt,
                seed=_seed_arg(args),
                checkpoint_key=args.checkpoint_key,
                anchors=args.anchors,
                workers=args.workers,
            ).streams
        )
    if not report.streams:
        # Nothing verified, not even a stream that anchored checkpoints say is missing
        # (a deleted log with anchors is a report, exit 1): never "OK".
        _require_streams(args)
    if args.json:
        _json_out(out, report.to_dict())
    else:
        _print_report(out, report)
    if not report.ok:
        return EXIT_TAMPERED
    missing = report.keys_missing
    if missing:  # the chain verified, but the entries asked to be authenticated were not
        kids = ", ".join(f"{kid} ({count} entries)" for kid, count in missing.items())
        hint = ("pass their keys (--key-env, repeatable)" if not args.passphrase_env else
                "a wrong passphrase, or a salt file (.salt.json in the tenant's directory) "
                "other than the one they were written with, derives a key with another id")
        sys.stderr.write(
            f"immutable-log: KeyUnavailableError: no key given for key id {kids}: those "
            f"entries were not authenticated; {hint}\n")
        return EXIT_USAGE
    return EXIT_OK


#: Level names ``--level`` is expected to hold (a custom level of the application works too).
_KNOWN_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", *CUSTOM_LEVELS)


@_command("read")
def _read(args: argparse.Namespace, out: TextIO) -> int:
    limit: int = args.limit
    if limit < 0:
        raise _UsageError(f"--limit must be 0 or more, got {limit}")
    _require_streams(args)
    failures: list[DecryptionError] = []
    damage: list[ReadDamage] = []
    entries = read_entries(  # one more than asked: tells whether the limit cut the output
        _entries(args, damage, failures=failures), limit=limit + 1, level=args.level,
        newest_first=args.newest_first,
    )
    cut = len(entries) > limit
    _print_entries(args, out, entries[:limit])
    if not entries and isinstance(args.level, str) and args.level.upper() not in _KNOWN_LEVELS:
        sys.stderr.write(
            f"immutable-log: no entry has level {args.level!r}, which is not a level name of "
            f"logging or this library ({', '.join(_KNOWN_LEVELS)}); a number also works\n")
    if cut:
        which = "newest" if args.newest_first else "first"
        sys.stderr.write(f"immutable-log: only the {which} {limit} matching entries are "
                         "shown; more exist: pass --limit N to see up to N\n")
    if failures:
        for failure in failures[:10]:
            sys.stderr.write(f"immutable-log: cannot decrypt: {failure}\n")
        more = f" ({len(failures) - 10} more not listed)" if len(failures) > 10 else ""
        sys.stderr.write(
            f"immutable-log: {len(failures)} entries failed authentication{more}: their "
            "ciphertext was altered or damaged; run `immutable-log verify` with the key\n"
        )
    return max(_report_damage(damage), EXIT_TAMPERED if failures else EXIT_OK)


@_command("search")
def _search(args: argparse.Namespace, out: TextIO) -> int:
    _require_streams(args)
    damage: list[ReadDamage] = []
    _print_entries(args, out, _find(args, TextSearch(args.text, args.case_sensitive), damage))
    return _report_damage(damage)


@_command("query")
def _query(args: argparse.Namespace, out: TextIO) -> int:
    try:
        document = orjson.loads(args.document)
    except orjson.JSONDecodeError as exc:
        raise _UsageError(f"query must be a JSON object: {exc}") from None
    _require_streams(args)
    damage: list[ReadDamage] = []
    _print_entries(args, out, _find(args, DocumentQuery(document), damage))
    return _report_damage(damage)


@_command("stats")
def _stats(args: argparse.Namespace, out: TextIO) -> int:
    _require_streams(args)
    damage: list[ReadDamage] = []
    result = summarise(_entries(args, damage))
    usage = [disk_usage(args.directory, t) for t in _tenants(args)]
    result["bytes_on_disk"] = sum(u["bytes_on_disk"] for u in usage)
    result["segments"] = sum(u["segments"] for u in usage)
    if args.json:
        _json_out(out, result)
        return _report_damage(damage)
    rows: list[tuple[str, Any]] = [
        ("total entries", result["total_entries"]),
        ("first", result["first_timestamp"]),
        ("last", result["last_timestamp"]),
        ("segments", result["segments"]),
        ("bytes on disk", result["bytes_on_disk"]),
    ]
    rows += [(f"level {k}", v) for k, v in sorted(result["by_level"].items())]
    rows += [(f"stream {k}", v) for k, v in sorted(result["by_stream"].items())]
    _table(out, ["stat", "value"], rows)
    return _report_damage(damage)


# ------------------------------------------------------------ seals and checkpoints


def _iso(when: float | None) -> str:
    return (iso_utc(when, "seconds") if when is not None else None) or "-"


def _print_seal_line(out: TextIO, stream: StreamReport) -> None:
    name = f"{stream.tenant}/{stream.stream}"
    if stream.unsealed_trailing is not None:
        if stream.sealed_from is None:
            span = "no seal yet"
        else:
            span = f"validated from {_iso(stream.sealed_from)} to {_iso(stream.sealed_to)}"
        out.write(
            f"seals {name}: {span}, {stream.unsealed_trailing} trailing "
            f"entr{'y' if stream.unsealed_trailing == 1 else 'ies'} not yet sealed\n"
        )
    if stream.checkpoints_verified is not None:
        out.write(f"checkpoints {name}: {stream.checkpoints_verified} verified\n")


def _seed_arg(args: argparse.Namespace) -> str | None:
    if args.seed_env:
        value = os.environ.get(args.seed_env)
        if not value:
            raise _UsageError(f"environment variable {args.seed_env} is not set")
        return value
    seed: str | None = args.seed
    return seed


@_command("keygen")
def _keygen(args: argparse.Namespace, out: TextIO) -> int:
    tdir = tenant_dir(args.directory, args.tenant or DEFAULT_TENANT)
    result: dict[str, Any] = {"tenant": tdir.name}
    key_path = Path(args.checkpoint_key) if args.checkpoint_key else None
    if args.no_seal and key_path is None:
        raise _UsageError("--no-seal without --checkpoint-key FILE leaves nothing to generate")
    if key_path is not None and key_path.exists():
        raise _UsageError(f"{key_path} exists; refusing to overwrite a signing key")
    if not args.no_seal:
        seed, grid = init_tenant_sealing(tdir, epoch_seconds=args.epoch_seconds)
        result.update(
            seed=encode_seed(seed),
            epoch_seconds=grid.epoch_seconds,
            epoch_start=grid.t0,
            state=str(tdir / TENANT_STATE),
        )
    if key_path is not None:
        private = generate_signing_key()
        signer = CheckpointSigner(private, args.key_name or DEFAULT_KEY_NAME)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_key_to_pem(private))
        result.update(checkpoint_key=str(key_path), checkpoint_vkey=signer.vkey)
    if args.json:
        _json_out(out, result)
        return EXIT_OK
    if "seed" in result:
        out.write(
            f"Seal seed of tenant {result['tenant']!r} (shown once, never stored: keep it "
            f"off this host; `verify --seed` needs it):\n\n    {result['seed']}\n\n"
            f"Epochs of {result['epoch_seconds']:g} s; seal state in {result['state']}\n"
        )
    if key_path is not None:
        out.write(
            f"Checkpoint signing key written to {key_path} (mode 0600); pass it as the "
            f"handler's checkpoint_key.\nCheckpoint verifier key (public; for "
            f"`verify --checkpoint-key`):\n\n    {result['checkpoint_vkey']}\n"
        )
    return EXIT_OK


def _stream_dir(args: argparse.Namespace) -> Path:
    stream = tenant_dir(args.directory, args.tenant or DEFAULT_TENANT) / validate_stream_name(
        args.stream
    )
    if not stream.is_dir():
        raise _UsageError(f"no such stream: {stream}")
    return stream


def _report_proof(
    args: argparse.Namespace, out: TextIO, proof: InclusionProof | ConsistencyProof,
    header: str, label: str,
) -> int:
    """Print a proof (its nodes as ``label[i]``) or its JSON; exit 1 if it does not verify."""
    valid = proof.verify()
    if args.json:
        _json_out(out, {**proof.to_dict(), "valid": valid})
    else:
        out.write(header)
        for i, node in enumerate(proof.proof):
            out.write(f"{label}[{i}] {node.hex()}\n")
        out.write("proof verifies\n" if valid else "PROOF DOES NOT VERIFY\n")
    return EXIT_OK if valid else EXIT_TAMPERED


@_command("prove-inclusion")
def _prove_inclusion(args: argparse.Namespace, out: TextIO) -> int:
    proof = prove_inclusion(_stream_dir(args), args.seq, args.size)
    return _report_proof(args, out, proof, (
        f"entry seq {proof.seq} (hash {proof.entry_hash}) is leaf {proof.seq - 1} of the "
        f"tree of {proof.tree_size} entries\nroot  {proof.root.hex()}\n"), "path")


@_command("prove-consistency")
def _prove_consistency(args: argparse.Namespace, out: TextIO) -> int:
    proof = prove_consistency(_stream_dir(args), args.old, args.new)
    return _report_proof(args, out, proof, (
        f"tree of {proof.old_size} entries is a prefix of the tree of {proof.new_size}\n"
        f"old root {proof.old_root.hex()}\nnew root {proof.new_root.hex()}\n"), "proof")


def _backend(args: argparse.Namespace) -> StorageBackend:
    options: dict[str, Any] = {"enable_cloud_backup": True}
    if args.provider:
        options["backup_provider"] = args.provider
    if args.backup_directory:
        options["backup_directory"] = args.backup_directory
    if args.prefix:
        options["backup_prefix"] = args.prefix
    if args.bucket:
        options["s3_bucket"] = options["gcs_bucket"] = args.bucket
    if args.region:
        options["s3_region"] = args.region
    if args.project:
        options["gcs_project_id"] = args.project
    if args.endpoint_url:
        options["s3_endpoint_url"] = options["gcs_endpoint_url"] = args.endpoint_url
    provider = args.provider or os.environ.get("BACKUP_PROVIDER", "local")
    variable = {"s3": "S3_BUCKET", "gcs": "GCS_BUCKET"}.get(provider)
    if variable and not args.bucket and not os.environ.get(variable):
        raise _UsageError(f"--provider {provider} needs --bucket B (or {variable})")
    config = BackupConfig.from_options(options, log_directory=args.directory or os.curdir)
    if config.backup_provider != "local":
        return config.build_backend()
    if args.command == "restore" and not args.backup_directory:
        raise _UsageError("restoring from a local bucket needs --backup-directory")
    assert config.backup_directory is not None
    # The CLI only reads the replica: a missing bucket directory is an error
    # (BucketNotFoundError), not an empty replica.
    return LocalDirectoryBackend(config.backup_directory, prefix=config.backup_prefix,
                                 create=False)


def _local_bucket_option(backend: StorageBackend) -> str:
    """``--backup-directory D`` for a local bucket (restore has no default for it)."""
    if isinstance(backend, LocalDirectoryBackend):
        return f" --backup-directory {shlex.quote(str(backend.root))}"
    return ""


def _no_replica(exc: BucketNotFoundError, backend: StorageBackend) -> _UsageError:
    return _UsageError(f"replica not found ({backend.describe()}): {exc}")


@_command("sync-status")
def _sync_status(args: argparse.Namespace, out: TextIO) -> int:
    if not Path(args.directory).is_dir():
        raise _UsageError(f"no such log directory: {args.directory}")
    backend = _backend(args)
    try:
        # Without --tenant: the local tenants and the replica's (a local log lost with
        # its disk is still reported, and named with the restore that rebuilds it).
        tenants = _tenants(args) if args.tenant else sorted(
            {*_tenants(args), *replica_tenants(backend)})
        results = {t: verify_cloud_backup(backend, args.directory, t) for t in tenants}
    except BucketNotFoundError as exc:
        raise _no_replica(exc, backend) from None
    if not results:
        raise _UsageError(f"neither {args.directory} nor the replica ({backend.describe()}) "
                          "holds a tenant")
    absent = {t: r for t, r in results.items() if r["remote_entries"] == 0 and not r["problems"]}
    shown = {t: r for t, r in results.items() if t not in absent}
    # A tenant the local log holds nothing of (a lost disk, before restoring) with a sound
    # replica: every entry is "missing locally", which is no damage of the replica.
    gone = {t: r for t, r in shown.items() if r["sync_status"] == "local_lost"}
    if args.json:  # every tenant, so that a script sees the ones the replica lacks too
        _json_out(out, {t: {**r, "in_replica": t not in absent} for t, r in results.items()})
    elif shown:  # the tenants the replica holds are reported, whatever follows
        _print_sync_status(out, shown, backend, gone)
    damaged = any(r["problems"] for t, r in shown.items() if t not in gone)
    for tenant, result in gone.items():
        sys.stderr.write(
            f"immutable-log: error: {args.directory} holds nothing of tenant {tenant!r}; the "
            f"replica ({backend.describe()}) holds {result['remote_entries']} of its entries "
            f"and verifies: `immutable-log restore NEWDIR --tenant {tenant}"
            f"{_local_bucket_option(backend)}` with these replica options rebuilds the log\n")
    for tenant, result in absent.items():
        local = (f"{args.directory} holds {result['local_blocks']} of its entries: "
                 "nothing was replicated yet, or the replica options point elsewhere"
                 if result["local_blocks"] else f"nor does {args.directory}")
        sys.stderr.write(f"immutable-log: error: the replica ({backend.describe()}) holds "
                         f"nothing of tenant {tenant!r}; {local}\n")
    if damaged:
        return EXIT_TAMPERED  # a damaged replica outranks a missing tenant
    return EXIT_USAGE if absent or gone else EXIT_OK


#: The columns of ``sync-status``'s table and the fields of ``--json`` they show.
_SYNC_COLUMNS = {
    "local": "local_blocks",
    "in replica": "remote_entries",
    "matching": "cloud_blocks",
    "differing": "differing_blocks",
    "not in replica": "missing_blocks",
    "only in replica": "remote_only_blocks",
    "synced": "sync_percentage",
    "status": "sync_status",
}


def _print_sync_status(
    out: TextIO, results: dict[str, Any], backend: StorageBackend, gone: Iterable[str] = ()
) -> None:
    """The table of ``results`` (the fields of ``--json``, see :data:`_SYNC_COLUMNS`) and
    their problems; those of a tenant of ``gone`` (``local_lost``: its entries are all
    "missing locally", which is no damage of the replica) are left to the caller, which
    says what to run."""
    gone = set(gone)
    rows = [(t, *(f"{r[f]}%" if f == "sync_percentage" else r[f]
                  for f in _SYNC_COLUMNS.values()))
            for t, r in results.items()]
    _table(out, ["tenant", *_SYNC_COLUMNS], rows)
    for tenant, result in results.items():
        for problem in result["problems"] if tenant not in gone else ():
            where = location(problem["key"], problem["seq"], kind="object")
            out.write(f"FAIL {tenant}: {problem['reason']}: {where}: {problem['detail']}\n")
    out.write(f"replica: {backend.describe()}\n")


@_command("restore")
def _restore(args: argparse.Namespace, out: TextIO) -> int:
    if not args.block_hash and not args.directory:
        raise _UsageError("restore needs NEWDIR (the empty directory to restore into) "
                          "unless --block-hash is given")
    backend = _backend(args)
    tenant = args.tenant or DEFAULT_TENANT
    try:
        if args.block_hash:
            keyring = _keyring(args.key_env, None, Path(os.curdir))
            decrypt = EntryDecryptor(keyring, tenant) if keyring is not None else None
            entry = find_entry(backend, tenant, args.block_hash, decrypt)
            if entry is None:
                where = "" if args.tenant else " (the default tenant; pass --tenant T)"
                raise _UsageError(f"no entry with hash {args.block_hash} of tenant "
                                  f"{tenant!r}{where} in {backend.describe()}")
            _json_out(out, entry)
            return EXIT_OK
        result = restore_tenant(backend, args.directory, tenant)
    except BucketNotFoundError as exc:
        raise _no_replica(exc, backend) from None
    if args.json:
        _json_out(out, result)
    else:
        out.write(
            f"restored tenant {tenant!r} from {backend.describe()} into {result['directory']}: "
            f"{result['entries']} entries, {result['streams']} stream(s), "
            f"{result['segments']} segment(s); verified: {'OK' if result['verified'] else 'NO'}\n"
        )
    if result["sealed_streams"]:
        note = restored_seals_note(Path(result["directory"]))
        if note is not None:
            sys.stderr.write(f"immutable-log: note: {note}\n")
    return EXIT_OK if result["verified"] else EXIT_TAMPERED


def _add_backend_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", choices=["local", "s3", "gcs"],
                   help="replica kind (default: BACKUP_PROVIDER or local)")
    p.add_argument("--backup-directory",
                   help="the local bucket (sync-status: default DIR-backup; restore needs it)")
    p.add_argument("--bucket", help="S3 or GCS bucket (default: S3_BUCKET / GCS_BUCKET)")
    p.add_argument("--prefix", help="object name prefix in the bucket")
    p.add_argument("--region", help="S3 region (default: S3_REGION)")
    p.add_argument("--project", help="GCS project (default: GCS_PROJECT_ID)")
    p.add_argument("--endpoint-url", help="custom S3/GCS endpoint (e.g. a local emulator)")


def _add_key_env(p: argparse.ArgumentParser, what: str = "decrypt") -> None:
    p.add_argument("--key-env", metavar="VAR", action="append",
                   help=f"{what} with the base64 AES-256 key in environment variable VAR; "
                   "repeatable after a key rotation (every key decrypts; retired keys may "
                   "also be listed in IMMUTABLE_LOG_PREVIOUS_KEYS)")


_SYNC_STATUS_HELP = """\
Compare the replica with the local log, tenant by tenant, entry by entry
(sequence number and hash), and verify the replica's own chain. Counts are
entries; each column of the table is a field of --json:

  local            local_blocks        entries the local log holds
  in replica       remote_entries      entries the replica holds
  matching         cloud_blocks        entries both hold, identical
  differing        differing_blocks    seqs both hold, with other entries
  not in replica   missing_blocks      local entries the replica does not
                                       hold identically: local - matching
  only in replica  remote_only_blocks  replica entries the local log lacks:
                                       in replica - matching - differing
  synced           sync_percentage     matching as a share of local + only
                                       in replica, rounded down (100.0: all)
  status           sync_status         synced, partial (the replica lacks
                                       the newest entries), not_synced (it
                                       holds none of them), local_lost (the
                                       local log holds none, the replica
                                       verifies: restore it) or corrupted
                                       (a problem: see the FAIL lines)

--json adds remote_ok (the replica verifies on its own), problems, the counts
per stream and in_replica. Exit 1 when a replica is damaged or disagrees with
the local log, else 2 when a tenant is in only one of them (or no replica is
found), else 0.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``immutable-log``."""
    parser = _Parser(prog="immutable-log", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser, json_help: str = "print JSON") -> None:
        p.add_argument("directory", help="the log directory")
        p.add_argument("--tenant", help=f"only this tenant (default: all; '{DEFAULT_TENANT}' "
                       "is the tenant of handlers configured without one)")
        p.add_argument("--json", action="store_true", help=json_help)
        _add_key_env(p)
        p.add_argument("--passphrase-env", metavar="VAR",
                       help="decrypt with a key derived from the passphrase in VAR")

    p = sub.add_parser("verify", help="verify every hash chain (exit 1 when tampered)")
    common(p, "print the verification report as JSON")
    p.add_argument("--parse", action="store_true", help="also check every payload is canonical"
                   " (and, with a key, that every encrypted entry authenticates)")
    p.add_argument("--seed", help="seal seed (ils1-...): also check every forward-secure seal")
    p.add_argument("--seed-env", metavar="VAR", help="read the seal seed from env var VAR")
    p.add_argument("--checkpoint-key", metavar="VKEY",
                   help="checkpoint verifier key (name+id+key): check signed checkpoints")
    p.add_argument("--anchors", metavar="DIR", action="append",
                   help="directory of checkpoints kept elsewhere (<tenant>/<stream>/"
                   "checkpoints/<size>.note); repeatable")
    p.add_argument("--workers", type=_non_negative_int, metavar="N",
                   help="verify sealed segments in up to N worker processes (default: one "
                   "per CPU for logs of 8 MiB or more; 1 = none)")

    p = sub.add_parser("read", help="print entries")
    common(p)
    p.add_argument("--limit", type=int, default=100, metavar="N",
                   help="print at most N entries (default 100; a note on stderr says when "
                   "more exist)")
    p.add_argument("--level", type=_level,
                   help="only this level, by name or number (e.g. AUDIT or 25)")
    p.add_argument("--newest-first", action="store_true")

    p = sub.add_parser("search", help="entries containing TEXT")
    common(p)
    p.add_argument("text")
    p.add_argument("--case-sensitive", action="store_true")
    p.add_argument("--limit", type=int)

    p = sub.add_parser("query", help='entries matching a JSON query, e.g. \'{"level":"AUDIT"}\'')
    common(p)
    p.add_argument("document", help="MongoDB-style JSON query document")
    p.add_argument("--limit", type=int)

    p = sub.add_parser("stats", help="counts by level and stream, time span, disk usage")
    common(p)

    p = sub.add_parser("keygen", help="create a tenant's seal state (prints the seed once) "
                       "and optionally a checkpoint signing key")
    p.add_argument("directory", help="the log directory")
    p.add_argument("--tenant", help=f"tenant id (default '{DEFAULT_TENANT}')")
    p.add_argument("--epoch-seconds", type=float, default=300.0, help="epoch length (300)")
    p.add_argument("--checkpoint-key", metavar="FILE",
                   help="also write a new Ed25519 checkpoint signing key (PEM, 0600) to FILE")
    p.add_argument("--key-name", help="note key name of the checkpoint key "
                   "(default immutable-logging)")
    p.add_argument("--no-seal", action="store_true", help="only make the checkpoint key")
    p.add_argument("--json", action="store_true", help="print JSON")

    for name, text in (("prove-inclusion", "inclusion proof of one entry"),
                       ("prove-consistency", "consistency proof between two tree sizes")):
        p = sub.add_parser(name, help=text)
        p.add_argument("directory", help="the log directory")
        p.add_argument("--tenant", help=f"tenant id (default '{DEFAULT_TENANT}')")
        p.add_argument("--stream", required=True, help="stream name (e.g. host.0)")
        p.add_argument("--json", action="store_true", help="print JSON")
        if name == "prove-inclusion":
            p.add_argument("--seq", type=int, required=True, help="the entry's seq")
            p.add_argument("--size", type=int, help="tree size (default: all entries)")
        else:
            p.add_argument("--old", type=int, required=True, help="old tree size")
            p.add_argument("--new", type=int, help="new tree size (default: all entries)")

    p = sub.add_parser("sync-status", help="compare the replica with the local log "
                       "(exit 1 when the replica is damaged)",
                       description=_SYNC_STATUS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", help="the log directory")
    p.add_argument("--tenant", help="only this tenant (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_backend_options(p)

    p = sub.add_parser("restore", help="rebuild a tenant's log from the replica into an "
                       "empty NEWDIR (or print one entry with --block-hash)")
    p.add_argument("directory", nargs="?", metavar="NEWDIR",
                   help="the (empty) directory to restore into (not needed with --block-hash)")
    p.add_argument("--tenant", help=f"tenant id (default '{DEFAULT_TENANT}')")
    p.add_argument("--block-hash", help="print only the entry with this hash")
    _add_key_env(p, "decrypt the --block-hash entry")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_backend_options(p)
    return parser


class _ReaderGone(Exception):
    """Writing the command's output failed with EPIPE: its reader went away."""


#: Longer texts may encode to more than ``BufferedWriter``'s 8 KiB buffer (4 bytes per
#: character at most): :meth:`_Output.write` writes them itself.
_SMALL_WRITE = 2048


def _stateless(encoding: object) -> bool:
    """Whether texts encoded one by one with ``encoding`` join into the encoding of the
    joined text (no BOM, no shift state)."""
    if not isinstance(encoding, str):
        return False
    try:
        return "a\u00e9".encode(encoding) * 2 == "a\u00e9a\u00e9".encode(encoding)
    except (LookupError, UnicodeError):
        return False


class _Output(io.TextIOBase):
    """The command's output stream: a broken pipe *there* becomes :class:`_ReaderGone`, so
    that one raised anywhere else (a backend's socket, say) is not mistaken for ``| head``.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        # Only a stateless encoding may bypass the text layer: utf-16 or utf-8-sig would
        # put a second BOM in the middle of the output, utf-7 break a shift sequence.
        self._bypass = _stateless(getattr(stream, "encoding", None))

    def write(self, text: str) -> int:
        try:
            binary = getattr(self.stream, "buffer", None)
            if (len(text) <= _SMALL_WRITE or binary is None or not self._bypass
                    or os.linesep != "\n"):
                return self.stream.write(text)
            self._write_all(binary, text)
            return len(text)
        except BrokenPipeError as exc:
            raise _ReaderGone from exc

    def _write_all(self, binary: io.BufferedIOBase, text: str) -> None:
        """Write a large text through the binary buffer, finishing short writes.

        ``BufferedWriter.write`` hands a large write straight to the file and returns what
        the kernel took: when the reader of a pipe leaves mid-write that is a short count,
        which ``TextIOWrapper`` ignores; the rest would be dropped without an error. Writing
        the rest again gets EPIPE, so the reader's going is seen.
        """
        self.stream.flush()  # what the text layer holds goes first
        data = memoryview(text.encode(self.stream.encoding, self.stream.errors or "strict"))
        while data:
            written = binary.write(data)
            if not written:  # never for a blocking file; no endless loop for another one
                raise OSError(errno.EAGAIN, "the output took no bytes")
            data = data[written:]

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError as exc:
            raise _ReaderGone from exc

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()


def _discard_output(out: TextIO) -> None:
    """Point ``out``'s file descriptor at /dev/null, so that flushing what is still buffered
    (at exit) cannot raise BrokenPipeError again."""
    try:
        fileno = out.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fileno)
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; return the exit code."""
    stream = out or sys.stdout
    output = cast(TextIO, _Output(stream))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        code = _COMMANDS[args.command](args, output)
        output.flush()
        return code
    except _ReaderGone:
        # The reader went away (``| head``): no traceback; the pattern of the Python docs
        # (library/signal.html, "Note on SIGPIPE"), exiting 128 + SIGPIPE like a shell tool.
        _discard_output(stream)
        return EXIT_BROKEN_PIPE
    except _UsageError as exc:
        sys.stderr.write(f"immutable-log: error: {exc}\n")
        return EXIT_USAGE
    except KeyUnavailableError as exc:  # a key not given: a usage error, no damage
        sys.stderr.write(f"immutable-log: {type(exc).__name__}: {exc}\n")
        return EXIT_USAGE
    except (RemoteIntegrityError, DecryptionError, SegmentReadError) as exc:
        # Damage, of the replica (as sync-status says it), of a ciphertext or of a
        # segment: exit 1, as verify says it
        sys.stderr.write(f"immutable-log: {type(exc).__name__}: {exc}\n")
        return EXIT_TAMPERED
    except ImmutableLogError as exc:
        sys.stderr.write(f"immutable-log: {type(exc).__name__}: {exc}\n")
        return EXIT_USAGE
    except OSError as exc:  # a path that cannot be used, a connection gone: never exit 1
        sys.stderr.write(f"immutable-log: {type(exc).__name__}: {exc}\n")
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
