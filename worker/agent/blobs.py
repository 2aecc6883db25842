"""Blob access through the task's SAS URLs only (the worker never holds an account key).

Clients use short, bounded retries: an unreachable storage account must surface within seconds as
an :class:`~worker.agent.errors.InfrastructureError`, not after the SDK's default minutes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO, NamedTuple
from urllib.parse import parse_qs, urlsplit

import requests
import urllib3
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ServiceRequestError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobClient, ContentSettings, ExponentialRetry

from worker.agent.errors import InfrastructureError
from worker.protocol import ControlSignal

APPEND_BLOCK_MAX = 4 * 1024 * 1024  # the service's append-block limit
_TEXT = ContentSettings(content_type="text/plain; charset=utf-8")


# Waits of about 0.5, 2.5 and 4.5 s: a blip is ridden out, an outage is reported in ~10 s.
RETRY: dict[str, float] = {"initial_backoff": 0.5, "increment_base": 2, "retry_total": 3, "random_jitter_range": 1}


def _environment_proxies_or_netrc() -> bool:
    """Whether requests' reading of the environment for each request can change it: proxy variables
    (``*_proxy``), a netrc file, or a platform whose proxies also come from the system (Windows'
    registry, macOS' configuration). Its CA bundle variables are read once, below."""
    if not sys.platform.startswith("linux"):
        return True
    if any(name.lower().endswith("_proxy") or name.lower() == "netrc" for name in os.environ):
        return True
    return any(Path(f"~/{name}").expanduser().exists() for name in (".netrc", "_netrc"))


# One HTTP session for every blob client of the agent: a task's handful of clients (logs, control,
# output) reuse pooled connections instead of each opening its own (requests' pool is thread-safe).
# (Its session is made by azure-core itself: urllib3 retries off, so errors never echo a SAS URL.)
# requests reads the environment's proxy, netrc and CA bundle settings again on every request (two
# walks over os.environ: a quarter of a HEAD's CPU). Where no proxy or netrc is set the session skips
# that, and the CA bundle it would have found (REQUESTS_CA_BUNDLE, else CURL_CA_BUNDLE) is given here.
_USE_ENVIRONMENT = _environment_proxies_or_netrc()
_VERIFY: bool | str = True if _USE_ENVIRONMENT else (
    os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True)
_TIMEOUT = (5, 60)  # connect, read (s)
_TRANSPORT = RequestsTransport(connection_timeout=_TIMEOUT[0], read_timeout=_TIMEOUT[1],
                               use_env_settings=_USE_ENVIRONMENT, connection_verify=_VERIFY)
_TRANSPORT.open()  # now, not lazily from several threads at once

def _ca_settings(verify: bool | str) -> dict[str, str]:
    """urllib3's CA options for requests' ``verify``: a bundle file or a directory of certificates, as
    requests' adapter reads it; ``True`` is requests' default bundle (certifi)."""
    if not isinstance(verify, str):
        return {"ca_certs": requests.utils.DEFAULT_CA_BUNDLE_PATH}
    return {"ca_cert_dir": verify} if os.path.isdir(verify) else {"ca_certs": verify}


# The control blob is read before every task: through urllib3's pool directly, a HEAD costs about half
# the CPU of the same request through requests (its request preparation, hooks and adapter layers).
# Same timeouts and CA bundle as the session; no retries of urllib3's own (errors would echo the SAS
# URL; :func:`_request` retries). Where requests would take a proxy or netrc from the environment,
# the session is used instead.
_CONTROL_POOL = None if _USE_ENVIRONMENT else urllib3.PoolManager(
    timeout=urllib3.Timeout(connect=_TIMEOUT[0], read=_TIMEOUT[1]), retries=False, cert_reqs="CERT_REQUIRED",
    **_ca_settings(_VERIFY))


def client(url: str) -> BlobClient:
    return BlobClient.from_blob_url(
        url,
        retry_policy=ExponentialRetry(**RETRY),  # type: ignore[arg-type]
        transport=_TRANSPORT,
    )


def describe(url: str) -> str:
    """A blob URL without its SAS (never log a signature)."""
    return url.split("?", 1)[0]


class AppendBlob:
    """One stdout/stderr log blob: made by :meth:`create`, or else with its first bytes (a program
    that prints nothing costs no request; readers take a missing log for an empty one)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._blob: BlobClient | None = None
        self.created = False

    @property
    def _client(self) -> BlobClient:
        """Made on first use: building a client (its whole policy pipeline) is most of a silent
        log's cost otherwise."""
        if self._blob is None:
            self._blob = client(self.url)
        return self._blob

    def create(self) -> None:
        """A fresh, empty blob for this run (a redelivered attempt starts its log over)."""
        try:
            self._client.create_append_blob(content_settings=_TEXT)
        except ResourceExistsError:  # pragma: no cover - only without overwrite semantics
            pass
        except AzureError as exc:
            raise InfrastructureError(f"cannot create log blob {describe(self.url)}: {exc}") from exc
        self.created = True

    def append(self, data: bytes) -> None:
        if not self.created:
            self.create()
        for start in range(0, len(data), APPEND_BLOCK_MAX):
            try:
                self._client.append_block(data[start:start + APPEND_BLOCK_MAX])
            except AzureError as exc:
                raise InfrastructureError(f"cannot append to {describe(self.url)}: {exc}") from exc


def download(url: str, dest: BinaryIO) -> int:
    try:
        return client(url).download_blob(max_concurrency=2).readinto(dest)
    except AzureError as exc:
        raise InfrastructureError(f"cannot download {describe(url)}: {exc}") from exc


def upload_file(url: str, path: Path) -> None:
    try:
        with path.open("rb") as fh:
            client(url).upload_blob(fh, overwrite=True, length=path.stat().st_size, max_concurrency=2)
    except AzureError as exc:
        raise InfrastructureError(f"cannot upload {describe(url)}: {exc}") from exc


def read_control(url: str) -> ControlSignal | None:
    """The site's control signal for this task, or None ("carry on"). Raises AzureError on failure.

    A HEAD first: the usual answer is "no such blob", which a HEAD gives for less than a download.
    Read once before every task and every few seconds while one runs, so it is a plain pooled request
    (:func:`_request`): a BlobClient's construction and policy pipeline cost about four times the
    request itself."""
    head = _request("HEAD", url)
    if head.status_code == 404:  # no signal (the blob, or its container, does not exist)
        return None
    if head.status_code != 200:
        raise _refused(head, url)
    if int(head.headers.get("Content-Length") or 0) == 0:
        return None
    body = _request("GET", url)
    if body.status_code == 404:  # removed in between
        return None
    if body.status_code != 200:
        raise _refused(body, url)
    if not body.content.strip():
        return None
    try:
        return ControlSignal.model_validate(json.loads(body.content))
    except ValueError:  # unreadable: honour the site's evident intent to stop the task
        return ControlSignal(reason="cancelled (unreadable control blob)")


class _Response(NamedTuple):
    status_code: int
    reason: str
    headers: Mapping[str, str]  # case-insensitive (urllib3's and requests' header dicts both are)
    content: bytes


class _Transient(Exception):
    """A response worth another try (as the SDK's retry policy would retry it)."""

    def __init__(self, response: _Response) -> None:
        self.response = response


_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# azure-core's session has urllib3's retries off, so urllib3's own errors reach us unwrapped too.
_UNREACHABLE = (requests.RequestException, urllib3.exceptions.HTTPError)


def _send(method: str, url: str, headers: dict[str, str]) -> _Response:
    if _CONTROL_POOL is not None:
        r = _CONTROL_POOL.request(method, url, headers=headers)
        return _Response(r.status, r.reason or "", r.headers, r.data)
    response = _TRANSPORT.session.request(method, url, headers=headers, timeout=_TIMEOUT, verify=_VERIFY)
    return _Response(response.status_code, response.reason or "", response.headers, response.content)


def _request(method: str, url: str) -> _Response:
    """``method`` on a blob's SAS URL, retried like the SDK clients (``RETRY``) on connection errors
    and transient statuses. Errors name the blob without its SAS."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

    # With a SAS the service version is the signature's own (`sv`), as the SDK would send it.
    version = parse_qs(urlsplit(url).query).get("sv", [None])[0]
    headers = {"x-ms-version": version} if version else {}
    retrying = Retrying(
        stop=stop_after_attempt(int(RETRY["retry_total"]) + 1),
        wait=wait_exponential(multiplier=RETRY["initial_backoff"], exp_base=RETRY["increment_base"])
        + wait_random(0, RETRY["random_jitter_range"]),
        retry=retry_if_exception_type((_Transient, *_UNREACHABLE)), reraise=True)
    try:
        for attempt in retrying:
            with attempt:
                response = _send(method, url, headers)
                if response.status_code in _TRANSIENT_STATUS:
                    raise _Transient(response)
                return response
    except _Transient as exc:
        return exc.response
    except _UNREACHABLE as exc:  # its text holds the URL, SAS and all: not passed on
        raise ServiceRequestError(f"cannot reach {describe(url)}: {type(exc).__name__}") from None
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


def _refused(response: _Response, url: str) -> HttpResponseError:
    code = response.headers.get("x-ms-error-code", "")
    error = HttpResponseError(message=f"{describe(url)}: HTTP {response.status_code} {response.reason} {code}".rstrip())
    error.status_code = response.status_code
    return error
