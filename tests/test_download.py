"""The download phase: fetch_all() against a real loopback mirror (tests/support/mirror.py),
first in-process for the protocol (ranges, 304, redirects, sizes, faults, file://), then in
the real `download` domain built from the shipped profile, through runner.call: allowed and
denied connects, writes inside and outside the download directory, and the unprivileged
download user.

Nothing here restricts the pytest process; every server listens on 127.0.0.1.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pkgsandbox import enforce, landlock, profile, runner
from pkgsandbox.errors import BadInput, SetupError
from pkgsandbox.phases import download
from pkgsandbox.phases.download import Job, fetch_all, ports_for
from pkgsandbox.policy import PathGrant
from tests.support.mirror import Fault, Mirror, down_url, fill, free_port

KERNEL = landlock.probe()
MTIME = 1_700_000_000            # every mirror file's mtime: its Last-Modified
HTTP_MTIME = "Tue, 14 Nov 2023 22:13:20 GMT"
SIZES = {"small.pkg.tar.zst": 100_000, "big.pkg.tar.zst": 1_000_000, "core.db": 7_777,
         "empty": 0}
PARALLEL_FILES = [f"p{i:02d}-1.0-1-any.pkg.tar.zst" for i in range(20)]

needs_net_rules = pytest.mark.skipif(
    KERNEL.abi < 4, reason=f"Landlock TCP rules need ABI 4 (kernel: {KERNEL.abi}, {KERNEL.state})")



@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The mirror's directory: name -> bytes."""
    root = tmp_path_factory.mktemp("repo")
    files = dict(SIZES, **{n: 20_000 + i for i, n in enumerate(PARALLEL_FILES)})
    return root, fill(root, files, MTIME)


@pytest.fixture
def mirror(repo):
    with Mirror(repo[0]) as m:
        yield m


@pytest.fixture(scope="module")
def tls_mirror(repo):
    with Mirror(repo[0], tls=True) as m:
        yield m


@pytest.fixture
def dest(tmp_path):
    d = tmp_path / "download"
    d.mkdir()
    return d


def one(mirror_url: str, name: str, **kw) -> Job:
    return Job(name=name, urls=(f"{mirror_url}/{name}",), **kw)


def files_in(d) -> set[str]:
    return set(os.listdir(d))


# ---------------------------------------------------------------------------------------------
# Pure: Job and ports_for.

@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/etc/passwd", "../x", "a\0b", "a\nb"])
def test_job_name_must_be_a_plain_file_name(name):
    with pytest.raises(BadInput, match="name"):
        Job(name=name, urls=("http://127.0.0.1/x",))


@pytest.mark.parametrize("kwargs, match", [
    ({"urls": ()}, "no URL"),
    ({"urls": "http://h/x"}, "list of URLs"),
    ({"urls": ("ftp://h/x",)}, "ftp://h/x"),
    ({"urls": ("http://h:99999/x",)}, "h:99999"),
    ({"urls": ("http://h x/",)}, "spaces"),
    ({"urls": ("file://remote/x",)}, "remote host"),
    ({"urls": ("http:///x",)}, "without a host"),
    ({"size": -1}, "size"),
    ({"max_size": "big"}, "max_size"),
])
def test_job_rejects_bad_fields(kwargs, match):
    with pytest.raises(BadInput, match=match):
        Job(**{"name": "x", "urls": ("http://127.0.0.1/x",), **kwargs})


def test_job_accepts_a_list_and_keeps_a_tuple():
    job = Job(name="core.db", urls=["http://a/core.db", "file:///srv/core.db"])
    assert job.urls == ("http://a/core.db", "file:///srv/core.db")


@pytest.mark.parametrize("urls, ports", [
    (["http://mirror.example/core/os/x86_64/core.db"], {80}),
    (["https://mirror.example/x"], {443}),
    (["http://127.0.0.1:8080/x", "https://[::1]:8443/x"], {8080, 8443}),
    (["HTTP://Mirror.Example:80/x", "https://m/x", "https://m:443/y"], {80, 443}),
    (["file:///var/cache/repo/x", "file://localhost/srv/x"], set()),
    (["http://user:pw@m:81/x"], {81}),
    ([], set()),
])
def test_ports_for(urls, ports):
    assert ports_for(urls) == frozenset(ports)


