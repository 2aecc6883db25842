"""Blob storage of a competition: containers, bundles, per-task SAS URLs, logs, outputs, cancellation.

The site holds the account credential; workers only ever get SAS URLs scoped to ONE blob of ONE task
attempt, with the least rights each step needs, expiring after the task's time limit plus a margin
(the margin covers the time the task may wait in the queue):

==============  =========  ==========================================  =====================
what            container  blob                                        worker's rights
==============  =========  ==========================================  =====================
program/input   bundles    ``sha256/<hex>.<ext>`` (content-addressed)  read
stdout/stderr   logs       ``tasks/<task>/<attempt>/stdout.log``       add, create, write
control         logs       ``tasks/<task>/<attempt>/control``          read
output archive  outputs    ``tasks/<task>/<attempt>/output.tar.gz``    create, write
==============  =========  ==========================================  =====================

Cancellation: the site writes the control blob (JSON, see :class:`worker.protocol.ControlSignal`); the agent polls it
through its read-only SAS (a missing blob means "carry on"), so workers need no extra Service Bus
rights. The worker's side of every SAS URL (append, read the control blob, upload) is
:mod:`worker.agent.blobs`; this module holds no worker-side copy.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContentSettings,
    generate_blob_sas,
)

from worker.config import competition_containers
from worker.protocol import Bundle, ControlSignal

LogStream = Literal["stdout", "stderr"]
DEFAULT_SAS_MARGIN_S = 6 * 3600.0  # queue wait + upload time on top of the task's time limit
CLOCK_SKEW = timedelta(minutes=5)  # SAS start is backdated so a worker with a slow clock is fine


def task_prefix(task_id: str, attempt: int) -> str:
    return f"tasks/{task_id}/{attempt}"


def log_blob_name(task_id: str, attempt: int, stream: LogStream) -> str:
    return f"{task_prefix(task_id, attempt)}/{stream}.log"


def control_blob_name(task_id: str, attempt: int) -> str:
    return f"{task_prefix(task_id, attempt)}/control"


def output_blob_name(task_id: str, attempt: int) -> str:
    return f"{task_prefix(task_id, attempt)}/output.tar.gz"


@dataclass(frozen=True)
class TaskUrls:
    """The SAS URLs of one task attempt (what goes into the Task message)."""

    stdout_url: str
    stderr_url: str
    control_url: str
    output_url: str
    expires_at: datetime


@dataclass(frozen=True)
class StoredBundle:
    container: str
    blob_name: str
    sha256: str
    size: int


def pack_directory(directory: str | Path) -> bytes:
    """A reproducible gzip'd tar of a directory's contents (sorted, no owners, fixed mtimes), so the
    same program gives the same sha256 and is downloaded to a worker's cache once."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")
    buffer = io.BytesIO()
    import gzip

    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_symlink():
                raise ValueError(f"{path}: symbolic links are not allowed in a bundle")
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(directory)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if path.is_file():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return buffer.getvalue()


