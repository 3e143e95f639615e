"""The one module that binds libarchive (ctypes, libarchive.so.13): the C signatures of the
few calls pkgsandbox makes, and two readers built on them.

Who uses it: the inspect child (phases/inspect.py: every header, metadata contents) and the
extract worker (alpm.py: the `.INSTALL` of the package being installed, read in-process as
libalpm reads it). Both parse untrusted archives inside their Landlock domains. What it
touches: only the file descriptors and the one path it is given (opened read-only); no
subprocess, no write. libalpm itself links libarchive, so in the extract worker loading it maps
nothing new. The library is loaded once per process, on first use (`library()`).
"""
from __future__ import annotations

import ctypes
import logging
import os
import stat

from .errors import SetupError

log = logging.getLogger(__name__)

# archive.h: status codes
OK, EOF, RETRY, WARN, FAILED, FATAL = 0, 1, -10, -20, -25, -30
STATUS = {EOF: "EOF", RETRY: "RETRY", WARN: "WARN", FAILED: "FAILED", FATAL: "FATAL"}
# archive_entry.h: file types (archive_entry_filetype)
IFMT, IFREG, IFLNK, IFSOCK, IFCHR, IFBLK, IFDIR, IFIFO = (
    0o170000, 0o100000, 0o120000, 0o140000, 0o020000, 0o060000, 0o040000, 0o010000)
# archive.h: format families (archive_format & FORMAT_BASE_MASK)
FORMAT_TAR, FORMAT_MTREE, FORMAT_BASE_MASK = 0x30000, 0x80000, 0xFF0000

#: Bytes handed to libarchive per read(2) of the archive, and per archive_read_data call.
BLOCK = 1 << 16


class Libarchive:
    """The libarchive calls pkgsandbox makes, with their C signatures; each is an attribute
    named without the `archive_` prefix (`read_new`, `entry_pathname`, ...)."""

    def __init__(self):
        problem = ""
        for name in ("libarchive.so.13", "libarchive.so"):
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError as exc:
                problem = problem or str(exc)
        else:
            raise SetupError(f"cannot load libarchive (libarchive.so.13): {problem}")
        vp, i, c, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int64
        for name, res, args in (
                ("archive_read_new", vp, ()),
                ("archive_read_support_filter_all", i, (vp,)),
                ("archive_read_support_format_all", i, (vp,)),
                ("archive_read_open_fd", i, (vp, i, ctypes.c_size_t)),
                ("archive_read_next_header", i, (vp, ctypes.POINTER(vp))),
                ("archive_read_data", ctypes.c_ssize_t, (vp, vp, ctypes.c_size_t)),
                ("archive_read_data_skip", i, (vp,)),
                ("archive_read_free", i, (vp,)),
                ("archive_error_string", c, (vp,)),
                ("archive_format", i, (vp,)),
                ("archive_format_name", c, (vp,)),
                ("archive_filter_count", i, (vp,)),
                ("archive_filter_name", c, (vp, i)),
                ("archive_filter_bytes", i64, (vp, i)),
                ("archive_entry_pathname", c, (vp,)),
                ("archive_entry_symlink", c, (vp,)),
                ("archive_entry_hardlink", c, (vp,)),
                ("archive_entry_filetype", ctypes.c_uint, (vp,)),
                ("archive_entry_mode", ctypes.c_uint, (vp,)),
                ("archive_entry_size", i64, (vp,)),
                ("archive_entry_size_is_set", i, (vp,)),
                ("archive_entry_uid", i64, (vp,)),
                ("archive_entry_gid", i64, (vp,)),
                ("archive_entry_xattr_reset", i, (vp,)),
                ("archive_entry_xattr_next", i, (vp, ctypes.POINTER(c), ctypes.POINTER(vp),
                                                 ctypes.POINTER(ctypes.c_size_t)))):
            fn = getattr(self.lib, name)
            fn.restype = res
            fn.argtypes = list(args)
            setattr(self, name.removeprefix("archive_"), fn)

    def error(self, a, status: int | None = None) -> str:
        """libarchive's message for the last failure on `a`, as it gave it (bytes that are
        not UTF-8 kept as surrogates: callers that show it escape them)."""
        text = self.error_string(a)
        if text:
            return text.decode("utf-8", "surrogateescape")
        return "libarchive failed without a message" + (
            f" (status {STATUS.get(status, status)})" if status is not None else "")

    def open_reader(self, fd: int):
        """A new reader on `fd` with every filter and format enabled, as libalpm opens a
        package (_alpm_open_archive); None, after freeing it, if libarchive refuses the
        stream. The caller frees it with read_free."""
        a = self.read_new()
        if not a:
            raise MemoryError("archive_read_new")
        self.read_support_filter_all(a)
        self.read_support_format_all(a)
        if self.read_open_fd(a, fd, BLOCK) != OK:
            self.read_free(a)
            return None
        return a


_library: Libarchive | None = None


def library() -> Libarchive:
    """libarchive, loaded on first use and then kept for the life of the process."""
    global _library
    if _library is None:
        _library = Libarchive()
    return _library


def read_data(lib: Libarchive, a, buf, limit: int) -> tuple[bytes, bool, str]:
    """At most `limit` bytes of the current entry's data: (data, complete, error). Larger
    data is not kept: (b"", False, "")."""
    chunks, size = [], 0
    while True:
        n = lib.read_data(a, buf, len(buf))
        if n < 0:
            return b"", False, lib.error(a)
        if n == 0:
            return b"".join(chunks), True, ""
        size += n
        if size > limit:
            return b"", False, ""
        chunks.append(buf.raw[:n])


def read_member(path: str, name: bytes, *, limit: int) -> bytes | None:
    """The contents of the first entry named exactly `name` in the archive at `path`, found
    as libalpm finds the one file it unpacks (_alpm_unpack_single, which pacman uses for
    `.INSTALL`): every filter and format libarchive knows; headers read in order, wherever
    the entry is; a header read with a warning or an error, or a failed skip, ends the
    search; the first match ends it.

    None when there is no such entry; when it is not a regular file (a directory, a symlink,
    a hard link: an entry with no contents of its own); when its contents are larger than
    `limit` or cannot be read whole; when the file is not a regular file or not a readable
    archive; and for an mtree file list, which format_all reads as an archive whose entries'
    contents are files of the reading system (contents=/etc/shadow, or a path relative to the
    current directory; libarchive 3.6 opens them only with its checkfs option, older ones
    always): not a file the package contains. Never raises for what the file contains."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        log.debug("%s: %s", path, exc.strerror)
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        lib = library()
        a = lib.open_reader(fd)
        if a is None:
            return None
        try:
            return _find(lib, a, name, limit)
        finally:
            lib.read_free(a)
    finally:
        os.close(fd)


def _find(lib: Libarchive, a, name: bytes, limit: int) -> bytes | None:
    entry = ctypes.c_void_p()
    while lib.read_next_header(a, ctypes.byref(entry)) == OK:
        path = lib.entry_pathname(entry)
        if path is None:
            return None
        if lib.format(a) & FORMAT_BASE_MASK == FORMAT_MTREE:
            return None
        if path != name:
            if lib.read_data_skip(a) != OK:
                return None
            continue
        if (lib.entry_filetype(entry) & IFMT) != IFREG or lib.entry_hardlink(entry) \
                or lib.entry_size(entry) > limit:
            return None
        data, complete, _ = read_data(lib, a, ctypes.create_string_buffer(BLOCK), limit)
        return data if complete else None
    return None
