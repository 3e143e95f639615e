"""Open a grant's path the way the sandboxed program will see it, without being redirected.

A path under a target root ({root}/var/lib/{pkgname}) may be controlled by the packages that
root holds: a package that installs /var/lib/foo as a symlink to /etc would otherwise turn a
grant on {root}/var/lib/foo into a grant on the host's /etc. Such paths are opened with
openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) from the root: a symlink anywhere below the
root makes the grant unusable, and it is skipped and reported, never followed.
"""
from __future__ import annotations

import ctypes
import errno
import os

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class SymlinkInPath(OSError):
    pass


def open_beneath(anchor: str, path: str) -> int:
    """An O_PATH descriptor for `path`, which must lie under `anchor`, reached from `anchor`
    without following any symlink. Raises SymlinkInPath if one is in the way, OSError else."""
    rel = os.path.relpath(path, anchor)
    if rel == ".":
        return os.open(anchor, os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
    if rel.startswith(".."):
        raise OSError(errno.EXDEV, f"{path} is not under {anchor}")
    dirfd = os.open(anchor, os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
    try:
        how = OpenHow(os.O_PATH | os.O_CLOEXEC, 0,
                      RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        fd = _syscall(SYS_OPENAT2, ctypes.c_int(dirfd), rel.encode(), ctypes.byref(how),
                      ctypes.c_size_t(ctypes.sizeof(how)))
        if fd < 0:
            err = ctypes.get_errno()
            if err == errno.ELOOP:
                raise SymlinkInPath(err, f"{path}: a symlink is in the way")
            raise OSError(err, os.strerror(err), path)
        return int(fd)
    finally:
        os.close(dirfd)


def below(path: str, top: str) -> str | None:
    """`path` relative to the directory `top` ("." for `top` itself), or None when it is
    neither `top` nor under it. Lexical: both are normalised absolute paths."""
    t = top.rstrip("/")
    if path.rstrip("/") == t:
        return "."
    return path[len(t) + 1:] if path.startswith(t + "/") else None
