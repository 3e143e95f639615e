"""Copy-on-write directories for root phases (scriptlets, hooks): the phase writes into an
overlay's upper directory; afterwards the parent applies each change to the real directory,
except changes to protected paths, which are refused and reported.

Why: Landlock's create and remove rights are per directory, so "may update /etc/passwd"
(account tools create lock and temp files beside it) means "may create any file in /etc",
/etc/ld.so.preload included. The overlay lets the phase do what it needs while the parent,
unconfined and never running untrusted code, holds the line on the sensitive paths.

The parent walks the upper directory (written by the untrusted phase: names and types are
data) and applies changes beneath the real directory without following any symlink there.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass, field

from .. import enforce, hardening, safepath
from ..errors import PkgsandboxError

OVERLAY_OPAQUE = "trusted.overlay.opaque"


@dataclass
class Overlay:
    target: str
    base: str
    upper: str
    work: str
    #: the overlay, mounted nowhere (fsmount); the phase's child attaches it on `target` in
    #: a private mount namespace
    mount_fd: int = -1

    def cleanup(self) -> None:
        if self.mount_fd >= 0:
            os.close(self.mount_fd)
            self.mount_fd = -1
        try:
            # The usual case, in four calls: the phase changed nothing that is still in the
            # upper directory, and overlayfs left only its empty work/work.
            for d in (os.path.join(self.work, "work"), self.work, self.upper, self.base):
                if os.path.lexists(d):
                    os.rmdir(d)
        except OSError:
            shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class Applied:
    changed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def create(target: str) -> Overlay:
    """The upper and work directories, and the overlay mounted nowhere. `target` must be
    reached without any symlink (a package could otherwise point it at the host's /etc)."""
    if os.path.realpath(target) != os.path.normpath(target):
        raise PkgsandboxError(f"copy-on-write directory {target} is reached through a "
                              f"symlink; refusing to run the phase")
    base = tempfile.mkdtemp(prefix="pkgsandbox-cow-", dir=_scratch())
    ov = Overlay(target=target, base=base, upper=os.path.join(base, "upper"),
                 work=os.path.join(base, "work"))
    try:
        os.chmod(base, 0o700)
        os.mkdir(ov.upper, 0o755)
        os.mkdir(ov.work, 0o700)
        st = os.stat(target)
        os.chown(ov.upper, st.st_uid, st.st_gid)
        os.chmod(ov.upper, stat.S_IMODE(st.st_mode))
        hardening.overlay_options_ok(target, ov.upper, ov.work)
        from .. import _native
        ov.mount_fd = _native.detached_overlay(os.fsencode(target), os.fsencode(ov.upper),
                                               os.fsencode(ov.work))
    except OSError as exc:
        ov.cleanup()
        raise PkgsandboxError(f"copy-on-write overlay on {target}: "
                              f"{exc.strerror or exc}") from None
    except BaseException:
        ov.cleanup()
        raise
    return ov


@functools.lru_cache(maxsize=None)
def _scratch() -> str | None:
    """Where upper and work directories go: /dev/shm when it is a tmpfs (an overlay on disk
    directories costs ~1 ms more to set up, per phase: overlayfs probes its work directory
    with real writes), else the default temporary directory. They hold only what the phase
    changes in its copy-on-write directories (normally a few small files in /etc), for the
    time of the phase."""
    try:
        with open("/proc/self/mounts") as f:
            types = {fields[1]: fields[2] for fields in (line.split() for line in f)
                     if len(fields) > 2}
    except OSError:
        return None
    if types.get("/dev/shm") == "tmpfs" and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return None


def _protected(rel: str, protected: tuple[str, ...]) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in protected)


def apply(ov: Overlay, protected: tuple[str, ...]) -> Applied:
    """Apply the upper directory's changes to ov.target; `protected`: paths relative to the
    target (a directory protects everything below it)."""
    out = Applied()
    for dirpath, dirnames, filenames in os.walk(ov.upper):
        rel_dir = os.path.relpath(dirpath, ov.upper)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in sorted(dirnames + filenames):
            rel = os.path.join(rel_dir, name) if rel_dir else name
            src = os.path.join(dirpath, name)
            st = os.lstat(src)
            if _protected(rel, protected):
                out.refused.append(rel)
                if stat.S_ISDIR(st.st_mode) and name in dirnames:
                    dirnames.remove(name)          # nothing below it is applied either
                continue
            try:
                if _apply_one(ov.target, rel, src, st, opaque=_is_opaque(src)):
                    out.changed.append(rel)
            except OSError as exc:
                out.refused.append(f"{rel} ({exc.strerror or exc})")
                if stat.S_ISDIR(st.st_mode) and name in dirnames:
                    dirnames.remove(name)
    return out


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _parent_fd(target: str, rel: str) -> tuple[int, str]:
    parent = os.path.dirname(rel)
    fd = safepath.open_beneath(target, os.path.join(target, parent) if parent else target)
    # O_PATH descriptors cannot be used as dir_fd for every call: reopen as a directory
    dirfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    os.close(fd)
    return dirfd, os.path.basename(rel)


