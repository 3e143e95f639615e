"""The only module that starts sandboxed processes.

run() starts a program through pkgsandbox._native.spawn (vfork; in the child, system calls
only): new session (so a timeout kills the whole process group), private network namespace,
copy-on-write overlays, optional chroot and working directory, optional switch to an
unprivileged user (groups, gid, uid, in that order, then verified), capabilities,
no_new_privs, the seccomp filter, the Landlock domain; then exec with an allow-listed
environment and no inherited descriptors beyond stdio and those passed on purpose. call() and
worker() fork this process and apply the same layers, by the same C code (_native.apply), to
run a Python function, whose result comes back as JSON.
"""
from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import pwd
import select
import selectors
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass

from . import enforce
from .errors import (EXIT_SETUP, ExecError, NotFound, PkgsandboxError, SetupError,
                     TimeoutExpired)
from . import errors as _errors_mod
from .policy import EnforcementReport

log = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, kw_only=True)
class User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> "User":
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SetupError(f"user {name!r} does not exist") from None
        groups = tuple(sorted(set(os.getgrouplist(name, entry.pw_gid))))
        return cls(name=name, uid=entry.pw_uid, gid=entry.pw_gid, groups=groups)


@dataclass(frozen=True, kw_only=True)
class Result:
    returncode: int
    stdout: bytes | None
    stderr: bytes | None
    report: EnforcementReport
    duration: float

    @property
    def exit_status(self) -> int:
        """Shell convention: 128+N for a signal."""
        return 128 - self.returncode if self.returncode < 0 else self.returncode


def _native_module():
    try:
        from . import _native
    except ImportError as exc:  # an installation without the compiled part
        raise SetupError(f"pkgsandbox's native part is missing ({exc}); reinstall pkgsandbox "
                         f"(pip install . builds pkgsandbox/_native.c)") from None
    return _native


class _NetnsPool:
    """Fresh network namespaces made ahead of time by a thread of their own: creating one
    costs ~0.4 ms of kernel work that the child would otherwise do while the parent waits.
    Each namespace is used by exactly one program, as with unshare in the child; when none is
    ready, the child creates its own. Started on first use; only the parent uses it."""

    def __init__(self):
        self._ready = None
        self._asked = 0
        self._lock = threading.Lock()

    def take(self) -> int:
        """A descriptor of an unused namespace (the caller closes it), or -1. The thread
        starts at the second request: a command that sandboxes one program (`pkgsandbox
        run`) makes no namespace it will not use."""
        with self._lock:
            if self._ready is None:
                self._asked += 1
                if self._asked < 2:
                    return -1
                import queue
                self._ready = queue.Queue(maxsize=1)
                threading.Thread(target=self._fill, name="pkgsandbox-netns",
                                 daemon=True).start()
                return -1
        try:
            return self._ready.get_nowait()
        except Exception:  # queue.Empty: none made yet
            return -1

    def _fill(self) -> None:
        native = _native_module()
        while True:
            try:
                fd = native.new_netns()
            except (OSError, RuntimeError):
                return                     # the child's own unshare remains
            self._ready.put(fd)


_netns = _NetnsPool()


def _user_arg(user: User | None):
    return None if user is None else (user.uid, user.gid, tuple(user.groups))


def _enter_in_child(prepared: enforce.Prepared, errfd: int, *, chroot: str | None,
                    cwd: str | None, user: User | None, keep: set[int],
                    env: dict[str, str] | None) -> None:
    """In a forked call/worker child: a new session, every layer by the same C code a spawned
    program gets (a failure is written to `errfd`, then raised), then only the descriptors in
    `keep` and the allow-listed environment remain."""
    os.setsid()
    try:
        _native_module().apply(chroot=_b(chroot), cwd=_b(cwd), user=_user_arg(user),
                               **prepared.layers())
    except (OSError, PkgsandboxError) as exc:
        os.write(errfd, str(exc).encode()[:4000])
        raise
    _close_inherited(keep)
    _only_environment(env)


def _error_payload(exc: BaseException) -> dict:
    """What a sandboxed function's exception becomes for the parent (raise_remote)."""
    if isinstance(exc, PkgsandboxError):
        return {"error": type(exc).__name__, "message": exc.message}
    return {"error": "SetupError", "message": f"{type(exc).__name__}: {exc}"}


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _executables(argv0: str, env: dict[str, str]) -> list[bytes]:
    """Where exec looks for argv[0]: as given when it has a slash, else along env's PATH
    (resolved in the child, after its chroot)."""
    if "/" in argv0:
        return [os.fsencode(argv0)]
    return [os.fsencode(os.path.join(d, argv0)) for d in os.get_exec_path(env)]


