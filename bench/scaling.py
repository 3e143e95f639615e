#!/usr/bin/env python3
"""Scaling benchmark: how pkgsandbox's costs grow with the packages and with the path rules.

Targets (issue): the local install is linear in the number of packages, stated here as: time
per package at the largest size at most 1.5x the time per package at the smallest; building
a Landlock ruleset of 1000 path rules and entering it takes under 20 ms.

packages  Builds bench/transaction.py's package set once for the largest size (package files
          only: -U needs no repository database) and uses its first N for every size: the
          dependencies point backwards, so each prefix installs on its own, and the first 200
          are exactly transaction.py's 200. Then R interleaved repetitions of stock
          `pacman -U` and `python -m pkgsandbox -U` of N files on fresh roots, for every N
          (transaction.run_local: checked, timed with GNU time). Reports the median time, the
          time per package, its ratio largest/smallest for each variant, and the marginal cost
          per package between successive sizes (which leaves out the fixed start-up cost).
          Sizes 50, 200, 1000 (--quick: 50, 100, 200), 3 repetitions (--quick: 2).
rules     For N in 10, 100, 1000: a policy of N PathGrants on N fresh directories
          (spawn.big_policy); build = enforce.prepare(policy) (open every path, add its rule);
          apply = landlock.restrict_self() (no_new_privs + landlock_restrict_self) in a forked
          child, timed inside the child and reported over a pipe. Median of build + apply over
          the repetitions (30; --quick: 10), and its ratio to 10 rules.

    bench/scaling.py [--quick] [--sizes 50,200,1000] [--reps R] [--rules 10,100,1000]
                     [--rule-reps R] [--only packages|rules] [--json] [--json-out FILE]

A measurement: exits 0 whatever the numbers, non-zero only if something errors. The package
part needs root, pacman, bsdtar, busybox and pyalpm (else it is skipped with a message); the
rules part needs only Landlock.
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import (add_output_options, emit, guarded, item, machine, shown, skip,  # noqa: E402
                     verdict)

TARGET_PER_PACKAGE_RATIO = 1.5
TARGET_RULES_MS = 20.0
SIZES, QUICK_SIZES = (50, 200, 1000), (50, 100, 200)
RULES = (10, 100, 1000)


# ---------------------------------------------------------------------------------------------
# Packages.

def first(pkgs: dict, n: int) -> dict:
    """The first n of transaction.build()'s packages, in the same shape."""
    specs = pkgs["specs"][:n]
    files = pkgs["files"][:n]
    return {"specs": specs, "files": files, "names": pkgs["names"][:n],
            "scriptlets": sum(1 for s in specs if s.install),
            "large_mib": [len(f.content) >> 20 for s in specs for f in s.files
                          if f.path.endswith("/blob")],
            "bytes": sum(os.path.getsize(f) for f in files)}


