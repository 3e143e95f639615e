"""`pkgsandbox fetch URL -o OUTPUT` (pacman's XferCommand) and the alpm hook pkgsandbox ships.

1. download.fetch_into(): one job into an open descriptor (pure Python, no domain).
2. xfer.command() against the loopback mirror (tests/support/mirror.py), as pacman.conf's
   DownloadUser: success, 404, a mirror that is down, resume of an existing OUTPUT, wrong sizes,
   endless bodies, the deadline, a redirect to another port, file:// and https://; OUTPUT is
   the only file written, owned by root, and a missing DownloadUser is an error.
3. The domain xfer.policy_for() builds, seen from inside (runner.call, as root so that only
   Landlock can refuse): no file can be created beside OUTPUT, OUTPUT itself cannot be
   reopened for writing, and only the URL's port can be connected to.
4. The CLI as pacman runs it, then stock pacman 6 with `XferCommand = .../pkgsandbox fetch %u
   -o %o --config ...`: -Sy and -S from a loopback mirror into a throwaway root, a resumed
   .part, a failed download, a missing DownloadUser.
5. hooks/pkgsandbox-inspect.hook as stock pacman parses and runs it.

Everything lives under tmp_path (or a world-readable temp directory removed at the end); the
mirrors listen on 127.0.0.1 only. The system user pkgsandbox-dl is created if missing and
never deleted.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pkgsandbox import abi, enforce, landlock, profile, runner
from pkgsandbox.errors import BadInput, RequirementError, SetupError
from pkgsandbox.phases import xfer
from pkgsandbox.phases.download import Job, fetch_into
from pkgsandbox.repobuild import PkgFile, PkgSpec, build_repo
from tests.support.mirror import Fault, Mirror, down_url, fill
from tests.support.twin import new_root, query, stock

KERNEL = landlock.probe()
ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINT = Path(sys.executable).parent / "pkgsandbox"
DL_USER = "pkgsandbox-dl"
MTIME = 1_700_000_000
SIZES = {"small.pkg.tar.zst": 100_000, "big.pkg.tar.zst": 1_000_000, "core.db": 7_777,
         "small.pkg.tar.zst.sig": 566}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (DownloadUser, chroot)")
needs_net_rules = pytest.mark.skipif(
    KERNEL.abi < 4, reason=f"Landlock TCP rules need ABI 4 (kernel: {KERNEL.abi}, {KERNEL.state})")
needs_pacman = pytest.mark.skipif(shutil.which("pacman") is None or not ENTRY_POINT.exists(),
                                  reason="needs stock pacman and the pkgsandbox entry point")



@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    return root, fill(root, SIZES, MTIME)


@pytest.fixture
def mirror(repo):
    with Mirror(repo[0]) as m:
        yield m


@pytest.fixture(scope="module")
def dl_user():
    """The test's DownloadUser, created once if missing (and never deleted)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the download user")
    if subprocess.run(["getent", "passwd", DL_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", DL_USER], check=True, capture_output=True)
    return runner.User.lookup(DL_USER)


@pytest.fixture
def conf(tmp_path, dl_user):
    path = tmp_path / "pacman.conf"
    path.write_text(f"[options]\nArchitecture = auto\nDownloadUser = {DL_USER}\n")
    return path


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "cache"
    d.mkdir()
    return d


class Fetch:
    """xfer.command() with its output and error lines collected."""

    def __init__(self, conf):
        self.conf = conf
        self.out: list[str] = []
        self.err: list[str] = []

    def __call__(self, url, output, *, as_json=False, **kw) -> int:
        self.out, self.err = [], []
        return xfer.command(url, str(output), conf_path=str(self.conf),
                            library=profile.Library(include_system=False), cap=None,
                            compat=None, as_json=as_json, out=self.out.append,
                            err=self.err.append, **kw)


@pytest.fixture
def fetch(conf):
    return Fetch(conf)


def write_part(path: Path, data: bytes, mtime: float = MTIME) -> None:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def listing(d: Path) -> set[str]:
    return set(os.listdir(d))


# ---------------------------------------------------------------------------------------------
# 1. fetch_into(): one job into a descriptor.

def open_rw(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def test_fetch_into_writes_through_the_descriptor_only(repo, mirror, tmp_path):
    path = tmp_path / "x.part"
    fd = open_rw(path)
    try:
        result = fetch_into(Job(name="x", urls=(f"{mirror.url}/big.pkg.tar.zst",)), fd)
    finally:
        os.close(fd)
    assert result["status"] == "downloaded" and result["size"] == 1_000_000, result
    assert result["mtime"] == MTIME
    assert path.read_bytes() == repo[1]["big.pkg.tar.zst"]
    assert path.stat().st_mtime == MTIME
    assert listing(tmp_path) == {"x.part"}             # nothing renamed, nothing beside it


def test_fetch_into_resumes_and_restarts(repo, mirror, tmp_path):
    data = repo[1]["big.pkg.tar.zst"]
    path = tmp_path / "x.part"
    write_part(path, data[:400_000])
    fd = open_rw(path)
    try:
        assert fetch_into(Job(name="x", urls=(f"{mirror.url}/big.pkg.tar.zst",)),
                          fd)["status"] == "downloaded"
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    [req] = mirror.requests_for("big.pkg.tar.zst")
    assert req.header("Range") == "bytes=400000-" and req.status == 206
    # bytes of another version (mtime != Last-Modified): fetched whole, the old bytes gone
    write_part(path, b"\0" * 500_000, mtime=MTIME - 50)
    fd = open_rw(path)
    try:
        assert fetch_into(Job(name="x", urls=(f"{mirror.url}/big.pkg.tar.zst",)),
                          fd)["status"] == "downloaded"
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert mirror.requests_for("big.pkg.tar.zst")[-1].status == 200


def test_fetch_into_failure_keeps_a_resumable_part_or_truncates(repo, mirror, tmp_path):
    path = tmp_path / "x.part"
    fd = open_rw(path)
    try:
        short = fetch_into(Job(name="x", urls=(mirror.fault_url("core.db", drop_after=3000),)),
                           fd)
        assert short["status"] == "failed" and short["size"] == 3000, short
        assert short["mtime"] == MTIME                     # what the kept bytes are part of
        huge = fetch_into(Job(name="x", urls=(f"{mirror.url}/big.pkg.tar.zst",),
                              max_size=10_000), fd)
        assert huge["status"] == "failed" and "too large" in huge["error"], huge
        assert huge["size"] == 0 and huge["mtime"] is None  # discarded: truncated, not unlinked
    finally:
        os.close(fd)
    assert path.exists() and path.stat().st_size == 0
    assert listing(tmp_path) == {"x.part"}


def test_fetch_into_rejects_what_it_cannot_write(tmp_path, mirror):
    job = Job(name="x", urls=(f"{mirror.url}/core.db",))
    path = tmp_path / "ro"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    r, w = os.pipe()
    try:
        with pytest.raises(BadInput, match="not open for writing"):
            fetch_into(job, fd)
        with pytest.raises(BadInput, match="not a regular file"):
            fetch_into(job, w)
        with pytest.raises(BadInput, match="not a download job"):
            fetch_into("x", w)
        with pytest.raises(BadInput, match="deadline"):
            fetch_into(job, fd, deadline=0)
    finally:
        for d in (fd, r, w):
            os.close(d)
    assert mirror.requests == []


@pytest.mark.parametrize("name, cap", [
    ("core.db", xfer.DB_MAX_SIZE), ("extra.files", xfer.DB_MAX_SIZE),
    ("core.db.tar.gz", xfer.DB_MAX_SIZE), ("core.db.sig", xfer.SIG_MAX_SIZE),
    ("hello-1.0-1-any.pkg.tar.zst.sig", xfer.SIG_MAX_SIZE),
    ("hello-1.0-1-any.pkg.tar.zst", xfer.PACKAGE_MAX_SIZE),
    ("dbus-1.0-1-x86_64.pkg.tar.zst", xfer.PACKAGE_MAX_SIZE)])
def test_max_size_follows_libalpm_caps(name, cap):
    assert xfer.max_size_for(name) == cap
    assert xfer.job_for("http://m/x", f"/var/cache/pacman/pkg/{name}.part").name == name
    assert xfer.job_for("http://m/x", f"/var/cache/pacman/pkg/{name}.part").max_size == cap


# ---------------------------------------------------------------------------------------------
# 2. The command against the loopback mirror, as DownloadUser.

@needs_net_rules
def test_success_writes_only_output_owned_by_root(repo, mirror, fetch, out_dir):
    output = out_dir / "small.pkg.tar.zst.part"
    assert fetch(f"{mirror.url}/small.pkg.tar.zst", output) == 0
    assert fetch.out == [] and fetch.err == []               # quiet on success
    assert output.read_bytes() == repo[1]["small.pkg.tar.zst"]
    st = output.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o644 & ~_umask())
    assert st.st_mtime == MTIME
    assert listing(out_dir) == {"small.pkg.tar.zst.part"}     # output written, nothing else
    [req] = mirror.requests
    assert req.status == 200 and req.header("Range") is None
    assert req.header("User-Agent").startswith("pkgsandbox/")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@needs_net_rules
def test_json_report_shows_the_domain_and_the_user(repo, mirror, fetch, out_dir):
    output = out_dir / "core.db.part"
    assert fetch(f"{mirror.url}/core.db", output, as_json=True) == 0
    data = json.loads("\n".join(fetch.out))
    assert data["status"] == "downloaded" and data["size"] == SIZES["core.db"]
    report = data["report"]
    assert report["landlock"] and report["phase"] == "download" and report["user"] == DL_USER
    assert "write_file" in report["handled_fs"] and "connect_tcp" in report["handled_net"]
    assert fetch.err == []


@needs_net_rules
def test_404_fails_with_one_line_and_leaves_nothing(mirror, fetch, out_dir):
    output = out_dir / "missing.pkg.tar.zst.part"
    assert fetch(f"{mirror.url}/missing.pkg.tar.zst", output) == 1
    assert fetch.out == []
    [line] = fetch.err
    assert line.startswith("pkgsandbox: error: failed retrieving missing.pkg.tar.zst: ")
    assert "HTTP 404" in line
    assert listing(out_dir) == set()                           # the empty file it made: gone


@needs_net_rules
def test_a_mirror_that_is_down(fetch, out_dir):
    assert fetch(down_url("/core.db"), out_dir / "core.db.part") == 1
    [line] = fetch.err
    assert "Connection refused (ECONNREFUSED)" in line
    assert listing(out_dir) == set()


@needs_net_rules
def test_resume_of_an_existing_output(repo, mirror, fetch, out_dir):
    data = repo[1]["big.pkg.tar.zst"]
    output = out_dir / "big.pkg.tar.zst.part"
    write_part(output, data[:123_456])
    assert fetch(f"{mirror.url}/big.pkg.tar.zst", output) == 0, fetch.err
    assert output.read_bytes() == data and output.stat().st_uid == 0
    [req] = mirror.requests
    assert req.header("Range") == "bytes=123456-" and req.status == 206
    assert listing(out_dir) == {"big.pkg.tar.zst.part"}


@needs_net_rules
def test_a_failed_download_is_resumed_by_the_next_run(repo, mirror, fetch, out_dir):
    """The bytes of a dropped connection are kept, dated with their Last-Modified by the
    parent (the child may not: the file is root's), so the next run's If-Range matches."""
    data = repo[1]["big.pkg.tar.zst"]
    output = out_dir / "big.pkg.tar.zst.part"
    assert fetch(mirror.fault_url("big.pkg.tar.zst", drop_after=300_000), output) == 1
    assert "short" in fetch.err[0] or "ended" in fetch.err[0], fetch.err
    assert output.stat().st_size == 300_000 and output.stat().st_mtime == MTIME
    assert fetch(f"{mirror.url}/big.pkg.tar.zst", output) == 0, fetch.err
    assert output.read_bytes() == data
    last = mirror.requests[-1]
    assert last.header("Range") == "bytes=300000-" and last.status == 206


@needs_net_rules
def test_wrong_sizes(repo, mirror, fetch, out_dir):
    # declared longer than sent: short, bytes kept; the complete .part finishes on a 416
    output = out_dir / "core.db.part"
    assert fetch(mirror.fault_url("core.db", content_length=20_000), output) == 1
    assert "short" in fetch.err[0] and output.stat().st_size == SIZES["core.db"]
    assert fetch(f"{mirror.url}/core.db", output) == 0, fetch.err
    assert output.read_bytes() == repo[1]["core.db"]
    assert mirror.requests[-1].status == 416
    # more bytes than declared: cut at the declared length
    output2 = out_dir / "small.pkg.tar.zst.part"
    assert fetch(mirror.fault_url("small.pkg.tar.zst", extra=5000), output2) == 0
    assert output2.read_bytes() == repo[1]["small.pkg.tar.zst"]
    # declared larger than the cap: refused before a byte is written
    output3 = out_dir / "big.pkg.tar.zst.part"
    assert fetch(f"{mirror.url}/big.pkg.tar.zst", output3, max_size=10_000) == 1
    assert "too large: the server declares 1000000 bytes" in fetch.err[0]
    assert not output3.exists()
    # an existing output larger than a signature may be: discarded, fetched whole
    sig = out_dir / "small.pkg.tar.zst.sig.part"
    write_part(sig, b"\xff" * (xfer.SIG_MAX_SIZE + 1))
    assert fetch(f"{mirror.url}/small.pkg.tar.zst.sig", sig) == 0, fetch.err
    assert sig.read_bytes() == repo[1]["small.pkg.tar.zst.sig"]
    assert mirror.requests[-1].header("Range") is None
    assert listing(out_dir) == {"core.db.part", "small.pkg.tar.zst.part",
                                "small.pkg.tar.zst.sig.part"}


@needs_net_rules
@pytest.mark.parametrize("name, kw, limit", [
    ("core.db.sig", {}, xfer.SIG_MAX_SIZE),
    ("huge.pkg.tar.zst", {"max_size": 4 << 20}, 4 << 20)])
def test_an_endless_body_is_bounded(mirror, fetch, out_dir, name, kw, limit):
    output = out_dir / f"{name}.part"
    started = time.monotonic()
    assert fetch(mirror.fault_url("core.db", endless=True), output, **kw) == 1
    assert time.monotonic() - started < 10
    [line] = fetch.err
    assert f"too large: more than {limit} bytes" in line
    assert listing(out_dir) == set()


@needs_net_rules
def test_a_trickle_ends_at_the_deadline_with_its_bytes_kept(mirror, fetch, out_dir):
    output = out_dir / "big.pkg.tar.zst.part"
    started = time.monotonic()
    assert fetch(mirror.fault_url("big.pkg.tar.zst", stall=2, stall_after=1000), output,
                 deadline=1) == 1
    assert time.monotonic() - started < 6
    assert "took longer than 1 s" in fetch.err[0]
    assert 1000 <= output.stat().st_size < SIZES["big.pkg.tar.zst"]
    assert output.stat().st_mtime == MTIME


@needs_net_rules
def test_a_redirect_to_another_port_fails(repo, mirror, fetch, out_dir):
    with Mirror(repo[0]) as other:
        url = mirror.fault_url("core.db", redirect=f"{other.url}/core.db")
        assert fetch(url, out_dir / "core.db.part") == 1
        assert other.requests == []
    [line] = fetch.err
    assert f"port {other.port} is not a mirror port" in line
    assert listing(out_dir) == set()


@needs_net_rules
def test_https_with_the_test_ca(repo, fetch, out_dir):
    with Mirror(repo[0], tls=True) as tls:
        output = out_dir / "core.db.part"
        assert fetch(f"{tls.url}/core.db", output, ca_file=tls.ca_file) == 0, fetch.err
        assert output.read_bytes() == repo[1]["core.db"]
        assert fetch(f"{tls.url}/small.pkg.tar.zst", out_dir / "small.part") == 1
        assert "certificate verification failed" in fetch.err[0]


@needs_root
def test_file_url_reads_only_its_source(repo, fetch, out_dir):
    src = tempfile.mkdtemp(prefix="pkgsandbox-fetch-src-")
    try:
        os.chmod(src, 0o755)                 # the download user must reach it
        shutil.copy2(repo[0] / "core.db", src)
        os.chmod(os.path.join(src, "core.db"), 0o644)
        Path(src, "other").write_bytes(b"secret")
        os.chmod(os.path.join(src, "other"), 0o644)
        output = out_dir / "core.db.part"
        assert fetch(f"file://{src}/core.db", output) == 0, fetch.err
        assert output.read_bytes() == repo[1]["core.db"]
        assert output.stat().st_mtime == MTIME
        assert listing(out_dir) == {"core.db.part"}
        # the grant is that one file: its neighbour is not readable in the domain
        policy = xfer.policy_for(f"file://{src}/core.db", library=profile.Library(
            include_system=False))
        with enforce.prepare(policy) as prepared:
            value = runner.call(read_files, [os.path.join(src, "core.db"),
                                             os.path.join(src, "other")],
                                prepared=prepared, timeout=60).value
        assert value == ["ok", "EACCES"]
    finally:
        shutil.rmtree(src)


def read_files(paths):
    out = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                f.read(1)
            out.append("ok")
        except OSError as exc:
            out.append(errno.errorcode[exc.errno])
    return out


@needs_net_rules
def test_output_must_be_a_plain_file(repo, mirror, fetch, out_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = out_dir / "core.db.part"
    link.symlink_to(victim)
    with pytest.raises(BadInput, match="not a regular file"):
        fetch(f"{mirror.url}/core.db", link)
    link.unlink()
    os.link(victim, link)
    with pytest.raises(BadInput, match="2 hard links"):
        fetch(f"{mirror.url}/core.db", link)
    with pytest.raises(BadInput, match="not a regular file"):
        fetch(f"{mirror.url}/core.db", out_dir)
    with pytest.raises(BadInput, match="unsupported URL scheme"):
        fetch("ftp://127.0.0.1/core.db", out_dir / "x.part")
    assert victim.read_bytes() == b"keep" and mirror.requests == []


@needs_root
def test_a_missing_download_user_is_an_error(mirror, tmp_path, out_dir):
    conf = tmp_path / "nouser.conf"
    conf.write_text("[options]\nDownloadUser = pkgsandbox-no-such-user\n")
    with pytest.raises(SetupError) as exc:
        Fetch(conf)(f"{mirror.url}/core.db", out_dir / "core.db.part")
    message = exc.value.message
    assert "DownloadUser 'pkgsandbox-no-such-user'" in message and str(conf) in message
    assert "useradd --system" in message and "never falls back" in message
    assert mirror.requests == [] and listing(out_dir) == set()


@needs_root
@needs_net_rules
def test_without_download_user_it_runs_as_root_in_the_domain(repo, mirror, tmp_path, out_dir):
    conf = tmp_path / "root.conf"
    conf.write_text("[options]\nArchitecture = auto\n")
    f = Fetch(conf)
    output = out_dir / "core.db.part"
    assert f(f"{mirror.url}/core.db", output, as_json=True) == 0, f.err
    report = json.loads("\n".join(f.out))["report"]
    assert report["user"] == "" and report["landlock"]
    assert output.read_bytes() == repo[1]["core.db"] and listing(out_dir) == {"core.db.part"}


@needs_root
def test_without_landlock_it_says_so_or_refuses(repo, mirror, conf, out_dir):
    """No Landlock (the ABI capped at 0): best-effort downloads, loudly; hard-requirement
    refuses before anything is opened or fetched."""
    f = Fetch(conf)
    output = out_dir / "core.db.part"
    assert xfer.command(f"{mirror.url}/core.db", str(output), conf_path=str(conf),
                        library=profile.Library(include_system=False), cap=0, compat=None,
                        as_json=False, out=f.out.append, err=f.err.append) == 0
    assert f.out == [] and len(f.err) == 1
    assert f.err[0].startswith("pkgsandbox: WARNING: download [download] runs WITHOUT Landlock")
    assert output.read_bytes() == repo[1]["core.db"]
    with pytest.raises(RequirementError):
        xfer.command(f"{mirror.url}/core.db", str(out_dir / "again.part"),
                     conf_path=str(conf), library=profile.Library(include_system=False),
                     cap=0, compat=abi.Compat.HARD_REQUIREMENT, as_json=False, out=f.out.append,
                     err=f.err.append)
    assert listing(out_dir) == {"core.db.part"} and len(mirror.requests) == 1


# ---------------------------------------------------------------------------------------------
# 3. Inside the domain policy_for() builds (as root: only Landlock can refuse).

WRITE_RIGHTS = {"write_file", "truncate", "remove_file", "remove_dir", "make_reg", "make_dir",
                "make_sym", "make_sock", "make_fifo", "make_char", "make_block", "refer"}


def test_the_policy_grants_no_write_but_dev_null(mirror):
    policy = xfer.policy_for(f"{mirror.url}/core.db",
                             library=profile.Library(include_system=False))
    writable = [g.path for g in policy.paths if g.rights & WRITE_RIGHTS]
    assert writable == ["/dev/null"]
    assert [(p.port, p.right) for p in policy.ports if p.right == "connect_tcp"] \
        == [(mirror.port, "connect_tcp")]
    assert not any(p.right == "bind_tcp" for p in policy.ports)
    assert WRITE_RIGHTS - {"refer"} <= policy.handled_fs     # handled, so denied


def try_writes(output: str, sibling: str, elsewhere: str) -> dict:
    out = {}
    for label, path, flags in (("sibling", sibling, os.O_WRONLY | os.O_CREAT),
                               ("reopen output", output, os.O_WRONLY | os.O_APPEND),
                               ("truncate output", output, os.O_WRONLY | os.O_TRUNC),
                               ("elsewhere", elsewhere, os.O_WRONLY | os.O_CREAT)):
        try:
            os.close(os.open(path, flags, 0o644))
            out[label] = "ok"
        except OSError as exc:
            out[label] = errno.errorcode[exc.errno]
    try:
        os.rename(output, sibling)
        out["rename output"] = "ok"
    except OSError as exc:
        out["rename output"] = errno.errorcode[exc.errno]
    return out


@needs_root
@needs_net_rules
def test_in_the_domain_nothing_can_be_written_by_path(mirror, out_dir, tmp_path):
    output = out_dir / "core.db.part"
    output.write_bytes(b"part")
    policy = xfer.policy_for(f"{mirror.url}/core.db",
                             library=profile.Library(include_system=False))
    with enforce.prepare(policy) as prepared:
        assert prepared.report.landlock
        value = runner.call(try_writes, str(output), str(out_dir / "sibling"),
                            str(tmp_path / "elsewhere"), prepared=prepared, timeout=60).value
    assert value == {"sibling": "EACCES", "reopen output": "EACCES",
                     "truncate output": "EACCES", "elsewhere": "EACCES",
                     "rename output": "EACCES"}
    assert listing(out_dir) == {"core.db.part"} and output.read_bytes() == b"part"
    assert not (tmp_path / "elsewhere").exists()


def try_connect(ports) -> dict:
    out = {}
    for port in ports:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            out[port] = "ok"
        except OSError as exc:
            out[port] = errno.errorcode[exc.errno]
    return out


@needs_net_rules
def test_in_the_domain_only_the_url_port_connects(repo, mirror):
    with Mirror(repo[0]) as other:
        policy = xfer.policy_for(f"{mirror.url}/core.db",
                                 library=profile.Library(include_system=False))
        with enforce.prepare(policy) as prepared:
            value = runner.call(try_connect, [mirror.port, other.port], prepared=prepared,
                                timeout=60).value
        assert other.requests == []
    assert value == {str(mirror.port): "ok", str(other.port): "EACCES"}


@needs_root
@needs_net_rules
def test_the_domain_on_older_abis_still_writes_nothing_by_path(mirror, out_dir, tmp_path):
    """With the ABI capped at 1 (no TCP rules, no truncate right) the filesystem part
    holds: the descriptor is still the only way to OUTPUT."""
    output = out_dir / "core.db.part"
    output.write_bytes(b"part")
    policy = xfer.policy_for(f"{mirror.url}/core.db",
                             library=profile.Library(include_system=False))
    with enforce.prepare(policy, cap=1) as prepared:
        assert prepared.report.abi == 1 and prepared.report.landlock
        value = runner.call(try_writes, str(output), str(out_dir / "sibling"),
                            str(tmp_path / "elsewhere"), prepared=prepared, timeout=60).value
    assert value["sibling"] == value["reopen output"] == value["elsewhere"] == "EACCES"
    assert listing(out_dir) == {"core.db.part"}


def lingering_writer(job, fd, **_):
    """A compromised download child: it leaves a writer behind (in a session of its own) that
    changes the file a second later, after pacman would have verified it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()                   # out of the child's process group
            os.write(w, b"!")
            time.sleep(1)
            os.pwrite(fd, b"EVIL", 0)
        finally:
            os._exit(0)
    os.read(r, 1)                         # it has left the group
    os.pwrite(fd, b"good", 0)
    return {"name": job.name, "status": "downloaded", "url": job.urls[0], "size": 4,
            "mtime": None, "error": "", "lingering": pid}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@needs_root
@pytest.mark.parametrize("reaper", [True, False])
def test_the_child_cannot_leave_a_writer_behind(monkeypatch, mirror, out_dir, dl_user, reaper):
    """With the reaper (as built), whatever the child left is killed before fetch returns;
    without it (the control) the attack works, so the test can see it."""
    monkeypatch.setattr(xfer.download, "fetch_into", lingering_writer)
    if not reaper:
        monkeypatch.setattr(xfer.runner.Reaper, "sweep", lambda self: 0)
    output = out_dir / "x.part"
    policy = xfer.policy_for(f"{mirror.url}/core.db",
                             library=profile.Library(include_system=False))
    with enforce.prepare(policy) as prepared:
        result = xfer.fetch(f"{mirror.url}/core.db", str(output), prepared=prepared,
                            user=dl_user)
    pid = result["lingering"]
    if reaper:
        assert not alive(pid)
        time.sleep(1.5)
        assert output.read_bytes() == b"good"
    else:
        try:
            os.waitpid(pid, 0)            # re-parented here (the reaper was active)
        except ChildProcessError:
            deadline = time.monotonic() + 5
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert output.read_bytes() == b"EVIL"
    assert os.popen("true").close() is None       # this process still forks normally


# ---------------------------------------------------------------------------------------------
# 4. As pacman runs it: the CLI, then stock pacman with the XferCommand.

def cli(*args, cwd=None, timeout=60):
    env = dict(os.environ)
    env.pop("PKGSANDBOX_ABI", None)
    return subprocess.run([str(ENTRY_POINT), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=cwd or "/", env=env, timeout=timeout)


@needs_pacman
@needs_net_rules
def test_the_cli_as_pacman_runs_it(repo, mirror, conf, out_dir, tmp_path):
    r = cli("fetch", f"{mirror.url}/core.db", "-o", str(out_dir / "core.db.part"),
            "--config", str(conf), cwd=out_dir)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert (out_dir / "core.db.part").read_bytes() == repo[1]["core.db"]
    # a relative OUTPUT is relative to the working directory (pacman's download directory)
    r = cli("fetch", f"{mirror.url}/small.pkg.tar.zst", "-o", "small.pkg.tar.zst.part",
            "--config", str(conf), cwd=out_dir)
    assert r.returncode == 0, r.stderr
    assert (out_dir / "small.pkg.tar.zst.part").read_bytes() == repo[1]["small.pkg.tar.zst"]
    r = cli("fetch", f"{mirror.url}/nope.db", "-o", str(out_dir / "nope.db.part"),
            "--config", str(conf))
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "HTTP 404" in r.stderr
    nouser = tmp_path / "nouser.conf"
    nouser.write_text("[options]\nDownloadUser = pkgsandbox-no-such-user\n")
    r = cli("fetch", f"{mirror.url}/core.db", "-o", str(out_dir / "x.part"), "--config",
            str(nouser))
    assert r.returncode == 121 and len(r.stderr.splitlines()) == 1
    assert "pkgsandbox-no-such-user" in r.stderr and "useradd" in r.stderr
    assert listing(out_dir) == {"core.db.part", "small.pkg.tar.zst.part"}


HELLO = "hello-1.0-1-any.pkg.tar.zst"
LIBFOO = "libfoo-1.0-1-any.pkg.tar.zst"


@pytest.fixture
def pkg_repo(tmp_path):
    d = tmp_path / "pkgrepo"
    build_repo([
        PkgSpec(name="libfoo", files=(PkgFile(path="usr/lib/libfoo.so", content=b"libfoo"),)),
        PkgSpec(name="hello", depends=("libfoo",),
                files=(PkgFile(path="usr/bin/hello", content=b"#!/bin/sh\necho hello\n",
                               mode=0o755),)),
    ], d)
    return d


@pytest.fixture
def pkg_mirror(pkg_repo):
    with Mirror(pkg_repo) as m:
        yield m


def xfer_root(tmp_path, name, server, *, user=DL_USER, extra=""):
    conf = tmp_path / f"{name}.conf"        # twin.new_root writes the conf here
    options = (f"XferCommand = {ENTRY_POINT} fetch %u -o %o --config {conf}\n"
               f"DownloadUser = {user}\n{extra}")
    root = new_root(tmp_path, name, server, extra_options=options)
    assert root.conf == conf
    return root


def cache(root) -> dict[str, tuple]:
    d = root.path / "var/cache/pacman/pkg"
    return {p.name: (p.stat().st_uid, p.stat().st_size) for p in d.iterdir()}


@needs_pacman
@needs_net_rules
def test_stock_pacman_downloads_through_pkgsandbox_fetch(pkg_repo, pkg_mirror, tmp_path,
                                                         dl_user):
    root = xfer_root(tmp_path, "stock", pkg_mirror.url)
    stock(root, "-Sy")
    assert (root.path / "var/lib/pacman/sync/test.db").is_file()
    r = stock(root, "-S", "hello")
    assert query(root, "-Q").stdout == "hello 1.0-1\nlibfoo 1.0-1\n", r.stdout + r.stderr
    assert (root.path / "usr/bin/hello").read_bytes() == b"#!/bin/sh\necho hello\n"
    # every request came from pkgsandbox fetch, and the cache holds root's whole packages
    assert {q.file for q in pkg_mirror.requests} == {"/test.db", f"/{HELLO}", f"/{LIBFOO}"}
    assert all(q.header("User-Agent").startswith("pkgsandbox/") and q.status == 200
               for q in pkg_mirror.requests), pkg_mirror.requests
    assert cache(root) == {HELLO: (0, (pkg_repo / HELLO).stat().st_size),
                           LIBFOO: (0, (pkg_repo / LIBFOO).stat().st_size)}
    assert "error" not in r.stderr.replace("DownloadUser", ""), r.stderr


@needs_pacman
@needs_net_rules
def test_stock_pacman_resumes_a_part_through_pkgsandbox_fetch(pkg_repo, pkg_mirror,
                                                              tmp_path, dl_user):
    root = xfer_root(tmp_path, "stock", pkg_mirror.url)
    stock(root, "-Sy")
    data = (pkg_repo / HELLO).read_bytes()
    part = root.path / "var/cache/pacman/pkg" / f"{HELLO}.part"
    write_part(part, data[:len(data) // 2], mtime=(pkg_repo / HELLO).stat().st_mtime)
    stock(root, "-S", "hello")
    assert query(root, "-Q").stdout == "hello 1.0-1\nlibfoo 1.0-1\n"
    [req] = pkg_mirror.requests_for(HELLO)
    assert req.header("Range") == f"bytes={len(data) // 2}-" and req.status == 206
    assert (root.path / "var/cache/pacman/pkg" / HELLO).read_bytes() == data
    assert not part.exists()


@needs_pacman
@needs_net_rules
def test_stock_pacman_when_the_download_fails(pkg_repo, pkg_mirror, tmp_path, dl_user):
    root = xfer_root(tmp_path, "stock", pkg_mirror.url)
    stock(root, "-Sy")
    pkg_mirror.set_fault(HELLO, Fault(status=404))
    r = stock(root, "-S", "hello", check=False)
    assert r.returncode == 1
    ours = [line for line in r.stderr.splitlines() if line.startswith("pkgsandbox: ")]
    assert ours == [f"pkgsandbox: error: failed retrieving {HELLO}: "
                    f"{pkg_mirror.url}/{HELLO}: HTTP 404 Not Found"], r.stderr
    assert "error: failed to commit transaction (error invoking external downloader)" \
        in r.stderr
    assert query(root, "-Q").stdout == ""
    assert not any(n.startswith("hello") for n in cache(root))


@needs_pacman
@needs_net_rules
def test_stock_pacman_with_a_missing_download_user(pkg_mirror, tmp_path):
    root = xfer_root(tmp_path, "stock", pkg_mirror.url, user="pkgsandbox-no-such-user")
    r = stock(root, "-Sy", check=False)
    assert r.returncode == 1
    assert "DownloadUser 'pkgsandbox-no-such-user'" in r.stderr
    assert "never falls back to downloading as root" in r.stderr
    assert pkg_mirror.requests == []
    assert not (root.path / "var/lib/pacman/sync/test.db").exists()


# ---------------------------------------------------------------------------------------------
# 5. hooks/pkgsandbox-inspect.hook, parsed and run by stock pacman.

HOOK = ROOT / "hooks/pkgsandbox-inspect.hook"


def hook_lines() -> list[tuple[str, str]]:
    out, section = [], None
    for line in HOOK.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("["):
            section = s
            continue
        key, _, value = s.partition("=")
        out.append((section, f"{key.strip()}={value.strip()}" if value else key.strip()))
    return out


def test_the_hook_says_what_it_must():
    lines = hook_lines()
    assert lines == [
        ("[Trigger]", "Operation=Install"), ("[Trigger]", "Operation=Upgrade"),
        ("[Trigger]", "Type=Package"), ("[Trigger]", "Target=*"),
        ("[Action]", "Description=Inspecting package archives in a Landlock sandbox "
                     "(pkgsandbox)..."),
        ("[Action]", "When=PreTransaction"),
        ("[Action]", "Exec=/usr/bin/pkgsandbox inspect --pending"),
        ("[Action]", "AbortOnFail"), ("[Action]", "NeedsTargets")]


@pytest.mark.parametrize("status", [0, 1])
@needs_pacman
@needs_root
def test_stock_pacman_runs_the_hook_and_aborts_on_failure(pkg_repo, pkg_mirror, tmp_path,
                                                          status):
    """The shipped file, unmodified, in the root's hook directory; /usr/bin/pkgsandbox inside
    the root (pacman runs hooks chrooted) is a stand-in that records its arguments and stdin
    and exits with `status`."""
    root = new_root(tmp_path, "hooked", pkg_mirror.url)
    shutil.copy(HOOK, root.path / "etc/pacman.d/hooks" / HOOK.name)
    stand_in = root.path / "usr/bin/pkgsandbox"
    stand_in.write_text('#!/bin/sh\necho "$@" > /var/log/inspect-args\n'
                        'ls /var/cache/pacman/pkg > /var/log/inspect-cache\n'
                        f'cat > /var/log/inspect-stdin\nexit {status}\n')
    stand_in.chmod(0o755)
    stock(root, "-Sy")
    r = stock(root, "-S", "hello", check=False)
    text = r.stdout + r.stderr
    assert "Inspecting package archives in a Landlock sandbox (pkgsandbox)..." in text, text
    assert "invalid" not in text and "warning" not in text.lower(), text   # parsed cleanly
    assert (root.path / "var/log/inspect-args").read_text() == "inspect --pending\n"
    stdin = (root.path / "var/log/inspect-stdin").read_text().split()
    assert sorted(stdin) == ["hello", "libfoo"]
    # it runs once the archives are in the cache, before anything is extracted
    assert (root.path / "var/log/inspect-cache").read_text().split() == [HELLO, LIBFOO]
    if status == 0:
        assert r.returncode == 0, text
        assert query(root, "-Q").stdout == "hello 1.0-1\nlibfoo 1.0-1\n"
    else:
        assert r.returncode == 1, text
        assert "failed to commit transaction" in r.stderr, text
        assert query(root, "-Q").stdout == ""                  # AbortOnFail: nothing landed
        assert not (root.path / "usr/bin/hello").exists()