def _environment(env: dict[str, str]) -> list[bytes]:
    out = []
    for k, v in env.items():
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise ExecError(f"unusable environment variable {k!r}")
        out.append(os.fsencode(k) + b"=" + os.fsencode(v))
    return out


def run(argv: list[str], prepared: enforce.Prepared, *, env: dict[str, str],
        cwd: str | None = None, chroot: str | None = None, user: User | None = None,
        umask: int | None = None, timeout: float | None = None, capture: bool = False,
        stdin=None, input: bytes | None = None, pass_fds: tuple[int, ...] = (),
        merge_stderr: bool = False) -> Result:
    """Run argv (no shell, no PATH lookup beyond the given env's PATH) in the prepared domain.

    The child is started with vfork and enters every layer through pkgsandbox._native before
    exec, so no Python runs in it and the cost does not grow with this process's size.
    stdin: None (inherited), subprocess.DEVNULL, a descriptor or a file; `input` feeds a pipe.
    """
    if not argv:
        raise ExecError("no command given")
    if any("\0" in a for a in argv):
        raise ExecError("a command argument contains a NUL byte")
    native = _native_module()
    start = time.monotonic()
    executables = _executables(argv[0], env)
    if not executables:
        raise NotFound(f"{argv[0]}: command not found")
    envp = _environment(env)
    child_ends: list[int] = []
    mine: list[int] = []
    stdio = [-1, -1, -1]
    feed = out_r = err_r = None
    try:
        if input is not None:
            r, feed = os.pipe2(os.O_CLOEXEC)
            child_ends.append(r)
            mine.append(feed)
            stdio[0] = r
        elif stdin == subprocess.DEVNULL:
            stdio[0] = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            child_ends.append(stdio[0])
        elif isinstance(stdin, int) and stdin >= 0:
            stdio[0] = stdin
        elif stdin is not None:
            stdio[0] = stdin.fileno()
        if capture:
            out_r, w = os.pipe2(os.O_CLOEXEC)
            mine.append(out_r)
            child_ends.append(w)
            stdio[1] = w
            if merge_stderr:
                stdio[2] = w
            else:
                err_r, w2 = os.pipe2(os.O_CLOEXEC)
                mine.append(err_r)
                child_ends.append(w2)
                stdio[2] = w2
        errr, errw = os.pipe2(os.O_CLOEXEC)
        child_ends.append(errw)
        mine.append(errr)
        layers = prepared.layers()
        if layers["netns"] and os.geteuid() == 0:
            netns_fd = _netns.take()
            if netns_fd >= 0:
                child_ends.append(netns_fd)
                layers = {**layers, "netns_fd": netns_fd}
        reaper = Reaper()      # orphans of the program come back here, to be killed
        try:
            pid = native.spawn(
                executables, [os.fsencode(a) for a in argv], envp,
                stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
                keep_fds=sorted({fd for fd in pass_fds if fd > 2}), errpipe=errw,
                setsid=True,
                mounts=tuple((fd, os.fsencode(t)) for fd, t in prepared.mounts) or None,
                chroot=_b(chroot), cwd=_b(cwd), umask=-1 if umask is None else umask,
                user=_user_arg(user), **layers)
            for fd in child_ends:
                os.close(fd)
            child_ends = []
            failure = os.read(errr, 64)
            mine.remove(errr)
            os.close(errr)
            if failure:
                os.waitpid(pid, 0)
                raise _spawn_error(argv[0], failure, native.STEPS)
            if feed is not None:
                mine.remove(feed)             # _communicate closes it
            try:
                out, err, status = _communicate(pid, feed, input, out_r, err_r, timeout,
                                                reaper)
            except _Timeout:
                raise TimeoutExpired(f"{argv[0]}: timed out after {timeout:g} s; process "
                                     f"group killed", report=prepared.report.as_dict()) \
                    from None
        finally:
            reaper.close()
    finally:
        for fd in child_ends + mine:
            try:
                os.close(fd)
            except OSError:
                pass
    report = prepared.report
    if user is not None or chroot:
        from dataclasses import replace
        report = replace(report, user=user.name if user else "", chroot=chroot or "")
    return Result(returncode=status, stdout=out, stderr=err, report=report,
                  duration=time.monotonic() - start)