def packages(sizes: list[int], reps: int, tmpdir: str | None, say) -> dict:
    """Stock and pkgsandbox -U at every size, interleaved; medians and per-package times."""
    import transaction as tx
    biggest = max(sizes)
    tmp = Path(tempfile.mkdtemp(prefix="pkgsandbox-scalebench-",
                                dir=tmpdir or tx.default_tmp(biggest)))
    fs = tx.fs_type(tmp)
    try:
        logdir = tmp / "logs"
        logdir.mkdir()
        built = tx.build(biggest, tmp / "pkgs", repo=False)
        sets = {n: first(built, n) for n in sizes}
        server = (tmp / "pkgs").as_uri()      # in pacman.conf only; -U does not read it
        say(f"packages: the first {', '.join(map(str, sizes))} of {biggest} built in "
            f"{built['build_s']:.1f} s (not timed; no repository database); roots on "
            f"{fs} ({tmp}); {reps} interleaved repetitions")
        for variant in ("stock", "pkgsandbox"):      # warm-up, not counted
            tx.run_local(variant, sets[min(sizes)], tmp, server, logdir, "warm")
        runs = {(v, n): [] for v in ("stock", "pkgsandbox") for n in sizes}
        t0 = time.perf_counter()
        for r in range(reps):
            order = ("stock", "pkgsandbox") if r % 2 == 0 else ("pkgsandbox", "stock")
            for n in sizes:
                for variant in order:
                    runs[variant, n].append(tx.run_local(variant, sets[n], tmp, server, logdir,
                                                         f"n{n}-{r}"))
        elapsed = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"sizes": sizes, "reps": reps, "build_s": round(built["build_s"], 2),
           "runs_s": round(elapsed, 1), "filesystem": fs,
           "large_mib": {n: sets[n]["large_mib"] for n in sizes},
           "archive_mib": {n: round(sets[n]["bytes"] / 1048576, 1) for n in sizes}}
    for variant in ("stock", "pkgsandbox"):
        med = {n: statistics.median(s["s"] for s in runs[variant, n]) for n in sizes}
        per = {n: med[n] / n for n in sizes}
        small, big = min(sizes), max(sizes)
        out[variant] = {
            "median_s": {n: round(med[n], 4) for n in sizes},
            "samples_s": {n: [round(s["s"], 4) for s in runs[variant, n]] for n in sizes},
            "per_package_ms": {n: round(per[n] * 1000, 3) for n in sizes},
            "marginal_ms": {f"{a}-{b}": round((med[b] - med[a]) / (b - a) * 1000, 3)
                            for a, b in zip(sizes, sizes[1:])},
            "per_package_ratio": round(per[big] / per[small], 3),
            "peak_rss_mib": {n: round(statistics.median(s["maxrss_kib"] for s in
                                                        runs[variant, n]) / 1024, 1)
                             for n in sizes}}
    out["time_ratio"] = {n: round(out["pkgsandbox"]["median_s"][n] / out["stock"]["median_s"][n],
                                  3) for n in sizes}
    return out


# ---------------------------------------------------------------------------------------------
# Rules.