@pytest.mark.parametrize("url", ["ftp://m/x", "gopher://m:70/x", "rsync://m/x", "m/x",
                                 "http://m:0/x"])
def test_ports_for_rejects_what_it_cannot_fetch(url):
    with pytest.raises(BadInput) as exc:
        ports_for(["http://ok/x", url])
    assert url in exc.value.message


# ---------------------------------------------------------------------------------------------
# The protocol, in-process.

def test_http_download(repo, mirror, dest):
    _, files = repo
    [result] = fetch_all([one(mirror.url, "small.pkg.tar.zst")], str(dest))
    assert result == {"name": "small.pkg.tar.zst", "status": "downloaded",
                      "url": f"{mirror.url}/small.pkg.tar.zst", "size": 100_000,
                      "mtime": float(MTIME), "error": ""}
    json.dumps(result)
    assert (dest / "small.pkg.tar.zst").read_bytes() == files["small.pkg.tar.zst"]
    assert os.stat(dest / "small.pkg.tar.zst").st_mtime == MTIME   # as pacman does for dbs
    assert files_in(dest) == {"small.pkg.tar.zst"}
    [request] = mirror.requests
    assert request.header("User-Agent") == f"pkgsandbox/{download.__version__}"
    assert request.header("Range") is None and request.header("If-Modified-Since") is None


@pytest.fixture
def keepalive_mirror(repo):
    with Mirror(repo[0], keepalive=True) as m:
        yield m


def test_one_connection_for_the_files_of_a_session(repo, keepalive_mirror, dest):
    """HTTP/1.1 keep-alive: the files of one fetch_all from one mirror share a connection
    (as libcurl's do); each file is still complete and verified."""
    _, files = repo
    mirror = keepalive_mirror
    names = PARALLEL_FILES[:4]
    results = fetch_all([one(mirror.url, n) for n in names], str(dest))
    assert [r["status"] for r in results] == ["downloaded"] * 4
    assert {n: (dest / n).read_bytes() for n in names} == {n: files[n] for n in names}
    assert len(mirror.requests) == 4
    assert len({r.client for r in mirror.requests}) == 1


def test_an_idle_connection_the_server_closed_is_replaced(repo, keepalive_mirror, dest,
                                                         monkeypatch):
    """A kept connection the server has closed since (its keep-alive timeout) fails on
    reuse; the request is made once more on a new connection, not counted as a failure."""
    _, files = repo
    mirror = keepalive_mirror
    names = PARALLEL_FILES[:2]
    real_idle = download._Session._idle

    def idle_then_server_closes(self, parts, port, conn):
        real_idle(self, parts, port, conn)
        conn.sock.shutdown(socket.SHUT_RDWR)     # as if the server had hung up
    monkeypatch.setattr(download._Session, "_idle", idle_then_server_closes)
    results = fetch_all([one(mirror.url, n) for n in names], str(dest))
    assert [r["status"] for r in results] == ["downloaded"] * 2, results
    assert (dest / names[1]).read_bytes() == files[names[1]]
    assert len({r.client for r in mirror.requests}) == 2


def test_no_reuse_when_the_server_says_close(repo, mirror, dest):
    names = PARALLEL_FILES[:3]
    fetch_all([one(mirror.url, n) for n in names], str(dest))
    assert len({r.client for r in mirror.requests}) == 3


def test_empty_file_and_known_size(repo, mirror, dest):
    results = fetch_all([one(mirror.url, "empty", size=0),
                         one(mirror.url, "core.db", size=7_777)], str(dest))
    assert [r["status"] for r in results] == ["downloaded", "downloaded"]
    assert (dest / "empty").read_bytes() == b""
    assert (dest / "core.db").read_bytes() == repo[1]["core.db"]


def test_https_with_the_test_ca(repo, tls_mirror, dest):
    localhost = tls_mirror.url.replace("127.0.0.1", "localhost")   # the other SAN
    results = fetch_all([one(tls_mirror.url, "big.pkg.tar.zst"),
                         one(localhost, "core.db")], str(dest), ca_file=tls_mirror.ca_file)
    assert [r["status"] for r in results] == ["downloaded", "downloaded"], results
    assert (dest / "big.pkg.tar.zst").read_bytes() == repo[1]["big.pkg.tar.zst"]
    assert (dest / "core.db").read_bytes() == repo[1]["core.db"]