def _spawn_error(argv0: str, data: bytes, steps: tuple[str, ...]) -> PkgsandboxError:
    if len(data) < 8:
        return SetupError("sandbox setup failed: the child ended without a report")
    step, err = struct.unpack("=ii", data[:8])
    name = steps[step] if 0 <= step < len(steps) else f"step {step}"
    if name == "exec":
        if err in (errno.ENOENT, errno.ENOTDIR):
            return NotFound(f"{argv0}: command not found")
        if err == errno.EACCES:
            return ExecError(f"{argv0}: permission denied")
        return ExecError(f"{argv0}: {os.strerror(err)}")
    return SetupError(f"sandbox setup failed: {name}: {os.strerror(err)}")


class _Timeout(Exception):
    pass


def _communicate(pid: int, feed: int | None, data: bytes | None, out_r: int | None,
                 err_r: int | None, timeout: float | None, reaper: "Reaper"):
    """Write `data` to the child's stdin, read its output, reap it: (stdout, stderr,
    returncode), returncode negative for a signal like subprocess's.

    The phase ends with its program: when the program exits (seen through a pidfd, while it
    is still an unreaped zombie, so its pid cannot name anything else), what it left running
    is killed: its process group, then every orphan re-parented to this process (`reaper`:
    a child subreaper), even one that left the group with setsid; the output is then read to
    its end. On timeout, or if anything interrupts this (KeyboardInterrupt), the same
    happens before the exception goes on."""
    deadline = None if timeout is None else time.monotonic() + timeout
    chunks: dict[int, list[bytes]] = {fd: [] for fd in (out_r, err_r) if fd is not None}
    status = None
    pidfd = os.pidfd_open(pid)
    try:
        with selectors.DefaultSelector() as sel:
            view = memoryview(data or b"")
            if feed is not None:
                if view:
                    os.set_blocking(feed, False)
                    sel.register(feed, selectors.EVENT_WRITE)
                else:
                    os.close(feed)
                    feed = None
            for fd in chunks:
                sel.register(fd, selectors.EVENT_READ)
            sel.register(pidfd, selectors.EVENT_READ)
            while pidfd in sel.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise _Timeout
                for key, _ in sel.select(left):
                    if key.fd == pidfd:
                        sel.unregister(pidfd)          # exited: the loop ends after this
                    elif key.fd == feed:
                        try:
                            view = view[os.write(feed, view[:1 << 16]):]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            view = view[:0]
                        if not view:
                            sel.unregister(feed)
                            os.close(feed)
                            feed = None
                    else:
                        chunk = os.read(key.fd, 1 << 16)
                        if chunk:
                            chunks[key.fd].append(chunk)
                        else:
                            sel.unregister(key.fd)
        status = _end_phase(pid, reaper)
        _drain(chunks, 1.0)
    finally:
        os.close(pidfd)
        if feed is not None:
            os.close(feed)
        if status is None:
            try:
                _end_phase(pid, reaper)
            except ChildProcessError:       # already reaped when the interruption came
                reaper.sweep()
            _drain(chunks, 1.0)
    out = b"".join(chunks[out_r]) if out_r is not None else None
    err = b"".join(chunks[err_r]) if err_r is not None else None
    return out, err, os.waitstatus_to_exitcode(status)


def _end_phase(pid: int, reaper: "Reaper") -> int:
    """Kill what the program `pid` left and reap it all; the program's wait status.
    The group is killed while `pid` is not yet reaped (so the group id is still its own);
    reaping it re-parents its children here (`reaper`), and the sweep kills and reaps those
    and, in turn, theirs, even the ones that left the group with setsid."""
    _kill_group(pid)
    _, status = os.waitpid(pid, 0)
    reaper.sweep()
    return status


def _drain(chunks: dict[int, list[bytes]], limit: float) -> None:
    """After the group was killed: read what is left, but do not wait for a descendant that
    left the group (setsid) and still holds the pipes."""
    deadline = time.monotonic() + limit
    open_fds = list(chunks)
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select(open_fds, [], [], left)
        if not ready:
            return
        for fd in ready:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                chunk = b""
            if chunk:
                chunks[fd].append(chunk)
            else:
                open_fds.remove(fd)