def apply_in_child(prepared) -> float:
    """Seconds landlock.restrict_self(prepared) takes in a forked child (timed there)."""
    from pkgsandbox import landlock
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                           # the child: enter the domain, report, leave
        status = 1
        try:
            os.close(r)
            t0 = time.perf_counter()
            landlock.restrict_self(prepared.ruleset_fd, prepared.flags)
            elapsed = time.perf_counter() - t0
            os.write(w, struct.pack("d", elapsed))
            status = 0
        except BaseException:            # noqa: BLE001 (reported by the parent as a failure)
            pass
        finally:
            os._exit(status)
    os.close(w)
    try:
        data = b""
        while len(data) < 8:
            chunk = os.read(r, 8 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or len(data) != 8:
        raise RuntimeError("landlock_restrict_self failed in the forked child")
    return struct.unpack("d", data)[0]


def rules(counts: list[int], reps: int) -> dict:
    """Build (enforce.prepare) and apply (in a forked child) of N-rule policies."""
    from pkgsandbox import enforce, landlock
    from spawn import big_policy
    kernel = landlock.probe()
    out = {"counts": counts, "reps": reps, "kernel_abi": kernel.abi}
    with tempfile.TemporaryDirectory(prefix="pkgsandbox-rulebench-") as tmp:
        policies = {}
        for n in counts:
            (Path(tmp) / str(n)).mkdir()
            policies[n] = big_policy(Path(tmp) / str(n), n)
        samples = {n: {"build": [], "apply": []} for n in counts}
        for r in range(reps + 1):                 # the first round warms up, not counted
            for n in counts if r % 2 == 0 else counts[::-1]:
                t0 = time.perf_counter()
                prepared = enforce.prepare(policies[n])
                built = time.perf_counter() - t0
                try:
                    if prepared.report.rules < n:
                        raise RuntimeError(f"{n}-rule policy: only {prepared.report.rules} rules "
                                           f"made it into the ruleset")
                    applied = apply_in_child(prepared)
                finally:
                    prepared.close()
                if r:
                    samples[n]["build"].append(built)
                    samples[n]["apply"].append(applied)
    ms = {n: {k: statistics.median(v) * 1000 for k, v in s.items()} for n, s in samples.items()}
    total = {n: statistics.median(b + a for b, a in zip(s["build"], s["apply"])) * 1000
             for n, s in samples.items()}
    base = min(counts)
    out.update({
        "build_ms": {n: round(ms[n]["build"], 3) for n in counts},
        "apply_ms": {n: round(ms[n]["apply"], 3) for n in counts},
        "total_ms": {n: round(total[n], 3) for n in counts},
        "ratio_to_smallest": {n: round(total[n] / total[base], 2) for n in counts}})
    return out


# ---------------------------------------------------------------------------------------------
# Main.

def sizes_arg(text: str) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if len(values) < 2 or values[0] < 1:
        raise argparse.ArgumentTypeError("at least two sizes, each at least 1")
    return values


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="packages 50, 100, 200 with 2 repetitions; 10 rule repetitions")
    ap.add_argument("--sizes", type=sizes_arg, default=None, metavar="N,N,...",
                    help="package counts (default 50,200,1000; 50,100,200 with --quick)")
    ap.add_argument("--reps", type=int, default=None,
                    help="interleaved repetitions of the installs (default 3; 2 with --quick)")
    ap.add_argument("--rules", type=sizes_arg, default=list(RULES), metavar="N,N,...",
                    help="path rule counts (default 10,100,1000)")
    ap.add_argument("--rule-reps", type=int, default=None,
                    help="repetitions of build + apply (default 30; 10 with --quick)")
    ap.add_argument("--only", choices=("packages", "rules"), default=None,
                    help="run one part only")
    ap.add_argument("--tmpdir", metavar="DIR", default=None,
                    help="where the packages and the roots go (default as bench/transaction.py)")
    add_output_options(ap)
    args = ap.parse_args(argv)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    reps = args.reps if args.reps is not None else (2 if args.quick else 3)
    rule_reps = args.rule_reps if args.rule_reps is not None else (10 if args.quick else 30)
    if reps < 1 or rule_reps < 1:
        ap.error("--reps and --rule-reps must be at least 1")
    import transaction as tx
    missing = tx.skip_reason() if args.only != "rules" else None
    if missing and args.only == "packages":
        return skip("scaling", missing, args)
    mach = machine()
    say = (lambda *a, **k: None) if args.json else functools.partial(print, flush=True)
    say(f"machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['mem_mib']} MiB, kernel "
        f"{mach['kernel']}, Python {mach['python']}; load average {mach['loadavg_1min']} at "
        f"start")
    result = {"benchmark": "scaling", "date": time.strftime("%Y-%m-%d"), "machine": mach,
              "targets": {"per_package_ratio": TARGET_PER_PACKAGE_RATIO,
                          "rules_ms": TARGET_RULES_MS}, "summary": []}
    if args.only != "rules":
        if missing:
            say(f"bench/scaling.py: packages skipped: {missing}")
            result["packages"] = {"skipped": missing}
            result["summary"].append(item("pkgs", f"scaling pkgs skipped ({missing})", None))
        else:
            p = result["packages"] = packages(sizes, reps, args.tmpdir, say)
            ratio = p["pkgsandbox"]["per_package_ratio"]
            ok = ratio <= TARGET_PER_PACKAGE_RATIO
            result["within_target_packages"] = ok
            result["summary"].append(item(
                "pkgs", f"scaling pkgs {min(sizes)}->{max(sizes)} per-pkg "
                        f"{shown(ratio, TARGET_PER_PACKAGE_RATIO)} (stock "
                        f"{p['stock']['per_package_ratio']:.2f}; <={TARGET_PER_PACKAGE_RATIO:g})",
                ok))
    from pkgsandbox import landlock
    no_landlock = landlock.probe().abi < 1
    if args.only != "packages" and no_landlock:
        say("bench/scaling.py: rules skipped: no Landlock on this kernel")
        result["rules"] = {"skipped": "no Landlock on this kernel"}
        result["summary"].append(item("rules", "rules skipped (no Landlock)", None))
    elif args.only != "packages":
        rl = result["rules"] = rules(args.rules, rule_reps)
        big = max(args.rules)
        total = rl["total_ms"][big]
        ok = total < TARGET_RULES_MS
        result["within_target_rules"] = ok
        result["summary"].append(item(
            "rules", f"rules {big} {shown(total, TARGET_RULES_MS, 1)} ms "
                     f"(x{rl['ratio_to_smallest'][big]:.1f} of "
                     f"{min(args.rules)}; <{TARGET_RULES_MS:g} ms)", ok))
    if emit(result, args):
        return 0
    print_report(result)
    return 0


