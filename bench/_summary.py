#!/usr/bin/env python3
"""One summary line from the results bench/run collected: every ratio with its target and
OK or OVER, in the order of the issue's table, then what failed or was skipped, then the wall
time of the whole run.

    bench/_summary.py [--json] DIR

DIR holds, for each benchmark NAME that ran, NAME.rc ("EXIT-STATUS SECONDS", written by
bench/run) and NAME.json (its --json-out: the result, with a "summary" list of items from
_common.item(), or {"skipped": REASON}). --json prints one JSON object instead: every
result, the seconds of each benchmark, and the summary line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import verdict  # noqa: E402

ORDER = ("local", "sync", "download", "spawn", "rss", "pkgs", "rules")


def collect(directory: Path) -> tuple[str, dict]:
    results, seconds, parts, notes = {}, {}, [], []
    for rc_file in sorted(directory.glob("*.rc")):
        name = rc_file.stem
        status, _, secs = rc_file.read_text().strip().partition(" ")
        seconds[name] = int(secs or 0)
        out = directory / f"{name}.json"
        data = None
        if out.exists():
            try:
                data = json.loads(out.read_text())
            except ValueError:
                data = None
        results[name] = data
        if status != "0":
            notes.append(f"{name} FAILED (exit {status})")
        elif data is None:
            notes.append(f"{name}: no result")
        elif "skipped" in data:
            notes.append(f"{name} skipped ({data['skipped']})")
        else:
            parts += data.get("summary", [])
    parts.sort(key=lambda i: ORDER.index(i["key"]) if i["key"] in ORDER else len(ORDER))
    texts = [i["text"] if i["ok"] is None else f"{i['text']} {verdict(i['ok'])}"
             for i in parts]
    line = "summary: " + "; ".join(texts + notes + [f"{sum(seconds.values())} s"])
    return line, {"date": time.strftime("%Y-%m-%d"), "results": results, "seconds": seconds,
                  "summary": line}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = ap.parse_args(argv)
    if not args.directory.is_dir():
        print(f"bench/_summary.py: error: {args.directory} is not a directory", file=sys.stderr)
        return 1
    line, everything = collect(args.directory)
    print(json.dumps(everything, indent=2) if args.json else line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
