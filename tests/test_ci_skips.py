"""tests/ci_skips.py through a real pytest run (pytester): in CI a skipped root, sandbox, PostgreSQL or
image test fails, an expected skip (no container engine) and any other test's skip stay skips;
outside CI nothing changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]

TESTS = '''
import pytest

@pytest.mark.root
def test_root_needs_root():
    pytest.skip("needs root")

def test_postgres_thing():
    pytest.skip("PostgreSQL binaries not found")

@pytest.mark.root
def test_root_without_engine():
    pytest.skip("no container engine: no docker engine reachable")

def test_plain_optional():
    pytest.skip("something optional")

@pytest.mark.root
def test_root_that_runs():
    assert True
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A copy of our conftest + ci_skips, and a module of tests that skip for several reasons."""
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "__init__.py").write_text("")
    shutil.copy(REPO / "tests" / "ci_skips.py", pytester.path / "tests" / "ci_skips.py")
    (pytester.path / "tests" / "conftest.py").write_text(
        "import pytest\nfrom tests.ci_skips import fail_unexpected_skip\n\n"
        "@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
        "    outcome = yield\n    fail_unexpected_skip(item, outcome.get_result())\n")
    (pytester.path / "tests" / "test_things.py").write_text(TESTS)
    sandbox = pytester.path / "tests" / "sandbox"
    sandbox.mkdir()
    (sandbox / "__init__.py").write_text("")
    (sandbox / "test_box.py").write_text("import pytest\n\ndef test_box():\n    pytest.skip('bubblewrap not installed')\n")
    pytester.makeini("[pytest]\nmarkers =\n    root: needs root\n")
    return pytester


def test_in_ci_guarded_skips_fail_and_expected_ones_stay_skips(project, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = project.runpytest_subprocess("-rA", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=3, skipped=2, passed=1)
    out = result.stdout.str()
    for name in ("test_root_needs_root", "test_postgres_thing", "test_box"):
        assert "FAILED tests/" in out and name in out
    assert "skipped in CI (CI=true)" in out
    assert "SKIPPED" in out and "no container engine" in out and "something optional" in out


def test_outside_ci_skips_stay_skips(project, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(skipped=5, passed=1)
