"""alpm hooks (alpm-hooks(5)) as values: parse hook files, find them the way libalpm does, and
decide which hooks a transaction triggers and with which targets, so that pkgsandbox can run
each matching hook itself, in its own domain, in libalpm's order.

Pure: no processes, no kernel. discover() lists the hook directories and reads the hook files
in them (following symlinks, as libalpm does); fnmatch() may call the C library's fnmatch(3);
everything else works on values.

The rules are libalpm's (pacman 6.0 to 7.1: lib/libalpm/hook.c, src/common/ini.c,
src/common/util-common.c wordsplit(), lib/libalpm/util.c _alpm_fnmatch_patterns()):

- Lines are read as fgets() with a PATH_MAX buffer reads them, trimmed of ASCII whitespace;
  a line whose first character is '#' is a comment (there are no trailing comments);
  `[Name]` starts a section; anything else is `Key = Value` split at the first '=' or a bare
  `Key`. Section names, keys and values are case-sensitive.
- A file with no [Trigger] section is valid and never runs: libalpm's way to mask a hook of
  the same name in a lower-priority directory (a symlink to /dev/null is such a file).
- A second definition of Type, When, Description or Exec replaces the first, with a warning;
  Operation, Target and Depends accumulate; a second [Action] section merges into the first.
  Warnings are libalpm's, in `Hook.warnings`; everything libalpm refuses is a HookError
  `FILE:LINE: problem`.
- Where libalpm would dereference a NULL or exec nothing (a valued key written without '=',
  an Exec with no words) this module refuses the file instead.

Targets are matched with fnmatch(pattern, string, 0). ASCII patterns without brackets are
matched here (a regex); patterns with brackets and non-ASCII text go to the C library's
fnmatch(3), the very function libalpm calls, so that malformed brackets, ranges and multibyte
characters behave as they do for pacman in the same locale. Without a C fnmatch() the regex
is used for everything: it agrees with glibc on well-formed patterns and reads character
classes in their ASCII meaning.
"""
from __future__ import annotations

import ctypes
import os
import re
import stat
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

from .errors import BadInput

SUFFIX = ".hook"
OPERATIONS = ("Install", "Upgrade", "Remove")
TYPES = {"Package": "Package", "Path": "Path", "File": "Path"}  # File: deprecated alias
WHENS = ("PreTransaction", "PostTransaction")
CHANGE_OPS = ("install", "upgrade", "remove")

_LINE_MAX = 4096 - 1        # parse_ini(): fgets(line, PATH_MAX, fp) reads at most 4095 bytes
_SPACE = " \t\n\v\f\r"      # isspace() in the C and UTF-8 locales, for one byte


class HookError(BadInput):
    """A hook file libalpm would refuse. The message is `FILE:LINE: problem`."""
    kind = "hook"

    def __init__(self, file: str, line: int, problem: str):
        super().__init__(f"{file}:{line}: {problem}", file=file, line=line)


@dataclass(frozen=True, kw_only=True)
class Trigger:
    operations: frozenset[str]      # a non-empty subset of OPERATIONS
    type: str                       # "Path" or "Package" ("File" is read as "Path")
    targets: tuple[str, ...]        # in file order, a leading '!' or '\\' kept as written


@dataclass(frozen=True, kw_only=True)
class Hook:
    name: str                       # file name without ".hook": what overrides key on
    file: str                       # path it was read from
    description: str | None
    when: str                       # "PreTransaction" | "PostTransaction" ("" only in a mask)
    exec: tuple[str, ...]           # argv, split like libalpm's wordsplit(); no PATH lookup
    depends: tuple[str, ...]
    abort_on_fail: bool             # libalpm honours it only for PreTransaction hooks
    needs_targets: bool
    triggers: tuple[Trigger, ...]   # empty: a mask that never runs
    warnings: tuple[str, ...] = ()  # libalpm's warnings, each `FILE:LINE: text`

    @property
    def masks_only(self) -> bool:
        """True for a hook without triggers: it never runs, it only hides lower-priority
        hooks of the same name."""
        return not self.triggers


