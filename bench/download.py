#!/usr/bin/env python3
"""Download benchmark: pkgsandbox's sandboxed downloader against curl, on loopback.

Target (issue): `pkgsandbox fetch URL -o OUT` (pacman's XferCommand path: a child forked
into the download domain as pacman.conf's DownloadUser writes through a descriptor the parent
opened) reaches at least 0.90x the throughput of `curl -o OUT` for one 512 MiB file from a
loopback HTTP server.

Writes one file of incompressible bytes (os.urandom) into a temporary directory (/dev/shm
when it is a tmpfs with room) and serves it from a forked child process (InChild) with
SendfileServer, a minimal HTTP/1.1 server that sends the body with os.sendfile() from the
page cache (the tests' mirror, tests/support/mirror.py, reads the whole file into memory and
copies it out in 64 KiB slices, and is the bottleneck: `--server mirror` measures it). Then,
after one verified warm-up run of each, R interleaved repetitions (alternating which goes
first), each into a fresh OUT that is deleted afterwards:
  curl        curl -sS --fail -o OUT URL
  pkgsandbox  python -m pkgsandbox fetch URL -o OUT --config CONF  (the same interpreter;
              CONF names DownloadUser = pkgsandbox-dl when that user exists)
Throughput = file size / wall time of the command, start-up included (it is what pacman
waits for); medians; ratio = pkgsandbox / curl. Diagnostics, each a median: the server's
capacity (a client in this process that discards what it receives, 1 MiB reads), curl into
/dev/null, download.fetch_into() in this process (the same loop without start-up, sandbox or
user switch), and both commands on a 4 KiB file (their fixed cost).

    bench/download.py [--quick] [--mib M] [--reps R] [--json] [--json-out FILE]
                      [--server sendfile|mirror] [--cprofile] [--tmpdir DIR]

Before every timed run, warm_memory() writes and deletes a scratch file as large as the
download, so that both commands write into memory the VM has just used (see its docstring).
--quick: 2 repetitions and one run of each diagnostic, still 512 MiB (full: 7 repetitions,
3 of each diagnostic): pkgsandbox's fixed cost (~0.1 s) would weigh 4x more in the ratio of a
128 MiB file. --cprofile adds a cProfile of fetch_into() in this process. A measurement:
exits 0 whatever the numbers, non-zero only if something errors; skipped (exit 0) without
root, curl or pyalpm.
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import hashlib
import io
import os
import pstats
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import (add_output_options, emit, guarded, item, machine, shown, skip,  # noqa: E402
                     verdict)

TARGET_RATIO = 0.90
DL_USER = "pkgsandbox-dl"
NAME = "big-1.0-1-any.pkg.tar.zst"     # a package name: pkgsandbox fetch caps it at 8 GiB
SMALL = "small-1.0-1-any.pkg.tar.zst"
SMALL_SIZE = 4096
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------
# The loopback server.

class SendfileServer:
    """HTTP/1.1 on 127.0.0.1 (a free port) for the regular files directly in `root`: GET of
    a whole file, the body sent with os.sendfile(); 404 for anything else; no ranges, no
    keep-alive. One thread per connection; the end of `with` joins them all."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "SendfileServer":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _SendfileHandler)
        server.daemon_threads = False
        server.block_on_close = True
        server.files = self.root
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"


class _SendfileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pkgsandbox-bench"
    sys_version = ""
    timeout = 30

    def do_GET(self):
        self.close_connection = True
        name = self.path.split("?", 1)[0].lstrip("/")
        path = self.server.files / name
        if not name or "/" in name or name.startswith(".") or not path.is_file():
            self.send_error(404)
            return
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("Last-Modified", self.date_time_string(os.fstat(f.fileno()).st_mtime))
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.connection.sendfile(f)      # os.sendfile(), waiting while the socket is full
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass

    def log_message(self, format, *args):
        pass


