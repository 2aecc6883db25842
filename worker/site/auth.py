"""Bearer tokens with a scope (read / admin), compared in constant time, never logged. The dashboard
carries the same token in an HTTP-only, SameSite=Strict cookie set by its login form."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from worker.site.config import Scope, TokenConfig

COOKIE = "pool_token"


@dataclass(frozen=True)
class Principal:
    name: str
    scope: Scope

    @property
    def admin(self) -> bool:
        return self.scope is Scope.ADMIN


class TokenTable:
    def __init__(self, tokens: list[TokenConfig]) -> None:
        self._tokens = [(t.token.encode(), Principal(t.name, t.scope)) for t in tokens if t.token]

    def check(self, presented: str | None) -> Principal | None:
        """The principal of a presented token, or None. Every configured token is compared (no early
        exit), each with hmac.compare_digest, so timing says nothing about which one nearly matched."""
        if not presented:
            return None
        candidate = presented.encode()
        found = None
        for token, principal in self._tokens:
            if hmac.compare_digest(token, candidate) and found is None:
                found = principal
        return found


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