def test_https_refuses_a_certificate_the_system_does_not_trust(tls_mirror, dest):
    [result] = fetch_all([one(tls_mirror.url, "core.db")], str(dest))   # system CA bundle
    assert result["status"] == "failed"
    assert "certificate verification failed" in result["error"]
    assert files_in(dest) == set()


def test_https_checks_the_host_name(repo, dest):
    with Mirror(repo[0], tls=True, tls_names=("localhost",)) as m:    # not 127.0.0.1
        [wrong, right] = fetch_all(
            [one(m.url, "core.db"),
             Job(name="right", urls=(m.url.replace("127.0.0.1", "localhost") + "/core.db",))],
            str(dest), ca_file=m.ca_file)
    assert wrong["status"] == "failed"
    assert "certificate verification failed: IP address mismatch" in wrong["error"]
    assert right["status"] == "downloaded"
    assert files_in(dest) == {"right"}


def test_https_with_an_unreadable_ca_file(tls_mirror, dest, tmp_path):
    [result] = fetch_all([one(tls_mirror.url, "core.db")], str(dest),
                         ca_file=str(tmp_path / "missing.pem"))
    assert result["status"] == "failed"
    assert "missing.pem" in result["error"] and "No such file" in result["error"]


def test_failover_from_a_down_and_a_404_mirror(repo, mirror, dest):
    down = down_url("/core.db")
    missing = mirror.fault_url("core.db", status=404)
    job = Job(name="core.db", urls=(down, missing, f"{mirror.url}/core.db"))
    [result] = fetch_all([job], str(dest), connect_timeout=2)
    assert result["status"] == "downloaded" and result["url"] == f"{mirror.url}/core.db"
    assert (dest / "core.db").read_bytes() == repo[1]["core.db"]

    [failed] = fetch_all([Job(name="core.db", urls=(down, missing))], str(dest))
    assert failed["status"] == "failed" and failed["url"] == missing
    assert "all 2 mirrors failed" in failed["error"]
    assert "Connection refused (ECONNREFUSED)" in failed["error"]
    assert "HTTP 404" in failed["error"] and "\n" not in failed["error"]


def write_part(path, data: bytes, mtime: float = MTIME) -> None:
    """A .part as a failed attempt leaves it: its mtime is the Last-Modified it came from."""
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def test_resume_a_part_with_a_range_request(repo, mirror, dest):
    data = repo[1]["big.pkg.tar.zst"]
    write_part(dest / "big.pkg.tar.zst.part", data[:300_000])
    [result] = fetch_all([one(mirror.url, "big.pkg.tar.zst", size=len(data))], str(dest))
    assert result["status"] == "downloaded" and result["size"] == len(data)
    assert (dest / "big.pkg.tar.zst").read_bytes() == data
    assert files_in(dest) == {"big.pkg.tar.zst"}
    [request] = mirror.requests
    assert request.header("Range") == "bytes=300000-"
    assert request.header("If-Range") == HTTP_MTIME
    assert request.status == 206


def test_a_part_of_another_version_is_fetched_whole(repo, mirror, dest):
    """A sync database changes under the same name: a .part of yesterday's must not be
    completed with today's bytes."""
    data = repo[1]["core.db"]
    write_part(dest / "core.db.part", b"yesterday's core.db", mtime=MTIME - 86400)
    [result] = fetch_all([one(mirror.url, "core.db")], str(dest))
    assert result["status"] == "downloaded"
    assert (dest / "core.db").read_bytes() == data
    [request] = mirror.requests
    assert request.header("Range") == "bytes=19-" and request.status == 200


def test_resume_restarts_from_zero_when_the_server_ignores_range(repo, mirror, dest):
    data = repo[1]["big.pkg.tar.zst"]
    write_part(dest / "big.pkg.tar.zst.part", b"stale" * 1000)
    mirror.set_fault("big.pkg.tar.zst", Fault(ignore_range=True))
    [result] = fetch_all([one(mirror.url, "big.pkg.tar.zst")], str(dest))
    assert result["status"] == "downloaded"
    assert (dest / "big.pkg.tar.zst").read_bytes() == data
    [request] = mirror.requests
    assert request.header("Range") == "bytes=5000-" and request.status == 200


