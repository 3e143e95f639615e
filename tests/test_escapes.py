"""The escape suite: what hostile code and hostile packages try, from every untrusted phase.

Each attempt is made twice: once unconfined (stock pacman on a twin root, or a plain forked
child), which proves the attempt works and so that the test can fail; and once under pkgsandbox,
which must refuse it with the kernel's error (or, on a capped Landlock ABI, either refuse it or
list the missing right as not enforced in the phase's report: never silently).

Phases and how the attempts get there:
  scriptlet  a package's post_install runs tests/data/escapes/escprobe.c (a static program the
             package ships) chrooted into the root, in a real transaction (`pkgsandbox -U`);
  hook       the same package ships an alpm hook whose Exec is the same program;
  payload    a package whose archive holds files outside the extract domain's prefixes, a
             `..` path, an absolute path, a hard link to a file outside, a device node;
  download   a Python function run in the shipped `download` profile through runner.call.
The transaction-level runs are stock pacman, then pkgsandbox at ABI 7 (this kernel), 5 and 3.

Everything is harmless when it succeeds unconfined: each attempt targets the throwaway root, a
file under tmp_path, a listener or a `sleep` the test started, or is a call whose capability
check comes before anything it would change (reboot with a bad magic number, settimeofday with
nothing to set, sethostname to the current name, init_module of 64 zero bytes, a tmpfs mount
unmounted at once, a sysctl written with the value it has). Known gaps (the sensitive-path layer
under /etc is not built yet; the download phase's UDP below ABI 10) are strict xfails with the
reason; the rest must hold.

PKGSANDBOX_ESCAPES_TABLE=FILE writes the attempt table (markdown) to FILE at the end.
"""
from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pkgsandbox import enforce, profile, runner
from pkgsandbox.repobuild import PkgFile, PkgSpec, build_package
from tests.support.twin import Root, new_root, sandboxed, stock

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="transactions need root")

HERE = Path(__file__).resolve().parent
PROBE_SOURCE = HERE / "data" / "escapes" / "escprobe.c"
REPO_PROFILES = HERE.parent / "profiles"

SANDBOXED_RUNS = {"abi7": "7", "abi5": "5", "abi3": "3"}
RUNS = ("stock", *SANDBOXED_RUNS)
CHROOTED_PHASES = ("scriptlet", "hook")
HOOK_NAME = "zz-escape"
LISTEN_WAIT_MS = 1000            # how long a probe's listener waits for the host to connect

ETC_GAP = ("known gap: the scriptlet/hook domain grants all of {{root}}/etc (read, write, create, "
           "remove: profiles/chrooted.yaml) because account tools create lock and temp files "
           "beside /etc/passwd; the sensitive-path layer that should narrow it (DESIGN 3) is "
           "not built yet. Repro: a post_install (or a hook's Exec) doing `echo x > {target}` "
           "succeeds under `pkgsandbox -U` at every ABI.")


# ---------------------------------------------------------------------------------------------
# What an attempt is, and its outcome.

@dataclass(frozen=True)
class Attempt:
    name: str
    op: str                        # a plan line for escprobe ("" for the download attempts)
    refused: frozenset[str]        # errnos that mean "refused" (ABI 7, and capped ABIs)
    what: str = ""                 # one line for the table
    unconfined: str = "ok"         # ok | cap-passed (any errno but EPERM) | EINVAL
    listed_as: str | None = None   # the report item that says it is not enforced on old ABIs
    token: bool = False            # a listener the test opened must (not) receive a token
    effect: str | None = None      # a path (in the root, or absolute) whose content shows it
    gap: str | None = None         # a known product gap: strict xfail with this reason
    #: held by the copy-on-write layer: the write succeeds in the phase's view of /etc, is
    #: never applied to the real root, and the phase's status says a change was refused
    cow: bool = False


def A(name, op, refused=("EACCES",), **kw) -> Attempt:
    return Attempt(name=name, op=op, refused=frozenset(refused), **kw)


@dataclass
class Outcome:
    ok: bool
    errno: str | None
    detail: str

    @classmethod
    def parse(cls, text: str) -> "Outcome":
        words = text.split(" ", 2)
        if words[0] == "OK":
            return cls(True, None, text[3:])
        return cls(False, words[1] if len(words) > 1 else "E?", words[2] if len(words) > 2 else "")

    def short(self) -> str:
        step = self.detail.split(" ")[0]
        return "works" if self.ok else f"{self.errno}" + (f" ({step})" if step else "")


# ---------------------------------------------------------------------------------------------
# The attempts of a chrooted phase (scriptlet, hook), as escprobe plan lines.
# {p}: the phase; {tok}: a token unique to run, phase and attempt; other fields: see _context.

