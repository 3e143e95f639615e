#!/usr/bin/env python3
"""Transaction benchmark: whole pkgsandbox transactions against stock pacman's.

Targets (issue): a local install and a sync install take at most 1.10x stock pacman's time;
the peak RSS of pkgsandbox's process tree is at most 3x stock pacman's and under 100 MiB.

Builds N packages once (not timed; mostly small, a few of 2-20 MiB of incompressible data,
half with a post_install, some dependencies), serves them from a loopback HTTP mirror
(tests/support/mirror.py), then runs R interleaved repetitions, each on fresh roots, of
  local   `-U` of the N files                          (stock `pacman -U` as the baseline)
  sync    `-Sy`, then `-S` of the N names, empty cache  (stock `pacman -Sy`, `pacman -S`)
with pkgsandbox run as `python -m pkgsandbox` by the same interpreter, and reports medians and
ratios (pkgsandbox / stock). Peak memory: see peak_rss() and poll_tree().

    bench/transaction.py [--quick] [-n N] [--reps R] [--json] [--json-out FILE] [--breakdown]
                         [--cprofile DIR] [--tmpdir DIR]

--breakdown adds one instrumented run of each kind that says where pkgsandbox's time goes
(per phase, per process); --cprofile DIR profiles the parent of one local and one sync run
with `python -m cProfile -o DIR/...` and prints the top functions.

A measurement: exits 0 whatever the numbers, non-zero only if something errors.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from _common import (add_output_options, emit, guarded, item, machine, shown, skip,  # noqa: E402
                     verdict)

TARGET_TIME_RATIO = 1.10
TARGET_RSS_RATIO = 3.0
TARGET_RSS_MIB = 100
LARGE_MIB = (20, 2, 10, 5, 15, 3, 8)        # sizes of the large packages, in turn
ENV_CLEAN = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LC_ALL": "C", "LANG": "C"}
CHILD_TAG = "TXBENCH-CHILD "


# ---------------------------------------------------------------------------------------------
# Packages, roots, commands.

def package_specs(n: int):
    """N packages: t0000 ...; every 7th depends on the one before it, every 5th on t0000 (a
    tree with a common root); the even ones have a post_install; about one in 50 (at least
    one) carries 2-20 MiB of random bytes; every 25th has a dozen small files."""
    from pkgsandbox.repobuild import PkgFile, PkgSpec
    large = max(1, n // 50)
    step = n // large
    large_at = {k * step + step // 2: LARGE_MIB[k % len(LARGE_MIB)] for k in range(large)}
    specs = []
    for i in range(n):
        name = f"t{i:04d}"
        files = [PkgFile(path=f"usr/share/tx/{name}", content=f"{name}\n".encode() * 20)]
        if i % 25 == 0:
            files += [PkgFile(path=f"usr/lib/{name}/f{j:02d}", content=bytes([j]) * 200)
                      for j in range(12)]
        if i in large_at:
            rng = random.Random(i)
            files.append(PkgFile(path=f"usr/lib/{name}/blob",
                                 content=rng.randbytes(large_at[i] << 20)))
        depends = []
        if i % 7 == 1 and i > 1:
            depends.append(f"t{i - 1:04d}")
        if i % 5 == 2:
            depends.append("t0000")
        install = None
        if i % 2 == 0:
            install = (f'post_install() {{\n  echo "{name} post_install $*" >> /var/log/calls\n'
                       f'}}\n')
        specs.append(PkgSpec(name=name, files=tuple(files), depends=tuple(depends),
                             install=install))
    return specs, sorted(large_at.values())


def build(n: int, repodir: Path, *, repo: bool = True) -> dict:
    """Build package_specs(n) into repodir. repo=False: the package files only, without the
    repository database (enough for -U; repo-add costs ~35 ms a package, bsdtar ~9)."""
    from pkgsandbox.repobuild import build_package, build_repo
    specs, large = package_specs(n)
    t0 = time.perf_counter()
    if repo:
        build_repo(specs, repodir)
    else:
        for spec in specs:
            build_package(spec, repodir)
    files = [str(repodir / s.filename) for s in specs]
    return {"specs": specs, "files": files, "names": [s.name for s in specs],
            "large_mib": large, "scriptlets": sum(1 for s in specs if s.install),
            "bytes": sum(os.path.getsize(f) for f in files),
            "build_s": time.perf_counter() - t0}


def new_root(base: Path, name: str, server: str) -> tuple[Path, list[str]]:
    """A fresh busybox root with an empty cache, and the path arguments for it."""
    from pkgsandbox.repobuild import make_root
    root = make_root(base / name)
    (root / "etc/pacman.d/hooks").mkdir(parents=True, exist_ok=True)
    conf = base / f"{name}.conf"
    conf.write_text(f"[options]\nArchitecture = auto\nSigLevel = Never\n[test]\n"
                    f"Server = {server}\n")
    return root, ["--root", str(root), "--dbpath", str(root / "var/lib/pacman"),
                  "--cachedir", str(root / "var/cache/pacman/pkg"),
                  "--logfile", str(root / "var/log/pacman.log"),
                  "--hookdir", str(root / "etc/pacman.d/hooks"), "--config", str(conf),
                  "--noconfirm"]


def command(variant: str, op: list[str], paths: list[str], prefix=()) -> list[str]:
    if variant == "stock":
        return ["pacman", *op, *paths]
    return [sys.executable, *prefix, "-m", "pkgsandbox", *op, *paths]


def env_for(variant: str) -> dict[str, str]:
    env = dict(ENV_CLEAN)
    if variant == "pkgsandbox":
        env["PYTHONPATH"] = str(ROOT)
    return env


@functools.lru_cache(maxsize=None)
def _page_kib() -> int:
    return os.sysconf("SC_PAGE_SIZE") // 1024


GNU_TIME = "/usr/bin/time"


def peak_rss(argv: list[str], env: dict, logdir: Path, label: str) -> dict:
    """Run argv; its wall time, CPU time and peak RSS. The peak is ru_maxrss from wait4() as
    GNU time reports it (%M): Linux gives the largest ru_maxrss of the process and of every
    descendant it reaped, i.e. the peak of the *largest single process* of the tree (exact,
    no sampling). GNU time, not this process, launches the command because Linux also
    counts the RSS of the address space an exec() replaces: a command spawned straight
    from this benchmark (vfork) would report at least the benchmark's own RSS (~70 MiB with
    the large packages built). Without GNU time: wait4() here, and `rss_floor_kib` says how
    much of the figure may be this process."""
    out = open(logdir / f"{label}.out", "wb")
    err = open(logdir / f"{label}.err", "wb")
    stats = logdir / f"{label}.time"
    wrapped = os.access(GNU_TIME, os.X_OK)
    full = [GNU_TIME, "-f", "%M %U %S", "-o", str(stats), *argv] if wrapped else argv
    floor = 0 if wrapped else _self_rss_kib()
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        out.close()
        err.close()
    if proc.returncode != 0:
        text = (logdir / f"{label}.err").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{label}: {' '.join(argv[:4])} ... exited {proc.returncode}: {text}")
    if wrapped:
        maxrss, utime, stime = stats.read_text().split()[-3:]
        maxrss_kib, cpu = int(maxrss), float(utime) + float(stime)
    else:
        maxrss_kib, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    return {"s": elapsed, "maxrss_kib": maxrss_kib, "cpu_s": cpu, "rss_floor_kib": floor}


def _self_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _page_kib()


def poll_tree(argv: list[str], env: dict, logdir: Path, label: str,
              interval: float = 0.005) -> dict:
    """Run argv and poll /proc every `interval` s: the peak over time of the sum of PSS (the
    honest total: pages shared by the forked workers count once) and of the sum of RSS
    (counts copy-on-write pages once per process) over the whole tree. Sampling: a peak
    shorter than the interval can be missed. Used for one untimed run of each kind."""
    out = open(logdir / f"{label}.out", "wb")
    err = open(logdir / f"{label}.err", "wb")
    peak = {"pss_kib": 0, "rss_kib": 0, "procs": 0, "samples": 0}
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                cwd=ROOT, env=env)
        while proc.poll() is None:
            pss = rss = count = 0
            for pid in _tree(proc.pid):
                try:
                    with open(f"/proc/{pid}/smaps_rollup") as f:
                        for line in f:
                            if line.startswith("Rss:"):
                                rss += int(line.split()[1])
                            elif line.startswith("Pss:"):
                                pss += int(line.split()[1])
                                break
                    count += 1
                except (OSError, ValueError):
                    continue
            peak["samples"] += 1
            if pss > peak["pss_kib"]:
                peak["pss_kib"] = pss
            peak["rss_kib"] = max(peak["rss_kib"], rss)
            peak["procs"] = max(peak["procs"], count)
            time.sleep(interval)
    finally:
        out.close()
        err.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: exited {proc.returncode}")
    return peak


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except OSError:
                continue
    return out


# ---------------------------------------------------------------------------------------------
# One repetition.

def run_local(variant: str, pkgs: dict, base: Path, server: str, logdir: Path, tag: str,
              prefix=()) -> dict:
    root, paths = new_root(base, f"{variant}-local-{tag}", server)
    r = peak_rss(command(variant, ["-U", *pkgs["files"]], paths, prefix), env_for(variant),
                 logdir, f"{variant}-local-{tag}")
    _check(root, pkgs, f"{variant} local")
    return r


def run_sync(variant: str, pkgs: dict, base: Path, server: str, logdir: Path, tag: str,
             prefix=()) -> dict:
    root, paths = new_root(base, f"{variant}-sync-{tag}", server)
    env = env_for(variant)
    refresh = peak_rss(command(variant, ["-Sy"], paths, prefix), env, logdir,
                       f"{variant}-sync-y-{tag}")
    install = peak_rss(command(variant, ["-S", *pkgs["names"]], paths, prefix), env,
                       logdir, f"{variant}-sync-S-{tag}")
    _check(root, pkgs, f"{variant} sync")
    cached = len(list((root / "var/cache/pacman/pkg").glob("*.pkg.tar.zst")))
    if cached != len(pkgs["names"]):
        raise RuntimeError(f"{variant} sync: {cached} packages in the cache, expected "
                           f"{len(pkgs['names'])}")
    return {"refresh_s": refresh["s"], "install_s": install["s"],
            "s": refresh["s"] + install["s"], "cpu_s": refresh["cpu_s"] + install["cpu_s"],
            "maxrss_kib": max(refresh["maxrss_kib"], install["maxrss_kib"]),
            "rss_floor_kib": max(refresh["rss_floor_kib"], install["rss_floor_kib"])}


def _check(root: Path, pkgs: dict, what: str) -> None:
    local = root / "var/lib/pacman/local"
    installed = len([d for d in local.iterdir() if d.is_dir()]) if local.is_dir() else 0
    calls = root / "var/log/calls"
    ran = len(calls.read_text().splitlines()) if calls.exists() else 0
    if installed != len(pkgs["names"]) or ran != pkgs["scriptlets"]:
        raise RuntimeError(f"{what}: {installed} packages installed, {ran} post_install runs; "
                           f"expected {len(pkgs['names'])} and {pkgs['scriptlets']}")


# ---------------------------------------------------------------------------------------------
# Where the time goes: an instrumented pkgsandbox (this file re-run with --_instrumented).

class Clock:
    """Exclusive (self) wall time per label: time spent in a wrapped function is charged to
    it minus what its wrapped callees took, so the labels of one process add up to the
    whole. One instance per process: a forked worker resets it and reports on stderr."""

    def __init__(self):
        self.reset()

    def reset(self, root: str | None = None):
        self.acc: dict[str, list] = {}
        self.stack: list[list] = []
        self.t0 = time.perf_counter()
        if root:
            self.enter(root)

    def enter(self, label: str):
        self.stack.append([label, time.perf_counter(), 0.0])

    def leave(self):
        label, start, children = self.stack.pop()
        total = time.perf_counter() - start
        entry = self.acc.setdefault(label, [0, 0.0])
        entry[0] += 1
        entry[1] += total - children
        if self.stack:
            self.stack[-1][2] += total

    def relabel_root(self, label: str):
        """Close the bottom frame where its open callee (if any) began, and open a new one
        under another label from there (the engine: resolve, then commit)."""
        if not self.stack:
            return
        cut = self.stack[1][1] if len(self.stack) > 1 else time.perf_counter()
        old, start, children = self.stack[0]
        entry = self.acc.setdefault(old, [0, 0.0])
        entry[0] += 1
        entry[1] += cut - start - children
        self.stack[0] = [label, cut, 0.0]

    def wrap(self, owner, attr: str, label):
        original = getattr(owner, attr, None)
        if original is None:         # not in this version of pkgsandbox
            return
        clock = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            clock.enter(label(*args, **kwargs) if callable(label) else label)
            try:
                return original(*args, **kwargs)
            finally:
                clock.leave()
        setattr(owner, attr, timed)

    def result(self) -> dict:
        return {k: [v[0], round(v[1], 6)] for k, v in self.acc.items()}


def instrumented_main(argv: list[str]) -> int:
    """`--_instrumented OUT.json -- PKGSANDBOX ARGS`: run pkgsandbox's CLI in this process with
    timers around its phases; write the parent's timings to OUT.json; every forked worker
    writes its own as one CHILD_TAG line on stderr (the only descriptor it keeps)."""
    out_file = argv[0]
    args = argv[argv.index("--") + 1:]
    t_start = time.perf_counter()
    import pyalpm  # noqa: F401  (the import is part of what is timed as start-up)
    from pkgsandbox import alpm, cli, enforce, profile, runner, transaction
    from pkgsandbox.phases import cow, download, scriptlet
    from pkgsandbox import _native as native
    t_imported = time.perf_counter()
    clock = Clock()
    state = {"fork_at": None, "worker": 0}
    T = transaction.Transaction

    for owner, attr, label in (
            (T, "load_conf", "pacman.conf (pycman)"),
            (alpm, "open_handle", "libalpm handle, sync dbs registered"),
            (alpm, "lock_only", "database lock"), (alpm, "lock", "database lock"),
            (alpm, "release", "database lock"),
            (T, "refresh_databases", "refresh: parent work"),
            (T, "_fetch", "download phase: parent work"),
            (runner, "call", "download child: fork + fetch (wall)"),
            (T, "_install_file", "downloads: verify sha256 + move"),
            (T, "_extract_policy", "extract policy"),
            (profile.Library, "load", "profile load (YAML)"),
            (profile.Library, "load_override", "profile load (YAML)"),
            (profile, "resolve", "profile resolve"),
            (enforce, "prepare", "ruleset build (enforce.prepare)"),
            (T, "_until_plan", "wait: worker resolves (libalpm)"),
            (T, "on_plan", "plan: print, confirm"),
            (T, "_next", "wait: worker (libalpm extract, .INSTALL reads, messages)"),
            (T, "_finish_worker", "wait: first worker ends"),
            (T, "on_pkg", "per-package bookkeeping"),
            (scriptlet, "run", "scriptlet: temp dir, .INSTALL copy, env, other"),
            (cow, "create", "copy-on-write: overlay made (dirs, detached mount)"),
            (cow, "apply", "copy-on-write: review and apply the changes"),
            (runner, "run", "runner.run: pipes, reaper, other"),
            (native, "spawn", "spawn: vfork, layers in C, exec (_native.spawn)"),
            (runner, "_communicate", "program runs; what it left is killed (communicate)"),
            (T, "_log_scriptlet", "scriptlet: log"),
            (T, "_hooks", "hooks: discover and parse"),
            (T, "run_hooks", "hooks: match and run"),
            (runner.Channel, "send", "channel send"),
            (runner.Worker, "close", "worker close/reap")):
        clock.wrap(owner, attr, label)

    # Worker side (forked from this process, so it inherits the wrappers): reset the clock
    # at the engine's start; report when the engine returns or raises.
    original_engine = alpm.engine
    original_worker = runner.worker

    def worker(*a, **k):
        state["fork_at"] = time.time()
        state["worker"] += 1
        return original_worker(*a, **k)
    runner.worker = worker
    clock.wrap(runner, "worker", "extract worker: fork + enter domain")

    def engine(chan, *a, **k):
        started = time.time()
        clock.reset(root="libalpm: load targets, resolve (trans.prepare), plan")
        original_send = runner.Channel.send

        def send(self, obj):
            if obj.get("type") == "plan":
                clock.relabel_root("libalpm: commit (extract, db), self")
            return original_send(self, obj)
        runner.Channel.send = send
        clock.wrap(runner.Channel, "send", "channel send")
        clock.wrap(runner.Channel, "recv", "wait: parent (go / continue)")
        status = "ok"
        try:
            return original_engine(chan, *a, **k)
        except BaseException:
            status = "error"
            raise
        finally:
            while clock.stack:
                clock.leave()
            line = json.dumps({"worker": state["worker"], "status": status,
                               "fork_to_engine_s": round(started - state["fork_at"], 6),
                               "times": clock.result()})
            os.write(2, (CHILD_TAG + line + "\n").encode())
    alpm.engine = engine
    for owner, attr, label in (
            (alpm, "_add_targets", "libalpm: load targets (load_pkg / sync lookup)"),
            (alpm, "_scriptlet_for", "scriptlet lookup"),
            (alpm, "_archive_scriptlet", ".INSTALL read from the package (libarchive)"),
            (alpm, "_installed_scriptlet", "scriptlet lookup"),
            (alpm, "_changes", "hooks: file lists of every package for triggers")):
        clock.wrap(owner, attr, label)

    clock.reset(root="main: argument parsing, printing, other")
    status = cli.main(args)
    while clock.stack:
        clock.leave()
    Path(out_file).write_text(json.dumps({
        "status": status, "imports_s": t_imported - t_start,
        "main_s": time.perf_counter() - t_imported, "times": clock.result()}))
    return status


def breakdown(kind: str, pkgs: dict, base: Path, server: str, logdir: Path) -> dict:
    """One instrumented pkgsandbox run of `kind` (local | sync) on a fresh root."""
    root, paths = new_root(base, f"breakdown-{kind}", server)
    env = env_for("pkgsandbox")
    runs = []
    ops = [["-U", *pkgs["files"]]] if kind == "local" else [["-Sy"], ["-S", *pkgs["names"]]]
    for i, op in enumerate(ops):
        out_json = logdir / f"breakdown-{kind}-{i}.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "--_instrumented",
                str(out_json), "--", *op, *paths]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, cwd=ROOT, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"instrumented {kind} run failed: {proc.stderr[-2000:]}")
        parent = json.loads(out_json.read_text())
        children = [json.loads(line[len(CHILD_TAG):]) for line in proc.stderr.splitlines()
                    if line.startswith(CHILD_TAG)]
        runs.append({"op": op[0], "wall_s": wall, "parent": parent, "workers": children})
    _check(root, pkgs, f"instrumented {kind}")
    out = {"kind": kind, "runs": runs}
    if kind == "local":
        # What libalpm alone costs stock pacman: the same -U without scriptlets (median of 3).
        times = []
        for i in range(3):
            _, p = new_root(base, f"stock-noscriptlet-{i}", server)
            times.append(peak_rss(command("stock", ["-U", "--noscriptlet", *pkgs["files"]], p),
                                  env_for("stock"), logdir, f"stock-noscriptlet-{i}")["s"])
        out["stock_noscriptlet_s"] = statistics.median(times)
    return out


def startup_costs(reps: int = 7) -> dict:
    """Median wall time of a bare interpreter, and of one that imports what a transaction
    imports (pyalpm, yaml, every pkgsandbox module on the path of -S/-U/-R)."""
    imports = ("import pyalpm, yaml, pkgsandbox.cli, pkgsandbox.transaction, pkgsandbox.alpm, "
               "pkgsandbox.pacmanargs, pkgsandbox.phases.scriptlet, pkgsandbox.phases.download")
    out = {}
    for name, code in (("bare", "pass"), ("imports", imports)):
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                           env=env_for("pkgsandbox"))
            samples.append(time.perf_counter() - t0)
        out[name] = statistics.median(samples)
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(["pacman", "-V"], check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t0)
    out["pacman -V"] = statistics.median(samples)
    return out


def cprofile_runs(pkgs: dict, base: Path, server: str, logdir: Path, outdir: Path) -> dict:
    """The parent of one local and one sync (-S) run under `python -m cProfile -o`."""
    outdir.mkdir(parents=True, exist_ok=True)
    texts = {}
    for kind in ("local", "sync"):
        dest = outdir / f"{kind}.prof"
        prefix = ("-m", "cProfile", "-o", str(dest))
        if kind == "local":
            run_local("pkgsandbox", pkgs, base, server, logdir, "cprofile", prefix)
        else:
            root, paths = new_root(base, "pkgsandbox-sync-cprofile", server)
            env = env_for("pkgsandbox")
            peak_rss(command("pkgsandbox", ["-Sy"], paths), env, logdir, "cprofile-y")
            peak_rss(command("pkgsandbox", ["-S", *pkgs["names"]], paths, prefix), env,
                     logdir, "cprofile-S")
        buf = io.StringIO()
        stats = pstats.Stats(str(dest), stream=buf)
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(15)
        texts[kind] = {"file": str(dest), "top": buf.getvalue()}
    return texts


# ---------------------------------------------------------------------------------------------
# Main.

def default_tmp(n: int) -> str | None:
    """/dev/shm when it is a tmpfs with room for every root of the run (~1 MiB a package,
    generously), else None (the system temp dir). On this VM's ext4 disk, stock pacman's
    time is dominated by ext4 skipping recently deleted inodes after the churn of earlier
    runs (see docs/benchmarks.md), which measures the file system, not the sandbox."""
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if fs_type(Path(shm)) != "tmpfs" or not os.access(shm, os.W_OK):
        return None
    return shm if st.f_bavail * st.f_frsize > (4 << 30) + n * (12 << 20) else None


def fs_type(path: Path) -> str:
    """The type of the file system holding path (longest mount point in /proc/mounts)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) > len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def skip_reason() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    if os.geteuid() != 0:
        return "needs root (pacman and pkgsandbox transactions)"
    for tool in ("pacman", "bsdtar", "repo-add", "busybox"):
        if not shutil.which(tool, path=ENV_CLEAN["PATH"]):
            return f"needs {tool}"
    try:
        import pyalpm  # noqa: F401
    except ImportError:
        return (f"{sys.executable} has no pyalpm: run it with the checkout's .venv "
                f"(bench/run picks it) or PYTHON=...")
    return None


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_instrumented"]:
        return instrumented_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50 packages, 2 repetitions")
    ap.add_argument("-n", type=int, default=None, help="packages (default 200; 50 with --quick)")
    ap.add_argument("--reps", type=int, default=None,
                    help="interleaved repetitions (default 5; 2 with --quick)")
    add_output_options(ap)
    ap.add_argument("--breakdown", action="store_true",
                    help="also one instrumented run of each kind: where pkgsandbox's time goes")
    ap.add_argument("--cprofile", metavar="DIR", default=None,
                    help="also cProfile the parent of one local and one sync run into DIR")
    ap.add_argument("--tmpdir", metavar="DIR", default=None,
                    help="where the repository and the roots go (default: /dev/shm if it is a "
                         "tmpfs with room, else the system temp dir; see docs/benchmarks.md)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else (50 if args.quick else 200)
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    if n < 2 or reps < 1:
        ap.error("-n must be at least 2 and --reps at least 1")
    missing = skip_reason()
    if missing:
        return skip("transaction", missing, args)
    from pkgsandbox import landlock
    from tests.support.mirror import Mirror

    mach = machine()
    kernel = landlock.probe()
    say = (lambda *a, **k: None) if args.json else functools.partial(print, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="pkgsandbox-txbench-", dir=args.tmpdir or default_tmp(n)))
    fs = fs_type(tmp)
    try:
        logdir = tmp / "logs"
        logdir.mkdir()
        t_build = time.perf_counter()
        pkgs = build(n, tmp / "repo")
        say(f"machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['mem_mib']} MiB, kernel "
            f"{mach['kernel']}, Python {mach['python']}; load average {mach['loadavg_1min']} "
            f"at start (results are noisy if it is not near 0); Landlock ABI {kernel.abi}; roots "
            f"on {fs} ({tmp})")
        say(f"packages: {n} ({pkgs['scriptlets']} with a post_install, large ones of "
            f"{', '.join(map(str, pkgs['large_mib']))} MiB; {pkgs['bytes'] / 1048576:.1f} MiB "
            f"of archives), built in {pkgs['build_s']:.1f} s (not timed); {reps} "
            f"interleaved repetitions, fresh roots")
        samples: dict[str, list[dict]] = {k: [] for k in
                                          ("stock-local", "pkgsandbox-local",
                                           "stock-sync", "pkgsandbox-sync")}
        with Mirror(tmp / "repo", keepalive=True) as mirror:   # as real mirrors
            server = mirror.url
            # Warm-up (not counted): page cache, .pyc files, the first fork of everything.
            run_local("stock", pkgs, tmp, server, logdir, "warm")
            run_local("pkgsandbox", pkgs, tmp, server, logdir, "warm")
            for r in range(reps):
                order = ("stock", "pkgsandbox") if r % 2 == 0 else ("pkgsandbox", "stock")
                for kind, fn in (("local", run_local), ("sync", run_sync)):
                    for variant in order:
                        samples[f"{variant}-{kind}"].append(
                            fn(variant, pkgs, tmp, server, logdir, str(r)))
            polled = {}
            for variant in ("stock", "pkgsandbox"):
                root, paths = new_root(tmp, f"{variant}-poll", server)
                polled[variant] = poll_tree(command(variant, ["-U", *pkgs["files"]], paths),
                                            env_for(variant), logdir, f"{variant}-poll")
            starts = startup_costs()
            phases = None
            if args.breakdown:
                phases = [breakdown("local", pkgs, tmp, server, logdir),
                          breakdown("sync", pkgs, tmp, server, logdir)]
            profiles = None
            if args.cprofile:
                profiles = cprofile_runs(pkgs, tmp, server, logdir, Path(args.cprofile))
        total_s = time.perf_counter() - t_build

        med = {k: median([s["s"] for s in v]) for k, v in samples.items()}
        rss = {k: median([s["maxrss_kib"] for s in v]) / 1024 for k, v in samples.items()}
        sync_parts = {f"{v}-{part}": median([s[f"{part}_s"] for s in samples[f"{v}-sync"]])
                      for v in ("stock", "pkgsandbox") for part in ("refresh", "install")}
        ratio_local = med["pkgsandbox-local"] / med["stock-local"]
        ratio_sync = med["pkgsandbox-sync"] / med["stock-sync"]
        ratio_rss = rss["pkgsandbox-local"] / rss["stock-local"]
        ok = {"local": ratio_local <= TARGET_TIME_RATIO, "sync": ratio_sync <= TARGET_TIME_RATIO,
              "rss": ratio_rss <= TARGET_RSS_RATIO and rss["pkgsandbox-local"] < TARGET_RSS_MIB}
        per_rep = [round(a["s"] / b["s"], 3) for a, b in zip(samples["pkgsandbox-local"],
                                                             samples["stock-local"])]
        per_rep_sync = [round(a["s"] / b["s"], 3) for a, b in zip(samples["pkgsandbox-sync"],
                                                                  samples["stock-sync"])]
        result = {
            "benchmark": "transaction", "date": time.strftime("%Y-%m-%d"), "machine": mach,
            "landlock_abi": kernel.abi, "packages": n, "scriptlets": pkgs["scriptlets"],
            "large_mib": pkgs["large_mib"], "archive_mib": round(pkgs["bytes"] / 1048576, 2),
            "reps": reps, "build_s": round(pkgs["build_s"], 2), "tmpdir": str(tmp),
            "filesystem": fs,
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "sync_parts_median_s": {k: round(v, 4) for k, v in sync_parts.items()},
            "samples_s": {k: [round(s["s"], 4) for s in v] for k, v in samples.items()},
            "ratio": {"local": round(ratio_local, 3), "sync": round(ratio_sync, 3),
                      "rss": round(ratio_rss, 3)},
            "ratio_by_rep": {"local": per_rep, "sync": per_rep_sync},
            "peak_rss_mib": {k: round(v, 1) for k, v in rss.items()},
            "peak_rss_method": "GNU time %M (wait4 ru_maxrss)" if os.access(GNU_TIME, os.X_OK)
            else "wait4 ru_maxrss from this process: at least "
                 f"{max(s['rss_floor_kib'] for v in samples.values() for s in v) / 1024:.0f} "
                 f"MiB of any figure may be this benchmark's own RSS",
            "cpu_s_local_median": {v: round(median([s["cpu_s"] for s in
                                                    samples[f"{v}-local"]]), 3)
                                   for v in ("stock", "pkgsandbox")},
            "tree_poll_local": {v: {"peak_pss_mib": round(p["pss_kib"] / 1024, 1),
                                    "peak_rss_sum_mib": round(p["rss_kib"] / 1024, 1),
                                    "max_processes": p["procs"], "samples": p["samples"]}
                                for v, p in polled.items()},
            "startup_s": {k: round(v, 4) for k, v in starts.items()},
            "targets": {"time_ratio": TARGET_TIME_RATIO, "rss_ratio": TARGET_RSS_RATIO,
                        "rss_mib": TARGET_RSS_MIB},
            "within_target": ok,
            "total_s": round(total_s, 1),
            "summary": [
                item("local", f"local {shown(ratio_local, TARGET_TIME_RATIO)}x (n={n}; "
                              f"<={TARGET_TIME_RATIO:.2f})", ok["local"]),
                item("sync", f"sync {shown(ratio_sync, TARGET_TIME_RATIO)}x "
                             f"(<={TARGET_TIME_RATIO:.2f})", ok["sync"]),
                item("rss", f"rss {shown(ratio_rss, TARGET_RSS_RATIO)}x "
                            f"{shown(rss['pkgsandbox-local'], TARGET_RSS_MIB, 0)} MiB "
                            f"(<={TARGET_RSS_RATIO:g}x, <{TARGET_RSS_MIB})", ok["rss"])],
        }
        if phases:
            result["breakdown"] = phases
        if profiles:
            result["cprofile"] = {k: v["file"] for k, v in profiles.items()}
        if emit(result, args):
            return 0
        print_report(result, phases, profiles)
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def print_report(result: dict, phases, profiles) -> None:
    med, rss = result["median_s"], result["peak_rss_mib"]
    parts = result["sync_parts_median_s"]
    print(f"{'median wall time':<34} {'stock':>9} {'pkgsandbox':>11} {'ratio':>7}")
    print(f"{'  local  -U':<34} {med['stock-local']:8.3f}s {med['pkgsandbox-local']:10.3f}s "
          f"{result['ratio']['local']:6.2f}x")
    for part, label in (("refresh", "  sync   -Sy"), ("install", "  sync   -S (empty cache)")):
        s, p = parts[f"stock-{part}"], parts[f"pkgsandbox-{part}"]
        print(f"{label:<34} {s:8.3f}s {p:10.3f}s {p / s:6.2f}x")
    print(f"{'  sync   -Sy + -S':<34} {med['stock-sync']:8.3f}s {med['pkgsandbox-sync']:10.3f}s "
          f"{result['ratio']['sync']:6.2f}x")
    print(f"  ratio per repetition: local {result['ratio_by_rep']['local']}, sync "
          f"{result['ratio_by_rep']['sync']}")
    cpu = result["cpu_s_local_median"]
    print(f"  CPU time (user+sys, whole tree) of the local install: stock {cpu['stock']:.2f} s, "
          f"pkgsandbox {cpu['pkgsandbox']:.2f} s")
    print(f"peak RSS, largest process of the tree ({result['peak_rss_method']}), local: stock "
          f"{rss['stock-local']:.1f} MiB, pkgsandbox {rss['pkgsandbox-local']:.1f} MiB "
          f"({result['ratio']['rss']:.2f}x); sync: stock {rss['stock-sync']:.1f} MiB, "
          f"pkgsandbox {rss['pkgsandbox-sync']:.1f} MiB")
    poll = result["tree_poll_local"]
    print(f"peak of the whole tree, polled every 5 ms (one untimed local run each): "
          + "; ".join(f"{v}: PSS sum {p['peak_pss_mib']:.1f} MiB, RSS sum "
                      f"{p['peak_rss_sum_mib']:.1f} MiB, up to {p['max_processes']} processes"
                      for v, p in poll.items()))
    st = result["startup_s"]
    print(f"start-up: python -c pass {st['bare'] * 1000:.0f} ms, python importing pyalpm, yaml "
          f"and pkgsandbox {st['imports'] * 1000:.0f} ms, pacman -V "
          f"{st['pacman -V'] * 1000:.0f} ms")
    if phases:
        for ph in phases:
            print_breakdown(ph)
    if profiles:
        for kind, p in profiles.items():
            print(f"\ncProfile of the parent, {kind} ({p['file']}):\n{p['top']}")
    ok = result["within_target"]
    print(f"transaction: local {result['ratio']['local']:.2f}x (target <= "
          f"{TARGET_TIME_RATIO:.2f}) {verdict(ok['local'])}, sync {result['ratio']['sync']:.2f}x "
          f"(target <= {TARGET_TIME_RATIO:.2f}) {verdict(ok['sync'])}, rss "
          f"{result['ratio']['rss']:.2f}x / {rss['pkgsandbox-local']:.0f} MiB (target <= "
          f"{TARGET_RSS_RATIO:g}x, < {TARGET_RSS_MIB} MiB) {verdict(ok['rss'])}; n="
          f"{result['packages']}, {result['reps']} reps; stock local "
          f"{med['stock-local']:.2f} s, pkgsandbox local {med['pkgsandbox-local']:.2f} s")


