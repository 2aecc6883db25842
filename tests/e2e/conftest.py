"""One real local stack (emulator, Azurite, SQLite site with watcher + monitor, 2 agents as
subprocesses) shared by the end-to-end tests of a module, supervised like `pool local up` does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.azurite import require_azurite
from tests.fixtures.local_stack import supervised
from worker.local.stack import LocalStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    require_azurite()
    lines: list[str] = []
    local = LocalStack(tmp_path_factory.mktemp("stack"), workers=2, on_output=lines.append).start(timeout=60)
    with supervised(local):
        yield local
