#!/usr/bin/env python3
"""Spawn benchmark: what a Landlock-sandboxed spawn costs over a plain one.

Budget (issue): at most 5 ms added per sandboxed spawn over a plain `subprocess` spawn of the
same program. One process prepares the shipped `scriptlet` policy once (root "/", pkgname
"bench"), then times N sequential `runner.run(["/bin/true"], prepared)` against N plain
`subprocess.run(["/bin/true"])`, interleaved in rounds that alternate which kind goes first,
and reports medians per spawn. It also times enforce.prepare() itself and the preparation of a
1000-rule policy, and (as a diagnostic, not part of the budget) a plain spawn that adds a
no-op `preexec_fn` and a new session: what a full fork of this Python process costs (the
runner entered the domain in a `preexec_fn` until d858283; it now uses vfork and enters every
layer in C, pkgsandbox/_native.c). See bench/scaling.py for 10 to 1000 rules.

    bench/spawn.py [--quick] [-n N] [--rounds R] [--json] [--json-out FILE] [--cprofile K]

A measurement: exits 0 whatever the numbers, non-zero only if something errors.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import add_output_options, emit, guarded, item, machine, shown, verdict  # noqa: E402
from pkgsandbox import abi, enforce, landlock, profile, runner  # noqa: E402
from pkgsandbox.abi import Compat  # noqa: E402
from pkgsandbox.policy import PathGrant, Policy  # noqa: E402

TARGET_MS = 5.0
PROGRAM = ["/bin/true"]


def ms(seconds: float) -> float:
    return seconds * 1000.0


def scriptlet_policy() -> Policy:
    lib = profile.Library(include_system=False)
    values = dict(profile.VARIABLES)
    values.update(root="/", pkgname="bench")
    return profile.resolve(lib.load("scriptlet"), values)


def time_sandboxed(prepared: enforce.Prepared, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    result = runner.run(PROGRAM, prepared, env=env)
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"sandboxed {PROGRAM[0]} exited {result.returncode}")
    return elapsed


def time_plain() -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(PROGRAM)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"plain {PROGRAM[0]} exited {proc.returncode}")
    return elapsed


def _noop() -> None:
    pass


def time_plain_preexec(env: dict[str, str]) -> float:
    """A spawn through a full fork: a no-op preexec_fn (forces fork, not vfork), a new
    session, an environment; no ruleset, no no_new_privs (what the runner did before
    d858283, minus Landlock)."""
    t0 = time.perf_counter()
    proc = subprocess.run(PROGRAM, env=env, start_new_session=True, preexec_fn=_noop)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"plain+preexec {PROGRAM[0]} exited {proc.returncode}")
    return elapsed


def interleaved(n: int, rounds: int, kinds: dict) -> list[dict[str, list[float]]]:
    """n spawns of each kind in `rounds` rounds; the order of kinds rotates every round.
    Returns the samples of each round."""
    out = []
    names = list(kinds)
    per_round = [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]
    for r, count in enumerate(per_round):
        order = names[r % len(names):] + names[:r % len(names)]
        samples: dict[str, list[float]] = {}
        for kind in order:
            fn = kinds[kind]
            samples[kind] = [fn() for _ in range(count)]
        out.append(samples)
    return out


def time_prepare(policy: Policy, builds: int) -> list[float]:
    out = []
    for _ in range(builds):
        t0 = time.perf_counter()
        prepared = enforce.prepare(policy)
        out.append(time.perf_counter() - t0)
        prepared.close()
    return out


def big_policy(base: Path, rules: int) -> Policy:
    grants = []
    for i in range(rules):
        d = base / f"d{i:04d}"
        d.mkdir()
        grants.append(PathGrant(path=str(d), rights=frozenset(
            {"read_file", "read_dir", "write_file", "make_reg", "remove_file"}),
            origin=f"bench:{i}"))
    return Policy(name=f"bench-{rules}", phase="bench", source="bench/spawn.py",
                  compat=Compat.BEST_EFFORT, min_abi=0,
                  handled_fs=frozenset(abi.FS_RIGHTS), handled_net=frozenset(abi.NET_RIGHTS),
                  scopes=frozenset(abi.SCOPES), paths=tuple(grants), ports=())


def parent_rss_mib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def cprofile_report(prepared: enforce.Prepared, env: dict[str, str], count: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(count):
        runner.run(PROGRAM, prepared, env=env)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(25)
    stats.sort_stats("tottime").print_stats(12)
    return out.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50 spawns of each kind, not 200")
    ap.add_argument("-n", type=int, default=None, help="spawns of each kind (default 200)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    add_output_options(ap)
    ap.add_argument("--ballast-mib", type=int, metavar="M", default=0,
                    help="first grow the parent by M MiB of touched memory (spawn cost "
                         "through fork() grows with the parent's size)")
    ap.add_argument("--cprofile", type=int, metavar="K", default=0,
                    help="also profile K sandboxed spawns with cProfile and print the top")
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else (50 if args.quick else 200)
    if n < 1 or args.rounds < 1 or args.ballast_mib < 0 or args.cprofile < 0:
        ap.error("-n and --rounds must be at least 1; --ballast-mib, --cprofile not negative")
    rounds = min(args.rounds, n)
    prepare_builds = 20 if args.quick else 50
    big_builds = 3 if args.quick else 10
    big_spawns = 10 if args.quick else 40

    ballast = bytearray(args.ballast_mib << 20)   # referenced until main() returns
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    mach = machine()   # before measuring: the load average must not include this run
    kernel = landlock.probe()
    policy = scriptlet_policy()
    env = policy.environment.build(dict(os.environ))
    prepared = enforce.prepare(policy)
    try:
        # Warm-up: first spawns pay page-cache and import costs that are not per-spawn.
        for _ in range(5):
            time_sandboxed(prepared, env)
            time_plain()
            time_plain_preexec(env)
        by_round = interleaved(n, rounds, {
            "sandboxed": lambda: time_sandboxed(prepared, env),
            "plain": time_plain,
            "plain_preexec": lambda: time_plain_preexec(env),
        })
        prep = time_prepare(policy, prepare_builds)
        with tempfile.TemporaryDirectory(prefix="pkgsandbox-bench-") as tmp:
            big = big_policy(Path(tmp), 1000)
            big_prep = time_prepare(big, big_builds)
            with enforce.prepare(big) as big_prepared:
                big_rules = big_prepared.report.rules
            # To spawn /bin/true the domain also needs the scriptlet grants (/usr, ...).
            runnable = replace(policy, paths=policy.paths + big.paths)
            with enforce.prepare(runnable) as big_prepared:
                big_spawn_rules = big_prepared.report.rules
                big_spawn = [time_sandboxed(big_prepared, env) for _ in range(big_spawns)]
        profile_text = cprofile_report(prepared, env, args.cprofile) if args.cprofile else ""
        report = prepared.report
    finally:
        prepared.close()

    samples = {k: [x for r in by_round for x in r[k]] for k in by_round[0]}
    med = {k: ms(statistics.median(v)) for k, v in samples.items()}
    added = med["sandboxed"] - med["plain"]
    round_added = [ms(statistics.median(r["sandboxed"]) - statistics.median(r["plain"]))
                   for r in by_round]
    result = {
        "benchmark": "spawn",
        "date": time.strftime("%Y-%m-%d"),
        "machine": mach,
        "landlock": {"kernel_abi": kernel.abi, "abi": report.abi, "errata": kernel.errata,
                     "status": report.status, "rules": report.rules},
        "program": PROGRAM,
        "parent_rss_mib": parent_rss_mib(),
        "ballast_mib": args.ballast_mib,
        "spawns_per_kind": n,
        "rounds": rounds,
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "p90_ms": {k: round(ms(statistics.quantiles(v, n=10)[-1]), 3)
                   for k, v in samples.items() if len(v) >= 2},
        "added_ms": round(added, 3),
        "added_ms_by_round": [round(x, 3) for x in round_added],
        "added_ms_over_plain_preexec": round(med["sandboxed"] - med["plain_preexec"], 3),
        "target_ms": TARGET_MS,
        "within_target": added <= TARGET_MS,
        "summary": [item("spawn", f"spawn +{shown(added, TARGET_MS)} ms (<={TARGET_MS:g})",
                         added <= TARGET_MS)],
        "prepare_ms": {"median": round(ms(statistics.median(prep)), 3), "builds": len(prep)},
        "prepare_1000_rules_ms": {"median": round(ms(statistics.median(big_prep)), 3),
                                  "builds": len(big_prep), "rules": big_rules},
        "spawn_1000_rules_ms": {"median": round(ms(statistics.median(big_spawn)), 3),
                                "spawns": len(big_spawn), "rules": big_spawn_rules},
    }
    if emit(result, args):
        if profile_text:
            print(profile_text, file=sys.stderr)
        return 0

    m = result["machine"]
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_mib']} MiB, kernel {m['kernel']}, "
          f"Python {m['python']}; load average {m['loadavg_1min']} at start (results are "
          f"noisy if it is not near 0)")
    print(f"landlock: kernel ABI {kernel.abi}, in force {report.abi}, errata {kernel.errata}; "
          f"scriptlet policy {report.status}, {report.rules} rules")
    print(f"spawns: {n} of each kind of {' '.join(PROGRAM)}, {rounds} interleaved rounds; "
          f"parent RSS {result['parent_rss_mib']} MiB")
    print(f"  plain subprocess.run          median {med['plain']:7.3f} ms   "
          f"p90 {result['p90_ms'].get('plain', 0):7.3f} ms")
    print(f"  plain + preexec_fn + setsid   median {med['plain_preexec']:7.3f} ms   "
          f"p90 {result['p90_ms'].get('plain_preexec', 0):7.3f} ms   (diagnostic)")
    print(f"  runner.run, scriptlet domain  median {med['sandboxed']:7.3f} ms   "
          f"p90 {result['p90_ms'].get('sandboxed', 0):7.3f} ms")
    print(f"  added per round (median sandboxed - median plain): "
          + ", ".join(f"{x:.2f}" for x in round_added) + " ms")
    print(f"  a spawn through a full fork (preexec_fn) costs "
          f"{med['plain_preexec'] - med['plain']:.3f} ms more than plain; runner.run "
          f"{added:.3f} ms more")
    print(f"prepare (scriptlet, {report.rules} rules): median "
          f"{result['prepare_ms']['median']:.3f} ms over {len(prep)} builds")
    print(f"prepare (1000 rules): median {result['prepare_1000_rules_ms']['median']:.3f} ms "
          f"over {len(big_prep)} builds; spawn in that domain: median "
          f"{result['spawn_1000_rules_ms']['median']:.3f} ms over {len(big_spawn)} "
          f"(scriptlet + 1000 = {big_spawn_rules} rules)")
    if profile_text:
        print(f"\ncProfile of {args.cprofile} sandboxed spawns:\n{profile_text}")
    print(f"spawn: added {added:.2f} ms/spawn (target <= {TARGET_MS:g}) "
          f"{verdict(result['within_target'])}; "
          f"sandboxed {med['sandboxed']:.2f} ms, plain {med['plain']:.2f} ms, "
          f"prepare {result['prepare_ms']['median']:.2f} ms, "
          f"prepare 1000 rules {result['prepare_1000_rules_ms']['median']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(guarded("spawn", main))
