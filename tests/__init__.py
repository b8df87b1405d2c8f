"""Test suite of immutable_logging (a package so that ``tests.servers`` is importable)."""