class InChild:
    """A server (a context manager with .url: SendfileServer, or the tests' Mirror) run in a
    forked child process, so that its threads share no interpreter lock with the clients
    this process times (sink, fetch_into). Stops when the `with` block ends."""

    def __init__(self, factory):
        self.factory = factory
        self.url = ""
        self._pid = 0
        self._stop = -1

    def __enter__(self) -> "InChild":
        ready_r, ready_w = os.pipe()
        stop_r, stop_w = os.pipe()
        pid = os.fork()
        if pid == 0:                          # the server's process
            status = 1
            try:
                os.close(ready_r)
                os.close(stop_w)
                with self.factory() as server:
                    os.write(ready_w, server.url.encode())
                    os.close(ready_w)
                    os.read(stop_r, 1)        # until the parent closes its end
                status = 0
            except BaseException as exc:      # noqa: BLE001 (the parent reports it)
                print(f"bench/download.py: the loopback server failed: {exc}", file=sys.stderr)
            finally:
                os._exit(status)
        os.close(ready_w)
        os.close(stop_r)
        self._pid, self._stop = pid, stop_w
        with os.fdopen(ready_r, "rb") as ready:
            self.url = ready.read().decode()
        if not self.url:
            self.__exit__()
            raise RuntimeError("the loopback server did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._pid:
            os.close(self._stop)
            os.waitpid(self._pid, 0)
            self._pid = 0


def sink(url: str, name: str, size: int) -> float:
    """Seconds to GET url/name and discard it (1 MiB reads): the server's capacity."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    buf = bytearray(MIB)
    got = 0
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"GET /{name} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
    elapsed = time.perf_counter() - t0
    if got < size:
        raise RuntimeError(f"sink: the server sent {got} bytes, the file has {size}")
    return elapsed


# ---------------------------------------------------------------------------------------------
# The two commands.

def write_source(path: Path, size: int) -> str:
    """size bytes of os.urandom into path; their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 * MIB))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def warm_memory(directory: Path, nbytes: int) -> None:
    """Write nbytes of zeros to a scratch file in `directory` and delete it, so that the next
    run's page cache comes from memory in use a moment ago. On this VM (virtio-balloon with
    free page reporting) memory left free for a few seconds is handed back to the host, and
    touching it again costs ~5x more than reusing pages freed just before: without this, a
    512 MiB write took 0.19 s or 1.3-1.6 s depending on the allocator's history, and which
    variant ran first decided the ratio (docs/benchmarks.md)."""
    block = bytes(8 * MIB)
    scratch = directory / ".warm"
    with open(scratch, "wb") as f:
        for _ in range(-(-nbytes // len(block))):
            f.write(block)
    scratch.unlink()


def commands(variant: str, url: str, out: Path, conf: Path) -> list[str]:
    if variant == "curl":
        return ["curl", "-sS", "--fail", "-o", str(out), url]
    return [sys.executable, "-m", "pkgsandbox", "fetch", url, "-o", str(out),
            "--config", str(conf)]


def run_one(variant: str, url: str, out: Path, conf: Path, logdir: Path, label: str,
            size: int) -> dict:
    """One download into a fresh `out`: wall and CPU time (GNU time, transaction.peak_rss),
    size checked; `out` is left for the caller to verify and delete."""
    from transaction import env_for, peak_rss
    if out.exists():
        out.unlink()
    warm_memory(out.parent, size + 64 * MIB)
    env = env_for("pkgsandbox" if variant == "pkgsandbox" else "stock")
    r = peak_rss(commands(variant, url, out, conf), env, logdir, label)
    got = out.stat().st_size if out.exists() else -1
    if got != size:
        raise RuntimeError(f"{variant}: {out.name} has {got} bytes after the download, "
                           f"expected {size}")
    return r


def in_process(url: str, out: Path, size: int, profile: cProfile.Profile | None = None) -> float:
    """download.fetch_into() of url into a fresh out, in this process (no domain, no user
    switch, no start-up): seconds."""
    from pkgsandbox.phases import download
    job = download.Job(name=out.name, urls=(url,), max_size=8 << 30)
    warm_memory(out.parent, size + 64 * MIB)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        t0 = time.perf_counter()
        if profile:
            profile.enable()
        result = download.fetch_into(job, fd)
        if profile:
            profile.disable()
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    if result.get("status") != "downloaded" or out.stat().st_size != size:
        raise RuntimeError(f"fetch_into: {result.get('status')} {result.get('error', '')}, "
                           f"{out.stat().st_size} bytes, expected {size}")
    out.unlink()
    return elapsed


def download_conf(base: Path) -> tuple[Path, str]:
    """A pacman.conf for `pkgsandbox fetch --config`: DownloadUser when the user exists."""
    try:
        pwd.getpwnam(DL_USER)
        user = DL_USER
    except KeyError:
        user = ""
    conf = base / "pacman.conf"
    conf.write_text("[options]\nArchitecture = auto\n"
                    + (f"DownloadUser = {user}\n" if user else ""))
    return conf, user


# ---------------------------------------------------------------------------------------------
# Main.

def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (pkgsandbox fetch switches to pacman.conf's DownloadUser)"
    if not shutil.which("curl"):
        return "needs curl"
    try:
        import pyalpm  # noqa: F401
    except ImportError:
        return (f"{sys.executable} has no pyalpm: run it with the checkout's .venv "
                f"(bench/run picks it) or PYTHON=...")
    return None


def pick_tmp(size: int) -> str | None:
    """/dev/shm when it is a tmpfs with room for the file, two outputs and a margin."""
    from transaction import fs_type
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    if fs_type(Path("/dev/shm")) != "tmpfs" or not os.access("/dev/shm", os.W_OK):
        return None
    return "/dev/shm" if st.f_bavail * st.f_frsize > 3 * size + (1 << 30) else None


def median(values) -> float:
    return statistics.median(values)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 repetitions, one of each diagnostic (the file stays 512 MiB)")
    ap.add_argument("--mib", type=int, default=512, help="file size in MiB (default 512)")
    ap.add_argument("--reps", type=int, default=None,
                    help="interleaved repetitions (default 7; 2 with --quick)")
    ap.add_argument("--server", choices=("sendfile", "mirror"), default="sendfile",
                    help="the loopback server: this file's SendfileServer (default) or "
                         "tests/support/mirror.py")
    ap.add_argument("--cprofile", action="store_true",
                    help="also cProfile download.fetch_into() in this process")
    ap.add_argument("--tmpdir", metavar="DIR", default=None,
                    help="where the file and the outputs go (default: /dev/shm if it is a "
                         "tmpfs with room, else the system temp dir)")
    add_output_options(ap)
    args = ap.parse_args(argv)
    reps = args.reps if args.reps is not None else (2 if args.quick else 7)
    if args.mib < 1 or reps < 1:
        ap.error("--mib and --reps must be at least 1")
    missing = skip_reason()
    if missing:
        return skip("download", missing, args)
    from pkgsandbox import landlock

    mach = machine()   # before measuring: the load average must not include this run
    kernel = landlock.probe()
    say = (lambda *a, **k: None) if args.json else functools.partial(print, flush=True)
    size = args.mib * MIB
    tmp = Path(tempfile.mkdtemp(prefix="pkgsandbox-dlbench-", dir=args.tmpdir or pick_tmp(size)))
    try:
        served = tmp / "served"
        served.mkdir()
        t0 = time.perf_counter()
        digest = write_source(served / NAME, size)
        (served / SMALL).write_bytes(os.urandom(SMALL_SIZE))
        conf, user = download_conf(tmp)
        say(f"machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['mem_mib']} MiB, kernel "
            f"{mach['kernel']}, Python {mach['python']}; load average {mach['loadavg_1min']} "
            f"at start; Landlock ABI {kernel.abi}; files in {tmp}")
        who = user or f"none ({DL_USER} does not exist: downloads as root)"
        say(f"file: {args.mib} MiB of random bytes, written in {time.perf_counter() - t0:.1f} "
            f"s; server: {args.server}; DownloadUser: {who}; {reps} interleaved repetitions")
        samples, diag, profile_text = measure(args, tmp, conf, size, digest, reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    mib = args.mib
    med = {v: median([s["s"] for s in samples[v]]) for v in samples}
    mibps = {v: mib / med[v] for v in med}
    ratio = mibps["pkgsandbox"] / mibps["curl"]
    ok = ratio >= TARGET_RATIO
    fixed = diag["fixed_s"]
    result = {
        "benchmark": "download", "date": time.strftime("%Y-%m-%d"), "machine": mach,
        "landlock_abi": kernel.abi, "mib": mib, "reps": reps, "server": args.server,
        "download_user": user, "tmpdir": str(tmp),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "samples_s": {k: [round(s["s"], 4) for s in v] for k, v in samples.items()},
        "mib_per_s": {k: round(v, 1) for k, v in mibps.items()},
        "cpu_s_median": {k: round(median([s["cpu_s"] for s in v]), 3)
                         for k, v in samples.items()},
        "peak_rss_mib": {k: round(median([s["maxrss_kib"] for s in v]) / 1024, 1)
                         for k, v in samples.items()},
        "ratio": round(ratio, 3),
        "ratio_by_rep": [round(c["s"] / p["s"], 3) for p, c in
                         zip(samples["pkgsandbox"], samples["curl"])],
        "diagnostics_mib_per_s": {
            "server_sink": round(mib / diag["sink_s"], 1),
            "curl_to_dev_null": round(mib / diag["null_s"], 1),
            "fetch_into_in_process": round(mib / diag["in_process_s"], 1),
            # the median wall time less the fixed cost of the same command on a 4 KiB file
            "curl_transfer_only": round(mib / max(1e-9, med["curl"] - fixed["curl"]), 1),
            "pkgsandbox_transfer_only": round(mib / max(1e-9, med["pkgsandbox"]
                                                         - fixed["pkgsandbox"]), 1)},
        "fixed_cost_s": {k: round(v, 4) for k, v in fixed.items()},
        "target_ratio": TARGET_RATIO,
        "within_target": ok,
        "summary": [item("download", f"download {shown(ratio, TARGET_RATIO)} ({mib} MiB; "
                                     f">={TARGET_RATIO:.2f})", ok)],
    }
    if emit(result, args):
        if profile_text:
            print(profile_text, file=sys.stderr)
        return 0
    print_report(result, profile_text)
    return 0


def measure(args, tmp: Path, conf: Path, size: int, digest: str, reps: int):
    """The runs: a verified warm-up of each variant, `reps` interleaved repetitions, then the
    diagnostics. Returns (samples per variant, diagnostics, cProfile text)."""
    from tests.support.mirror import Mirror
    outdir, logdir = tmp / "out", tmp / "logs"
    outdir.mkdir()
    logdir.mkdir()
    out = outdir / f"{NAME}.part"
    kind = SendfileServer if args.server == "sendfile" else Mirror
    with InChild(functools.partial(kind, tmp / "served")) as server:
        url = f"{server.url}/{NAME}"
        for variant in ("curl", "pkgsandbox"):   # warm-up (not counted) and the content check
            run_one(variant, url, out, conf, logdir, f"{variant}-warm", size)
            if sha256_of(out) != digest:
                raise RuntimeError(f"{variant}: the downloaded bytes differ from the served "
                                   f"file (sha256)")
            out.unlink()
        samples: dict[str, list[dict]] = {"curl": [], "pkgsandbox": []}
        for r in range(reps):
            for variant in ("curl", "pkgsandbox") if r % 2 == 0 else ("pkgsandbox", "curl"):
                samples[variant].append(run_one(variant, url, out, conf, logdir,
                                                f"{variant}-{r}", size))
                out.unlink()
        n = 1 if args.quick else 3
        null = []
        for _ in range(n):
            t0 = time.perf_counter()
            proc = subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", url])
            null.append(time.perf_counter() - t0)
            if proc.returncode:
                raise RuntimeError(f"curl -o /dev/null exited {proc.returncode}")
        small = outdir / f"{SMALL}.part"
        diag = {"sink_s": median([sink(server.url, NAME, size) for _ in range(n)]),
                "null_s": median(null),
                "in_process_s": median([in_process(url, out, size) for _ in range(n)]),
                "fixed_s": {v: median([run_one(v, f"{server.url}/{SMALL}", small, conf,
                                               logdir, f"{v}-small-{i}", SMALL_SIZE)["s"]
                                       for i in range(n)])
                            for v in ("curl", "pkgsandbox")}}
        profile_text = ""
        if args.cprofile:
            prof = cProfile.Profile()
            in_process(url, out, size, prof)
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
            profile_text = buf.getvalue()
    return samples, diag, profile_text


def print_report(result: dict, profile_text: str) -> None:
    med, mibps, cpu = result["median_s"], result["mib_per_s"], result["cpu_s_median"]
    rss, diag, fixed = result["peak_rss_mib"], result["diagnostics_mib_per_s"], \
        result["fixed_cost_s"]
    print(f"{'median of ' + str(result['reps']):<44} {'wall':>8} {'MiB/s':>8} {'CPU':>7} "
          f"{'peak RSS':>9}")
    for v, label in (("curl", "curl -o OUT"),
                     ("pkgsandbox", "python -m pkgsandbox fetch URL -o OUT")):
        print(f"  {label:<42} {med[v]:7.3f}s {mibps[v]:8.0f} {cpu[v]:6.2f}s "
              f"{rss[v]:6.1f} MiB")
    print(f"  throughput ratio pkgsandbox / curl: {result['ratio']:.3f} (per repetition: "
          f"{result['ratio_by_rep']})")
    print(f"diagnostics (MiB/s): server capacity (discarding client, 1 MiB reads) "
          f"{diag['server_sink']:.0f}; curl -o /dev/null {diag['curl_to_dev_null']:.0f}; "
          f"download.fetch_into() in this process (no start-up, no domain) "
          f"{diag['fetch_into_in_process']:.0f}")
    print(f"fixed cost (a {SMALL_SIZE // 1024} KiB file): curl {fixed['curl'] * 1000:.0f} ms, "
          f"pkgsandbox fetch {fixed['pkgsandbox'] * 1000:.0f} ms; without it (median wall - "
          f"fixed cost): curl {diag['curl_transfer_only']:.0f} MiB/s, pkgsandbox "
          f"{diag['pkgsandbox_transfer_only']:.0f} MiB/s")
    if profile_text:
        print(f"\ncProfile of download.fetch_into() in this process:\n{profile_text}")
    print(f"download: throughput ratio {shown(result['ratio'], TARGET_RATIO)} (target >= "
          f"{TARGET_RATIO:.2f}) "
          f"{verdict(result['within_target'])}; {result['mib']} MiB, {result['reps']} reps; "
          f"curl {mibps['curl']:.0f} MiB/s, pkgsandbox {mibps['pkgsandbox']:.0f} MiB/s")


if __name__ == "__main__":
    sys.exit(guarded("download", main))