CHROOTED: list[Attempt] = [
    # Files outside the grants, from inside the chroot.
    A("write-usr", "write /usr/bin/evil-{p}", what="create /usr/bin/evil",
      effect="usr/bin/evil-{p}"),
    A("write-root-home", "write /root/evil-{p}", what="create a file in /root",
      effect="root/evil-{p}"),
    A("read-root-secret", "read /root/secret", what="read /root/secret"),
    A("write-boot", "write /boot/vmlinuz-evil-{p}", what="create a file in /boot",
      effect="boot/vmlinuz-evil-{p}"),
    A("append-user-bashrc", "append /home/user/.bashrc-{p}", what="append to a user's .bashrc",
      effect="home/user/.bashrc-{p}"),
    A("write-pacman-db", "write /var/lib/pacman/local/evil-{p}",
      what="write into the local package database", effect="var/lib/pacman/local/evil-{p}"),
    A("truncate-usr", "truncate /usr/share/escapes/victim-{p}",
      what="truncate(2) a file under /usr"),
    # Cross-directory rename and link tricks (Landlock's REFER).
    A("rename-out-of-usr", "rename /usr/share/escapes/steal-{p} /tmp/stolen-{p}",
      ("EACCES", "EXDEV"), what="rename a /usr file into writable /tmp",
      effect="tmp/stolen-{p}"),
    A("rename-into-usr", "rename /tmp/planted-{p} /usr/bin/planted-{p}", ("EACCES", "EXDEV"),
      what="rename a /tmp file into /usr/bin", effect="usr/bin/planted-{p}"),
    A("hardlink-then-write", "link-write /usr/share/escapes/alias-{p} /tmp/alias-{p}",
      ("EXDEV", "EACCES"), what="hard-link a /usr file into /tmp, write through the link",
      effect="usr/share/escapes/alias-{p}"),
    A("hardlink-then-read", "link-read /root/secret /tmp/secret-{p}", ("EXDEV", "EACCES"),
      what="hard-link /root/secret into /tmp, read it"),
    A("symlink-then-read", "symlink-read /root/secret /tmp/secret-link-{p}",
      what="symlink to /root/secret in /tmp, read it"),
    # Network: TCP, UDP, raw; UNIX sockets.
    A("tcp-connect", "tcp-connect 127.0.0.1 {tcp} {tok}", ("EACCES", "ENETUNREACH"),
      what="TCP connect to a loopback listener", listed_as="connect_tcp", token=True),
    A("tcp-bind", "tcp-listen 127.0.0.1 {listen_port} " + str(LISTEN_WAIT_MS),
      ("EACCES", "ETIMEDOUT"), what="TCP bind+listen that the host connects to",
      listed_as="bind_tcp"),
    A("udp-send", "udp-send 127.0.0.1 {udp} {tok}", ("ENETUNREACH", "EACCES"),
      what="UDP datagram to a loopback listener", listed_as="connect_send_udp", token=True),
    A("raw-socket", "raw-socket", ("EPERM",), what="raw ICMP socket"),
    A("unix-pathname", "unix-connect /run/escape.sock {tok}", ("EACCES",),
      what="connect to a pathname UNIX socket in the root", listed_as="resolve_unix",
      token=True),
    A("unix-abstract", "abstract-connect {abstract} {tok}", ("EACCES", "EPERM", "ECONNREFUSED"),
      what="connect to an abstract UNIX socket of the host", listed_as="abstract_unix_socket",
      token=True),
    # Other processes.
    A("signal", "kill {kill_pid} 15", ("EPERM",), what="SIGTERM a `sleep` outside the domain",
      listed_as="signal"),
    A("ptrace", "ptrace {ptrace_pid}", ("EPERM",), what="PTRACE_ATTACH a `sleep` outside"),
    # Privileged operations.
    A("mknod", "mknod /tmp/null-{p}", ("EACCES", "EPERM"), what="mknod a char device in /tmp"),
    A("init-module", "init-module", ("EPERM", "ENOSYS"), unconfined="cap-passed",
      what="init_module (64 zero bytes)"),
    A("finit-module", "finit-module /usr/share/escapes/empty", ("EPERM", "ENOSYS"),
      unconfined="cap-passed", what="finit_module (an empty file)"),
    A("cap-sys-module", "capbset 16", ("EPERM",),
      what="CAP_SYS_MODULE in the bounding set (module loading)"),
    A("bpf-map-create", "bpf-map", ("EPERM",), what="bpf(BPF_MAP_CREATE, queue map)"),
    A("bpf-prog-load", "bpf-prog", ("EPERM",), what="bpf(BPF_PROG_LOAD, kprobe program)"),
    A("mount-tmpfs", "mount /tmp/mnt-{p}", ("EPERM",), what="mount tmpfs on a dir in /tmp"),
    A("unshare-mount-ns", "unshare-mnt", ("EPERM",), what="unshare(CLONE_NEWNS)"),
    A("reboot", "reboot-badmagic", ("EPERM",), unconfined="EINVAL",
      what="reboot(2) (bad magic: EINVAL once the capability check passed)"),
    A("settimeofday", "settime-null", ("EPERM",), what="settimeofday(NULL, NULL)"),
    A("sethostname", "sethostname-same", ("EPERM",), what="sethostname(current name)"),
    # The chroot escape (sys_chroot is kept for ldconfig -r), then outside files.
    A("chroot-escape-read", "escape-read {outside}", what="chroot escape, read a file outside"),
    A("proc-sys-write", "escape-rewrite /proc/sys/net/ipv4/ip_default_ttl",
      what="chroot escape, write a sysctl (same value)"),
    A("sys-write", "escape-open-write {sysfs}", what="chroot escape, open a /sys file to write"),
    # pkgsandbox's and pacman's own configuration.
    A("pacman-conf-in-use", "escape-append {conf}",
      what="chroot escape, append to the pacman.conf in use", effect="{conf}"),
    A("profile-in-use", "escape-append {profiles}/{p}.yaml",
      what="chroot escape, append to the profile in use (--profile-dir)",
      effect="{profiles}/{p}.yaml"),
    A("profiles-in-root", "append /usr/share/pkgsandbox/profiles/{p}.yaml",
      what="append to {root}/usr/share/pkgsandbox/profiles",
      effect="usr/share/pkgsandbox/profiles/{p}.yaml"),
    A("plant-hook-usr", "plant-hook /usr/share/libalpm/hooks/evil-{p}.hook",
      what="plant an alpm hook in /usr/share/libalpm/hooks",
      effect="usr/share/libalpm/hooks/evil-{p}.hook"),
    # /etc is writable (census profile B) through a copy-on-write overlay; these protected
    # paths are refused when pkgsandbox applies the phase's changes (cow=True).
    A("persist-systemd-unit", "mkdirs-write /etc/systemd/system/evil-{p}.service",
      what="persistence: /etc/systemd/system/*.service",
      effect="etc/systemd/system/evil-{p}.service", cow=True),
    A("persist-ld-so-preload", "write /etc/ld.so.preload", what="persistence: /etc/ld.so.preload",
      effect="etc/ld.so.preload", cow=True),
    A("pacman-conf-in-root", "append /etc/pacman.conf", what="tamper {root}/etc/pacman.conf",
      effect="etc/pacman.conf", cow=True),
    A("profile-override-in-root", "mkdirs-write /etc/pkgsandbox/profiles/{p}.yaml",
      what="write {root}/etc/pkgsandbox/profiles (the admin override dir when --root /)",
      effect="etc/pkgsandbox/profiles/{p}.yaml", cow=True),
    A("plant-hook-etc", "plant-hook /etc/pacman.d/hooks/evil-{p}.hook",
      what="plant an alpm hook in /etc/pacman.d/hooks (stock pacman runs it unconfined)",
      effect="etc/pacman.d/hooks/evil-{p}.hook", cow=True),
]
assert len({a.name for a in CHROOTED}) == len(CHROOTED)


# ---------------------------------------------------------------------------------------------
# Listeners and targets the test owns: loopback TCP and UDP, an abstract UNIX socket, pathname
# UNIX sockets inside the roots; a connector for the probes' own listeners.

class Net:
    def __init__(self):
        self.tokens: set[str] = set()
        self.reached: set[int] = set()       # probe listener ports the host connected to
        self._want: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(64)
        self.tcp_port = self.tcp.getsockname()[1]
        self.mirror = socket.socket()        # the download phase's one granted port
        self.mirror.bind(("127.0.0.1", 0))
        self.mirror.listen(64)
        self.mirror_port = self.mirror.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp_port = self.udp.getsockname()[1]
        self.abstract_name = f"pkgsandbox-escapes-{os.getpid()}-{time.monotonic_ns()}"
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract.bind("\0" + self.abstract_name)
        self.abstract.listen(64)
        self._streams = [self.tcp, self.mirror, self.abstract]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def add_unix(self, path: Path) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.listen(16)
        with self._lock:
            self._streams.append(s)

    def connect_to(self, port: int) -> None:
        """Keep trying to connect to 127.0.0.1:port (a probe's listener) until it works."""
        with self._lock:
            self._want.add(port)

    def stop_connecting(self) -> None:
        with self._lock:
            self._want.clear()

    def _serve(self):
        while not self._stop.is_set():
            with self._lock:
                streams = list(self._streams)
                want = self._want - self.reached
            try:
                ready, _, _ = select.select(streams + [self.udp], [], [], 0.01)
            except (OSError, ValueError):
                return
            for s in ready:
                try:
                    if s is self.udp:
                        data, _ = s.recvfrom(512)
                    else:
                        conn, _ = s.accept()
                        conn.settimeout(1)
                        try:
                            data = conn.recv(512)
                        except OSError:
                            data = b""
                        conn.close()
                except OSError:
                    continue
                with self._lock:
                    self.tokens.add(data.decode(errors="replace"))
            for port in want:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.05) as c:
                        if c.getsockname() == c.getpeername():
                            continue          # TCP self-connect: nobody listened there
                        with self._lock:
                            self.reached.add(port)
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        for s in self._streams + [self.udp]:
            s.close()