def print_breakdown(ph: dict) -> None:
    if "stock_noscriptlet_s" in ph:
        print(f"\nreference: stock pacman -U --noscriptlet (libalpm's work alone, no scriptlet "
              f"runs): {ph['stock_noscriptlet_s']:.3f} s (median of 3)")
    for run in ph["runs"]:
        parent = run["parent"]
        print(f"\nwhere the time goes: {ph['kind']} {run['op']} (one instrumented run, wall "
              f"{run['wall_s']:.3f} s: start-up and imports up to main() "
              f"{run['wall_s'] - parent['main_s']:.3f} s, of which pyalpm + pkgsandbox "
              f"imports {parent['imports_s']:.3f} s; main() {parent['main_s']:.3f} s)")
        _print_times("parent", parent["times"], parent["main_s"])
        for w in run["workers"]:
            total = sum(v[1] for v in w["times"].values())
            print(f"  extract worker {w['worker']} ({w['status']}): fork to engine "
                  f"{w['fork_to_engine_s'] * 1000:.1f} ms")
            _print_times("    worker", w["times"], total)


def _print_times(who: str, times: dict, total: float) -> None:
    items = sorted(times.items(), key=lambda kv: -kv[1][1])
    for label, (count, secs) in items:
        if secs < 0.0005:
            continue
        share = 100 * secs / total if total else 0
        print(f"  {who:<8} {secs * 1000:9.1f} ms {share:5.1f}%  x{count:<5} {label}")


if __name__ == "__main__":
    sys.exit(guarded("transaction", main))