def test_a_dropped_connection_is_resumed_on_the_next_mirror(repo, mirror, dest):
    data = repo[1]["big.pkg.tar.zst"]
    job = Job(name="big.pkg.tar.zst", size=len(data),
              urls=(mirror.fault_url("big.pkg.tar.zst", drop_after=400_000),
                    f"{mirror.url}/big.pkg.tar.zst"))
    [result] = fetch_all([job], str(dest))
    assert result["status"] == "downloaded", result
    assert (dest / "big.pkg.tar.zst").read_bytes() == data
    first, second = mirror.requests
    assert first.header("Range") is None and first.status == 200
    assert second.header("Range") == "bytes=400000-"
    assert second.header("If-Range") == HTTP_MTIME and second.status == 206


def test_a_complete_part_is_finished_on_416(repo, mirror, dest):
    data = repo[1]["core.db"]
    write_part(dest / "core.db.part", data)
    [result] = fetch_all([one(mirror.url, "core.db", size=len(data))], str(dest))
    assert result["status"] == "downloaded" and result["size"] == len(data)
    assert (dest / "core.db").read_bytes() == data
    [request] = mirror.requests
    assert request.header("Range") == f"bytes={len(data)}-" and request.status == 416


def test_a_part_from_another_file_restarts_on_416(repo, mirror, dest):
    data = repo[1]["core.db"]
    write_part(dest / "core.db.part", b"x" * 9_000)            # longer than the real file
    [result] = fetch_all([one(mirror.url, "core.db")], str(dest))
    assert result["status"] == "downloaded"
    assert (dest / "core.db").read_bytes() == data
    assert [(r.header("Range"), r.status) for r in mirror.requests] == [("bytes=9000-", 416),
                                                                        (None, 200)]


def test_not_modified(repo, mirror, dest):
    (dest / "core.db").write_bytes(b"our copy")
    results = fetch_all([one(mirror.url, "core.db", if_modified_since=MTIME),
                         Job(name="newer.db", urls=(f"{mirror.url}/core.db",),
                             if_modified_since=MTIME - 3600)], str(dest))
    assert results[0]["status"] == "unchanged" and results[0]["error"] == ""
    assert (dest / "core.db").read_bytes() == b"our copy"
    assert results[1]["status"] == "downloaded"
    assert (dest / "newer.db").read_bytes() == repo[1]["core.db"]
    assert mirror.requests[0].header("If-Modified-Since") == HTTP_MTIME
    assert mirror.requests[0].status == 304


BAD_BODIES = [
    # (id, fault, job keywords, error fragment, .part left for resume)
    ("declared-larger-than-expected", {}, {"size": 7_000}, "too large", False),
    ("declared-smaller-than-expected", {}, {"size": 8_000}, "size mismatch", False),
    ("short-body", {"content_length": 9_000}, {}, "short", True),
    ("short-body-known-size", {"drop_after": 3_000}, {"size": 7_777}, "short", True),
    ("endless-body", {"endless": True}, {"max_size": 1 << 20}, "too large", False),
    ("endless-body-known-size", {"endless": True}, {"size": 7_777}, "too large", False),
    ("over-the-cap", {}, {"max_size": 5_000}, "too large", False),
    ("stall-mid-body", {"stall": 5, "stall_after": 2_000}, {}, "stalled", True),
    ("stall-before-headers", {"header_delay": 5}, {}, "stalled", False),
    ("server-error", {"status": 500}, {}, "HTTP 500", False),
]


@pytest.mark.parametrize("fault, kw, fragment, part", [b[1:] for b in BAD_BODIES],
                         ids=[b[0] for b in BAD_BODIES])
def test_a_bad_body_fails_cleanly(mirror, dest, fault, kw, fragment, part):
    started = time.monotonic()
    [result] = fetch_all([Job(name="core.db", urls=(mirror.fault_url("core.db", **fault),),
                              **kw)], str(dest), stall_timeout=0.5)
    assert result["status"] == "failed" and result["size"] == 0
    assert fragment in result["error"] and "\n" not in result["error"], result["error"]
    assert "core.db" not in files_in(dest)
    assert ("core.db.part" in files_in(dest)) == part
    assert time.monotonic() - started < 5


def test_a_body_longer_than_declared_is_cut_at_the_declared_length(repo, mirror, dest):
    url = mirror.fault_url("core.db", extra=50_000)
    [result] = fetch_all([Job(name="core.db", urls=(url,), size=7_777)], str(dest))
    assert result["status"] == "downloaded" and result["size"] == 7_777
    assert (dest / "core.db").read_bytes() == repo[1]["core.db"]