def _apply_one(target: str, rel: str, src: str, st: os.stat_result, *, opaque: bool) -> bool:
    dirfd, name = _parent_fd(target, rel)
    try:
        mode = st.st_mode
        if stat.S_ISCHR(mode) and st.st_rdev == 0:          # whiteout: deleted
            _remove(dirfd, name)
            return True
        if stat.S_ISDIR(mode):
            try:
                existing = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                _remove(dirfd, name)
                existing = None
            if existing is None:
                os.mkdir(name, 0o700, dir_fd=dirfd)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dirfd, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(mode), dir_fd=dirfd)
            if opaque and existing is not None:
                keep = set(os.listdir(src))
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=dirfd)
                try:
                    for child in os.listdir(sub):
                        if child not in keep:
                            _remove(sub, child)
                finally:
                    os.close(sub)
            return existing is None or opaque
        tmp = f".{name}.pkgsandbox-cow"
        if stat.S_ISLNK(mode):
            _remove(dirfd, tmp)
            os.symlink(os.readlink(src), tmp, dir_fd=dirfd)
            os.chown(tmp, st.st_uid, st.st_gid, dir_fd=dirfd, follow_symlinks=False)
        elif stat.S_ISREG(mode):
            _remove(dirfd, tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dirfd)
            try:
                with open(src, "rb") as f:
                    while chunk := f.read(1 << 20):
                        os.write(fd, chunk)
                os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, stat.S_IMODE(mode))
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
        else:
            return False                   # FIFOs, sockets, devices: never applied
        try:
            existing = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISDIR(existing.st_mode):
                _remove(dirfd, name)
        except FileNotFoundError:
            pass
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        return True
    finally:
        os.close(dirfd)


def _remove(dirfd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=dirfd)
        try:
            for child in os.listdir(sub):
                _remove(sub, child)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)


def run_with(policy, run, *, cap=None, compat=None):
    """Prepare the policy's domain with its copy-on-write directories (as root only) and run
    `run(prepared)` in it, then apply what changed; returns (run's result, refused paths as
    absolute paths). The overlays are detached mounts: enforce.prepare makes the rules under
    each target on the overlay's inodes, and the child (runner.run) attaches them."""
    overlays: list[Overlay] = []
    try:
        if os.geteuid() == 0:
            for t in policy.copy_on_write:
                if os.path.isdir(t):
                    overlays.append(create(t))
        mounts = tuple((o.mount_fd, o.target) for o in overlays)
        with enforce.prepare(policy, cap=cap, compat=compat, mounts=mounts) as prepared:
            result = run(prepared)
        refused: list[str] = []
        for o in overlays:
            protected = tuple(rel for rel in (safepath.below(p, o.target)
                                              for p in policy.protected) if rel is not None)
            done = apply(o, protected)
            refused += [os.path.join(o.target, r) for r in done.refused]
        return result, refused
    finally:
        for o in overlays:
            _LATER.put(o.cleanup)


class _Later:
    """Tearing an overlay down costs the caller time it need not wait for: closing the
    mount's descriptor unmounts it (an RCU grace period, ~0.6 ms) and its directories are
    removed one by one. One background thread does it; drain() (at exit, and at the end of
    each transaction) waits until nothing is left, so no temporary directory outlives the
    command. Only the parent uses it: a forked child never queues anything."""

    def __init__(self):
        self._queue = None                 # made with the thread, on first use
        self._thread = None
        self._lock = threading.Lock()

    def put(self, fn) -> None:
        with self._lock:
            if self._queue is None:
                import queue
                self._queue = queue.Queue()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="pkgsandbox-cow-cleanup",
                                                daemon=True)
                self._thread.start()
                atexit.register(self.drain)
        self._queue.put(fn)

    def _work(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                fn()
            except Exception:  # noqa: BLE001 - cleanup is best effort, like rmtree(ignore_errors)
                pass
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        if self._queue is not None:
            self._queue.join()


_LATER = _Later()
drain = _LATER.drain