def _close_inherited(keep: set[int]) -> None:
    """In a forked child: close every descriptor but stdio and `keep`, so a function run in
    the domain cannot use what the parent had open (a descriptor opened before the domain is
    not restricted by Landlock)."""
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass(frozen=True, kw_only=True)
class CallResult:
    value: object
    report: EnforcementReport


def _only_environment(env: dict[str, str] | None) -> None:
    """In a forked child: the process environment becomes `env` (default: PATH and the
    locale only), so no secret of the orchestrator's environment reaches the domain."""
    if env is None:
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "LANG", "TZ") or k.startswith("LC_")}
    os.environ.clear()
    os.environ.update(env)


def call(fn, *args, prepared: enforce.Prepared, timeout: float | None = None,
         user: User | None = None, chroot: str | None = None, cwd: str | None = None,
         max_result: int = 16 << 20, env: dict[str, str] | None = None,
         **kwargs) -> CallResult:
    """Run fn(*args, **kwargs) in a forked child inside the domain; return its value.

    The value must be JSON-serialisable: the parent never unpickles what a sandboxed child
    wrote (that would hand the child code execution outside its domain). A PkgsandboxError
    raised by fn comes back as the same class with its message; anything else as SetupError.
    """
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    reaper = Reaper()
    pid = os.fork()
    if pid == 0:  # child: never returns into the caller's code
        status = 0
        try:
            os.close(rfd)
            _enter_in_child(prepared, wfd, chroot=chroot, cwd=cwd, user=user, keep={wfd},
                            env=env)
            try:
                payload = {"ok": fn(*args, **kwargs)}
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                payload = _error_payload(exc)
            view = memoryview(b"\0" + json.dumps(payload).encode())
            while view:
                n = os.write(wfd, view)
                view = view[n:]
        except BaseException:  # noqa: BLE001
            status = EXIT_SETUP
        finally:
            os._exit(status)
    os.close(wfd)
    chunks, size = [], 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([rfd], [], [], left)
            if not ready:
                _kill_group(pid)
                raise TimeoutExpired(f"{getattr(fn, '__name__', 'function')}: timed out after "
                                     f"{timeout:g} s; process group killed")
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_result:
                _kill_group(pid)
                raise SetupError(f"sandboxed call returned more than {max_result} bytes")
            chunks.append(chunk)
    finally:
        os.close(rfd)
        # Nothing the child started may outlive it (a writer left behind could change a
        # file after the parent checked it): its group, then every orphan it left.
        _kill_group(pid)
        try:
            _, wait_status = os.waitpid(pid, 0)
            status = os.waitstatus_to_exitcode(wait_status)
        except ChildProcessError:
            status = None
        reaper.sweep()
        reaper.close()
    data = b"".join(chunks)
    if not data.startswith(b"\0"):
        text = data.decode(errors="replace")[:400]
        raise SetupError(f"sandbox setup failed: {text or f'wait status {status}'}")
    try:
        payload = json.loads(data[1:])
    except ValueError:
        raise SetupError("sandboxed call returned an unreadable result") from None
    if "error" in payload:
        raise_remote(payload)
    return CallResult(value=payload["ok"], report=prepared.report)


_ERRORS = {name: obj for name, obj in vars(_errors_mod).items()
           if isinstance(obj, type) and issubclass(obj, PkgsandboxError)}


PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


class Reaper:
    """While active, this process is a child subreaper (prctl PR_SET_CHILD_SUBREAPER): every
    orphan below it, even one that left its session with setsid(), is re-parented here, so
    sweep() can find and kill whatever the download child left behind. Only processes that
    were not already this process's children are touched; the flag is restored after."""

    def __init__(self):
        self._libc = _libc
        was = ctypes.c_int(0)
        self._libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
        self._was = was.value
        self.active = self._was != 0 or \
            self._libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        self._before = _children()

    def sweep(self) -> int:
        """Kill and reap every new child until none is left; how many there were."""
        killed = 0
        if not self.active:
            return 0
        for _ in range(1000):
            kids = _children() - self._before
            if not kids:
                break
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in kids:
                try:
                    os.waitpid(pid, 0)
                    killed += 1
                except ChildProcessError:
                    pass
        return killed

    def close(self) -> None:
        if self.active and not self._was:
            self._libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _children() -> set[int]:
    """This process's direct children (alive or zombie)."""
    me = os.getpid()
    out: set[int] = set()
    try:
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children") as f:
                out.update(int(x) for x in f.read().split())
        return out
    except OSError:
        pass
    for entry in os.listdir("/proc"):       # kernels without CONFIG_PROC_CHILDREN
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if len(fields) > 1 and fields[1] == str(me):
                out.add(int(entry))
    return out




