"""The layers beside Landlock, for phases that run as root (DESIGN 2, layers 4-6): capability
sets, a private network namespace, and a seccomp filter that refuses new AF_UNIX sockets where
Landlock cannot confine pathname UNIX sockets (ABI < 9).

Pure data for the C side: this module builds the capability mask and the seccomp program;
pkgsandbox/_native.c makes the system calls, in the child, before landlock_restrict_self.
Reading the bounding set (doctor) is the only call made here.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int

#: Linux capability numbers (linux/capability.h), by their names without CAP_.
CAPABILITIES: dict[str, int] = {
    "chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4, "kill": 5,
    "setgid": 6, "setuid": 7, "setpcap": 8, "linux_immutable": 9, "net_bind_service": 10,
    "net_broadcast": 11, "net_admin": 12, "net_raw": 13, "ipc_lock": 14, "ipc_owner": 15,
    "sys_module": 16, "sys_rawio": 17, "sys_chroot": 18, "sys_ptrace": 19, "sys_pacct": 20,
    "sys_admin": 21, "sys_boot": 22, "sys_nice": 23, "sys_resource": 24, "sys_time": 25,
    "sys_tty_config": 26, "mknod": 27, "lease": 28, "audit_write": 29, "audit_control": 30,
    "setfcap": 31, "mac_override": 32, "mac_admin": 33, "syslog": 34, "wake_alarm": 35,
    "block_suspend": 36, "audit_read": 37, "perfmon": 38, "bpf": 39, "checkpoint_restore": 40,
}

PR_CAPBSET_READ = 23


@functools.lru_cache(maxsize=None)
def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPABILITIES.values())


def bounding_set() -> set[int]:
    return {c for c in range(last_cap() + 1) if _prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1}


@functools.lru_cache(maxsize=64)
def capability_mask(keep: frozenset[str]) -> int:
    """The capabilities to keep, as a 64-bit mask (bit N = capability N). The child drops
    every other one from the bounding set (so no exec can regain it), then from the
    effective, permitted and inheritable sets, and clears the ambient set (_native.c)."""
    return sum(1 << CAPABILITIES[name] for name in keep)


# --- seccomp: refuse socket(AF_UNIX, ...) -------------------------------------------------

_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198),
         "riscv64": (0xC00000F3, 198), "ppc64le": (0xC0000015, 326),
         "s390x": (0x80000016, 359)}
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
SOCK_DGRAM = 2
BPF_ALU_AND_K = 0x54
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_KILL_PROCESS = 0x80000000
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_RET_K = 0x06


def seccomp_supported() -> bool:
    return os.uname().machine in _ARCH


@functools.lru_cache(maxsize=8)
def socket_filter_program(*, unix: bool, datagrams: bool) -> bytes:
    """The seccomp program (BPF, as bytes) of a filter on socket(2): with `unix`, AF_UNIX sockets fail with EACCES
    (no pathname or abstract UNIX socket can be reached: systemd, D-Bus, udev); with
    `datagrams`, AF_INET/AF_INET6 datagram sockets fail with EACCES (no UDP at all, whatever
    the Landlock ABI). Every other call is allowed; a foreign architecture's calls are killed.
    Installed by the child after no_new_privs (_native.c)."""
    arch = os.uname().machine
    if arch not in _ARCH:
        raise OSError(errno.ENOTSUP, f"seccomp filter not available on {arch}")
    audit_arch, nr_socket = _ARCH[arch]
    big_endian = arch == "s390x"
    arg0 = 20 if big_endian else 16              # low word of args[0]: the domain
    arg1 = 28 if big_endian else 24              # low word of args[1]: the type

    def stmt(code, k):
        return struct.pack("=HBBI", code, 0, 0, k)

    def jump(code, k, jt, jf):
        return struct.pack("=HBBI", code, jt, jf, k)

    deny = stmt(BPF_RET_K, SECCOMP_RET_ERRNO | errno.EACCES)
    allow = stmt(BPF_RET_K, SECCOMP_RET_ALLOW)
    program = [
        stmt(BPF_LD_W_ABS, 4),                                  # arch
        jump(BPF_JEQ_K, audit_arch, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, 0),                                  # nr
        jump(BPF_JGE_K, 0x40000000, 0, 1),                      # x32 numbering: refuse
        deny,
        jump(BPF_JEQ_K, nr_socket, 1, 0),                       # socket()?
        allow,
        stmt(BPF_LD_W_ABS, arg0),                               # A = domain
    ]
    if unix:
        program += [jump(BPF_JEQ_K, AF_UNIX, 0, 1), deny]
    if datagrams:
        program += [
            jump(BPF_JEQ_K, AF_INET, 1, 0),
            jump(BPF_JEQ_K, AF_INET6, 0, 4),
            stmt(BPF_LD_W_ABS, arg1),                           # A = type
            stmt(BPF_ALU_AND_K, 0xF),                           # without NONBLOCK/CLOEXEC
            jump(BPF_JEQ_K, SOCK_DGRAM, 0, 1),
            deny,
        ]
    program.append(allow)
    return b"".join(program)


# --- copy-on-write directories (an overlay in a private mount namespace) --------------------

def overlay_options_ok(*paths: str) -> None:
    """Overlayfs splits its options on these characters: refuse paths that contain them."""
    for p in paths:
        if any(c in p for c in ",:\\\n"):
            raise OSError(errno.EINVAL, f"unusable path for an overlay: {p!r}")