@dataclass(frozen=True, kw_only=True)
class Change:
    """One package of the transaction. File lists are in libalpm's form: relative, no
    leading '/', directories ending in '/'."""
    name: str                        # package name
    op: str                          # "install" | "upgrade" | "remove"; reinstall and
                                     # downgrade are "upgrade" (libalpm: pkg->oldpkg is set)
    new_files: tuple[str, ...] = ()  # the new package's file list (install, upgrade)
    old_files: tuple[str, ...] = ()  # the installed package's file list (upgrade, remove)

    def __post_init__(self):
        if self.op not in CHANGE_OPS:
            raise ValueError(f"Change.op must be one of {CHANGE_OPS}, not {self.op!r}")
        if self.op == "install" and self.old_files:
            raise ValueError(f"Change {self.name}: an install has no old files")
        if self.op == "remove" and self.new_files:
            raise ValueError(f"Change {self.name}: a removal has no new files")
        if isinstance(self.new_files, str) or isinstance(self.old_files, str):
            raise ValueError(f"Change {self.name}: file lists are sequences of paths")
        object.__setattr__(self, "new_files", tuple(self.new_files))
        object.__setattr__(self, "old_files", tuple(self.old_files))


# -- Exec: libalpm's wordsplit() -------------------------------------------------------------

def wordsplit(text: str) -> tuple[str, ...]:
    """Split an Exec value into argv exactly as libalpm's wordsplit() does.

    Words are separated by ASCII whitespace. Single or double quotes group (and may make an
    empty word); inside quotes a backslash escapes only that same quote character. Outside
    quotes a backslash escapes only a quote character: any other backslash is kept as is, so
    `a\\ b` is two words, `a\\` and `b`. There is no other expansion. An unterminated quote
    raises ValueError.
    """
    words: list[str] = []
    i, n = 0, len(text)
    while i < n and text[i] in _SPACE:
        i += 1
    while i < n:
        word: list[str] = []
        while i < n and text[i] not in _SPACE:
            c = text[i]
            if c in "'\"":
                i += 1
                while True:
                    if i >= n:
                        raise ValueError(f"unterminated {c} quote")
                    d = text[i]
                    if d == c:
                        i += 1
                        break
                    if d == "\\" and i + 1 < n and text[i + 1] == c:
                        i += 1
                        d = c
                    word.append(d)
                    i += 1
            else:
                if c == "\\" and i + 1 < n and text[i + 1] in "'\"":
                    i += 1
                    c = text[i]
                word.append(c)
                i += 1
        words.append("".join(word))
        while i < n and text[i] in _SPACE:
            i += 1
    return tuple(words)


# -- Targets: glibc fnmatch(pattern, string, 0) and _alpm_fnmatch_patterns() ------------------

_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9", "graph": "\\x21-\\x7e", "lower": "a-z", "print": "\\x20-\\x7e",
    "punct": "!-/:-@\\[-`{-~", "space": " \\t\\n\\r\\f\\v", "upper": "A-Z",
    "xdigit": "0-9A-Fa-f",
}
_CHAR_CLASS_MAX = 256
_STAR = object()


class _NoMatch(Exception):
    """The pattern is malformed in a way that makes glibc's fnmatch() match nothing."""


