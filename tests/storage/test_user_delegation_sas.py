"""The user-delegation SAS path of worker.storage (an Azure AD identity, no account key), offline.

Azurite hands out no user delegation keys, and there is no Azure account here, so the service's
get_user_delegation_key answers with a UserDelegationKey object made here (the only stand-in); the
SAS URLs Storage builds from it are then parsed and their signatures recomputed independently, with
the string-to-sign as Microsoft documents it ("Create a user delegation SAS"), and the key's
HMAC-SHA256. A signature made with any other key, or over any other field, does not match."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from azure.storage.blob import BlobServiceClient, UserDelegationKey

from worker.storage import Storage

ACCOUNT = "poolacct"
KEY_VALUE = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class _Token:
    def get_token(self, *scopes, **kwargs):  # pragma: no cover - never called: nothing goes on the wire
        raise AssertionError("offline test: no token request expected")


class OfflineService(BlobServiceClient):
    """The real client, except that the delegation key comes from here instead of Azure."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.key_requests: list[tuple[datetime, datetime]] = []

    def get_user_delegation_key(self, key_start_time, key_expiry_time, **kwargs):  # type: ignore[no-untyped-def]
        self.key_requests.append((key_start_time, key_expiry_time))
        key = UserDelegationKey()
        key.signed_oid = "11111111-2222-3333-4444-555555555555"
        key.signed_tid = "66666666-7777-8888-9999-000000000000"
        key.signed_start = key_start_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_expiry = key_expiry_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_service = "b"
        key.signed_version = "2025-07-05"
        key.value = KEY_VALUE
        return key


def documented_string_to_sign(q: dict[str, str], container: str, blob: str) -> str:
    """The user delegation SAS string-to-sign, field by field as documented for the SAS's version."""
    f = q.get
    head = [f("sp", ""), f("st", ""), f("se", ""), f"/blob/{ACCOUNT}/{container}/{blob}",
            f("skoid", ""), f("sktid", ""), f("skt", ""), f("ske", ""), f("sks", ""), f("skv", ""),
            f("saoid", ""), f("suoid", ""), f("scid", "")]
    if q["sv"] >= "2025-07-05":  # adds the delegated user's tenant and object id, request headers/params
        head += [f("skdutid", ""), f("sduoid", "")]
    tail = [f("sip", ""), f("spr", ""), f("sv", ""), f("sr", ""), f("snapshot", ""), f("ses", "")]
    if q["sv"] >= "2025-07-05":
        tail += [f("srh", ""), f("srq", "")]
    tail += [f("rscc", ""), f("rscd", ""), f("rsce", ""), f("rscl", ""), f("rsct", "")]
    return "\n".join(head + tail)


def recompute(url: str, key_value: str = KEY_VALUE) -> tuple[bool, dict[str, str]]:
    parsed = urlparse(url)
    container, blob = parsed.path.lstrip("/").split("/", 1)
    q = {k: v[0] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
    expected = base64.b64encode(hmac.new(base64.b64decode(key_value),
                                         documented_string_to_sign(q, container, unquote(blob)).encode(),
                                         hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, q["sig"]), q


@pytest.fixture
def storage() -> Storage:
    service = OfflineService(f"https://{ACCOUNT}.blob.core.windows.net", credential=_Token())
    return Storage(service)


def test_task_urls_are_user_delegation_sas_signed_with_the_delegation_key(storage):
    urls = storage.task_urls("comp-a", "task-1", 2, time_limit_s=600)
    rights = {urls.stdout_url: "acw", urls.stderr_url: "acw", urls.control_url: "r", urls.output_url: "cw"}
    for url, permission in rights.items():
        valid, q = recompute(url)
        assert valid, f"signature does not match the documented string-to-sign: {url}"
        assert q["sp"] == permission and q["sr"] == "b"  # one blob, least rights
        assert q["skoid"] == "11111111-2222-3333-4444-555555555555" and q["sks"] == "b"
        assert "sig" in q and "sktid" in q and "skv" in q
        assert datetime.fromisoformat(q["se"]) == urls.expires_at.replace(microsecond=0)
        assert urlparse(url).netloc == f"{ACCOUNT}.blob.core.windows.net"
    assert "/comp-a-logs/" in urls.stdout_url and "/comp-a-outputs/" in urls.output_url
    assert len(storage.service.key_requests) == 1  # one key serves every URL (cached)


def test_a_signature_from_another_key_or_over_other_fields_does_not_verify(storage):
    url = storage.task_urls("comp-a", "task-1", 1, time_limit_s=60).control_url
    other = base64.b64encode(b"another key, another signature!!").decode()
    assert recompute(url)[0] and not recompute(url, other)[0]
    tampered = url.replace("sp=r&", "sp=rw&") if "sp=r&" in url else url.replace("sp=r", "sp=rw")
    assert not recompute(tampered)[0]  # a widened permission breaks the signature


def test_the_delegation_key_is_renewed_only_when_a_sas_would_outlive_it(storage):
    storage.task_urls("c-one", "t", 1, time_limit_s=60)
    (start, expiry), = storage.service.key_requests
    assert start <= datetime.now(UTC) and timedelta(days=6) - timedelta(minutes=1) <= expiry - datetime.now(UTC)
    assert expiry - datetime.now(UTC) <= timedelta(days=7)  # Azure's maximum key lifetime
    storage.task_urls("c-two", "t", 1, time_limit_s=3600)
    assert len(storage.service.key_requests) == 1
    storage.task_urls("c-three", "t", 1, time_limit_s=6.5 * 86400)  # past the cached key's expiry
    assert len(storage.service.key_requests) == 2
    storage.task_urls("c-four", "t", 1, time_limit_s=8 * 86400)  # longer than any key can live
    assert len(storage.service.key_requests) == 3  # one more key for its four URLs, not one per URL
