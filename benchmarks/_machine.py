"""How fast this machine is, printed before every benchmark: figures from different machines (or a
machine shared with other work) differ by more than most changes do, so compare runs whose
yardsticks are alike.

The yardstick is the CPU time of a fixed, pure-Python workload (JSON round trips, dict and string
work, a sort: the kind of code the agents, the site and the broker run), best of three: it moves with
the CPU's single-thread speed, not with the load (unless the machine is oversubscribed).
"""

from __future__ import annotations

import json
import os
import platform
import time

_DOCUMENT = {"task_id": "t-0001", "attempt": 1, "state": "running", "worker_id": "w-1", "seq": 3,
             "labels": {"participant": "p-17", "submission": "s-42"}, "command": ["python", "run.py", "--fast"],
             "env": {f"VAR_{i}": "x" * i for i in range(12)}, "exit_code": None, "output_bytes": 1234}


def _workload() -> int:
    total = 0
    for i in range(3000):
        doc = json.loads(json.dumps(_DOCUMENT))
        doc["seq"] = i
        key = f"{doc['task_id']}:{doc['attempt']}:{i}"
        total += len(key.split(":")) + sum(len(v) for v in doc["env"].values())
    total += len(sorted(str(i * 7919 % 10007) for i in range(20000)))
    return total


def yardstick_ms() -> float:
    """CPU milliseconds of the fixed workload, best of three."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        _workload()
        best = min(best, time.process_time() - start)
    return best * 1000


def describe() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load {load}; "
            f"yardstick {yardstick_ms():.1f} ms CPU (benchmarks/_machine.py: compare figures between "
            f"runs whose yardsticks are alike)")
