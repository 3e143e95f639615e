"""What the benchmarks in bench/ share: the machine's facts, --json / --json-out, skipping,
one-line errors, and the items of the summary line bench/run prints (bench/_summary.py).

Not a benchmark itself: bench/run runs every bench/*.py except those whose name starts
with `_`.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout with any Python that has PyYAML
    sys.path.insert(0, str(ROOT))


def machine() -> dict:
    """CPUs, memory, kernel, CPU model, Python, and the 1-minute load average now."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "mem_mib": mem_kib // 1024, "kernel": platform.release(),
            "cpu": cpu, "python": platform.python_version(),
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def verdict(ok: bool) -> str:
    return "OK" if ok else "OVER"


def shown(value: float, target: float, digits: int = 2) -> str:
    """value with `digits` decimals, or more when that would print it as the target it
    misses or meets only by a hair (0.899 against 0.90 must not read "0.90 OVER")."""
    text = f"{value:.{digits}f}"
    while text == f"{target:.{digits}f}" and value != target and digits < 6:
        digits += 1
        text = f"{value:.{digits}f}"
    return text


def item(key: str, text: str, ok: bool) -> dict:
    """One entry of the summary line: `text` states the figure and its target, e.g.
    "local 5.8x (<=1.10)"; bench/_summary.py appends OK or OVER and orders them by key."""
    return {"key": key, "text": text, "ok": bool(ok)}


def add_output_options(ap) -> None:
    ap.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    ap.add_argument("--json-out", metavar="FILE", default=None,
                    help="also write the JSON object to FILE (bench/run collects these)")


def emit(result: dict, args) -> bool:
    """Write the result to --json-out, print it with --json; True when it was printed (the
    caller then prints nothing else)."""
    text = json.dumps(result, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    if args.json:
        print(text)
    return args.json


def skip(name: str, reason: str, args) -> int:
    """The benchmark cannot run here: say why on stderr, record it for the summary, exit 0."""
    print(f"bench/{name}.py: skipped: {reason}", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"benchmark": name, "skipped": reason}) + "\n")
    return 0


def guarded(name: str, main, argv=None) -> int:
    """main(argv), with the errors a benchmark expects (a command that fails, a file or a
    server that cannot be used, pkgsandbox refusing a setup) as one line and exit status 1."""
    from pkgsandbox.errors import PkgsandboxError
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"bench/{name}.py: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, ValueError, PkgsandboxError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"bench/{name}.py: error: {text}", file=sys.stderr)
        return 1