class Channel:
    """JSON lines over a socket: one side in the parent, the other in a sandboxed child.

    What arrives from a child is data, never code: each message is one JSON object of at most
    `limit` bytes; anything else ends the conversation.
    """

    def __init__(self, sock, limit: int = 16 << 20):
        self.sock = sock
        self.limit = limit
        self._buf = b""

    def send(self, obj: dict) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self, timeout: float | None = None) -> dict | None:
        """The next message, or None at end of stream."""
        while b"\n" not in self._buf:
            if len(self._buf) > self.limit:
                raise SetupError("sandboxed worker sent an oversized message")
            self.sock.settimeout(timeout)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                raise TimeoutExpired(f"sandboxed worker silent for {timeout:g} s") from None
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            obj = json.loads(line)
        except ValueError:
            raise SetupError("sandboxed worker sent an unreadable message") from None
        if not isinstance(obj, dict):
            raise SetupError("sandboxed worker sent an unreadable message")
        return obj

    def close(self) -> None:
        self.sock.close()


class Worker:
    """A forked child in its own domain, talking to the parent over a Channel."""

    def __init__(self, pid: int, channel: Channel, report: EnforcementReport,
                 reaper: "Reaper | None" = None):
        self.pid = pid
        self.channel = channel
        self.report = report
        self.status: int | None = None
        self.reaper = reaper

    def wait(self, timeout: float | None = None) -> int:
        """Reap the child; kill its process group if it outlives the timeout."""
        if self.status is not None:
            return self.status
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            if deadline is not None and time.monotonic() > deadline:
                _kill_group(self.pid)
            time.sleep(0.005)

    def kill(self) -> None:
        _kill_group(self.pid)
        self.wait()

    def close(self) -> None:
        """End the conversation; nothing the worker started outlives it."""
        self.channel.close()
        if self.status is None:
            self.wait(timeout=5)
        _kill_group(self.pid)
        if self.reaper is not None:
            self.reaper.sweep()
            self.reaper.close()
            self.reaper = None


def worker(fn, *args, prepared: enforce.Prepared, user: User | None = None,
           chroot: str | None = None, cwd: str | None = None,
           limit: int = 16 << 20, env: dict[str, str] | None = None) -> Worker:
    """Fork a child that enters the domain and runs fn(channel, *args). fn's return value
    (JSON-serialisable) is sent as {"type": "__result__", "value": ...}; an exception as
    {"type": "__error__", "error": class name, "message": ...}. The child exits after."""
    import socket as _socket
    parent_sock, child_sock = _socket.socketpair()
    errr, errw = os.pipe2(os.O_CLOEXEC)
    reaper = Reaper()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            parent_sock.close()
            os.close(errr)
            # errw is not kept: closing it tells the parent the setup succeeded
            _enter_in_child(prepared, errw, chroot=chroot, cwd=cwd, user=user,
                            keep={child_sock.fileno()}, env=env)
            chan = Channel(child_sock)
            try:
                chan.send({"type": "__result__", "value": fn(chan, *args)})
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                chan.send({"type": "__error__", **_error_payload(exc)})
                status = 1
        except BaseException:  # noqa: BLE001
            status = EXIT_SETUP
        finally:
            os._exit(status)
    child_sock.close()
    os.close(errw)
    setup_error = b""
    try:
        while True:
            chunk = os.read(errr, 4096)
            if not chunk:
                break
            setup_error += chunk
    finally:
        os.close(errr)
    if setup_error:
        os.waitpid(pid, 0)
        parent_sock.close()
        reaper.sweep()
        reaper.close()
        raise SetupError(f"sandbox setup failed: {setup_error.decode(errors='replace')}")
    return Worker(pid, Channel(parent_sock, limit=limit), prepared.report, reaper)


def raise_remote(message: dict) -> None:
    """Turn an __error__ message from a worker into the matching exception."""
    cls = _ERRORS.get(str(message.get("error")), SetupError)
    text = str(message.get("message", ""))
    try:
        error = cls(text)
    except TypeError:
        error = SetupError(text)
    raise error
