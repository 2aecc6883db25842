"""In CI (``CI=true``) a skipped root, sandbox, PostgreSQL or image test is a failure, not a skip.

Those tests skip themselves, with a reason, where their requirements are missing (no root, no
bubblewrap, no PostgreSQL binaries, no debootstrap): right on a developer's laptop, wrong in CI,
where scripts/install-system-deps installs all of it — a skip there would hide that a guarantee
went untested. Only the skips listed in EXPECTED_IN_CI stay skips (what CI cannot have).
"""

from __future__ import annotations

import os

import pytest

# Reasons (prefixes) a skip may have in CI too, each with why CI cannot do better.
EXPECTED_IN_CI: dict[str, str] = {
    "no container engine": "CI machines have the docker client but no engine (tests/sandbox/test_docker.py)",
    "an engine is running here": "the counterpart of the above: only runs where no engine answers",
    "image ": "container images are not pulled in tests (no registry access)",
}
GUARDED_DIRS = ("tests/sandbox/", "tests/images/", "tests/playbooks/")
GUARDED_FIXTURES = ("postgres", "rootfs", "nspawn")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def guarded(item: pytest.Item) -> str | None:
    """Why this test must not be skipped in CI (None: it may be)."""
    if item.get_closest_marker("root") is not None:
        return "root"
    path = item.nodeid.split("::", 1)[0]
    if path.startswith(GUARDED_DIRS):
        return path.split("/")[1]
    fixtures = getattr(item, "fixturenames", ())
    for name in fixtures:
        if any(word in name for word in GUARDED_FIXTURES):
            return "postgres" if "postgres" in name else "image"
    if "postgres" in item.nodeid.lower():
        return "postgres"
    return None


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def expected(reason: str) -> bool:
    return any(reason.startswith(prefix) for prefix in EXPECTED_IN_CI)


def fail_unexpected_skip(item: pytest.Item, report: pytest.TestReport) -> None:
    """Turn the report of a guarded test that skipped (not for an expected reason) into a failure."""
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    kind = guarded(item)
    reason = skip_reason(report)
    if kind is None or expected(reason):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped in CI (CI=true), which runs every {kind} test: {reason}\n"
                       "Install what it needs (scripts/install-system-deps) or, if CI cannot have it, add the "
                       "reason to tests/ci_skips.py EXPECTED_IN_CI.")
