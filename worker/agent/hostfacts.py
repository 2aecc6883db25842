"""What the first status of every attempt says about the worker that runs it."""

from __future__ import annotations

import glob
import os
import platform
import socket

import psutil

from worker import __version__
from worker.execution.base import ExecutionDriver
from worker.protocol import HostFacts


def count_gpus() -> int:
    return len([p for p in glob.glob("/dev/nvidia[0-9]*") if os.path.basename(p)[6:].isdigit()])


def host_facts(driver: ExecutionDriver, gpus_enabled: bool) -> HostFacts:
    return HostFacts(
        hostname=socket.gethostname(),
        os=platform.platform(),
        cpu_count=os.cpu_count() or 1,
        memory_mb=psutil.virtual_memory().total // (1024 * 1024),
        driver=driver.name,
        agent_version=__version__,
        gpus=count_gpus() if gpus_enabled else 0,
        enforced_limits=driver.enforced_limits(),
    )
