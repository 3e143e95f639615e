"""The only module that starts sandboxed processes.

run() forks, and in the child (before exec): new session (so a timeout kills the whole process
group), optional chroot and working directory, optional switch to an unprivileged user
(groups, gid, uid, in that order, then verified), no_new_privs, the Landlock domain; then exec
with an allow-listed environment and no inherited descriptors beyond stdio and those passed on
purpose. call() does the same for a Python function, whose result comes back through a pipe.
"""
from __future__ import annotations

import logging
import os
import ctypes
import json
import pwd
import select
import signal
import subprocess
import time
from dataclasses import dataclass

from . import enforce, hardening
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


def _child_setup(prepared: enforce.Prepared, *, chroot: str | None, cwd: str | None,
                 user: User | None, umask: int | None, errpipe: int,
                 overlays: tuple[tuple[str, str, str], ...] = ()):
    """Runs in the forked child before exec. Any failure is written to errpipe, then raised."""
    def setup():
        step = "start"
        try:
            step = "create a private network namespace"
            enforce.before_chroot(prepared)
            for target, upper, work in overlays:
                step = f"copy-on-write overlay on {target}"
                hardening.overlay(target, upper, work)
            if overlays:
                step = "build the Landlock rules on the overlays"
                enforce.rebuild_in_child(prepared)
            if chroot:
                step = f"chroot {chroot}"
                os.chroot(chroot)
                os.chdir("/")
            if cwd:
                step = f"chdir {cwd}"
                os.chdir(cwd)
            if umask is not None:
                os.umask(umask)
            if user is not None:
                step = f"switch to user {user.name}"
                os.setgroups(list(user.groups))
                os.setresgid(user.gid, user.gid, user.gid)
                os.setresuid(user.uid, user.uid, user.uid)
                if (os.getresuid() != (user.uid,) * 3 or os.getresgid() != (user.gid,) * 3
                        or sorted(set(os.getgroups())) != sorted(set(user.groups))):
                    raise OSError(1, "identity not as requested after the switch")
                if user.uid != 0:
                    try:
                        os.setuid(0)
                    except PermissionError:
                        pass
                    else:
                        raise OSError(1, "root could be regained after the switch")
            step = "enter the Landlock domain"
            enforce.enter(prepared)
        except OSError as exc:
            os.write(errpipe, f"{step}: {exc.strerror or exc}".encode()[:4000])
            raise
    return setup


def run(argv: list[str], prepared: enforce.Prepared, *, env: dict[str, str],
        cwd: str | None = None, chroot: str | None = None, user: User | None = None,
        umask: int | None = None, timeout: float | None = None, capture: bool = False,
        stdin=None, input: bytes | None = None, pass_fds: tuple[int, ...] = (),
        merge_stderr: bool = False,
        overlays: tuple[tuple[str, str, str], ...] = ()) -> Result:
    """Run argv (no shell, no PATH lookup beyond the given env's PATH) in the prepared domain."""
    if not argv:
        raise ExecError("no command given")
    start = time.monotonic()
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            proc = subprocess.Popen(
                argv, env=env, close_fds=True, pass_fds=pass_fds, start_new_session=True,
                stdin=subprocess.PIPE if input is not None else stdin,
                stdout=subprocess.PIPE if capture else None,
                stderr=(subprocess.STDOUT if merge_stderr else subprocess.PIPE) if capture
                else None,
                preexec_fn=_child_setup(prepared, chroot=chroot, cwd=cwd, user=user,
                                        umask=umask, errpipe=wfd, overlays=overlays))
        except subprocess.SubprocessError:
            os.close(wfd)
            wfd = -1
            message = os.read(rfd, 4096).decode(errors="replace") or "child setup failed"
            raise SetupError(f"sandbox setup failed: {message}") from None
        except FileNotFoundError:
            raise NotFound(f"{argv[0]}: command not found") from None
        except PermissionError:
            raise ExecError(f"{argv[0]}: permission denied") from None
        except OSError as exc:
            raise ExecError(f"{argv[0]}: {exc.strerror}") from None
    finally:
        if wfd >= 0:
            os.close(wfd)
        os.close(rfd)
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        _reap_after_kill(proc)
        raise TimeoutExpired(f"{argv[0]}: timed out after {timeout:g} s; process group killed",
                             report=prepared.report.as_dict()) from None
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    report = prepared.report
    if user is not None or chroot:
        from dataclasses import replace
        report = replace(report, user=user.name if user else "", chroot=chroot or "")
    return Result(returncode=proc.returncode, stdout=out, stderr=err, report=report,
                  duration=time.monotonic() - start)


def _reap_after_kill(proc) -> None:
    """After the group was killed: a descendant that left the group (setsid) may still hold
    the output pipes; do not wait for it, only for the program itself."""
    try:
        proc.communicate(timeout=1)
    except subprocess.TimeoutExpired:
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream:
                stream.close()
        proc.wait()


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
            os.setsid()
            _child_setup(prepared, chroot=chroot, cwd=cwd, user=user, umask=None,
                         errpipe=wfd)()
            _close_inherited({wfd})
            _only_environment(env)
            try:
                payload = {"ok": fn(*args, **kwargs)}
            except PkgsandboxError as exc:
                payload = {"error": type(exc).__name__, "message": exc.message}
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                payload = {"error": "SetupError", "message": f"{type(exc).__name__}: {exc}"}
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
        cls = _ERRORS.get(payload["error"], SetupError)
        message = str(payload.get("message", ""))
        try:
            error = cls(message)
        except TypeError:  # an error class with structured fields: keep the text
            error = SetupError(message)
        raise error
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
            os.setsid()
            _child_setup(prepared, chroot=chroot, cwd=cwd, user=user, umask=None,
                         errpipe=errw)()
            os.close(errw)
            _close_inherited({child_sock.fileno()})
            _only_environment(env)
            chan = Channel(child_sock)
            try:
                chan.send({"type": "__result__", "value": fn(chan, *args)})
            except PkgsandboxError as exc:
                chan.send({"type": "__error__", "error": type(exc).__name__,
                           "message": exc.message})
                status = 1
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                chan.send({"type": "__error__", "error": "SetupError",
                           "message": f"{type(exc).__name__}: {exc}"})
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
