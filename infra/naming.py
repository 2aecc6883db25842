"""Azure resource names derived from a competition name, always within Azure's limits.

Competition names are 3-50 characters (``worker.config.check_competition_name``); several Azure
names are shorter or global: a storage account is 3-24 lowercase letters and digits, unique in all of
Azure; a Service Bus namespace is 6-50 letters, digits and hyphens, unique too. Long names are
truncated and a short hash of the full name (plus an optional salt) keeps them distinct and stable.
"""

from __future__ import annotations

import hashlib
import re

from worker.config import check_competition_name, competition_containers, competition_queues

__all__ = [
    "competition_containers",
    "competition_queues",
    "computer_name_prefix",
    "namespace_name",
    "resource_group_name",
    "short_hash",
    "storage_account_name",
]


def short_hash(competition: str, salt: str = "", length: int = 8) -> str:
    return hashlib.sha256(f"{competition}\0{salt}".encode()).hexdigest()[:length]


def storage_account_name(competition: str, salt: str = "") -> str:
    """``cp`` + up to 14 letters/digits of the name + 8 hex digits: 11-24 chars, lowercase alnum."""
    check_competition_name(competition)
    stem = re.sub(r"[^a-z0-9]", "", competition)[:14]
    return f"cp{stem}{short_hash(competition, salt)}"


def namespace_name(competition: str, salt: str = "") -> str:
    """``cp-`` + up to 38 chars of the name + ``-`` + 8 hex digits: starts with a letter, ends with a
    letter or digit, at most 50 chars (and never ends in -sb / -mgmt, which Azure reserves)."""
    check_competition_name(competition)
    stem = competition[:38].rstrip("-")
    return f"cp-{stem}-{short_hash(competition, salt)}"


def resource_group_name(competition: str) -> str:
    check_competition_name(competition)
    return f"rg-pool-{competition}"  # at most 58 of Azure's 90 characters


def computer_name_prefix(competition: str, os: str) -> str:
    """VM host name prefix: Windows allows 9 characters (15 minus the 6 the scale set appends),
    Linux 58. Letters, digits and hyphens; no leading digit or hyphen, no trailing hyphen."""
    check_competition_name(competition)
    if os == "windows":
        stem = re.sub(r"[^a-z0-9]", "", competition)[:4]
        return f"w{stem}{short_hash(competition, length=4)}"[:9]
    return f"w-{competition[:48].rstrip('-')}"[:58]