def print_report(result: dict) -> None:
    p = result.get("packages")
    if p and "skipped" not in p:
        sizes = p["sizes"]
        print(f"local install -U, median of {p['reps']}   "
              + "".join(f"{'N=' + str(n):>22}" for n in sizes))
        for v in ("stock", "pkgsandbox"):
            row = p[v]
            print(f"  {v:<30} " + "".join(
                f"{row['median_s'][n]:9.3f}s {row['per_package_ms'][n]:6.2f} ms/pkg"
                for n in sizes))
        print("  pkgsandbox / stock              " + "".join(
            f"{p['time_ratio'][n]:21.2f}x" for n in sizes))
        for v in ("stock", "pkgsandbox"):
            row = p[v]
            marg = ", ".join(f"{k}: {x:.2f}" for k, x in row["marginal_ms"].items())
            print(f"  {v}: per-package time {max(sizes)} / {min(sizes)} = "
                  f"{row['per_package_ratio']:.2f}; marginal ms per package {marg}; peak RSS "
                  + ", ".join(f"{x:.0f}" for x in row["peak_rss_mib"].values()) + " MiB")
        print("  large packages (MiB) in each set: "
              + "; ".join(f"N={n}: {p['large_mib'][n]}" for n in sizes)
              + f"; build {p['build_s']:.1f} s, runs {p['runs_s']:.1f} s")
    rl = result.get("rules")
    rl = rl if rl and "skipped" not in rl else None
    if rl:
        print(f"path rules (median of {rl['reps']}; Landlock ABI {rl['kernel_abi']})   build "
              f"(enforce.prepare) + apply (restrict_self, in a child)")
        for n in rl["counts"]:
            print(f"  {n:>6} rules   build {rl['build_ms'][n]:8.3f} ms   apply "
                  f"{rl['apply_ms'][n]:7.3f} ms   total {rl['total_ms'][n]:8.3f} ms   "
                  f"x{rl['ratio_to_smallest'][n]:.1f}")
    parts = []
    if p and "skipped" not in p:
        parts.append(f"per-package time {max(p['sizes'])}/{min(p['sizes'])}: pkgsandbox "
                     f"{p['pkgsandbox']['per_package_ratio']:.2f}, stock "
                     f"{p['stock']['per_package_ratio']:.2f} (target <= "
                     f"{TARGET_PER_PACKAGE_RATIO:g}) {verdict(result['within_target_packages'])}")
    if rl:
        big = max(rl["counts"])
        parts.append(f"{big} rules build + apply {rl['total_ms'][big]:.2f} ms (target < "
                     f"{TARGET_RULES_MS:g}) {verdict(result['within_target_rules'])}")
    print("scaling: " + "; ".join(parts))


if __name__ == "__main__":
    sys.exit(guarded("scaling", main))
