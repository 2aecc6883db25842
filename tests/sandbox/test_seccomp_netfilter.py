"""The seccomp program and the nftables rules, checked as data (the behaviour is in the attack tests)."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from tests.sandbox.conftest import needs_root
from worker.execution import netfilter, seccomp
from worker.execution.base import Limits
from worker.execution.limits import prlimit_argv, reason_from_signal, rlimits
from worker.protocol import KillReason


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_program_shape(machine):
    prog = seccomp.build_filter(machine)
    insns = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    assert len(insns) < 255  # well inside BPF_MAXINSNS, jump offsets fit in a byte
    assert insns[0] == (0x20, 0, 0, 4)  # load arch
    assert insns[-1] == (0x06, 0, 0, seccomp.SECCOMP_RET_ALLOW)
    denied = {k for code, _, _, k in insns if code == 0x15}
    table = seccomp.SYSCALLS[machine]
    assert {table[name] for name in seccomp.DENIED} <= denied
    assert all(name in table for name in seccomp.DENIED)
    # every "equal" test jumps inside the program
    for pc, (code, jt, jf, _) in enumerate(insns):
        if code in (0x15, 0x35):
            assert pc + 1 + max(jt, jf) < len(insns)


def test_seccomp_unknown_machine():
    assert not seccomp.supported("riscv64")
    with pytest.raises(KeyError):
        seccomp.build_filter("riscv64")


def test_nft_ruleset_blocks_loopback_and_metadata_for_the_sandbox_uid_only():
    text = netfilter.ruleset(65534, ["10.0.0.0/16", "fd00::/8"])
    assert "meta skuid 65534 ip daddr { 127.0.0.0/8, 169.254.0.0/16, 168.63.129.16/32, 10.0.0.0/16 } reject" in text
    assert "meta skuid 65534 ip6 daddr { ::1/128, fe80::/10, fd00::/8 } reject" in text
    assert text.index("127.0.0.53") < text.index("reject")  # the DNS stub stays reachable
    with pytest.raises(ValueError):
        netfilter.ruleset(65534, ["not-a-cidr"])


@needs_root
@pytest.mark.skipif(not netfilter.nft_path(), reason="nftables not installed")
def test_nft_accepts_the_ruleset():
    proc = subprocess.run([netfilter.nft_path(), "-c", "-f", "-"], input=netfilter.ruleset(65534, ["10.0.0.0/8"]),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_rlimits_fall_back_only_without_cgroups():
    lim = Limits(wall_time_s=5, memory_bytes=1000, max_processes=10, cpu_time_s=2.5, file_size_bytes=7, open_files=9)
    with_cg = rlimits(lim, memory_in_cgroup=True, processes_in_cgroup=True)
    assert with_cg == {"core": 0, "cpu": 3, "fsize": 7, "nofile": 9}
    without = rlimits(lim, memory_in_cgroup=False, processes_in_cgroup=False)
    assert without["as"] == 1000 and without["nproc"] == 10
    argv = prlimit_argv(with_cg)
    assert argv[0].endswith("prlimit") and argv[-1] == "--"
    assert "--cpu=3:4" in argv and "--core=0:0" in argv
    if shutil.which("prlimit"):
        out = subprocess.run([*argv, "/bin/sh", "-c", "ulimit -n; ulimit -t"], capture_output=True, text=True,
                             check=True).stdout.split()
        assert out == ["9", "3"]


def test_signal_reasons():
    assert reason_from_signal(25)[0] is KillReason.DISK
    assert reason_from_signal(24)[0] is KillReason.TIME
    assert reason_from_signal(9) == (None, None)
