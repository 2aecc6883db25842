"""Shared fixtures live in tests/fixtures/*.py (one module per real server); all are loaded here."""

from pathlib import Path

import pytest

from tests.ci_skips import fail_unexpected_skip

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """CI=true: a skipped root/sandbox/PostgreSQL/image test fails (tests/ci_skips.py)."""
    outcome = yield
    fail_unexpected_skip(item, outcome.get_result())
