"""pacman's operation syntax (-S, -Sy, -Syu, -Sw, -U, -R with -s, -c, -n...), parsed by hand
as pacman does: combined short flags, options with values, targets. Pure.

Query-style operations that change nothing (-Q, -Ss, -Si, -Sl, -Sg, -F, -D, -T, -V) are
handed to the stock pacman binary unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UsageError

OPS = {"S": "sync", "U": "upgrade", "R": "remove", "Q": "query", "D": "database",
       "F": "files", "T": "deptest", "V": "version"}
LONG_OPS = {"--sync": "S", "--upgrade": "U", "--remove": "R", "--query": "Q",
            "--database": "D", "--files": "F", "--deptest": "T", "--version": "V"}
VALUE_OPTIONS = {"--root": "root", "--dbpath": "dbpath", "--cachedir": "cachedir",
                 "--config": "config", "--hookdir": "hookdir", "--logfile": "logfile",
                 "--gpgdir": "gpgdir", "--color": "color", "--arch": "arch",
                 "--abi": "abi", "--compat": "compat", "--profile-dir": "profile_dir"}
FLAG_OPTIONS = {"--refresh": "y", "--sysupgrade": "u", "--downloadonly": "w", "--print": "p",
                "--recursive": "s", "--cascade": "c", "--nosave": "n", "--nodeps": "d",
                "--search": "s", "--info": "i", "--list": "l", "--groups": "g",
                "--clean": "c", "--quiet": "q"}
BOOL_OPTIONS = {"--noconfirm", "--confirm", "--needed", "--asdeps", "--asexplicit",
                "--noscriptlet", "--noprogressbar", "--verbose", "--json", "--debug",
                "--disable-download-timeout"}


@dataclass(kw_only=True)
class Parsed:
    op: str                      # sync | upgrade | remove | ... (see OPS)
    letters: list[str] = field(default_factory=list)
    values: dict[str, list[str]] = field(default_factory=dict)
    bools: set[str] = field(default_factory=set)
    targets: list[str] = field(default_factory=list)

    def count(self, letter: str) -> int:
        return self.letters.count(letter)

    def value(self, key: str) -> str | None:
        v = self.values.get(key)
        return v[-1] if v else None

    @property
    def read_only(self) -> bool:
        """Operations pkgsandbox hands to stock pacman."""
        if self.op != "sync":
            return self.op not in ("upgrade", "remove")
        return any(self.count(x) for x in "silgc") and not self.count("u")


def is_operation(argv: list[str]) -> bool:
    for arg in argv:
        if arg in LONG_OPS:
            return True
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 1:
            return arg[1] in OPS
    return False


def parse(argv: list[str]) -> Parsed:
    op = None
    letters: list[str] = []
    values: dict[str, list[str]] = {}
    bools: set[str] = set()
    targets: list[str] = []
    i = 0
    only_targets = False
    while i < len(argv):
        arg = argv[i]
        i += 1
        if only_targets or not arg.startswith("-") or arg == "-":
            targets.append(arg)
            continue
        if arg == "--":
            only_targets = True
            continue
        if arg.startswith("--"):
            name, eq, inline = arg.partition("=")
            if name in LONG_OPS:
                op = _set_op(op, LONG_OPS[name])
            elif name in VALUE_OPTIONS:
                if eq:
                    value = inline
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    raise UsageError(f"option '{name}' requires an argument")
                values.setdefault(VALUE_OPTIONS[name], []).append(value)
            elif name in FLAG_OPTIONS:
                letters.append(FLAG_OPTIONS[name])
            elif name in BOOL_OPTIONS:
                bools.add(name[2:])
            else:
                raise UsageError(f"unrecognized option '{name}'")
            continue
        cluster = arg[1:]
        j = 0
        while j < len(cluster):
            c = cluster[j]
            j += 1
            if c in OPS and op is None:
                op = c
            elif c in OPS and c.isupper():
                raise UsageError("only one operation may be used at a time")
            elif c in "br":
                value = cluster[j:] or (argv[i] if i < len(argv) else None)
                if value is None:
                    raise UsageError(f"option '-{c}' requires an argument")
                if not cluster[j:]:
                    i += 1
                values.setdefault("dbpath" if c == "b" else "root", []).append(value)
                break
            elif c in "yuwpscndilgqv":
                letters.append(c)
            elif c == "h":
                raise UsageError("see `pkgsandbox --help` and pacman(8)")
            else:
                raise UsageError(f"invalid option -- '{c}'")
    if op is None:
        raise UsageError("no operation specified (use -h for help)")
    return Parsed(op=OPS[op], letters=letters, values=values, bools=bools, targets=targets)


def _set_op(current, letter):
    if current is not None and current != letter:
        raise UsageError("only one operation may be used at a time")
    return letter
