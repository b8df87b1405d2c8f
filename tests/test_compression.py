from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from immutable_logging import compression
from immutable_logging.compression import (
    BLOCK_LIMIT,
    DEFLATE_CHUNK,
    READ_ERRORS,
    compress,
    compress_fd,
    decompress,
    inflate_blocks,
    open_read,
)

ROOT = Path(__file__).resolve().parent.parent


def _lines(n: int) -> bytes:
    return b"".join(b'{"seq":%d,"msg":"entry %d","pad":"%s"}\n' % (i, i, b"x" * (i % 61))
                    for i in range(n))


@pytest.fixture(params=["isal", "zlib"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with ISA-L and with the standard library's zlib."""
    if request.param == "isal":
        isal = pytest.importorskip("isal")
        from isal import igzip, isal_zlib

        assert isal is not None
        monkeypatch.setattr(compression, "_gzip", igzip)
        monkeypatch.setattr(compression, "_zlib", isal_zlib)
    else:
        monkeypatch.setattr(compression, "_gzip", gzip)
        monkeypatch.setattr(compression, "_zlib", zlib)
    yield request.param


def test_isal_is_used_when_installed() -> None:
    try:
        import isal  # noqa: F401
    except ImportError:
        assert compression.BACKEND == "zlib"
    else:
        assert compression.BACKEND == "isal"


def test_round_trip_and_plain_gzip_compatibility(backend: str) -> None:
    data = _lines(20_000)
    packed = compress(data)
    assert packed[:2] == b"\x1f\x8b" and packed[4:8] == b"\0\0\0\0"  # gzip, mtime 0
    assert compress(data) == packed  # equal input, equal output
    assert gzip.decompress(packed) == data  # any gzip reader reads it
    assert decompress(gzip.compress(data, compresslevel=9)) == data  # and we read theirs
    assert decompress(compress(b"")) == b""


def test_multi_member_data_is_read_whole(backend: str, tmp_path: Path) -> None:
    blob = gzip.compress(_lines(10)) + compress(_lines(5))
    assert decompress(blob) == _lines(10) + _lines(5)
    path = tmp_path / "multi.gz"
    path.write_bytes(blob)
    assert b"".join(inflate_blocks(path)) == _lines(10) + _lines(5)


def test_stream_compression_of_a_file(backend: str, tmp_path: Path) -> None:
    data = _lines(60_000)
    source, target = tmp_path / "plain", tmp_path / "plain.gz"
    source.write_bytes(data)
    for chunk in (DEFLATE_CHUNK, 100_003):  # one step, and many steps
        with open(source, "rb") as src, open(target, "wb") as dst:
            compress_fd(src.fileno(), dst.fileno(), chunk)
        assert gzip.decompress(target.read_bytes()) == data
    with open_read(target) as handle:
        assert handle.readline() == data.splitlines(keepends=True)[0]
        handle.seek(len(data) - 10)
        assert handle.read() == data[-10:]


def test_inflated_blocks_are_bounded(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "big.gz"
    path.write_bytes(gzip.compress(b"a" * (5 * BLOCK_LIMIT + 7)))
    sizes = [len(block) for block in inflate_blocks(path)]
    assert sum(sizes) == 5 * BLOCK_LIMIT + 7
    assert max(sizes) <= BLOCK_LIMIT


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not_gzip", "empty"])
def test_damaged_data_raises_a_read_error(backend: str, tmp_path: Path, damage: str) -> None:
    blob = gzip.compress(_lines(20_000))
    bad = {
        "truncated": blob[: len(blob) // 2],
        "corrupt": blob[:10] + b"\xff" * 50 + blob[60:],
        "not_gzip": b"plain text, not gzip\n" * 10,
        "empty": b"",
    }[damage]
    path = tmp_path / "bad.gz"
    path.write_bytes(bad)
    with pytest.raises(READ_ERRORS):
        list(inflate_blocks(path))
    if damage != "empty":  # gzip.decompress(b"") is b"" for both backends
        with pytest.raises(READ_ERRORS):
            decompress(bad)
    if damage == "truncated":
        with pytest.raises(EOFError):
            list(inflate_blocks(path))


def test_without_isal_the_standard_library_is_used(tmp_path: Path) -> None:
    """A platform without an ISA-L wheel: the import falls back, and files still match."""
    data = _lines(1000)
    path = tmp_path / "x.gz"
    path.write_bytes(compress(data))
    code = (
        "import sys; sys.modules['isal'] = None\n"
        "from pathlib import Path\n"
        "from immutable_logging import compression as c\n"
        "assert c.BACKEND == 'zlib', c.BACKEND\n"
        f"p = Path({str(path)!r})\n"
        "data = b''.join(c.inflate_blocks(p))\n"
        "assert c.decompress(c.compress(data)) == data\n"
        "print(len(data))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(data))
