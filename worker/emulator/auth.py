"""Shared access signatures: make keys and tokens, verify tokens and decide what they allow.

A SAS token is ``SharedAccessSignature sr=<url-encoded resource>&sig=<base64 HMAC-SHA256>&se=<expiry>
&skn=<policy>``; the signature covers ``"<url-encoded resource>\\n<expiry>"`` keyed by the policy's key
text (UTF-8, not base64-decoded), exactly as Azure and the azure-servicebus SDK compute it. A token for
resource ``sb://host/`` covers every entity; ``sb://host/q`` covers ``q`` and its sub-queues.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, quote_plus, unquote_plus, urlsplit

from worker.emulator.config import EmulatorConfig, PolicyConfig, Right
from worker.errors import PoolError

SAS_PREFIX = "SharedAccessSignature "


class AuthError(PoolError):
    """A token that is malformed, expired, badly signed or names an unknown policy."""


def generate_key() -> str:
    """A new policy key: 32 random bytes, base64 (the shape Azure generates)."""
    return base64.b64encode(os.urandom(32)).decode()


def _sign(encoded_resource: str, expiry: int, key: str) -> str:
    digest = hmac.new(key.encode(), f"{encoded_resource}\n{expiry}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def make_token(resource: str, policy: str, key: str, ttl_seconds: int = 3600) -> str:
    """A SAS token for ``resource`` (e.g. ``http://127.0.0.1:5672/`` or ``sb://host/queue``)."""
    expiry = int(time.time()) + ttl_seconds
    encoded = quote_plus(resource)
    sig = quote_plus(_sign(encoded, expiry, key))
    return f"{SAS_PREFIX}sr={encoded}&sig={sig}&se={expiry}&skn={quote_plus(policy)}"


def entity_path(uri_or_path: str) -> str:
    """``amqps://host:port/q/$deadletterqueue`` or ``q`` -> ``q/$deadletterqueue`` (lower-case, no slashes
    at the ends). The host is ignored: the emulator serves one namespace whatever name reaches it."""
    text = uri_or_path.strip()
    if "://" in text:
        text = urlsplit(text).path
    return text.strip("/").lower()


def token_scope(uri_or_path: str) -> str:
    """The entity a token or audience is about: ``.../q/$management`` (where the JS SDK puts its
    management token) means ``q`` itself, as in Azure."""
    path = entity_path(uri_or_path)
    if path == MANAGEMENT:
        return ""
    if path.endswith("/" + MANAGEMENT):
        path = path[: -len(MANAGEMENT) - 1]
    return path


MANAGEMENT = "$management"


@dataclass(frozen=True)
class Grant:
    """What one verified token allows: rights on every entity under ``scope`` until ``expires``."""

    policy: str
    scope: str  # entity path prefix; "" = whole namespace
    rights: frozenset[Right]
    expires: float

    def allows(self, entity: str, right: Right, now: float | None = None) -> bool:
        if (now if now is not None else time.time()) >= self.expires:
            return False
        if self.scope and not (entity == self.scope or entity.startswith(self.scope + "/")):
            return False
        return right in self.rights or Right.MANAGE in self.rights


class Authority:
    """Verifies tokens against the namespace policies and each queue's own policies."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._namespace: dict[str, PolicyConfig] = {}
        self._queues: dict[str, dict[str, PolicyConfig]] = {}
        self.reload(config)

    def reload(self, config: EmulatorConfig) -> None:
        self._namespace = {p.name: p for p in config.policies}
        self._queues = {q.name.lower(): {p.name: p for p in q.policies} for q in config.queues}

    def add_queue_policies(self, queue: str, policies: list[PolicyConfig]) -> None:
        self._queues[queue.lower()] = {p.name: p for p in policies}

    def verify(self, token: str, audience: str | None = None, now: float | None = None) -> Grant:
        """Check signature, expiry and (when given) that the token's resource matches the audience."""
        now = time.time() if now is None else now
        if not token.startswith(SAS_PREFIX):
            raise AuthError("only SharedAccessSignature tokens are supported")
        fields = {k: v[0] for k, v in parse_qs(token[len(SAS_PREFIX):], keep_blank_values=True).items()}
        # parse_qs decodes values; the signature covers the resource exactly as it was encoded.
        raw = dict(part.split("=", 1) for part in token[len(SAS_PREFIX):].split("&") if "=" in part)
        missing = [k for k in ("sr", "sig", "se", "skn") if k not in fields]
        if missing:
            raise AuthError(f"SAS token lacks {', '.join(missing)}")
        try:
            expiry = int(fields["se"])
        except ValueError as exc:
            raise AuthError("SAS token expiry (se) is not an integer") from exc
        if expiry <= now:
            raise AuthError("SAS token has expired")
        resource = fields["sr"]
        scope = token_scope(resource)
        policy = self._find_policy(fields["skn"], scope)
        # The signature covers sr as the client encoded it; accept the canonical encoding too.
        candidates = {raw["sr"], quote_plus(unquote_plus(raw["sr"]))}
        if not any(hmac.compare_digest(_sign(sr, expiry, policy.key), fields["sig"]) for sr in candidates):
            raise AuthError(f"SAS signature does not match policy {policy.name!r}")
        if audience is not None:
            target = token_scope(audience)
            if scope and not (target == scope or target.startswith(scope + "/")):
                raise AuthError(f"SAS token for {scope!r} does not cover audience {target!r}")
        return Grant(policy=policy.name, scope=scope, rights=frozenset(policy.rights), expires=float(expiry))

    def _find_policy(self, name: str, scope: str) -> PolicyConfig:
        if scope:
            queue_policies = self._queues.get(scope.split("/")[0], {})
            if name in queue_policies:
                return queue_policies[name]
        if name in self._namespace:
            return self._namespace[name]
        raise AuthError(f"unknown shared access policy {name!r} for {scope or 'the namespace'!r}")