def _bracket(pat: str, i: int) -> tuple[str, int] | None:
    """A bracket expression starting after the '[' at pat[i-1]: (regex, index after ']'),
    or None when it is unterminated (then the '[' is an ordinary character)."""
    n = len(pat)
    negate = i < n and pat[i] in "!^"
    j = i + 1 if negate else i
    parts: list[str] = []
    first = True
    while True:
        if j >= n:
            return None
        c = pat[j]
        j += 1
        if c == "]" and not first:
            break
        first = False
        if c == "\\":
            if j >= n:
                raise _NoMatch
            c = pat[j]
            j += 1
        elif c == "[" and j < n and pat[j] == ":":
            k, name = j + 1, ""
            while True:
                if len(name) == _CHAR_CLASS_MAX:
                    raise _NoMatch
                ch = pat[k] if k < n else ""
                if ch == ":" and k + 1 < n and pat[k + 1] == "]":
                    k += 2
                    break
                if not ch or not "a" <= ch < "z":
                    name = None
                    break
                name += ch
                k += 1
            if name is not None:
                if name not in _CLASSES:
                    raise _NoMatch
                parts.append(_CLASSES[name])
                j = k
                continue
            # not a class name: the '[' is an ordinary member
        elif c == "[" and pat[j:j + 1] == "=" and pat[j + 2:j + 4] == "=]":
            parts.append(re.escape(pat[j + 1]))     # [=c=], never a range's start;
            j += 4                                  # a malformed "[=" is an ordinary '['
            continue
        elif c == "[" and pat[j:j + 1] == ".":
            if pat.find(".]", j + 1) != j + 2:
                raise _NoMatch          # only one-character collating symbols
            c = pat[j + 1]
            j += 4
        # c is a member, perhaps the start of a range
        if j + 1 < n and pat[j] == "-" and pat[j + 1] != "]":
            hi = pat[j + 1]
            j += 2
            if hi == "[" and pat[j:j + 1] == ".":
                if pat.find(".]", j + 1) != j + 2:
                    raise _NoMatch
                hi = pat[j + 1]
                j += 4
            elif hi == "\\":
                if j >= n:
                    raise _NoMatch
                hi = pat[j]
                j += 1
            if c <= hi:
                parts.append(f"{re.escape(c)}-{re.escape(hi)}")
            continue
        if j < n and pat[j] == "-" and j + 1 >= n:
            raise _NoMatch          # "[a-" : glibc reads the range end as '\0'
        parts.append(re.escape(c))
    body = "".join(parts)
    if not body:
        return ("(?s:.)" if negate else "(?!)"), j
    return f"[{'^' if negate else ''}{body}]", j


def _tokens(pat: str) -> list:
    """One regex per single-character matcher, and _STAR for each run of '*'."""
    out: list = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        i += 1
        if c == "*":
            if not out or out[-1] is not _STAR:
                out.append(_STAR)
        elif c == "?":
            out.append("(?s:.)")
        elif c == "\\":
            if i >= n:
                raise _NoMatch          # a trailing backslash matches nothing
            out.append(re.escape(pat[i]))
            i += 1
        elif c == "[":
            got = _bracket(pat, i)
            if got is None:
                out.append(re.escape("["))
            else:
                out.append(got[0])
                i = got[1]
        else:
            out.append(re.escape(c))
    return out


def _glob_regex(pat: str) -> str | None:
    """A regex (for fullmatch) equivalent to fnmatch(pat, s, 0), None if it matches nothing.

    Each stretch between stars has a fixed length, so taking its earliest occurrence is
    always right: atomic groups keep the regex linear instead of backtracking."""
    try:
        toks = _tokens(pat)
    except _NoMatch:
        return None
    segs: list[list[str]] = [[]]
    for t in toks:
        if t is _STAR:
            segs.append([])
        else:
            segs[-1].append(t)
    if len(segs) == 1:
        return "".join(segs[0])
    out = ["".join(segs[0])]
    for seg in segs[1:-1]:
        out.append(f"(?>(?s:.)*?{''.join(seg)})")
    out.append(f"(?s:.)*{''.join(segs[-1])}")
    return "".join(out)


def _libc_fnmatch():
    """The C library's fnmatch(3), the function libalpm calls, or None where there is none."""
    try:
        f = ctypes.CDLL(None).fnmatch
    except (OSError, AttributeError):
        return None
    f.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int)
    f.restype = ctypes.c_int
    return f


_LIBC_FNMATCH = _libc_fnmatch()


def _plain(pattern: str) -> bool:
    """A pattern whose meaning does not depend on glibc's bracket parsing or the locale."""
    return pattern.isascii() and "[" not in pattern


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern | None:
    rx = _glob_regex(pattern)
    return None if rx is None else re.compile(rx)


def fnmatch(pattern: str, string: str) -> bool:
    """fnmatch(pattern, string, 0) == 0, as libalpm calls it: '*' and '?' match '/' and
    leading dots too, a backslash escapes, [...] with '!' or '^' negation, ranges, classes.

    ASCII patterns without brackets on ASCII strings are matched here; anything else goes to
    the C library's fnmatch(3) where there is one, so that malformed brackets, ranges and
    multibyte characters behave as they do for pacman in the same locale."""
    if _LIBC_FNMATCH is not None and not (_plain(pattern) and string.isascii()):
        return _LIBC_FNMATCH(_bytes(pattern), _bytes(string), 0) == 0
    rx = _compiled(pattern)
    return rx is not None and rx.fullmatch(string) is not None


