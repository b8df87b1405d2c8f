"""Test suite of immutable_logging (a package so that ``tests.servers`` is importable)."""

import pytest

# tests.servers is imported by test modules before pytest sees their ``pytest_plugins``.
pytest.register_assert_rewrite("tests.servers")
