"""The Landlock system calls (444, 445, 446) and prctl(PR_SET_NO_NEW_PRIVS), through ctypes.

The only module that makes these calls. It knows struct layouts and errno values, nothing of
profiles or policies: callers hand it bitmasks computed by abi.py.
"""
from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from . import abi

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int

# Landlock's syscall numbers are the same on every architecture (unified table) except alpha.
SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


assert ctypes.sizeof(PathBeneathAttr) == 12 and ctypes.sizeof(NetPortAttr) == 16


class LandlockError(OSError):
    pass


def _fail(what: str) -> LandlockError:
    err = ctypes.get_errno()
    return LandlockError(err, f"{what}: {os.strerror(err)}")


@dataclass(frozen=True, kw_only=True)
class KernelSupport:
    """What the running kernel offers. abi 0 with `state` saying why."""
    abi: int
    errata: int
    state: str          # "enabled" | "not built (ENOSYS)" | "disabled at boot (EOPNOTSUPP)" | ...
    kernel: str


_probe_cache: KernelSupport | None = None


def probe() -> KernelSupport:
    """Ask the kernel for its Landlock ABI and errata (cached: the answer cannot change)."""
    global _probe_cache
    if _probe_cache is not None:
        return _probe_cache
    kernel = os.uname().release
    version = _syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                       ctypes.c_uint32(abi.CREATE_RULESET_VERSION))
    if version < 0:
        err = ctypes.get_errno()
        state = {errno.ENOSYS: "not built (ENOSYS)",
                 errno.EOPNOTSUPP: "disabled at boot (EOPNOTSUPP)"}.get(
            err, f"unavailable ({errno.errorcode.get(err, err)})")
        _probe_cache = KernelSupport(abi=0, errata=0, state=state, kernel=kernel)
        return _probe_cache
    errata = _syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                      ctypes.c_uint32(abi.CREATE_RULESET_ERRATA))
    if errata < 0:
        errata = 0  # kernels before the errata interface: no erratum is known fixed
    _probe_cache = KernelSupport(abi=int(version), errata=int(errata), state="enabled",
                                 kernel=kernel)
    return _probe_cache


def create_ruleset(*, fs: int, net: int, scoped: int, size: int) -> int:
    attr = RulesetAttr(fs, net, scoped)
    fd = _syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                  ctypes.c_uint32(0))
    if fd < 0:
        raise _fail("landlock_create_ruleset")
    return int(fd)


def add_path_rule(ruleset_fd: int, parent_fd: int, allowed: int) -> None:
    attr = PathBeneathAttr(allowed, parent_fd)
    if _syscall(SYS_ADD_RULE, ctypes.c_int(ruleset_fd), ctypes.c_int(abi.RULE_PATH_BENEATH),
                ctypes.byref(attr), ctypes.c_uint32(0)) < 0:
        raise _fail("landlock_add_rule(path)")


def add_port_rule(ruleset_fd: int, port: int, allowed: int) -> None:
    attr = NetPortAttr(allowed, port)
    if _syscall(SYS_ADD_RULE, ctypes.c_int(ruleset_fd), ctypes.c_int(abi.RULE_NET_PORT),
                ctypes.byref(attr), ctypes.c_uint32(0)) < 0:
        raise _fail("landlock_add_rule(port)")


def set_no_new_privs() -> None:
    if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")


def no_new_privs() -> bool:
    return _prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1


def restrict_self(ruleset_fd: int, flags: int) -> None:
    """Enter the domain. PR_SET_NO_NEW_PRIVS is always set first (never after: see DESIGN 2)."""
    set_no_new_privs()
    if _syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(flags)) < 0:
        raise _fail("landlock_restrict_self")
