"""One real local stack (emulator, Azurite, SQLite site with watcher + monitor, 2 agents as
subprocesses) shared by the end-to-end tests of a module, supervised like `pool local up` does."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from worker.local.azurite import AzuriteNotFound, find_azurite
from worker.local.stack import LocalStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    try:
        find_azurite()
    except AzuriteNotFound as exc:
        pytest.skip(str(exc))
    lines: list[str] = []
    local = LocalStack(tmp_path_factory.mktemp("stack"), workers=2, on_output=lines.append).start(timeout=60)
    stop = threading.Event()
    supervisor = threading.Thread(target=local.supervise, args=(stop, 0.5), daemon=True)
    supervisor.start()
    try:
        yield local
    finally:
        stop.set()
        supervisor.join(10)
        local.stop()