class Storage:
    """The site's view of blob storage (it holds the account credential)."""

    def __init__(self, service: BlobServiceClient, sas_margin_s: float = DEFAULT_SAS_MARGIN_S) -> None:
        self.service = service
        self.sas_margin_s = sas_margin_s
        self._account_key: str | None = getattr(service.credential, "account_key", None)
        self._delegation: tuple[Any, datetime] | None = None
        self._known_containers: set[str] = set()

    @classmethod
    def from_connection_string(cls, connection_string: str, **kwargs: Any) -> Storage:
        return cls(BlobServiceClient.from_connection_string(connection_string), **kwargs)

    @classmethod
    def from_identity(cls, account_url: str, credential: Any = None, **kwargs: Any) -> Storage:
        """Azure AD identity instead of an account key; SAS become user-delegation SAS.
        Written for Azure, not tested against it (Azurite has no user delegation keys)."""
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return cls(BlobServiceClient(account_url, credential=credential), **kwargs)

    @property
    def account_name(self) -> str:
        return self.service.account_name  # type: ignore[return-value]

    def close(self) -> None:
        self.service.close()

    # --- containers ---------------------------------------------------------------------------------
    def ensure_competition(self, competition: str) -> dict[str, str]:
        """Create the competition's containers (idempotent); returns kind -> container name."""
        containers = competition_containers(competition)
        for name in containers.values():
            if name in self._known_containers:
                continue
            try:
                self.service.create_container(name)
            except ResourceExistsError:
                pass
            self._known_containers.add(name)
        return containers

    # --- SAS ------------------------------------------------------------------------------------------
    def _sas(self, container: str, blob: str, permission: BlobSasPermissions, expiry: datetime) -> str:
        start = datetime.now(UTC) - CLOCK_SKEW
        if self._account_key:
            token = generate_blob_sas(self.account_name, container, blob, account_key=self._account_key,
                                      permission=permission, expiry=expiry, start=start)
        else:  # identity: a user delegation key, cached until shortly before it expires
            key = self._delegation_key(expiry)
            token = generate_blob_sas(self.account_name, container, blob, user_delegation_key=key,
                                      permission=permission, expiry=expiry, start=start)
        return f"{self.service.url.rstrip('/')}/{container}/{blob}?{token}"

    def _delegation_key(self, expiry: datetime) -> Any:
        # A key lives at most 7 days (Azure's cap): a SAS asked to outlive that cannot be covered by
        # any key, so a fresh one is not fetched for it again and again (one per URL).
        needed = min(expiry, datetime.now(UTC) + timedelta(days=7) - timedelta(minutes=5))
        if self._delegation is None or self._delegation[1] < needed:
            key_expiry = max(expiry, datetime.now(UTC) + timedelta(days=6))
            key_expiry = min(key_expiry, datetime.now(UTC) + timedelta(days=7))
            key = self.service.get_user_delegation_key(datetime.now(UTC) - CLOCK_SKEW, key_expiry)
            self._delegation = (key, key_expiry)
        return self._delegation[0]

    def expiry_for(self, time_limit_s: float) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=time_limit_s + self.sas_margin_s)

    def task_urls(self, competition: str, task_id: str, attempt: int, time_limit_s: float) -> TaskUrls:
        containers = competition_containers(competition)
        expiry = self.expiry_for(time_limit_s)
        append = BlobSasPermissions(add=True, create=True, write=True)
        logs = containers["logs"]
        return TaskUrls(
            stdout_url=self._sas(logs, log_blob_name(task_id, attempt, "stdout"), append, expiry),
            stderr_url=self._sas(logs, log_blob_name(task_id, attempt, "stderr"), append, expiry),
            control_url=self._sas(logs, control_blob_name(task_id, attempt), BlobSasPermissions(read=True), expiry),
            output_url=self._sas(containers["outputs"], output_blob_name(task_id, attempt),
                                 BlobSasPermissions(create=True, write=True), expiry),
            expires_at=expiry,
        )

    def bundle_for_task(self, stored: StoredBundle, name: str, time_limit_s: float) -> Bundle:
        """The wire form of a stored bundle: a read-only SAS on that one blob."""
        url = self._sas(stored.container, stored.blob_name, BlobSasPermissions(read=True),
                        self.expiry_for(time_limit_s))
        kind = "archive" if stored.blob_name.endswith((".tar.gz", ".tgz", ".zip", ".tar")) else "file"
        return Bundle(name=name, url=url, kind=kind, sha256=stored.sha256 or None, size=stored.size or None)

    def output_bundle(self, competition: str, task_id: str, attempt: int) -> StoredBundle | None:
        """A task's output archive as an input of another task (e.g. predictions -> scoring);
        None when the task uploaded no output."""
        container = competition_containers(competition)["outputs"]
        blob = self.service.get_blob_client(container, output_blob_name(task_id, attempt))
        try:
            props = blob.get_blob_properties()
        except ResourceNotFoundError:
            return None
        return StoredBundle(container, output_blob_name(task_id, attempt), "", props.size)

    # --- bundles --------------------------------------------------------------------------------------
    def upload_bundle(self, competition: str, source: str | Path | bytes, *, suffix: str = ".tar.gz") -> StoredBundle:
        """Upload a directory (packed as tar.gz), a file, or bytes; content-addressed, so uploading
        the same content twice stores it once."""
        if isinstance(source, bytes):
            data = source
        else:
            path = Path(source)
            if path.is_dir():
                data, suffix = pack_directory(path), ".tar.gz"
            elif path.is_file():
                data = path.read_bytes()
                suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".tar.gz", ".tar.xz", ".tar.bz2")) \
                    else path.suffix
            else:
                raise FileNotFoundError(f"bundle {path} does not exist")
        digest = hashlib.sha256(data).hexdigest()
        container = self.ensure_competition(competition)["bundles"]
        blob_name = f"sha256/{digest}{suffix}"
        blob = self.service.get_blob_client(container, blob_name)
        if not blob.exists():
            blob.upload_blob(data, overwrite=True)
        return StoredBundle(container, blob_name, digest, len(data))

    # --- cancellation ---------------------------------------------------------------------------------
    def cancel(self, competition: str, task_id: str, attempt: int, reason: str = "cancelled by the site") -> None:
        container = competition_containers(competition)["logs"]
        body = ControlSignal(reason=reason).model_dump_json().encode()
        self.service.get_blob_client(container, control_blob_name(task_id, attempt)).upload_blob(
            body, overwrite=True, content_settings=ContentSettings(content_type="application/json"))

    # --- reading logs and outputs -----------------------------------------------------------------
    def read_log(self, competition: str, task_id: str, attempt: int, stream: LogStream, offset: int = 0) -> bytes:
        """Bytes of a log from ``offset``; empty when the blob does not exist (yet) or has no more."""
        container = competition_containers(competition)["logs"]
        blob = self.service.get_blob_client(container, log_blob_name(task_id, attempt, stream))
        try:
            return blob.download_blob(offset=offset).readall() if offset else blob.download_blob().readall()
        except ResourceNotFoundError:
            return b""
        except Exception as exc:  # 416: offset at the end of the blob — nothing new
            if getattr(exc, "status_code", None) == 416:
                return b""
            raise

    def log_url(self, competition: str, task_id: str, attempt: int, stream: LogStream) -> str:
        """Unsigned URL of a log blob (for display: where the logs are)."""
        container = competition_containers(competition)["logs"]
        return f"{self.service.url.rstrip('/')}/{container}/{log_blob_name(task_id, attempt, stream)}"

    def read_output(self, competition: str, task_id: str, attempt: int) -> bytes | None:
        container = competition_containers(competition)["outputs"]
        blob = self.service.get_blob_client(container, output_blob_name(task_id, attempt))
        try:
            return blob.download_blob().readall()
        except ResourceNotFoundError:
            return None