def test_redirects(repo, mirror, dest):
    other = Mirror(repo[0]).start()
    try:
        hop2 = mirror.fault_url("core.db", redirect=f"{mirror.url}/core.db")
        hop1 = mirror.fault_url("core.db", redirect=hop2)
        to_other_port = mirror.fault_url("core.db", redirect=f"{other.url}/core.db")
        to_file = mirror.fault_url("core.db", redirect="file:///etc/passwd")
        mirror.set_fault("loop", Fault(redirect="/loop"))
        loop = f"{mirror.url}/loop"
        relative = mirror.fault_url("core.db", redirect="/core.db")
        results = fetch_all([
            Job(name="followed", urls=(hop1,)),
            Job(name="relative", urls=(relative,)),
            Job(name="other-port", urls=(to_other_port,)),
            Job(name="other-port-granted", urls=(to_other_port, f"{other.url}/nothing")),
            Job(name="file", urls=(to_file,)),
            Job(name="loop", urls=(loop,)),
        ], str(dest))
    finally:
        other.close()
    by = {r["name"]: r for r in results}
    assert by["followed"]["status"] == by["relative"]["status"] == "downloaded"
    assert (dest / "followed").read_bytes() == repo[1]["core.db"]
    assert by["other-port"]["status"] == "failed"
    assert f"port {other.port} is not a mirror port" in by["other-port"]["error"]
    assert by["other-port-granted"]["status"] == "downloaded"    # its port is in the job's URLs
    assert "only http and https" in by["file"]["error"]
    assert "more than 5 redirects" in by["loop"]["error"]
    assert files_in(dest) == {"followed", "relative", "other-port-granted"}


def test_file_urls(repo, dest, tmp_path):
    root, files = repo
    src = f"file://{root}/core.db"
    results = fetch_all([
        Job(name="copy", urls=(src,), size=7_777),
        Job(name="unchanged", urls=(src,), if_modified_since=MTIME),
        Job(name="newer", urls=(src,), if_modified_since=MTIME - 1),
        Job(name="wrong-size", urls=(src,), size=100),
        Job(name="too-large", urls=(src,), max_size=100),
        Job(name="device", urls=("file:///dev/zero",)),
        Job(name="missing", urls=(f"file://{tmp_path}/missing",)),
    ], str(dest))
    by = {r["name"]: r for r in results}
    assert by["copy"]["status"] == by["newer"]["status"] == "downloaded"
    assert (dest / "copy").read_bytes() == files["core.db"]
    assert os.stat(dest / "copy").st_mtime == MTIME and by["copy"]["mtime"] == MTIME
    assert by["unchanged"]["status"] == "unchanged"
    assert "size mismatch" in by["wrong-size"]["error"]
    assert "too large" in by["too-large"]["error"]
    assert "not a regular file" in by["device"]["error"]
    assert "No such file or directory (ENOENT)" in by["missing"]["error"]
    assert files_in(dest) == {"copy", "newer"}


def test_fetch_all_rejects_bad_input_before_fetching(mirror, dest, tmp_path):
    job = one(mirror.url, "core.db")
    with pytest.raises(BadInput, match="twice: core.db"):
        fetch_all([job, job], str(dest))
    with pytest.raises(BadInput, match="not a download job"):
        fetch_all([{"name": "x"}], str(dest))
    with pytest.raises(BadInput, match="parallel"):
        fetch_all([job], str(dest), parallel=0)
    with pytest.raises(SetupError, match="No such file or directory"):
        fetch_all([job], str(tmp_path / "nowhere"))
    assert mirror.requests == [] and files_in(dest) == set()


def test_the_mirror_stops_all_its_threads(repo, dest):
    before = set(threading.enumerate())
    with Mirror(repo[0]) as m:
        port = m.port
        stalled = threading.Thread(target=fetch_all, args=(
            [Job(name="x", urls=(m.fault_url("core.db", stall=30),))], str(dest)),
            kwargs={"stall_timeout": 30})
        stalled.start()
        while not m.requests:
            time.sleep(0.01)
    started = time.monotonic()
    stalled.join(10)
    assert time.monotonic() - started < 5
    assert set(threading.enumerate()) <= before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# ---------------------------------------------------------------------------------------------
