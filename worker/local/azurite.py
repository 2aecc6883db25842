"""Start and stop Azurite (the Azure Storage emulator, npm ``azurite``) for the local stack and tests.

Only the blob service is needed. azure-storage-blob 12.31 sends an API version newer than Azurite
3.35 knows, so Azurite runs with ``--skipApiVersionCheck``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

from worker.errors import PoolError
from worker.local.processes import free_port, wait_for_port
from worker.util.process_group import kill_process_group, stop_process_group

# The storage emulator's well-known development account (public, documented by Microsoft).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_REPO_ROOT = Path(__file__).resolve().parents[2]


class AzuriteNotFound(PoolError, RuntimeError):
    pass


def find_azurite() -> str:
    """``$POOL_AZURITE_BIN``, else ``.tools/node_modules/.bin/azurite-blob`` (repo or current dir),
    else ``azurite-blob`` on PATH."""
    env = os.environ.get("POOL_AZURITE_BIN")
    if env:
        if not Path(env).exists():
            raise AzuriteNotFound(f"POOL_AZURITE_BIN={env} does not exist")
        return env
    for root in (_REPO_ROOT, Path.cwd()):
        candidate = root / ".tools" / "node_modules" / ".bin" / "azurite-blob"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("azurite-blob")
    if found:
        return found
    raise AzuriteNotFound(
        "azurite-blob not found: run `make install` (installs it under .tools/), "
        "`npm install -g azurite`, or set POOL_AZURITE_BIN"
    )


def connection_string(host: str, port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{port}/{ACCOUNT_NAME};"
    )


class AzuriteProcess:
    """One Azurite blob service in its own process group, on a free port unless one is given."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        in_memory: bool = False,
        log_file: str | Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.in_memory = in_memory
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="azurite-"))
        self.log_path = Path(log_file) if log_file else self.data_dir / "azurite.log"
        self.process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.host, self.port)

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT_NAME}"

    def start(self, timeout: float = 30.0) -> AzuriteProcess:
        binary = find_azurite()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # a free port can be taken between choosing and binding it
            port = self.port or free_port(self.host)
            argv = [binary, "--silent", "--disableTelemetry", "--skipApiVersionCheck",
                    "--blobHost", self.host, "--blobPort", str(port)]
            # Azurite refuses --location together with --inMemoryPersistence.
            argv += ["--inMemoryPersistence"] if self.in_memory else ["--location", str(self.data_dir)]
            with open(self.log_path, "ab") as out:
                self.process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, cwd=self.data_dir,
                )
            try:
                wait_for_port(self.host, port, timeout, self.process)
            except RuntimeError as exc:
                kill_process_group(self.process)
                self.process = None
                if self.port or attempt == 2:
                    raise RuntimeError(f"Azurite did not start: {exc}; log:\n{self._log_tail()}") from None
                continue
            except TimeoutError:
                kill_process_group(self.process)
                self.process = None
                raise
            self.port = port
            return self
        raise RuntimeError("could not start Azurite")  # pragma: no cover

    def _log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout=5)
            self.process = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
