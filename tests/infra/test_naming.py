"""Derived Azure names stay within Azure's limits for every valid competition name."""

from __future__ import annotations

import random
import re

import pytest

from infra.naming import computer_name_prefix, namespace_name, resource_group_name, storage_account_name
from worker.config import COMPETITION_NAME_RE, ConfigError
from worker.stackconfig import NAMESPACE_RE, RESOURCE_GROUP_RE, STORAGE_ACCOUNT_RE


def _random_names(count: int = 400) -> list[str]:
    rng = random.Random(5)
    names = ["abc", "a" * 50, "a-" * 24 + "bc", "x" * 37 + "-y" + "z" * 11, "9" * 50, "abc-def-" * 6 + "gh"]
    while len(names) < count:
        size = rng.randint(3, 50)
        chars = [rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-") for _ in range(size)]
        name = re.sub("-{2,}", "-", "".join(chars)).strip("-")
        if COMPETITION_NAME_RE.match(name):
            names.append(name)
    return names


NAMES = _random_names()


def test_storage_account_names_fit():
    for name in NAMES:
        account = storage_account_name(name)
        assert STORAGE_ACCOUNT_RE.match(account), account
        assert 3 <= len(account) <= 24


def test_namespace_names_fit():
    for name in NAMES:
        ns = namespace_name(name)
        assert NAMESPACE_RE.match(ns) and 6 <= len(ns) <= 50, ns
        assert not ns.endswith(("-sb", "-mgmt")) and "--" not in ns[:-9], ns


def test_vm_and_group_names_fit():
    for name in NAMES:
        assert RESOURCE_GROUP_RE.match(resource_group_name(name))
        win = computer_name_prefix(name, "windows")
        lin = computer_name_prefix(name, "linux")
        assert re.fullmatch(r"[a-z][a-z0-9]{0,8}", win), win
        assert re.fullmatch(r"[a-z][a-z0-9-]{0,56}[a-z0-9]", lin) and len(lin) <= 58, lin
        assert len(f"vmss-{win}") <= 15  # Windows scale set names are short too


def test_long_names_sharing_a_prefix_stay_distinct_and_stable():
    a, b = "x" * 45 + "-aaaa", "x" * 45 + "-bbbb"
    assert storage_account_name(a) != storage_account_name(b)
    assert namespace_name(a) != namespace_name(b)
    assert computer_name_prefix(a, "windows") != computer_name_prefix(b, "windows")
    assert storage_account_name(a) == storage_account_name(a)


def test_salt_changes_global_names():
    assert storage_account_name("demo", "x") != storage_account_name("demo")
    assert namespace_name("demo", "x") != namespace_name("demo")


@pytest.mark.parametrize("fn", [storage_account_name, namespace_name, resource_group_name])
def test_invalid_competition_names_are_refused(fn):
    with pytest.raises(ConfigError):
        fn("Not Valid")