# In the real download domain.

def domain(destdir, ports, *, read=()) -> enforce.Prepared:
    """The shipped `download` profile for destdir and these server ports; `read`: files the
    test adds read access to (the test CA, standing in for /etc/ssl)."""
    prof = profile.Library(include_system=False).load("download")
    policy = profile.resolve(prof, {"downloaddir": str(destdir),
                                    "server_ports": ",".join(str(p) for p in ports)})
    if read:
        policy = replace(policy, paths=policy.paths + tuple(
            PathGrant(path=p, rights=frozenset({"read_file"}), origin="test") for p in read))
    prepared = enforce.prepare(policy)
    assert prepared.report.landlock and "connect_tcp" in prepared.report.handled_net
    return prepared


def sandboxed_fetch(prepared, jobs, destdir, user=None, **kw):
    return runner.call(download.fetch_all, jobs, str(destdir), prepared=prepared, timeout=60,
                       user=user, **kw).value


@pytest.fixture
def nobody_dir():
    """A download directory owned by nobody, on a path nobody can reach (not under the
    root-only pytest temp directory)."""
    d = tempfile.mkdtemp(prefix="pkgsandbox-download-")
    os.chmod(d, 0o755)
    nobody = runner.User.lookup("nobody")
    os.chown(d, nobody.uid, nobody.gid)
    yield d
    shutil.rmtree(d)


@needs_net_rules
def test_domain_http_and_https(repo, mirror, tls_mirror, dest):
    with domain(dest, [mirror.port, tls_mirror.port], read=[tls_mirror.ca_file]) as prepared:
        results = sandboxed_fetch(prepared, [
            one(mirror.url, "small.pkg.tar.zst", size=100_000),
            one(tls_mirror.url, "big.pkg.tar.zst"),
        ], dest, ca_file=tls_mirror.ca_file)
    assert [r["status"] for r in results] == ["downloaded", "downloaded"], results
    for name in ("small.pkg.tar.zst", "big.pkg.tar.zst"):
        assert (dest / name).read_bytes() == repo[1][name]
        assert os.stat(dest / name).st_mtime == MTIME


@needs_net_rules
def test_domain_failover_resume_and_unchanged(repo, mirror, dest):
    data = repo[1]["big.pkg.tar.zst"]
    write_part(dest / "big.pkg.tar.zst.part", data[:123_456])
    down_port = free_port()                      # granted, but nothing listens there
    down = f"http://127.0.0.1:{down_port}/core.db"
    with domain(dest, [mirror.port, down_port]) as prepared:
        results = sandboxed_fetch(prepared, [
            Job(name="core.db", urls=(down, mirror.fault_url("core.db", status=404),
                                      f"{mirror.url}/core.db")),
            one(mirror.url, "big.pkg.tar.zst", size=len(data)),
            Job(name="small.db", urls=(f"{mirror.url}/small.pkg.tar.zst",),
                if_modified_since=MTIME),
        ], dest, parallel=3)
    assert [r["status"] for r in results] == ["downloaded", "downloaded", "unchanged"], results
    assert results[0]["url"] == f"{mirror.url}/core.db"
    assert (dest / "core.db").read_bytes() == repo[1]["core.db"]
    assert (dest / "big.pkg.tar.zst").read_bytes() == data
    [resumed] = mirror.requests_for("big.pkg.tar.zst")
    assert resumed.header("Range") == "bytes=123456-" and resumed.status == 206
    assert files_in(dest) == {"core.db", "big.pkg.tar.zst"}


@needs_net_rules
def test_domain_bad_bodies_fail_cleanly(mirror, dest):
    jobs = [
        Job(name="wrong-size", urls=(f"{mirror.url}/core.db",), size=1_000),
        Job(name="short", urls=(mirror.fault_url("core.db", content_length=20_000),)),
        Job(name="endless", urls=(mirror.fault_url("core.db", endless=True),),
            max_size=4 << 20),
        Job(name="stall", urls=(mirror.fault_url("core.db", stall=10, stall_after=100),)),
    ]
    with domain(dest, [mirror.port]) as prepared:
        started = time.monotonic()
        results = sandboxed_fetch(prepared, jobs, dest, parallel=4, stall_timeout=1)
    assert time.monotonic() - started < 8
    by = {r["name"]: r for r in results}
    assert all(r["status"] == "failed" and "\n" not in r["error"] for r in results), results
    assert "too large" in by["wrong-size"]["error"]
    assert "short" in by["short"]["error"]
    assert "too large" in by["endless"]["error"]
    assert "stalled" in by["stall"]["error"]
    assert files_in(dest) == {"short.part", "stall.part"}       # kept for resume