def _split_target(target: str) -> tuple[bool, str]:
    """_alpm_fnmatch_patterns(): a leading '!' inverts; a leading '!' or '\\' is dropped."""
    inverted = target.startswith("!")
    if inverted or target.startswith("\\"):
        target = target[1:]
    return inverted, target


@lru_cache(maxsize=4096)
def _patterns_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """A function string -> _alpm_fnmatch_patterns(patterns, string) == 0. When every pattern
    is plain, one regex tries them last to first and the group that matched tells which."""
    items = [_split_target(p) for p in patterns]
    plain = all(_plain(p) for _, p in items)
    alts = []
    for idx in range(len(items) - 1, -1, -1):
        inverted, pat = items[idx]
        rx = _glob_regex(pat) if plain else None
        if rx is not None:
            alts.append(f"(?P<{'n' if inverted else 'y'}{idx}>{rx})")
    combined = re.compile("|".join(alts)) if alts else None

    def matches(s: str) -> bool:
        if plain and s.isascii():
            m = combined.fullmatch(s) if combined is not None else None
            return m is not None and m.lastgroup[0] == "y"
        for inverted, pat in reversed(items):
            if fnmatch(pat, s):
                return not inverted
        return False
    return matches


def match_patterns(patterns: Iterable[str], string: str) -> bool:
    """libalpm's _alpm_fnmatch_patterns(patterns, string) == 0: the last pattern that matches
    decides, and it counts as a match unless it starts with '!'."""
    return _patterns_matcher(tuple(patterns))(string)


# -- Parsing ----------------------------------------------------------------------------------

def _ini_lines(text: str):
    """(line number, trimmed line) as parse_ini() sees them: fgets() chunks of at most 4095
    bytes, each cut at a NUL, trimmed of whitespace."""
    data = text.encode("utf-8", "surrogateescape")
    pos, n, lineno = 0, len(data), 0
    while pos < n:
        nl = data.find(b"\n", pos, pos + _LINE_MAX)
        end = nl + 1 if nl >= 0 else min(pos + _LINE_MAX, n)
        chunk = data[pos:end].split(b"\0", 1)[0]
        pos = end
        lineno += 1
        yield lineno, chunk.decode("utf-8", "surrogateescape").strip(_SPACE)


class _Draft:
    """A [Trigger] being read, with the line of its header."""

    def __init__(self, line: int):
        self.line = line
        self.ops: set[str] = set()
        self.type: str | None = None
        self.targets: list[str] = []


