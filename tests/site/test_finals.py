"""The long polls' wake-up (worker.site.finals): a notify wakes every waiter at once; one that came
before the waiter read the generation is not missed; without one, a wait ends at its timeout."""

from __future__ import annotations

import threading
import time

from worker.site.finals import FinalStates


def test_a_notify_wakes_every_waiter_long_before_their_timeout():
    finals = FinalStates()
    seen = finals.generation
    woken: list[float] = []

    def waiter() -> None:
        started = time.monotonic()
        assert finals.wait(seen, 30)
        woken.append(time.monotonic() - started)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    finals.notify()
    for thread in threads:
        thread.join(30)
    assert len(woken) == 3 and max(woken) < 10


def test_a_notify_before_the_wait_is_not_missed_and_no_notify_times_out():
    finals = FinalStates()
    seen = finals.generation
    finals.notify()  # e.g. between the waiter's database read and its wait
    started = time.monotonic()
    assert finals.wait(seen, 30) and time.monotonic() - started < 10
    started = time.monotonic()
    assert not finals.wait(finals.generation, 0.2)
    assert time.monotonic() - started >= 0.15
