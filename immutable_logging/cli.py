"""The ``immutable-log`` command line.

Exit codes: 0 success (log verified clean), 1 verification found tampering or damage,
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson

from .encryption import EntryDecryptor, keyring_from_cli_env
from .errors import ImmutableLogError
from .layout import DEFAULT_TENANT, list_tenants
from .query import (
    Entry,
    disk_usage,
    iter_entries,
    query_entries,
    read_entries,
    search_entries,
    summarise,
)
from .verify import VerificationReport, verify_tenant

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_USAGE = 2

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


def _tenants(args: argparse.Namespace) -> list[str]:
    if args.tenant:
        return [args.tenant]
    return list_tenants(Path(args.directory))


def _decryptor(args: argparse.Namespace, tenant: str) -> EntryDecryptor:
    keyring = keyring_from_cli_env(
        Path(args.directory) / tenant, args.key_env, args.passphrase_env
    )
    return EntryDecryptor(keyring, tenant)


def _entries(args: argparse.Namespace) -> Iterator[Entry]:
    for tenant in _tenants(args):
        yield from iter_entries(args.directory, tenant, decrypt=_decryptor(args, tenant))


def _print_entries(args: argparse.Namespace, out: TextIO, entries: list[Entry]) -> None:
    if args.json:
        _json_out(out, entries)
        return
    rows = [
        (
            e.get("timestamp", ""),
            e.get("tenant", ""),
            e.get("stream", ""),
            e.get("seq", ""),
            e.get("level", ""),
            e.get("logger", ""),
            e.get("message", "<encrypted>" if "enc" in e else ""),
            orjson.dumps(e["metadata"]).decode() if e.get("metadata") else "",
        )
        for e in entries
    ]
    _table(out, ["time", "tenant", "stream", "seq", "level", "logger", "message", "metadata"], rows)
    out.write(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}\n")


def _print_report(out: TextIO, report: VerificationReport) -> None:
    rows = [
        (s.tenant, s.stream, s.segments, s.entries, s.last_seq or 0, "ok" if s.ok else "TAMPERED")
        for s in report.streams
    ]
    _table(out, ["tenant", "stream", "segments", "entries", "last seq", "status"], rows)
    for problem in report.problems:
        out.write(
            f"FAIL {problem.reason}: file {problem.file}, seq {problem.seq}: {problem.detail}\n"
        )
    for warning in report.warnings:
        out.write(f"note: {warning}\n")
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
            verify_tenant(args.directory, tenant, parse=args.parse, decrypt=decrypt).streams
        )
    if args.json:
        _json_out(out, report.to_dict())
    else:
        _print_report(out, report)
    return EXIT_OK if report.ok else EXIT_TAMPERED


@_command("read")
def _read(args: argparse.Namespace, out: TextIO) -> int:
    entries = read_entries(
        _entries(args), limit=args.limit, level=args.level, newest_first=args.newest_first
    )
    _print_entries(args, out, entries)
    return EXIT_OK


@_command("search")
def _search(args: argparse.Namespace, out: TextIO) -> int:
    found = search_entries(
        _entries(args), args.text, case_sensitive=args.case_sensitive, limit=args.limit
    )
    _print_entries(args, out, found)
    return EXIT_OK


@_command("query")
def _query(args: argparse.Namespace, out: TextIO) -> int:
    try:
        document = orjson.loads(args.document)
    except orjson.JSONDecodeError as exc:
        raise _UsageError(f"query must be a JSON object: {exc}") from None
    _print_entries(args, out, query_entries(_entries(args), document, limit=args.limit))
    return EXIT_OK


@_command("stats")
def _stats(args: argparse.Namespace, out: TextIO) -> int:
    result = summarise(_entries(args))
    usage = [disk_usage(args.directory, t) for t in _tenants(args)]
    result["bytes_on_disk"] = sum(u["bytes_on_disk"] for u in usage)
    result["segments"] = sum(u["segments"] for u in usage)
    if args.json:
        _json_out(out, result)
        return EXIT_OK
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
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``immutable-log``."""
    parser = _Parser(prog="immutable-log", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser, json_help: str = "print JSON") -> None:
        p.add_argument("directory", help="the log directory")
        p.add_argument("--tenant", help=f"only this tenant (default: all; '{DEFAULT_TENANT}' "
                       "is the tenant of handlers configured without one)")
        p.add_argument("--json", action="store_true", help=json_help)
        p.add_argument("--key-env", metavar="VAR",
                       help="decrypt with the base64 AES-256 key in environment variable VAR")
        p.add_argument("--passphrase-env", metavar="VAR",
                       help="decrypt with a key derived from the passphrase in VAR")

    p = sub.add_parser("verify", help="verify every hash chain (exit 1 when tampered)")
    common(p, "print the verification report as JSON")
    p.add_argument("--parse", action="store_true", help="also check every payload is canonical"
                   " (and, with a key, that every encrypted entry authenticates)")

    p = sub.add_parser("read", help="print entries")
    common(p)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--level", help="only this level (e.g. AUDIT)")
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
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; return the exit code."""
    out = out or sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return _COMMANDS[args.command](args, out)
    except _UsageError as exc:
        sys.stderr.write(f"immutable-log: error: {exc}\n")
        return EXIT_USAGE
    except ImmutableLogError as exc:
        sys.stderr.write(f"immutable-log: {type(exc).__name__}: {exc}\n")
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
