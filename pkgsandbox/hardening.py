"""The layers beside Landlock, for phases that run as root (DESIGN 2, layers 4-6): capability
sets, a private network namespace, and a seccomp filter that refuses new AF_UNIX sockets where
Landlock cannot confine pathname UNIX sockets (ABI < 9).

The only module that makes capability, namespace and seccomp system calls (ctypes). It decides
nothing: enforce.py tells it what to apply, in the child, before landlock_restrict_self.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

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
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPABILITIES.values())


def bounding_set() -> set[int]:
    return {c for c in range(last_cap() + 1) if _prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1}


def limit_capabilities(keep: frozenset[str]) -> None:
    """Drop every capability not in `keep` from the bounding set (so no exec can regain it),
    then from the effective, permitted and inheritable sets; clear the ambient set."""
    keep_numbers = {CAPABILITIES[name] for name in keep}
    for cap in range(last_cap() + 1):
        if cap not in keep_numbers and _prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            if _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise _fail(f"drop capability {cap} from the bounding set")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise _fail("capget")
    low = sum(1 << c for c in keep_numbers if c < 32)
    high = sum(1 << (c - 32) for c in keep_numbers if c >= 32)
    for i, mask in ((0, low), (1, high)):
        data[i].effective &= mask
        data[i].permitted &= mask
        data[i].inheritable &= mask
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise _fail("capset")


def private_network() -> None:
    """A new network namespace: only a loopback interface, down. No TCP, UDP, raw socket or
    abstract UNIX socket reaches the host's."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        raise _fail("unshare(CLONE_NEWNET)")


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


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_supported() -> bool:
    return platform.machine() in _ARCH


def socket_filter(*, unix: bool, datagrams: bool) -> None:
    """Install a seccomp filter on socket(2): with `unix`, AF_UNIX sockets fail with EACCES
    (no pathname or abstract UNIX socket can be reached: systemd, D-Bus, udev); with
    `datagrams`, AF_INET/AF_INET6 datagram sockets fail with EACCES (no UDP at all, whatever
    the Landlock ABI). Every other call is allowed; a foreign architecture's calls are killed.
    Needs no_new_privs first."""
    arch = platform.machine()
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
    code = b"".join(program)
    buf = ctypes.create_string_buffer(code)
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise _fail("seccomp filter")


# --- copy-on-write directories (an overlay in a private mount namespace) --------------------

MS_REC = 0x4000
MS_PRIVATE = 1 << 18
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


def overlay(target: str, upper: str, work: str) -> None:
    """In the child, as root: a private mount namespace, then `target` shadowed by an overlay
    whose writes land in `upper` (the parent reviews and applies them after the phase)."""
    for p in (target, upper, work):
        if any(c in p for c in ",:\\\n"):
            raise OSError(errno.EINVAL, f"unusable path for an overlay: {p!r}")
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise _fail("unshare(CLONE_NEWNS)")
    if _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise _fail("make mounts private")
    options = f"lowerdir={target},upperdir={upper},workdir={work}".encode()
    if _libc.mount(b"overlay", target.encode(), b"overlay", 0, options) != 0:
        raise _fail(f"overlay on {target}")
