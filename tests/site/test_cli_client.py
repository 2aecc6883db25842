"""`pool submit/status/logs/cancel/rerun` as thin clients of a production-style site: `--site URL`
or POOL_SITE_URL with POOL_SITE_TOKEN (no local profile involved), same output and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.fixtures.site_service import ADMIN_TOKEN, READ_TOKEN, REPO

pytestmark = pytest.mark.slow


def pool(*args: str, token: str | None = ADMIN_TOKEN, site: str | None = None, timeout: float = 60,
         tmp_path=None) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOL_")}
    if token:
        env["POOL_SITE_TOKEN"] = token
    if site:
        env["POOL_SITE_URL"] = site
    if tmp_path is not None:
        env["POOL_DATA_DIR"] = str(tmp_path)  # no profile there: only the site URL can work
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_thin_client_against_a_site_by_url(served_site, tmp_path):
    url = served_site.url
    done = pool("submit", "--site", url, "--label", "participant=carol", "--wait", "--",
                "sh", "-c", "echo from-the-client; echo oops >&2", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    task_id = done.stdout.split()[1]
    assert f"{task_id}: finished, exit code 0" in done.stdout and "logs: pool logs" in done.stdout

    logs = pool("logs", task_id, site=url, tmp_path=tmp_path)  # POOL_SITE_URL instead of --site
    assert logs.stdout == "from-the-client\n" and logs.stderr == "oops\n"
    only = pool("logs", task_id, "--stream", "stderr", site=url, tmp_path=tmp_path)
    assert only.stdout == "" and only.stderr == "oops\n"

    status = pool("status", task_id, site=url, token=READ_TOKEN, tmp_path=tmp_path)  # read scope is enough
    assert status.returncode == 0 and "participant=carol" in status.stdout and "history" in status.stdout
    overview = pool("status", site=url, token=READ_TOKEN, tmp_path=tmp_path)
    assert overview.returncode == 0 and "default" in overview.stdout and task_id in overview.stdout

    failed = pool("submit", "--site", url, "--max-attempts", "1", "--wait", "--", "sh", "-c", "exit 5",
                  tmp_path=tmp_path)
    assert failed.returncode == 1 and ": failed, exit code 5" in failed.stdout
    failed_id = failed.stdout.split()[1]
    rerun = pool("rerun", failed_id, "--wait", site=url, tmp_path=tmp_path)
    assert rerun.returncode == 1 and "attempt 2 queued" in rerun.stdout and "failed, exit code 5" in rerun.stdout.splitlines()[1] and rerun.stdout.splitlines()[1].endswith("attempt 2")

    slow = pool("submit", "--site", url, "--", "sh", "-c", "for i in 1 2 3; do echo tick-$i; sleep 0.5; done; sleep 30",
                tmp_path=tmp_path)
    slow_id = slow.stdout.split()[1]
    follower = subprocess.Popen([sys.executable, "-m", "worker", "logs", "--follow", "--stream", "stdout", slow_id],
                                cwd=REPO, env={**os.environ, "POOL_SITE_URL": url, "POOL_SITE_TOKEN": ADMIN_TOKEN},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = follower.stdout.readline()
    assert first == "tick-1\n"
    time.sleep(1.5)
    refused = pool("cancel", slow_id, site=url, token=READ_TOKEN, tmp_path=tmp_path)
    assert refused.returncode == 1 and "admin" in refused.stderr
    cancelled = pool("cancel", slow_id, site=url, tmp_path=tmp_path)
    assert cancelled.returncode == 0 and "cancellation requested" in cancelled.stdout
    rest, _ = follower.communicate(timeout=30)  # the tail ends with the task
    assert follower.returncode == 0 and "tick-3\n" in rest
    again = pool("rerun", slow_id, "--wait", site=url, token=READ_TOKEN, tmp_path=tmp_path)
    assert again.returncode == 1 and "admin" in again.stderr


def test_thin_client_errors(served_site, tmp_path):
    wrong = pool("status", site=served_site.url, token="x" * 30, tmp_path=tmp_path)
    assert wrong.returncode == 1 and "invalid bearer token" in wrong.stderr and "x" * 30 not in wrong.stderr
    unknown = pool("submit", "--site", served_site.url, "--competition", "no-such-pool", "--", "true",
                   tmp_path=tmp_path)
    assert unknown.returncode == 2 and "no pool named 'no-such-pool'" in unknown.stderr
    missing = pool("status", "no-such-task", site=served_site.url, tmp_path=tmp_path)
    assert missing.returncode == 1 and "no task 'no-such-task'" in missing.stderr
    down = pool("status", site="http://127.0.0.1:9", tmp_path=tmp_path)
    assert down.returncode == 1 and "unreachable" in down.stderr
    none = pool("status", token=None, tmp_path=tmp_path)
    assert none.returncode == 1 and "pool local up" in none.stderr