def parse(file: str, text: str) -> Hook:
    """One hook file's text, read by libalpm's rules. Raises HookError `FILE:LINE: problem`.

    `file` names the file in messages and in Hook.file; the hook's name is its base name
    without ".hook"."""
    base = os.path.basename(file)
    name = base[:-len(SUFFIX)] if base.endswith(SUFFIX) else base
    section: str | None = None
    triggers: list[_Draft] = []
    action_line = 0
    when = ""
    description: str | None = None
    exec_: tuple[str, ...] | None = None
    depends: list[str] = []
    abort_line = 0
    needs_targets = False
    warnings: list[str] = []
    last = 0

    def fail(line: int, problem: str):
        raise HookError(file, line, problem)

    def overwrite(line: int, key: str):
        warnings.append(f"{file}:{line}: overwriting previous definition of {key}")

    for lineno, line in _ini_lines(text):
        last = lineno
        if not line or line[0] == "#":
            continue
        if line[0] == "[" and line[-1] == "]" and len(line) > 1:
            section = line[1:-1]
            if section == "Trigger":
                triggers.append(_Draft(lineno))
            elif section == "Action":
                action_line = action_line or lineno
            else:
                shown = f"[{section}]" if section.isprintable() else repr(f"[{section}]")
                fail(lineno, f"invalid section {shown}: a hook has only [Trigger] and "
                             f"[Action] sections")
            continue
        key, eq, value = line.partition("=")
        key = key.strip(_SPACE)
        value = value.strip(_SPACE) if eq else None
        if section is None:
            fail(lineno, f"invalid option {key!r} outside any section: an alpm hook starts "
                         f"with [Trigger] (is this an alpm hook?)")

        def need_value() -> str:
            if value is None:
                fail(lineno, f"{key} needs a value ('{key} = ...')")
            return value

        if section == "Trigger":
            t = triggers[-1]
            if key == "Operation":
                v = need_value()
                if v not in OPERATIONS:
                    fail(lineno, f"invalid value {v!r} for Operation "
                                 f"(Install, Upgrade or Remove)")
                t.ops.add(v)
            elif key == "Type":
                v = need_value()
                if t.type is not None:
                    overwrite(lineno, "Type")
                if v not in TYPES:
                    fail(lineno, f"invalid value {v!r} for Type (Path or Package)")
                t.type = TYPES[v]
            elif key == "Target":
                t.targets.append(need_value())
            else:
                fail(lineno, f"invalid option {key!r} in [Trigger] "
                             f"(Operation, Type, Target)")
        else:  # Action
            if key == "When":
                v = need_value()
                if when:
                    overwrite(lineno, "When")
                if v not in WHENS:
                    fail(lineno, f"invalid value {v!r} for When "
                                 f"(PreTransaction or PostTransaction)")
                when = v
            elif key == "Description":
                if description is not None:
                    overwrite(lineno, "Description")
                description = value
            elif key == "Depends":
                depends.append(need_value())
            elif key == "AbortOnFail":
                abort_line = abort_line or lineno
            elif key == "NeedsTargets":
                needs_targets = True
            elif key == "Exec":
                v = need_value()
                if exec_ is not None:
                    overwrite(lineno, "Exec")
                try:
                    exec_ = wordsplit(v)
                except ValueError as exc:
                    fail(lineno, f"invalid value {v!r} for Exec: {exc}")
                if not exec_:
                    fail(lineno, "Exec has no command")
            else:
                fail(lineno, f"invalid option {key!r} in [Action] (Description, When, "
                             f"Exec, Depends, AbortOnFail, NeedsTargets)")

    if triggers:
        # _alpm_hook_validate(): only a hook with triggers must be complete
        for t in triggers:
            if not t.targets:
                fail(t.line, "[Trigger] has no Target")
            if t.type is None:
                fail(t.line, "[Trigger] has no Type (Path or Package)")
            if not t.ops:
                fail(t.line, "[Trigger] has no Operation (Install, Upgrade or Remove)")
        if not action_line:
            fail(max(last, 1), "missing [Action] section (When and Exec are required)")
        if exec_ is None:
            fail(action_line, "[Action] has no Exec")
        if not when:
            fail(action_line, "[Action] has no When (PreTransaction or PostTransaction)")
        if when != "PreTransaction" and abort_line:
            warnings.append(f"{file}:{abort_line}: AbortOnFail set for PostTransaction hook "
                            f"(ignored)")

    return Hook(name=name, file=file, description=description, when=when,
                exec=exec_ or (), depends=tuple(depends), abort_on_fail=bool(abort_line),
                needs_targets=needs_targets,
                triggers=tuple(Trigger(operations=frozenset(t.ops), type=t.type or "",
                                       targets=tuple(t.targets)) for t in triggers),
                warnings=tuple(warnings))


# -- Discovery --------------------------------------------------------------------------------

