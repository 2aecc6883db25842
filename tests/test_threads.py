"""worker.util.threads: jobs on reused threads, never waiting for a free one."""

from __future__ import annotations

import logging
import os
import threading

from worker.util import threads
from worker.util.threads import spawn


def test_a_finished_jobs_thread_runs_the_next_job():
    first, second = {}, {}
    job = spawn("first", lambda: first.update(thread=threading.current_thread(), name=threading.current_thread().name))
    job.join(5)
    assert not job.is_alive()
    done = spawn("second", lambda: second.update(thread=threading.current_thread()))
    done.join(5)
    assert first["name"] == "first"  # log records name the job
    assert second["thread"] is first["thread"]  # the same OS thread, not a new one


def test_a_blocked_job_does_not_hold_up_the_next():
    release = threading.Event()
    blocked = spawn("blocked", release.wait)
    try:
        ran = threading.Event()
        spawn("next", ran.set)
        assert ran.wait(5), "the second job waited for the first one's thread"
        blocked.join(0.1)
        assert blocked.is_alive()
    finally:
        release.set()
    blocked.join(5)
    assert not blocked.is_alive()


def test_arguments_and_a_failing_job(caplog):
    seen = []
    with caplog.at_level(logging.ERROR, logger="worker.util.threads"):
        failing = spawn("failing", lambda: 1 / 0)
        failing.join(5)
    assert not failing.is_alive()
    assert "job failing failed" in caplog.text and "ZeroDivisionError" in caplog.text
    spawn("args", seen.append, 42).join(5)
    assert seen == [42]  # the pool lives on after a failing job


def test_idle_threads_are_capped():
    pool = threads._Threads(keep_idle=2)
    release = threading.Event()
    jobs = [pool.spawn(f"j{i}", release.wait) for i in range(5)]
    release.set()
    for job in jobs:
        job.join(5)
    deadline = threading.Event()
    for _ in range(50):  # the threads put themselves back (or leave) just after their job's end
        with pool._lock:
            if len(pool._idle) == 2:
                break
        deadline.wait(0.02)
    assert len(pool._idle) == 2


def test_a_forked_child_starts_its_own_threads():
    spawn("warm", lambda: None).join(5)  # an idle thread in the parent
    pid = os.fork()
    if pid == 0:  # the child: the parent's idle threads do not exist here
        ran = threading.Event()
        spawn("child", ran.set)
        os._exit(0 if ran.wait(5) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
