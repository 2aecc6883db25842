"""Outbound-only network for sandboxes that opt in, without reaching the host's own services.

A task with network shares the host's network namespace (bubblewrap has no NAT of its own), so
without more it could reach everything on loopback (the agent, a local emulator/Azurite) and the
Azure metadata endpoints (IMDS hands out the VM's managed-identity tokens). Its processes run as a
dedicated host uid, so one nftables table rejects, for that uid only: loopback (except DNS to a
local stub resolver such as systemd-resolved's 127.0.0.53), link-local (IMDS 169.254.169.254),
Azure's WireServer 168.63.129.16, and any extra CIDRs the operator lists (e.g. the VNet).
Not covered (documented): abstract unix sockets of the host namespace, binding listening ports.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess

from worker.errors import PoolError

TABLE = "pool_sandbox"
BLOCKED_V4 = ["127.0.0.0/8", "169.254.0.0/16", "168.63.129.16/32"]
BLOCKED_V6 = ["::1/128", "fe80::/10"]


class NetfilterError(PoolError, RuntimeError):
    pass


def ruleset(uid: int, extra_blocked: list[str] = ()) -> str:  # type: ignore[assignment]
    v4 = list(BLOCKED_V4)
    v6 = list(BLOCKED_V6)
    for cidr in extra_blocked:
        net = ipaddress.ip_network(cidr, strict=False)  # ValueError on bad input: caught by the caller
        (v4 if net.version == 4 else v6).append(str(net))
    return "\n".join([
        f"table inet {TABLE} {{}}",  # create-then-delete keeps the whole replacement atomic
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        f"    meta skuid {uid} ip daddr 127.0.0.53 meta l4proto {{ tcp, udp }} th dport 53 accept",
        f"    meta skuid {uid} ip daddr {{ {', '.join(v4)} }} reject",
        f"    meta skuid {uid} ip6 daddr {{ {', '.join(v6)} }} reject",
        "  }",
        "}",
        "",
    ])


def nft_path() -> str | None:
    for candidate in (shutil.which("nft"), "/usr/sbin/nft"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def install(uid: int, extra_blocked: list[str] = ()) -> None:  # type: ignore[assignment]
    nft = nft_path()
    if nft is None:
        raise NetfilterError("nft not found (apt-get install nftables)")
    proc = subprocess.run([nft, "-f", "-"], input=ruleset(uid, extra_blocked), check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetfilterError(f"nft refused the sandbox rules: {proc.stderr.strip()}")


def installed_for(uid: int) -> bool:
    nft = nft_path()
    if nft is None:
        return False
    proc = subprocess.run([nft, "list", "table", "inet", TABLE], check=False, capture_output=True, text=True)
    return proc.returncode == 0 and f"skuid {uid}" in proc.stdout


def remove() -> None:
    nft = nft_path()
    if nft is not None:
        subprocess.run([nft, "delete", "table", "inet", TABLE], check=False, capture_output=True)
