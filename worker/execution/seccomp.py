"""A small seccomp-bpf deny list for the bwrap sandbox (``bwrap --seccomp FD``).

Returns EPERM for syscalls a submission has no business making and that widen the kernel attack
surface: ptrace and cross-process memory access, module/kexec loading, bpf, perf, userfaultfd,
keyrings, every mount API, namespace changes, io_uring, swap/reboot/acct/syslog, handle-based
opens, and the TIOCSTI/TIOCLINUX ioctls (typing into a terminal). Other architectures' syscall ABIs
(i386 and x32 on x86_64) are refused outright so the list cannot be bypassed through them.
Built by hand as classic BPF (no libseccomp dependency). Tested on x86_64; the aarch64 table is
written from the kernel's generic syscall list and untested here.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_OFF_NR, _OFF_ARCH, _OFF_ARG1 = 0, 4, 24

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_KILL_PROCESS = 0x80000000

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000
TIOCSTI, TIOCLINUX = 0x5412, 0x541C

DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "setns", "unshare", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog", "vhangup",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init",
)

SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "ioctl": 16, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250,
        "add_key": 248, "request_key": 249, "mount": 165, "umount2": 166, "pivot_root": 155,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "setns": 308, "unshare": 272, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163,
        "quotactl": 179, "syslog": 103, "vhangup": 153, "open_by_handle_at": 304,
        "name_to_handle_at": 303, "fanotify_init": 300,
    },
    "aarch64": {
        "ioctl": 29, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
        "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219,
        "add_key": 217, "request_key": 218, "mount": 40, "umount2": 39, "pivot_root": 41,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "setns": 268, "unshare": 97, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89,
        "quotactl": 60, "syslog": 116, "vhangup": 58, "open_by_handle_at": 265,
        "name_to_handle_at": 264, "fanotify_init": 262,
    },
}
_ARCH = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}


def supported(machine: str | None = None) -> bool:
    return (machine or platform.machine()) in SYSCALLS


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def build_filter(machine: str | None = None) -> bytes:
    """The filter program as bytes (sock_filter array), ready to be read by ``bwrap --seccomp``."""
    machine = machine or platform.machine()
    table = SYSCALLS[machine]
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    numbers = [table[name] for name in DENIED]
    prog: list[bytes] = []
    # Other ABIs: kill (a 32-bit syscall table would dodge the numbers below).
    prog.append(_insn(_BPF_LD_W_ABS, 0, 0, _OFF_ARCH))
    prog.append(_insn(_BPF_JEQ_K, 1, 0, _ARCH[machine]))
    prog.append(_insn(_BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS))
    prog.append(_insn(_BPF_LD_W_ABS, 0, 0, _OFF_NR))
    if machine == "x86_64":
        prog.append(_insn(_BPF_JGE_K, 0, 1, X32_SYSCALL_BIT))
        prog.append(_insn(_BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS))
    # Each denied number: "if nr == N return EPERM".
    for nr in numbers:
        prog.append(_insn(_BPF_JEQ_K, 0, 1, nr))
        prog.append(_insn(_BPF_RET_K, 0, 0, deny))
    # ioctl(fd, TIOCSTI | TIOCLINUX, ...): EPERM; other ioctls allowed.
    prog.append(_insn(_BPF_JEQ_K, 0, 5, table["ioctl"]))
    prog.append(_insn(_BPF_LD_W_ABS, 0, 0, _OFF_ARG1))
    prog.append(_insn(_BPF_JEQ_K, 2, 0, TIOCSTI))
    prog.append(_insn(_BPF_JEQ_K, 1, 0, TIOCLINUX))
    prog.append(_insn(_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append(_insn(_BPF_RET_K, 0, 0, deny))
    prog.append(_insn(_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    return b"".join(prog)


def filter_fd(machine: str | None = None) -> int:
    """A readable fd holding the filter (a memfd: nothing on disk), positioned at 0."""
    fd = os.memfd_create("pool-seccomp", 0)
    os.write(fd, build_filter(machine))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