def _is_dev_null(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3


def _sort_key(hook: Hook) -> bytes:
    # _alpm_hook_cmp(): strcmp order of the names without the suffix
    return hook.name.encode("utf-8", "surrogateescape")


def discover(dirs: Iterable[str | os.PathLike]) -> tuple[list[Hook], list[str]]:
    """The hooks libalpm would load from `dirs`, lowest priority first ({root}/usr/share/
    libalpm/hooks, then each HookDir), and the errors it would report.

    As in _alpm_hook_run(): directories are read from the last to the first; only names
    ending in ".hook" count; a name already loaded from a later directory hides the same
    name in earlier ones; a directory entry that is itself a directory is skipped; an entry
    that cannot be stat()ed, read or parsed is an error and hides nothing. An empty file (or
    a symlink to /dev/null) is a hook without triggers: it hides the name and is not
    returned. A directory that does not exist is skipped; one that cannot be opened is an
    error. The hooks come back sorted by name; pacman fails a transaction before running any
    PreTransaction hook when there is an error, and only reports them for PostTransaction.
    """
    loaded: dict[str, Hook] = {}
    errors: list[str] = []
    for d in reversed([os.fspath(x) for x in dirs]):
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(f"{d}: could not open directory: {exc.strerror or exc}")
            continue
        for entry in names:
            if len(entry) < len(SUFFIX) or not entry.endswith(SUFFIX):
                continue
            name = entry[:-len(SUFFIX)]
            if name in loaded:
                continue
            path = os.path.join(d, entry)
            try:
                st = os.stat(path)
            except OSError as exc:
                errors.append(f"{path}: could not stat file: {exc.strerror or exc}")
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            if _is_dev_null(st):
                text = ""
            elif not stat.S_ISREG(st.st_mode):
                errors.append(f"{path}: error while reading hook: not a regular file")
                continue
            else:
                try:
                    with open(path, "rb") as f:
                        text = f.read().decode("utf-8", "surrogateescape")
                except OSError as exc:
                    errors.append(f"{path}: error while reading hook: "
                                  f"{exc.strerror or exc}")
                    continue
            try:
                loaded[name] = parse(path, text)
            except HookError as exc:
                errors.append(exc.message)
    hooks = sorted((h for h in loaded.values() if not h.masks_only), key=_sort_key)
    return hooks, errors


# -- Matching ---------------------------------------------------------------------------------

def _match_package(t: Trigger, changes: tuple[Change, ...]) -> list[str]:
    """_alpm_hook_trigger_match_pkg(): the package names this trigger matches."""
    hit = _patterns_matcher(t.targets)
    ops = t.operations
    out = []
    if "Install" in ops or "Upgrade" in ops:
        for c in changes:
            if c.op == "remove" or not hit(c.name):
                continue
            if ("Upgrade" if c.op == "upgrade" else "Install") in ops:
                out.append(c.name)
    if "Remove" in ops:
        # a package that is also being added (same name) does not count as removed
        added = {c.name for c in changes if c.op != "remove"}
        out.extend(c.name for c in changes
                   if c.op == "remove" and c.name not in added and hit(c.name))
    return out


def _match_path(t: Trigger, changes: tuple[Change, ...],
                skip: Callable[[str], bool]) -> list[str]:
    """_alpm_hook_trigger_match_file(): the paths this trigger matches. A path in a new
    package (and not NoExtract) is installed; in an upgraded package's old file list or a
    removed package's, removed; both at once, upgraded."""
    hit = _patterns_matcher(t.targets)
    install = {f for c in changes if c.op != "remove"
               for f in c.new_files if not skip(f) and hit(f)}
    remove = {f for c in changes if c.op != "install" for f in c.old_files if hit(f)}
    upgrade = install & remove
    found: dict[str, set[str]] = {"Install": install - upgrade, "Upgrade": upgrade,
                                  "Remove": remove - upgrade}
    return [f for op in OPERATIONS if op in t.operations for f in found[op]]


def match(hook: Hook, changes: Iterable[Change], *,
          noextract: Iterable[str] = ()) -> tuple[str, ...] | None:
    """None when no trigger of `hook` matches `changes`; otherwise what libalpm feeds the
    hook on stdin: for a NeedsTargets hook the matched package names and paths, sorted in
    strcmp order without duplicates, and () for any other hook.

    Triggers are OR-ed. `noextract` is pacman.conf's NoExtract: new files it matches do not
    count as installed (libalpm applies it to the new package's files only)."""
    changes = tuple(changes)
    noext = tuple(noextract)
    skip = _patterns_matcher(noext) if noext else (lambda f: False)
    found: list[str] = []
    matched = False
    for t in hook.triggers:
        got = _match_package(t, changes) if t.type == "Package" else \
            _match_path(t, changes, skip)
        if got:
            if not hook.needs_targets:
                return ()
            matched = True
            found.extend(got)
    if not matched:
        return None
    return tuple(sorted(set(found), key=lambda s: s.encode("utf-8", "surrogateescape")))