@needs_net_rules
def test_domain_parallel_downloads(repo, mirror, dest):
    for name in PARALLEL_FILES:
        mirror.set_fault(name, Fault(header_delay=0.2))
    jobs = [one(mirror.url, name, size=len(repo[1][name])) for name in PARALLEL_FILES]
    with domain(dest, [mirror.port]) as prepared:
        started = time.monotonic()
        results = sandboxed_fetch(prepared, jobs, dest, parallel=4)
        elapsed = time.monotonic() - started
    assert [r["name"] for r in results] == PARALLEL_FILES            # job order
    assert all(r["status"] == "downloaded" for r in results), results
    for name in PARALLEL_FILES:
        assert (dest / name).read_bytes() == repo[1][name]
    assert elapsed < 20 * 0.2 / 2, f"not parallel: {elapsed:.2f} s"   # 4 at a time: ~1 s


@needs_net_rules
def test_domain_refuses_a_port_it_was_not_granted(repo, mirror, dest):
    with Mirror(repo[0]) as ungranted:
        with domain(dest, [mirror.port]) as prepared:
            results = sandboxed_fetch(prepared, [
                Job(name="granted", urls=(f"{mirror.url}/core.db",)),
                Job(name="ungranted", urls=(f"{ungranted.url}/core.db",)),
            ], dest)
        assert ungranted.requests == []           # the kernel refused before any traffic
    granted, refused = results
    assert granted["status"] == "downloaded", granted
    assert (dest / "granted").read_bytes() == repo[1]["core.db"]
    assert refused["status"] == "failed"
    assert f"connect to 127.0.0.1:{ungranted.port}: Permission denied (EACCES)" \
        in refused["error"], refused["error"]
    assert files_in(dest) == {"granted"}


def write_inside_and_outside(inside: str, outside: str) -> dict:
    """In the domain: try to create a file in each place; the errno name or "ok"."""
    out = {}
    for label, path in (("inside", inside), ("outside", outside)):
        try:
            with open(path, "w") as f:
                f.write("x")
            out[label] = "ok"
        except OSError as exc:
            out[label] = errno.errorcode[exc.errno]
    return out


@needs_net_rules
def test_domain_may_write_only_its_directory(dest, tmp_path):
    with domain(dest, [80]) as prepared:
        value = runner.call(write_inside_and_outside, str(dest / "inside"),
                            str(tmp_path / "outside"), prepared=prepared, timeout=60).value
    assert value == {"inside": "ok", "outside": "EACCES"}
    assert (dest / "inside").read_text() == "x"
    assert not (tmp_path / "outside").exists()


@needs_net_rules
def test_domain_as_the_unprivileged_download_user(repo, mirror, nobody_dir):
    nobody = runner.User.lookup("nobody")
    with domain(nobody_dir, [mirror.port]) as prepared:
        results = sandboxed_fetch(prepared, [one(mirror.url, "small.pkg.tar.zst"),
                                             one(mirror.url, "core.db")],
                                  nobody_dir, user=nobody, parallel=2)
    assert [r["status"] for r in results] == ["downloaded", "downloaded"], results
    path = Path(nobody_dir, "small.pkg.tar.zst")
    assert path.read_bytes() == repo[1]["small.pkg.tar.zst"]
    assert path.stat().st_uid == nobody.uid


@needs_net_rules
def test_domain_user_cannot_write_a_directory_it_does_not_own(mirror, nobody_dir):
    os.chown(nobody_dir, 0, 0)                      # root's, mode 0755: not nobody's to write
    with domain(nobody_dir, [mirror.port]) as prepared:
        with pytest.raises(SetupError) as exc:
            sandboxed_fetch(prepared, [one(mirror.url, "core.db")], nobody_dir,
                            user=runner.User.lookup("nobody"))
    assert f"download directory {nobody_dir}: cannot create files there as user nobody" \
        in exc.value.message
    assert "Permission denied (EACCES)" in exc.value.message
    assert mirror.requests == [] and os.listdir(nobody_dir) == []