@pytest.fixture(scope="module")
def net():
    n = Net()
    yield n
    n.close()


class Sleepers:
    """`sleep` processes the test starts as signal and ptrace targets."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        p = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture(scope="module")
def sleepers():
    s = Sleepers()
    yield s
    s.close()


def _unmount_leftovers(base: Path) -> None:
    """Safety net: a probe unmounts what it mounted at once; should one have died in
    between, nothing stays mounted under the test's directory."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for line in lines:
        point = line.split()[4]
        if point.startswith(str(base)):
            libc.umount2(point.encode(), 2)


# ---------------------------------------------------------------------------------------------
# The probe, the hostile package and the roots.

@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "escprobe"
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed for tests/data/escapes/escprobe.c (bootstrap installs gcc)"
    proc = subprocess.run([cc, "-static", "-O1", "-Wall", "-o", str(out), str(PROBE_SOURCE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"building escprobe failed:\n{proc.stderr}"
    return out


HOOK_TEXT = f"""[Trigger]
Operation = Install
Type = Package
Target = hostile

[Action]
Description = escape attempts from a hook
When = PostTransaction
Exec = /usr/bin/escprobe /usr/share/escapes/hook.plan /var/log/escapes-hook
"""

INSTALL_TEXT = """post_install() {
  /usr/bin/escprobe /usr/share/escapes/scriptlet.plan /var/log/escapes-scriptlet
  echo done > /var/lib/hostile/state
}
"""


@pytest.fixture(scope="module")
def hostile_pkg(tmp_path_factory, probe) -> Path:
    """One package: the probe, a hook that runs it, a post_install that runs it."""
    spec = PkgSpec(name="hostile", install=INSTALL_TEXT, files=(
        PkgFile(path="usr/bin/escprobe", content=probe.read_bytes(), mode=0o755),
        PkgFile(path=f"usr/share/libalpm/hooks/{HOOK_NAME}.hook", content=HOOK_TEXT.encode()),
        PkgFile(path="var/lib/hostile", directory=True)))
    return build_package(spec, tmp_path_factory.mktemp("hostile-repo"))


def _prepare_root(root: Root, net: Net) -> None:
    """What a lived-in system has that the attempts aim at."""
    p = root.path
    for d in ("boot", "home/user", "run", "usr/share/escapes", "usr/share/pkgsandbox/profiles",
              "usr/share/libalpm/hooks", "etc/pacman.d/hooks"):
        (p / d).mkdir(parents=True, exist_ok=True)
    (p / "root/secret").write_text("s3cret\n")
    (p / "root").chmod(0o700)
    (p / "etc/pacman.conf").write_text("[options]\nArchitecture = auto\n")
    (p / "usr/share/escapes/empty").write_bytes(b"")
    for phase in CHROOTED_PHASES:
        for name in ("victim", "steal", "alias"):
            (p / f"usr/share/escapes/{name}-{phase}").write_text(f"{name}\n")
        (p / f"tmp/planted-{phase}").write_text("planted\n")
        (p / f"tmp/mnt-{phase}").mkdir()
        (p / f"home/user/.bashrc-{phase}").write_text("# bashrc\n")
        shutil.copy(REPO_PROFILES / f"{phase}.yaml",
                    p / f"usr/share/pkgsandbox/profiles/{phase}.yaml")
    net.add_unix(p / "run/escape.sock")


def _sysfs_target() -> str:
    for candidate in ("/sys/kernel/rcu_expedited", "/sys/kernel/profiling",
                      "/sys/kernel/uevent_helper"):
        if os.path.exists(candidate):
            return candidate
    pytest.skip("no root-writable /sys/kernel file to aim at")


@dataclass
class ChrootedRun:
    run: str
    root: Root
    outcomes: dict[str, dict[str, Outcome]] = field(default_factory=dict)   # phase -> name ->
    context: dict[str, dict] = field(default_factory=dict)                 # phase -> fields
    targets: dict[str, dict[str, subprocess.Popen]] = field(default_factory=dict)
    not_enforced: dict[str, list[str]] = field(default_factory=dict)       # phase -> items
    phase_status: dict[str, str] = field(default_factory=dict)
    report_text: str = ""


def _context(run: str, phase: str, base: Path, root: Root, kill_pid: int, ptrace_pid: int,
             listen_port: int, net: Net, profiles: Path, sysfs: str) -> dict:
    return {"p": phase, "tcp": net.tcp_port, "udp": net.udp_port,
            "abstract": net.abstract_name, "listen_port": listen_port, "kill_pid": kill_pid,
            "ptrace_pid": ptrace_pid, "outside": str(base / "outside" / "secret"),
            "conf": str(root.conf), "profiles": str(profiles), "sysfs": sysfs,
            "run": run}


def _plan(attempts, ctx) -> str:
    lines = []
    for a in attempts:
        tok = f"{ctx['run']}:{ctx['p']}:{a.name}"
        lines.append(f"{a.name} {a.op.format(tok=tok, **ctx)}")
    return "\n".join(lines) + "\n"


def _read_outcomes(path: Path) -> dict[str, Outcome]:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, text = line.partition("\t")
            out[name] = Outcome.parse(text)
    return out


def _report_from_text(stdout: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The transaction's report lines: ' scriptlet hostile post_install [scriptlet] Landlock
    ABI 5 partially ...; not enforced: a, b; ok'."""
    items, status = {}, {}
    for line in stdout.splitlines():
        m = re.match(r"^ (scriptlet|hook)\s+.*?\[(\w+)\] Landlock ABI \d+ .*?; "
                     r"(?:not enforced: (.*)|nothing left open); (\S.*)$", line)
        if m:
            phase = m.group(1)
            items[phase] = [s.strip() for s in (m.group(3) or "").split(",") if s.strip()]
            status[phase] = m.group(4)
    return items, status


@pytest.fixture(scope="module")
def chrooted(tmp_path_factory, hostile_pkg, net, sleepers) -> dict[str, ChrootedRun]:
    """The hostile transaction on four roots: stock pacman, pkgsandbox at ABI 7, 5, 3."""
    base = tmp_path_factory.mktemp("chrooted")
    (base / "outside").mkdir()
    (base / "outside" / "secret").write_text("outside-secret\n")
    sysfs = _sysfs_target()
    runs = {}
    try:
        for run in RUNS:
            root = new_root(base, run, "file:///nonexistent")
            _prepare_root(root, net)
            profiles = base / f"{run}-profiles"
            shutil.copytree(REPO_PROFILES, profiles)
            cr = ChrootedRun(run=run, root=root)
            for phase in CHROOTED_PHASES:
                kill_t, ptrace_t = sleepers.start(), sleepers.start()
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                net.connect_to(port)
                ctx = _context(run, phase, base, root, kill_t.pid, ptrace_t.pid, port, net,
                               profiles, sysfs)
                cr.context[phase] = ctx
                cr.targets[phase] = {"kill": kill_t, "ptrace": ptrace_t}
                (root.path / f"usr/share/escapes/{phase}.plan").write_text(_plan(CHROOTED, ctx))
            if run == "stock":
                proc = stock(root, "-U", str(hostile_pkg))
            else:
                extra = ["--abi", SANDBOXED_RUNS[run], "--profile-dir", str(profiles)]
                if run != "abi5":                 # abi5: the human report lines instead
                    extra.append("--json")
                proc = sandboxed(root, "-U", str(hostile_pkg), extra=extra)
                if "--json" in extra:
                    data = json.loads(proc.stdout)
                    for ph in data["phases"]:
                        if ph["phase"] in CHROOTED_PHASES:
                            cr.not_enforced[ph["phase"]] = ph["report"]["not_enforced"]
                            cr.phase_status[ph["phase"]] = ph["status"]
                else:
                    cr.not_enforced, cr.phase_status = _report_from_text(proc.stdout)
                cr.report_text = proc.stdout
            time.sleep(0.05)                      # the last token in flight
            net.stop_connecting()
            for phase in CHROOTED_PHASES:
                cr.outcomes[phase] = _read_outcomes(root.path / f"var/log/escapes-{phase}")
            runs[run] = cr
        _RESULTS["chrooted"] = runs
        yield runs
    finally:
        _unmount_leftovers(base)


# ---------------------------------------------------------------------------------------------
# Checking one chrooted attempt.

def _eventually(check, wait: bool) -> bool:
    """check(), retried for a while when the attempt said it worked (a datagram or a dying
    process may lag behind the probe's own report)."""
    deadline = time.monotonic() + (5 if wait else 0)
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _dead(proc: subprocess.Popen) -> bool:
    return proc.poll() is not None


def _effect_seen(a: Attempt, cr: ChrootedRun, phase: str, net: Net) -> bool | None:
    """Independent evidence that the attempt had its effect (None: nothing to look at)."""
    ctx = cr.context[phase]
    o = cr.outcomes[phase].get(a.name)
    wait = bool(o and o.ok)
    if a.token:
        return _eventually(lambda: f"{cr.run}:{phase}:{a.name}" in net.tokens, wait)
    if a.name == "signal":
        return _eventually(lambda: _dead(cr.targets[phase]["kill"]), wait)
    if a.name == "tcp-bind":
        return ctx["listen_port"] in net.reached
    if a.name == "truncate-usr":
        return (cr.root.path / f"usr/share/escapes/victim-{phase}").stat().st_size == 0
    if a.effect:
        target = a.effect.format(**ctx)
        path = Path(target) if target.startswith("/") else cr.root.path / target
        if a.op.startswith(("rename", "plant-hook")):
            return path.exists()
        return path.exists() and "pwned" in path.read_text(errors="replace")
    return None


def _works_unconfined(a: Attempt, o: Outcome) -> bool:
    if a.unconfined == "ok":
        return o.ok
    if a.unconfined == "cap-passed":       # refused only after the capability check, or
        return o.ok or o.errno != "EPERM"  # the syscall is not built into this kernel
    return o.errno == a.unconfined


PARAMS_CHROOTED = [pytest.param(phase, a, id=f"{phase}-{a.name}")
                   for phase in CHROOTED_PHASES for a in CHROOTED]


@pytest.mark.parametrize("phase,attempt", PARAMS_CHROOTED)
def test_chrooted_attempt_works_unconfined(chrooted, net, phase, attempt):
    """Stock pacman runs the same scriptlet/hook: the attempt works there."""
    cr = chrooted["stock"]
    o = cr.outcomes[phase].get(attempt.name)
    assert o is not None, f"stock pacman did not run the {phase} probe: {cr.outcomes}"
    assert _works_unconfined(attempt, o), f"{attempt.name} unconfined: {o}"
    effect = _effect_seen(attempt, cr, phase, net)
    assert effect in (None, True), f"{attempt.name}: no effect seen unconfined"
    if attempt.unconfined == "cap-passed" and o.errno == "ENOSYS":
        # This kernel has no module support (CONFIG_MODULES=n): the syscall answers ENOSYS
        # before any capability check, confined or not. The capability layer is shown by
        # cap-sys-module (CAP_SYS_MODULE is in the bounding set here, gone when confined).
        assert cr.outcomes[phase]["cap-sys-module"].ok


def _chrooted_params_confined():
    out = []
    for phase in CHROOTED_PHASES:
        for a in CHROOTED:
            marks = [pytest.mark.xfail(strict=True, reason=a.gap)] if a.gap else []
            out.append(pytest.param(phase, a, id=f"{phase}-{a.name}", marks=marks))
    return out


@pytest.mark.parametrize("phase,attempt", _chrooted_params_confined())
def test_chrooted_attempt_refused(chrooted, net, phase, attempt):
    """Under pkgsandbox: refused with the kernel's error at ABI 7; at ABI 5 and 3 refused, or
    the right it needs is listed as not enforced in that phase's report."""
    for run in SANDBOXED_RUNS:
        cr = chrooted[run]
        # "ok", or "ok; N protected change(s) refused" (the /etc copy-on-write layer)
        assert (cr.phase_status.get(phase) or "").startswith("ok"), \
            f"{run}: the {phase} phase did not run to the end: {cr.phase_status}\n{cr.report_text}"
        o = cr.outcomes[phase].get(attempt.name)
        assert o is not None, f"{run}: no outcome for {attempt.name}"
        refused = not o.ok and o.errno in attempt.refused
        listed = attempt.listed_as in cr.not_enforced.get(phase, [])
        effect = _effect_seen(attempt, cr, phase, net)
        if attempt.cow:
            assert effect is False, f"{run} {phase}: {attempt.name} reached the real root"
            assert "protected change" in cr.phase_status.get(phase, ""), cr.phase_status
            continue
        if run == "abi7" or not listed:
            assert refused, f"{run} {phase}: {attempt.name} not refused: {o}; report lists " \
                            f"{cr.not_enforced.get(phase)}"
            assert effect in (None, False), f"{run} {phase}: {attempt.name} had its effect"
        # Listed as not enforced: the attempt may work there; the report says so.


def test_chrooted_reports(chrooted):
    """ABI 7: nothing left open in the scriptlet and hook reports (every Landlock item this ABI
    lacks is closed by the private network namespace or the seccomp filter). ABI 5 and 3: the
    signal scope is listed as not enforced (and nothing else a chrooted phase needs)."""
    for phase in CHROOTED_PHASES:
        assert chrooted["abi7"].not_enforced[phase] == []
        for run in ("abi5", "abi3"):
            items = chrooted[run].not_enforced[phase]
            assert "signal" in items and set(items) <= {"signal", "ioctl_dev"}, (run, items)
    assert "post_install" in chrooted["abi5"].report_text
    for run in SANDBOXED_RUNS:
        assert (chrooted[run].root.path / "var/lib/hostile/state").read_text() == "done\n"
        assert not (chrooted[run].root.path / "usr/bin/evil-scriptlet").exists()


# ---------------------------------------------------------------------------------------------
# Package payload: files outside the extract domain's prefixes (usr, etc, var, opt, srv).

@dataclass(frozen=True)
class Payload:
    name: str
    entry: str                  # the archive member
    path: str                   # where it lands, relative to the root
    kind: str                   # file | hardlink | chardev
    what: str
    refused: frozenset[str]     # the errno the extract domain gets doing the same (runner.call)


PAYLOAD = [
    Payload("file-in-root-home", "root/evil-payload", "root/evil-payload", "file",
            "a file in /root", frozenset({"EACCES"})),
    Payload("file-in-boot", "boot/vmlinuz-evil", "boot/vmlinuz-evil", "file",
            "a file in /boot", frozenset({"EACCES"})),
    Payload("file-in-home", "home/user/.bashrc", "home/user/.bashrc", "file",
            "/home/user/.bashrc", frozenset({"EACCES"})),
    Payload("dotdot-path", "usr/../root/evil-dotdot", "root/evil-dotdot", "file",
            "member named usr/../root/evil-dotdot", frozenset({"EACCES"})),
    Payload("absolute-path", "/root/evil-absolute", "root/evil-absolute", "file",
            "member named /root/evil-absolute", frozenset({"EACCES"})),
    Payload("hardlink-to-outside", "usr/share/payload/secret-link", "usr/share/payload/secret-link",
            "hardlink", "hard link usr/share/payload/secret-link -> root/secret",
            frozenset({"EXDEV", "EACCES"})),
    Payload("device-node", "usr/share/payload/null", "usr/share/payload/null", "chardev",
            "char device 1,3 in usr/share", frozenset({"EACCES", "EPERM"})),
]


def _payload_package(outdir: Path) -> Path:
    """Written with tarfile (gz): makepkg and repobuild would not produce these members."""
    pkginfo = ("pkgname = payload\npkgbase = payload\npkgver = 1.0-1\npkgdesc = hostile\n"
               f"builddate = {int(time.time())}\npackager = tests\nsize = 1\narch = any\n"
               "license = GPL\n").encode()
    out = outdir / "payload-1.0-1-any.pkg.tar.gz"

    def member(name, kind=tarfile.REGTYPE, data=None, **kw):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mtime, ti.uname, ti.gname = kind, 0, "root", "root"
        ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        for k, v in kw.items():
            setattr(ti, k, v)
        if data is not None:
            ti.size = len(data)
        return ti, (io.BytesIO(data) if data is not None else None)

    members = [member(".PKGINFO", data=pkginfo), member("usr/", tarfile.DIRTYPE),
               member("usr/share/", tarfile.DIRTYPE), member("usr/share/payload/", tarfile.DIRTYPE),
               member("usr/share/payload/legit", data=b"legit\n")]
    for p in PAYLOAD:
        if p.kind == "file":
            members.append(member(p.entry, data=b"pwned\n"))
        elif p.kind == "hardlink":
            members.append(member(p.entry, tarfile.LNKTYPE, linkname="root/secret"))
        else:
            members.append(member(p.entry, tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666))
    with tarfile.open(out, "w:gz", format=tarfile.GNU_FORMAT) as t:
        for ti, f in members:
            t.addfile(ti, f)
    return out


def _extract_policy(root: Path):
    lib = profile.Library(include_system=False)
    return profile.resolve(lib.load("extract"), {
        "root": str(root), "dbpath": str(root / "var/lib/pacman"),
        "cachedir": str(root / "var/cache/pacman/pkg"),
        "logfile": str(root / "var/log/pacman.log"), "gpgdir": "/nonexistent/gnupg"},
        phase="extract")


def _errno_of(fn) -> str:
    try:
        fn()
        return "OK"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def extract_domain_attempts(root: str) -> dict[str, str]:
    """Runs INSIDE the extract domain: what each payload member needs, done directly, so the
    kernel's errno is seen (libalpm reports only libarchive's text)."""
    out = {}
    for p in PAYLOAD:
        target = os.path.join(root, p.path)
        if p.kind == "file":
            out[p.name] = _errno_of(lambda: os.close(
                os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)))
        elif p.kind == "hardlink":
            out[p.name] = _errno_of(lambda: os.link(os.path.join(root, "root/secret"), target))
        else:
            out[p.name] = _errno_of(lambda: os.mknod(target, 0o666 | stat.S_IFCHR,
                                                     os.makedev(1, 3)))
    return out


@dataclass
class PayloadRun:
    run: str
    root: Root
    proc: subprocess.CompletedProcess
    domain: dict[str, str] = field(default_factory=dict)
    not_enforced: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> dict[str, PayloadRun]:
    base = tmp_path_factory.mktemp("payload")
    pkg = _payload_package(base)
    runs = {}
    for run in RUNS:
        root = new_root(base, run, "file:///nonexistent")
        (root.path / "boot").mkdir()
        (root.path / "home/user").mkdir(parents=True)
        (root.path / "root/secret").write_text("s3cret\n")
        if run == "stock":
            proc = stock(root, "-U", str(pkg), check=False)
        else:
            proc = sandboxed(root, "-U", str(pkg), check=False,
                             extra=["--abi", SANDBOXED_RUNS[run], "--json"])
        pr = PayloadRun(run=run, root=root, proc=proc)
        if run != "stock":
            cap = int(SANDBOXED_RUNS[run])
            with enforce.prepare(_extract_policy(root.path), cap=cap) as prepared:
                pr.domain = runner.call(extract_domain_attempts, str(root.path),
                                        prepared=prepared, timeout=60).value
                pr.not_enforced = prepared.report.uncovered()
        runs[run] = pr
    _RESULTS["payload"] = runs
    return runs


def _landed(root: Path, p: Payload) -> bool:
    path = root / p.path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if p.kind == "chardev":
        return stat.S_ISCHR(st.st_mode)
    if p.kind == "hardlink":
        return os.path.samefile(path, root / "root/secret")
    return path.read_bytes() == b"pwned\n"


@pytest.mark.parametrize("attempt", PAYLOAD, ids=[p.name for p in PAYLOAD])
def test_payload_lands_unconfined(payload, attempt):
    r = payload["stock"]
    assert r.proc.returncode == 0, r.proc.stdout + r.proc.stderr
    assert _landed(r.root.path, attempt)


@pytest.mark.parametrize("attempt", PAYLOAD, ids=[p.name for p in PAYLOAD])
def test_payload_refused(payload, attempt):
    """Not installed, the transaction fails loudly naming the member, and the extract domain's
    kernel error for the same operation is the expected one, at ABI 7, 5 and 3."""
    for run in SANDBOXED_RUNS:
        r = payload[run]
        assert r.proc.returncode == 1, f"{run}: {r.proc.stderr}"
        assert "refused by the extract domain" in r.proc.stderr
        assert not _landed(r.root.path, attempt), f"{run}: {attempt.path} landed"
        assert re.search(r"warning given when extracting \S*" + re.escape(
            attempt.entry.lstrip("/")), r.proc.stderr), f"{run}: no line for {attempt.entry}"
        assert r.domain[attempt.name] in attempt.refused, (run, r.domain)
        # what the package may install still lands
        assert (r.root.path / "usr/share/payload/legit").read_text() == "legit\n"


# ---------------------------------------------------------------------------------------------
# Download: a Python function in the shipped `download` profile (runner.call), as root without a
# DownloadUser (so the capability layer is what stops root's privileges).

_SYSCALLS = {"x86_64": {"bpf": 321, "reboot": 169, "settimeofday": 164},
             "aarch64": {"bpf": 280, "reboot": 142, "settimeofday": 170}}
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
ENV_SECRET = "PKGSANDBOX_ESCAPES_TOKEN"


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(rc, step: str = "") -> None:
    if rc == -1 or (isinstance(rc, int) and rc < 0):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), step)


def _dl_attempts(spec: dict) -> dict[str, list]:
    """Runs INSIDE the download domain (or, for the unconfined run, in a plain forked child).
    Returns name -> [ok, errno, detail]."""
    libc = _libc()
    nr = _SYSCALLS.get(platform.machine(), {})
    out: dict[str, list] = {}

    def attempt(name, fn):
        """fn in its own forked child (a chroot or a new namespace stays there)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                try:
                    detail = fn()
                    result = [True, None, str(detail or "")[:100]]
                except OSError as exc:
                    step = exc.filename if isinstance(exc.filename, str) and \
                        not exc.filename.startswith("/") else ""
                    result = [False, errno.errorcode.get(exc.errno, str(exc.errno)), step]
                except KeyError:
                    result = [False, "absent", ""]
                os.write(w, json.dumps(result).encode())
            finally:
                os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        out[name] = json.loads(data) if data else [False, "E?", "crashed"]

    def write(path, flags=os.O_CREAT | os.O_TRUNC):
        fd = os.open(path, os.O_WRONLY | flags, 0o644)
        os.write(fd, b"# pwned\n")
        os.close(fd)

    def read(path):
        with open(path) as f:
            return f.read()

    def tcp_connect(port, tok):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(tok.encode())

    def tcp_listen(port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen(4)
            ready, _, _ = select.select([s], [], [], LISTEN_WAIT_MS / 1000)
            if not ready:
                raise OSError(errno.ETIMEDOUT, "no connection")
            s.accept()[0].close()

    def udp(tok):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(tok.encode(), ("127.0.0.1", spec["udp"]))

    def unix(addr, tok):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(addr)
            s.sendall(tok.encode())

    def ptrace():
        pid = spec["ptrace_pid"]
        _check(libc.ptrace(PTRACE_ATTACH, pid, None, None))
        os.waitpid(pid, 0x40000000)      # __WALL
        libc.ptrace(PTRACE_DETACH, pid, None, None)

    def mount():
        _check(libc.mount(b"none", spec["mnt"].encode(), b"tmpfs", 0, b"size=16k"), "mount")
        libc.umount2(spec["mnt"].encode(), 2)

    def userns_mount():
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
        mount()

    def bpf_map():
        attr = (ctypes.c_uint32 * 32)(22, 0, 4, 1)     # BPF_MAP_TYPE_QUEUE: needs CAP_BPF
        fd = libc.syscall(nr["bpf"], 0, attr, 128)
        _check(fd)
        os.close(fd)

    def rewrite(path):
        with open(path) as f:
            value = f.read()
        with open(path, "w") as f:
            f.write(value)
        return value.strip()

    def rename_out():
        src = os.path.join(spec["ddir"], "x.part")
        write(src)
        os.rename(src, os.path.join(spec["cache"], "evil-1.0-1-any.pkg.tar.zst"))

    tok = spec["tok"]
    attempt("write-outside", lambda: write(spec["outside_file"]))
    attempt("read-secret", lambda: read(spec["secret"]))
    attempt("plant-in-cache", lambda: write(os.path.join(spec["cache"],
                                                         "evil-1.0-1-any.pkg.tar.zst")))
    attempt("overwrite-sync-db", lambda: write(spec["syncdb"]))
    attempt("append-pacman-log", lambda: write(spec["log"], os.O_APPEND))
    attempt("symlink-in-downloaddir", lambda: os.symlink(spec["secret"], os.path.join(
        spec["ddir"], "link.part")))
    attempt("hardlink-into-downloaddir", lambda: os.link(spec["secret"], os.path.join(
        spec["ddir"], "stolen.part")))
    attempt("rename-out-of-downloaddir", rename_out)
    attempt("tcp-connect", lambda: tcp_connect(spec["tcp"], tok + "tcp-connect"))
    attempt("tcp-bind", lambda: tcp_listen(spec["listen_port"]))
    attempt("udp-send", lambda: udp(tok + "udp-send"))
    attempt("unix-pathname", lambda: unix(spec["unix"], tok + "unix-pathname"))
    attempt("unix-abstract", lambda: unix("\0" + spec["abstract"], tok + "unix-abstract"))
    attempt("signal", lambda: os.kill(spec["kill_pid"], signal.SIGTERM))
    attempt("ptrace", ptrace)
    attempt("mknod", lambda: os.mknod(os.path.join(spec["ddir"], "null.part"),
                                      0o600 | stat.S_IFCHR, os.makedev(1, 3)))
    attempt("mount-tmpfs", mount)
    attempt("userns-then-mount", userns_mount)
    attempt("chroot", lambda: os.chroot(spec["mnt"]))
    attempt("bpf-map-create", bpf_map)
    attempt("raw-socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                socket.IPPROTO_ICMP).close())
    attempt("reboot", lambda: _check(libc.syscall(nr["reboot"], 0, 0, 0, None)))
    attempt("settimeofday", lambda: _check(libc.syscall(nr["settimeofday"], None, None)))
    attempt("proc-sys-write", lambda: rewrite("/proc/sys/net/ipv4/ip_default_ttl"))
    attempt("sys-write", lambda: os.close(os.open(spec["sysfs"], os.O_WRONLY)))
    attempt("inherited-descriptor", lambda: os.write(spec["fd"], b"# pwned via fd\n"))
    attempt("environment-secret", lambda: os.environ[ENV_SECRET])
    # Not escapes: what the phase is for still works.
    attempt("legit-mirror-connect", lambda: tcp_connect(spec["mirror"], tok + "mirror"))
    attempt("legit-write-part", lambda: write(os.path.join(spec["ddir"], "pkg.part")))
    return out


DL_GAP_UDP = ("known gap: the download profile grants connect_send_udp 53 (DNS); below ABI 10 "
              "Landlock cannot confine UDP and the download phase has no private network "
              "namespace (it needs the network), so a datagram reaches any loopback UDP port. "
              "Reported as not enforced (connect_send_udp), never refused. Repro: "
              "runner.call(fn sending UDP to 127.0.0.1:PORT, prepared=enforce.prepare(download "
              "policy)) -> delivered. Suspected code: enforce.layers_for (no seccomp/netns "
              "option for UDP when ports are granted).")
DOWNLOAD: list[Attempt] = [
    A("write-outside", "", what="create a file outside the download dir",
      effect="{outside_file}"),
    A("read-secret", "", what="read a file outside the grants"),
    A("plant-in-cache", "", what="create a package in the cache dir (parent of the download dir)",
      effect="{cache}/evil-1.0-1-any.pkg.tar.zst"),
    A("overwrite-sync-db", "", what="overwrite the sync database", effect="{syncdb}"),
    A("append-pacman-log", "", what="append to pacman.log", effect="{log}"),
    A("symlink-in-downloaddir", "", what="symlink in the download dir (only plain files)"),
    A("hardlink-into-downloaddir", "", ("EXDEV", "EACCES"),
      what="hard-link an outside file into the download dir"),
    A("rename-out-of-downloaddir", "", ("EXDEV", "EACCES"),
      what="rename a .part into the cache dir itself"),
    A("tcp-connect", "", what="TCP connect to a port that is not a mirror's",
      listed_as="connect_tcp", token=True),
    A("tcp-bind", "", ("EACCES",), what="TCP bind+listen that the host connects to",
      listed_as="bind_tcp"),
    A("udp-send", "", ("EACCES", "ENETUNREACH", "EPERM"), what="UDP datagram to a loopback port",
      listed_as="connect_send_udp", token=True),
    A("unix-pathname", "", ("EACCES",), what="connect to a pathname UNIX socket",
      listed_as="resolve_unix", token=True),
    A("unix-abstract", "", ("EPERM", "EACCES"), what="connect to an abstract UNIX socket",
      listed_as="abstract_unix_socket", token=True),
    A("signal", "", ("EPERM",), what="SIGTERM a `sleep` outside", listed_as="signal"),
    A("ptrace", "", ("EPERM",), what="PTRACE_ATTACH a `sleep` outside"),
    A("mknod", "", ("EACCES", "EPERM"), what="mknod a char device in the download dir"),
    A("mount-tmpfs", "", ("EPERM",), what="mount tmpfs on a temp dir"),
    A("userns-then-mount", "", ("EPERM",),
      what="unshare(CLONE_NEWUSER|CLONE_NEWNS), then mount tmpfs"),
    A("chroot", "", ("EPERM",), what="chroot(2)"),
    A("bpf-map-create", "", ("EPERM",), what="bpf(BPF_MAP_CREATE, queue map)"),
    A("raw-socket", "", ("EPERM",), what="raw ICMP socket"),
    A("reboot", "", ("EPERM",), unconfined="EINVAL", what="reboot(2) with a bad magic"),
    A("settimeofday", "", ("EPERM",), what="settimeofday(NULL, NULL)"),
    A("proc-sys-write", "", what="write a sysctl (same value)"),
    A("sys-write", "", what="open a /sys file to write"),
    A("inherited-descriptor", "", ("EBADF",),
      what="write through a descriptor the orchestrator had open", effect="{fd_file}"),
    A("environment-secret", "", ("absent",),
      what="read a variable of the orchestrator's environment"),
]


def _unconfined_call(fn, *args):
    """fn(*args) in a plain forked child (no domain, no layer); its JSON value."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            data = json.dumps(fn(*args)).encode()
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


@dataclass
class DownloadRun:
    run: str
    spec: dict
    outcomes: dict[str, Outcome]
    not_enforced: list[str]
    kill_target: subprocess.Popen


@pytest.fixture(scope="module")
def download(tmp_path_factory, net, sleepers, monkeypatch_module) -> dict[str, DownloadRun]:
    if platform.machine() not in _SYSCALLS:
        pytest.skip(f"syscall numbers for {platform.machine()} not in this test")
    base = tmp_path_factory.mktemp("download")
    (base / "outside").mkdir()
    (base / "outside" / "secret").write_text("outside-secret\n")
    sysfs = _sysfs_target()
    monkeypatch_module.setenv(ENV_SECRET, "orchestrator-secret")
    runs = {}
    try:
        for run in RUNS:
            d = base / run
            cache = d / "cache"
            ddir = cache / "download-pkgsandbox"
            ddir.mkdir(parents=True)
            ddir.chmod(0o700)
            (d / "sync").mkdir()
            (d / "sync/test.db").write_text("db\n")
            (d / "pacman.log").write_text("log\n")
            (d / "mnt").mkdir()
            net.add_unix(d / "escape.sock")
            kill_t, ptrace_t = sleepers.start(), sleepers.start()
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            net.connect_to(port)
            fd_file = d / "inherited.log"
            fd = os.open(fd_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            spec = {"ddir": str(ddir), "cache": str(cache), "syncdb": str(d / "sync/test.db"),
                    "log": str(d / "pacman.log"),
                    "outside_file": str(base / "outside" / f"evil-{run}"),
                    "secret": str(base / "outside/secret"), "tcp": net.tcp_port,
                    "mirror": net.mirror_port, "udp": net.udp_port,
                    "abstract": net.abstract_name, "unix": str(d / "escape.sock"),
                    "kill_pid": kill_t.pid, "ptrace_pid": ptrace_t.pid, "mnt": str(d / "mnt"),
                    "listen_port": port, "sysfs": sysfs, "fd": fd, "fd_file": str(fd_file),
                    "tok": f"{run}:download:"}
            try:
                if run == "stock":
                    raw = _unconfined_call(_dl_attempts, spec)
                    not_enforced = []
                else:
                    lib = profile.Library(include_system=False)
                    policy = profile.resolve(lib.load("download"), {
                        "downloaddir": str(ddir), "server_ports": str(net.mirror_port)},
                        phase="download")
                    with enforce.prepare(policy, cap=int(SANDBOXED_RUNS[run])) as prepared:
                        # as Transaction._fetch calls it
                        raw = runner.call(_dl_attempts, spec, prepared=prepared, cwd=str(ddir),
                                          env=policy.environment.build(dict(os.environ)),
                                          timeout=60).value
                        not_enforced = prepared.report.uncovered()
            finally:
                os.close(fd)
            time.sleep(0.05)
            net.stop_connecting()
            outcomes = {k: Outcome(v[0], v[1], v[2]) for k, v in raw.items()}
            runs[run] = DownloadRun(run=run, spec=spec, outcomes=outcomes,
                                    not_enforced=not_enforced, kill_target=kill_t)
        _RESULTS["download"] = runs
        yield runs
    finally:
        _unmount_leftovers(base)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _dl_effect(a: Attempt, r: DownloadRun, net: Net) -> bool | None:
    wait = r.outcomes[a.name].ok
    if a.token:
        return _eventually(lambda: f"{r.run}:download:{a.name}" in net.tokens, wait)
    if a.name == "signal":
        return _eventually(lambda: _dead(r.kill_target), wait)
    if a.name == "tcp-bind":
        return r.spec["listen_port"] in net.reached
    if a.effect:
        path = Path(a.effect.format(**r.spec))
        return path.exists() and "pwned" in path.read_text(errors="replace")
    return None


@pytest.mark.parametrize("attempt", DOWNLOAD, ids=[a.name for a in DOWNLOAD])
def test_download_attempt_works_unconfined(download, net, attempt):
    r = download["stock"]
    o = r.outcomes[attempt.name]
    assert _works_unconfined(attempt, o), f"{attempt.name} unconfined: {o}"
    assert _dl_effect(attempt, r, net) in (None, True)


@pytest.mark.parametrize("attempt", [
    pytest.param(a, id=a.name, marks=[pytest.mark.xfail(strict=True, reason=a.gap)]
                 if a.gap else []) for a in DOWNLOAD])
def test_download_attempt_refused(download, net, attempt):
    for run in SANDBOXED_RUNS:
        r = download[run]
        o = r.outcomes[attempt.name]
        listed = attempt.listed_as is not None and any(
            i.split(":")[0] == attempt.listed_as for i in r.not_enforced)
        if run == "abi7" or not listed:
            assert not o.ok and o.errno in attempt.refused, \
                f"{run}: {attempt.name} not refused: {o}; not enforced: {r.not_enforced}"
            assert _dl_effect(attempt, r, net) in (None, False), f"{run}: effect seen"


def test_download_domain_still_does_its_job(download, net):
    for run in SANDBOXED_RUNS:
        r = download[run]
        assert r.outcomes["legit-mirror-connect"].ok, (run, r.outcomes["legit-mirror-connect"])
        assert r.outcomes["legit-write-part"].ok
        assert _eventually(lambda: f"{run}:download:mirror" in net.tokens, True)
    # UDP is what ABI 7 leaves open here (the gap above); UNIX sockets are closed by seccomp.
    # UDP is closed by the seccomp filter (names are resolved before the phase): nothing open
    assert set(download["abi7"].not_enforced) == set()
    for run in ("abi5", "abi3"):
        assert "signal" in download[run].not_enforced
    assert {"connect_tcp", "bind_tcp"} <= set(download["abi3"].not_enforced)


# ---------------------------------------------------------------------------------------------
# Legitimate work in the same domains: real account tools, /etc files the package owns, caches.

LEGIT_INSTALL = r"""post_install() {
  groupadd -r legitd
  useradd -r -g legitd -d /var/lib/legitd -s /usr/bin/nologin -c "legit daemon" legitd
  grep -qx /usr/bin/legitsh /etc/shells || echo /usr/bin/legitsh >> /etc/shells
  sed -i 's/^enabled=no$/enabled=yes/' /etc/legitd.conf
  chown legitd:legitd /var/lib/legitd
  chmod 750 /var/lib/legitd
  mkdir -p /var/cache/legitd && echo index > /var/cache/legitd/index
  echo 'text/x-legit' > /usr/share/mime/legit.cache
  mkdir -p /var/log/legitd && echo started > /var/log/legitd/install.log
  ln -sf /usr/share/legitd/data /var/cache/legitd/current
}
post_remove() {
  sed -i '/^\/usr\/bin\/legitsh$/d' /etc/shells
  rm -rf /var/cache/legitd /usr/share/mime/legit.cache
}
"""


def _copy_program(root: Path, program: str) -> None:
    """A host program and the shared libraries ldd names, into the root (same paths)."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, timeout=30).stdout
    for f in [program, *re.findall(r"(/\S+)", out)]:
        dest = root / f.lstrip("/")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(f), dest)


def test_legitimate_scriptlet_work_succeeds_like_stock_pacman(tmp_path):
    """Real shadow-utils groupadd/useradd (BusyBox's adduser/addgroup are not in Debian's
    busybox-static), sed -i on /etc/shells and on the package's own /etc file, caches in
    /var/cache and /usr/share/mime, a log: the sandboxed root ends identical to stock's."""
    from tests.support.twin import assert_twins, query
    tools = [shutil.which(t) for t in ("useradd", "groupadd")]
    if not all(tools):
        pytest.skip("shadow-utils useradd/groupadd not on this host")
    pkg = build_package(PkgSpec(name="legitd", install=LEGIT_INSTALL, files=(
        PkgFile(path="etc/legitd.conf", content=b"enabled=no\n"),
        PkgFile(path="usr/share/legitd/data", content=b"data\n"),
        PkgFile(path="usr/share/mime", directory=True),
        PkgFile(path="var/lib/legitd", directory=True)), backup=("etc/legitd.conf",)),
        tmp_path / "repo")
    roots = []
    for name in ("stock", "sandboxed"):
        root = new_root(tmp_path, name, "file:///nonexistent")
        for t in tools:
            _copy_program(root.path, t)
        (root.path / "etc/shells").write_text("/bin/sh\n")
        for f in ("shadow", "gshadow"):
            text = "root:*::0:::::\n" if f == "shadow" else "root:*::\n"
            (root.path / "etc" / f).write_text(text)
            (root.path / "etc" / f).chmod(0o600)
        roots.append(root)
    a, b = roots
    stock(a, "-U", str(pkg))
    r = sandboxed(b, "-U", str(pkg))
    assert "legitd" in (b.path / "etc/passwd").read_text()
    assert "legitd:x:" in (b.path / "etc/group").read_text()
    assert "/usr/bin/legitsh" in (b.path / "etc/shells").read_text()
    assert (b.path / "etc/legitd.conf").read_text() == "enabled=yes\n"
    assert (b.path / "var/cache/legitd/index").exists()
    assert " scriptlet " in r.stdout and "; ok" in r.stdout
    assert_twins(a, b)
    stock(a, "-R", "legitd")
    sandboxed(b, "-R", "legitd")
    assert "/usr/bin/legitsh" not in (b.path / "etc/shells").read_text()
    assert query(b, "-Q").stdout == ""
    assert_twins(a, b)


# ---------------------------------------------------------------------------------------------
# The table, for the report (PKGSANDBOX_ESCAPES_TABLE=FILE).

_RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    target = os.environ.get("PKGSANDBOX_ESCAPES_TABLE")
    if not target:
        return
    rows = ["| phase | attempt | unconfined | ABI 7 | ABI 5 | ABI 3 |",
            "|---|---|---|---|---|---|"]

    def cell(o, listed):
        if o is None:
            return "-"
        text = o.short()
        return text + (" (listed: not enforced)" if o.ok and listed else "")
    try:
        ch = _RESULTS.get("chrooted", {})
        for phase in CHROOTED_PHASES if ch else ():
            for a in CHROOTED:
                cells = [cell(ch["stock"].outcomes[phase].get(a.name), False)]
                for run in SANDBOXED_RUNS:
                    cells.append(cell(ch[run].outcomes[phase].get(a.name),
                                      a.listed_as in ch[run].not_enforced.get(phase, [])))
                gap = " **(known gap)**" if a.gap else ""
                rows.append(f"| {phase} | {a.name}: {a.what}{gap} | " + " | ".join(cells) + " |")
        pl = _RESULTS.get("payload")
        for p in PAYLOAD if pl else ():
            cells = ["installed" if _landed(pl["stock"].root.path, p) else "not installed"]
            for run in SANDBOXED_RUNS:
                cells.append(("installed!" if _landed(pl[run].root.path, p) else "refused")
                             + f" ({pl[run].domain.get(p.name)})")
            rows.append(f"| payload | {p.name}: {p.what} | " + " | ".join(cells) + " |")
        dl = _RESULTS.get("download")
        for a in DOWNLOAD if dl else ():
            cells = [cell(dl["stock"].outcomes.get(a.name), False)]
            for run in SANDBOXED_RUNS:
                cells.append(cell(dl[run].outcomes.get(a.name), any(
                    i.split(":")[0] == a.listed_as for i in dl[run].not_enforced)))
            gap = " **(known gap)**" if a.gap else ""
            rows.append(f"| download | {a.name}: {a.what}{gap} | " + " | ".join(cells) + " |")
    except Exception as exc:   # noqa: BLE001 - the table is a by-product
        rows.append(f"(table incomplete: {type(exc).__name__}: {exc})")
    Path(target).write_text("\n".join(rows) + "\n")
