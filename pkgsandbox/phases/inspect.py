"""`pkgsandbox inspect FILE...`: open package archives in a sandbox and report what installing
them would do to a system, before anything is installed (DESIGN 2 and 6).

What it touches. The orchestrating parent only checks that each FILE opens as a regular file,
creates a private scratch directory (removed afterwards) and forks. Everything that reads the
archive's bytes runs in that child, through runner.call, inside the Landlock domain of the
shipped profile `inspect` (base + write only {scratch}, no network, both scopes) plus a read
grant on that one file. As root, the child keeps only the capabilities the profile lists
(dac_read_search, setuid, setgid); it opens the archive, then drops to the `nobody` user with
no supplementary groups (which clears those too), lowers its resource limits (address space,
core dumps, file size, processes), and only then loads libarchive (ctypes, libarchive.so.13)
and parses. It reads entry headers, skips entry data, and reads the contents of `.PKGINFO`,
`.INSTALL` and `.MTREE` only (each bounded). Its answer is JSON, and the parent re-checks its
shape: a compromised parser can lie about the archive, but cannot reach past its domain.

Limits (module constants; `Limits` carries them; exceeding one is a finding, never a crash):
MAX_TOTAL_BYTES uncompressed (sum of entry sizes as declared, and decompressed stream bytes),
MAX_ENTRIES, MAX_PATH_BYTES per entry name, MAX_METADATA_BYTES per metadata file (and
MAX_MTREE_TEXT for the decompressed .MTREE), TIMEOUT seconds per archive (the child's process
group is killed), MAX_MEMORY bytes of address space in the child, MAX_FINDINGS per archive.

Findings are {severity, kind, entry, detail}; severity is hostile, warning or info.
  hostile: absolute-path, dotdot, control-char (name), through-symlink (an entry written
    through a symlink of the same archive), symlink-escape (relative target climbing above
    /), symlink-outside (absolute target outside the system's top directories),
    symlink-sensitive (target in a sensitive place), hardlink-escape, hardlink-missing (to a
    path not earlier in the archive: a file of the system), device (char/block node),
    sensitive-path (a file where no package's file should land), setuid/setgid/capability
    when also world-writable or outside the usual program directories, duplicate (a symlink
    replaced by a non-symlink, a directory by a symlink), pkginfo-path (a name, version or
    backup entry that would become a path), pkginfo-control (control characters in
    pkgname/pkgver, which the local database stores one per line).
  warning: setuid, setgid, capability (usual places), special-file (FIFO, socket),
    unknown-type, world-writable, not-utf8, unusual-char, backslash, long-name, duplicate,
    type-conflict, size-unset, hardlink-type, symlink-empty, symlink-loop, xattr,
    metadata-type, archive-warning, format (an archive format other than tar),
    pkginfo-missing (pacman would refuse the file: not a package), pkginfo-syntax,
    pkginfo-field, mtree-missing, mtree-invalid, mtree-mismatch; and the kinds that make an
    archive invalid (below).
  info: install (the .INSTALL functions), symlink-absolute, owner (non-root owners),
    not-installed (top-level dot-files pacman skips), findings-truncated.
Verdict per archive: "hostile" if any finding is hostile; else "invalid" if any finding has
a kind in INVALID_KINDS (libarchive error, truncation, empty or not an archive, a limit
exceeded, .PKGINFO present but unusable, an unnamed entry, a negative size, a parser crash,
a path that could not be opened); else "ok". A hostile finding wins over invalid: what was
read before the archive broke off is still reported.

Exit status of `command`: 0 when every archive is ok; 3 when any archive is hostile or invalid;
2 when the archives that could be read were all ok but some FILE could not be opened at all
(missing, a directory or other non-regular file, permission denied): that FILE is reported as
"invalid" (kind "unreadable") and named in a one-line error. 3 wins over 2, because "do not
install this" is the answer that matters. Setup failures (120, 121) are raised, not reported.
"""
from __future__ import annotations

import ctypes
import json
import locale
import logging
import os
import pwd
import re
import resource
import shutil
import stat
import tempfile
import unicodedata
import zlib
from dataclasses import dataclass, field, replace

from .. import archive, enforce, profile, runner
from ..errors import BadInput, SetupError, TimeoutExpired
from ..policy import EnforcementReport, PathGrant, Policy

log = logging.getLogger(__name__)

PROFILE = "inspect"
EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_FINDINGS = 3

# ---------------------------------------------------------------------------------------------
# Limits.

#: Sum of the entries' declared sizes, and of the decompressed stream read, per archive.
#: Arch's largest packages install well under 16 GiB.
MAX_TOTAL_BYTES = 16 << 30
#: Entries per archive (the largest Arch packages hold about 100 000).
MAX_ENTRIES = 500_000
#: Bytes in one entry name: PATH_MAX, which libalpm also refuses to reach ({root} + name).
MAX_PATH_BYTES = 4096
#: Bytes read from one .PKGINFO, .INSTALL or .MTREE entry.
MAX_METADATA_BYTES = 8 << 20
#: Bytes of decompressed .MTREE text.
MAX_MTREE_TEXT = 64 << 20
#: Seconds per archive; then the child's process group is killed.
TIMEOUT = 120.0
#: Address space the parsing child may add to what it inherits from the parent (RLIMIT_AS):
#: decompressors' windows (xz, zstd), libarchive's buffers, Python.
MAX_MEMORY = 2 << 30
#: Findings kept per archive, and per kind (the rest are counted in one findings-truncated).
MAX_FINDINGS = 1000
MAX_FINDINGS_PER_KIND = 50


@dataclass(frozen=True, kw_only=True)
class Limits:
    total_bytes: int = MAX_TOTAL_BYTES
    entries: int = MAX_ENTRIES
    path_bytes: int = MAX_PATH_BYTES
    metadata_bytes: int = MAX_METADATA_BYTES
    mtree_text: int = MAX_MTREE_TEXT
    timeout: float = TIMEOUT
    memory: int = MAX_MEMORY
    findings: int = MAX_FINDINGS
    findings_per_kind: int = MAX_FINDINGS_PER_KIND


DEFAULT_LIMITS = Limits()

# ---------------------------------------------------------------------------------------------
# What is sensitive. Paths are relative to the target root, without a leading slash.

SEVERITIES = ("hostile", "warning", "info")
VERDICTS = ("ok", "hostile", "invalid")
INVALID_KINDS = frozenset({"archive-error", "truncated", "empty-archive", "limit",
                           "pkginfo-invalid", "empty-name", "negative-size", "parser-crash",
                           "unreadable"})
FUNCTIONS = ("pre_install", "post_install", "pre_upgrade", "post_upgrade", "pre_remove",
             "post_remove")

#: No package's file should land at these paths, or below these directories.
SENSITIVE_FILES = (b"etc/ld.so.preload", b"etc/pacman.conf", b"etc/sudoers")
SENSITIVE_DIRS = (b"etc/pacman.d", b"etc/sudoers.d", b"root", b"home", b"boot",
                  b"var/lib/pacman", b"var/cache/pacman", b"etc/pkgsandbox",
                  b"usr/share/pkgsandbox")
#: Directories above the sensitive places: an entry here that is not a directory would
#: replace or redirect all of them.
SENSITIVE_PARENTS = (b"etc", b"var", b"var/lib", b"var/cache", b"usr", b"usr/share")
#: A symlink should not point at secrets or world-writable places (anyone may plant what it
#: resolves to), nor at the sensitive places above.
SENSITIVE_TARGETS = SENSITIVE_FILES + SENSITIVE_DIRS + (
    b"etc/shadow", b"etc/gshadow", b"etc/ssh", b"etc/ssl/private", b"tmp", b"var/tmp",
    b"dev/shm")
#: Top directories an absolute symlink target may name (the system's own hierarchy).
SYSTEM_TOP = frozenset({b"usr", b"etc", b"var", b"opt", b"srv", b"bin", b"sbin", b"lib",
                        b"lib32", b"lib64", b"run", b"dev", b"proc", b"sys"})
#: Where setuid/setgid programs and file capabilities usually live.
PRIVILEGED_PLACES = (b"usr/bin", b"usr/sbin", b"usr/lib", b"usr/lib32", b"usr/libexec",
                     b"bin", b"sbin", b"opt")
#: Top-level entries libalpm reads as metadata (everything else starting with '.' is skipped).
METADATA = (b".PKGINFO", b".INSTALL", b".MTREE", b".BUILDINFO", b".CHANGELOG")
READ_METADATA = (b".PKGINFO", b".INSTALL", b".MTREE")

MULTI_KEYS = {"license": "licenses", "depend": "depends", "optdepend": "optdepends",
              "makedepend": "makedepends", "checkdepend": "checkdepends",
              "provides": "provides", "conflict": "conflicts", "replaces": "replaces",
              "backup": "backup", "group": "groups", "xdata": "xdata"}
SINGLE_KEYS = {"pkgname": "name", "pkgbase": "base", "pkgver": "version", "pkgdesc":
               "description", "url": "url", "builddate": "builddate", "packager": "packager",
               "size": "size", "arch": "arch"}
_PKGNAME = re.compile(rb"^[A-Za-z0-9@_+][A-Za-z0-9@._+-]*$")
_PKGVER = re.compile(rb"^(?:[0-9]+:)?[^\s:/-]+-[0-9]+(?:\.[0-9]+)?$")
_ARCH = re.compile(rb"^[A-Za-z0-9_]+$")
_FUNCTION_DEF = re.compile(r"^[ \t]*(?:function[ \t]+(\w+)[ \t]*(?:\([ \t]*\))?|(\w+)[ \t]*\("
                           r"[ \t]*\))", re.MULTILINE)
_MAX_SHOWN = 300        # characters of one name in a finding
_MAX_LIST = 1000        # values kept per .PKGINFO key

# libarchive file types -> Entry.type
_TYPE = {archive.IFREG: "f", archive.IFLNK: "l", archive.IFSOCK: "s", archive.IFCHR: "c",
         archive.IFBLK: "b", archive.IFDIR: "d", archive.IFIFO: "p"}
_TYPE_NAME = {"f": "file", "l": "symlink", "s": "socket", "c": "character device",
              "b": "block device", "d": "directory", "p": "FIFO", "h": "hard link",
              "?": "unknown"}


# ---------------------------------------------------------------------------------------------
# Values.

@dataclass(frozen=True, kw_only=True)
class Finding:
    severity: str
    kind: str
    entry: str
    detail: str

    def as_dict(self) -> dict:
        return {"severity": self.severity, "kind": self.kind, "entry": self.entry,
                "detail": self.detail}

    def line(self) -> str:
        where = f"{self.entry}: " if self.entry else ""
        return f"{self.severity}: {self.kind}: {where}{self.detail}"


@dataclass(frozen=True, kw_only=True)
class Report:
    """What inspecting one archive found."""
    file: str
    verdict: str
    findings: tuple[Finding, ...] = ()
    pkginfo: dict = field(default_factory=dict)
    install_functions: tuple[str, ...] = ()
    entries: int = 0
    bytes: int = 0
    format: str = ""
    #: None when the archive never reached the sandbox (FILE could not be opened)
    enforcement: EnforcementReport | None = None

    def as_dict(self) -> dict:
        return {"file": show(self.file), "verdict": self.verdict,
                "findings": [f.as_dict() for f in self.findings], "pkginfo": self.pkginfo,
                "install_functions": list(self.install_functions), "entries": self.entries,
                "bytes": self.bytes, "format": self.format,
                "enforcement": self.enforcement.as_dict() if self.enforcement else None}


def verdict_for(findings) -> str:
    if any(f.severity == "hostile" for f in findings):
        return "hostile"
    if any(f.kind in INVALID_KINDS for f in findings):
        return "invalid"
    return "ok"


# ---------------------------------------------------------------------------------------------
# Showing untrusted bytes: one line, unambiguous, bounded.

def show(raw: bytes | str, limit: int = _MAX_SHOWN) -> str:
    """Bytes from an archive as one printable line: invalid UTF-8 as \\xNN, control and
    format characters as \\xNN / \\uNNNN, a backslash doubled; cut at `limit` characters."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code > 0x7F and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn",
                                                          "Zl", "Zp"):
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
        if len(out) >= limit:
            return "".join(out) + f"...({len(text)} characters)"
    return "".join(out)


def _under(path: bytes, places) -> bool:
    return any(path == p or path.startswith(p + b"/") for p in places)


def _below(path: bytes, places) -> bool:
    return any(path.startswith(p + b"/") for p in places)


# ---------------------------------------------------------------------------------------------
# The analysis: pure, fed one entry at a time (by the child's libarchive loop, or by tests).

@dataclass(frozen=True, kw_only=True)
class Entry:
    """One archive header, as libarchive gives it."""
    path: bytes | None
    type: str                     # f d l c b p s ? (a hard link: `hardlink` is set)
    mode: int = 0o644
    size: int = 0
    size_set: bool = True
    uid: int = 0
    gid: int = 0
    symlink: bytes | None = None
    hardlink: bytes | None = None
    xattrs: tuple[bytes, ...] = ()


class Analyzer:
    """Accumulates findings over the entries of one archive."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS):
        self.limits = limits
        self.findings: list[Finding] = []
        self._per_kind: dict[str, int] = {}
        self._severities: set[str] = set()
        self._invalid = False
        self._dropped = 0
        self.entries = 0
        self.bytes = 0
        self.stopped = False
        self.seen: dict[bytes, str] = {}            # normalized path -> type
        self.symlinks: dict[bytes, bytes] = {}      # normalized path -> target
        self.metadata: dict[bytes, bytes] = {}
        self.pkginfo: dict = {}
        self.install_functions: tuple[str, ...] = ()
        self._owners = 0
        self._owner_example = ""
        self._absolute_links = 0

    # -- findings ---------------------------------------------------------------------------

    def add(self, severity: str, kind: str, entry, detail: str) -> None:
        shown = show(entry) if isinstance(entry, (bytes, str)) and entry else ""
        count = self._per_kind.get(kind, 0)
        if count >= self.limits.findings_per_kind or len(self.findings) >= self.limits.findings:
            # Past a cap only what would change the verdict is still kept (once).
            decides = (severity == "hostile" and "hostile" not in self._severities
                       or kind in INVALID_KINDS and not self._invalid)
            if not decides:
                self._dropped += 1
                return
        self._per_kind[kind] = count + 1
        self._severities.add(severity)
        self._invalid = self._invalid or kind in INVALID_KINDS
        self.findings.append(Finding(severity=severity, kind=kind, entry=shown, detail=detail))

    def stop(self, kind: str, entry, detail: str) -> None:
        self.add("warning", kind, entry, detail)
        self.stopped = True

    # -- one entry --------------------------------------------------------------------------

    def entry(self, e: Entry) -> bool:
        """Check one header. Returns True when the caller should read its data (metadata)."""
        self.entries += 1
        if self.entries > self.limits.entries:
            self.stop("limit", b"", f"more than {self.limits.entries} entries")
            return False
        raw = e.path
        if raw is None or raw == b"":
            self.add("warning", "empty-name", b"",
                     f"a {_TYPE_NAME[e.type]} entry without a name")
            return False
        if e.type == "f" or e.hardlink is not None:
            if not e.size_set:
                self.add("warning", "size-unset", raw, "the header gives no size")
            elif e.size < 0:
                self.add("warning", "negative-size", raw, f"size {e.size}")
            else:
                self.bytes += e.size
                if self.bytes > self.limits.total_bytes:
                    self.stop("limit", raw, f"uncompressed size exceeds "
                                            f"{self.limits.total_bytes} bytes")
                    return False
        if len(raw) > self.limits.path_bytes:
            self.add("warning", "limit", raw, f"name longer than {self.limits.path_bytes} bytes "
                                              f"({len(raw)})")
            return False
        self._check_name(raw)
        if raw in METADATA:
            return self._metadata_entry(raw, e)
        comps, climbs = _lexical(raw)
        if raw.startswith(b"/"):
            self.add("hostile", "absolute-path", raw,
                     "absolute path: an extractor that keeps it writes outside the target root")
        if b".." in raw.split(b"/"):
            self.add("hostile", "dotdot", raw,
                     "'..' component" + (": climbs above the target root" if climbs else ""))
        if not comps:
            if e.type != "d":
                self.add("warning", "empty-name", raw, "names the target root itself")
            return False
        if not raw.startswith(b"/") and comps[0].startswith(b".") and \
                raw.split(b"/")[0] not in (b".", b".."):
            self.add("info", "not-installed", raw,
                     "top-level name starting with '.': pacman skips it")
        # Where it lands once the symlinks this archive made earlier are followed: the key
        # for everything below (an extractor writes there, or refuses).
        parents, escaped, followed, _ = self._walk(comps[:-1])
        landed = parents + [comps[-1]]
        key = b"/".join(landed)
        if followed:
            self.add("hostile", "through-symlink", raw,
                     f"written through the symlink {show(followed[0])} of this archive "
                     f"(-> {show(self.symlinks.get(followed[0], b''))}); lands at /{show(key)}"
                     + (", outside the target root" if escaped else ""))
        self._check_parents(raw, landed)
        self._check_duplicate(raw, key, e)
        self._check_place(raw, key, e)
        if e.hardlink is not None:
            self._check_hardlink(raw, e)
        elif e.type == "l":
            self._check_symlink(raw, landed, e.symlink or b"")
        elif e.type in ("c", "b"):
            self.add("hostile", "device", raw,
                     f"{_TYPE_NAME[e.type]} node (mode {e.mode & 0o7777:04o}): gives direct "
                     f"access to a device")
        elif e.type in ("p", "s"):
            self.add("warning", "special-file", raw, f"{_TYPE_NAME[e.type]}")
        elif e.type == "?":
            self.add("warning", "unknown-type", raw, f"entry of unknown type "
                                                     f"(mode {e.mode:o})")
        self._check_mode(raw, key, e)
        self._check_xattrs(raw, key, e)
        if e.uid != 0 or e.gid != 0:
            self._owners += 1
            if not self._owner_example:
                self._owner_example = f"{show(raw)} {e.uid}:{e.gid}"
        self.seen[key] = "h" if e.hardlink is not None else e.type
        if e.type == "l" and e.hardlink is None:
            self.symlinks[key] = e.symlink or b""
        else:
            self.symlinks.pop(key, None)
        return False

    def _check_name(self, raw: bytes) -> None:
        if re.search(rb"[\x00-\x1f\x7f]", raw):
            self.add("hostile", "control-char", raw, "control character in the name (a newline "
                     "splits the name in pacman's file lists and logs)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.add("warning", "not-utf8", raw, "name is not valid UTF-8")
            return
        odd = [ch for ch in text if ord(ch) > 0x7F and unicodedata.category(ch) in
               ("Cc", "Cf", "Co", "Cn", "Zl", "Zp")]
        if odd:
            self.add("warning", "unusual-char", raw, "invisible or direction-changing "
                     f"character U+{ord(odd[0]):04X} in the name")
        if "\\" in text:
            self.add("warning", "backslash", raw,
                     "backslash in the name (a path separator on Windows, a letter here)")
        if any(len(c) > 255 for c in raw.split(b"/")):
            self.add("warning", "long-name", raw, "a component longer than 255 bytes "
                                                  "(NAME_MAX): cannot be extracted")

    def _metadata_entry(self, raw: bytes, e: Entry) -> bool:
        if raw in self.seen:
            self.add("warning", "duplicate", raw, "metadata file appears twice")
        self.seen[raw] = e.type
        if e.type != "f" or e.hardlink is not None:
            self.add("warning", "metadata-type", raw,
                     f"is a {_TYPE_NAME['h' if e.hardlink is not None else e.type]}, "
                     f"not a file")
            return False
        return raw in READ_METADATA

    def _check_parents(self, raw: bytes, comps: list[bytes]) -> None:
        for i in range(1, len(comps)):
            parent = b"/".join(comps[:i])
            kind = self.seen.get(parent)
            if kind is not None and kind not in ("d", "l"):
                self.add("warning", "type-conflict", raw,
                         f"parent {show(parent)} is a {_TYPE_NAME[kind]} earlier in the archive")
                return

    def _check_duplicate(self, raw: bytes, key: bytes, e: Entry) -> None:
        prev = self.seen.get(key)
        if prev is None:
            return
        new = "h" if e.hardlink is not None else e.type
        if prev == "l" and new != "l":
            self.add("hostile", "duplicate", raw, f"a {_TYPE_NAME[new]} replaces a symlink "
                     f"(-> {show(self.symlinks.get(key, b''))}) of the same name: an extractor "
                     f"that follows it writes through the link")
        elif prev == "d" and new == "l":
            self.add("hostile", "duplicate", raw, "a symlink replaces a directory of the same "
                     "name: later entries below it would go through the link")
        elif prev != new and "d" in (prev, new):
            self.add("warning", "type-conflict", raw,
                     f"appears as a {_TYPE_NAME[prev]}, then as a {_TYPE_NAME[new]}")
        else:
            self.add("warning", "duplicate", raw, f"appears twice ({_TYPE_NAME[prev]}, "
                                                  f"then {_TYPE_NAME[new]})")

    def _walk(self, comps: list[bytes], *, start: list[bytes] | None = None):
        """Resolve root-relative components through the archive's symlinks, as the kernel
        would once they are extracted; `start` is an already resolved directory to begin in.
        Returns (components, climbed above /, symlinks followed, gave up on a loop)."""
        out = list(start or [])
        todo = list(comps)
        followed: list[bytes] = []
        escaped = False
        hops = 0
        while todo:
            c = todo.pop(0)
            if c in (b"", b"."):
                continue
            if c == b"..":
                if out:
                    out.pop()
                else:
                    escaped = True
                continue
            candidate = b"/".join(out + [c])
            target = self.symlinks.get(candidate)
            if target is None:
                out.append(c)
                continue
            hops += 1
            if hops > 40:
                return out + [c] + todo, escaped, followed, True
            followed.append(candidate)
            if target.startswith(b"/"):
                out = []
            todo = target.split(b"/") + todo
        return out, escaped, followed, False

    def _check_place(self, raw: bytes, landing: bytes, e: Entry) -> None:
        if landing in SENSITIVE_FILES or _below(landing, SENSITIVE_DIRS):
            self.add("hostile", "sensitive-path", raw,
                     f"lands in /{show(landing)}: no package's file belongs there")
        elif e.type != "d" and (_under(landing, SENSITIVE_DIRS)
                                or landing in SENSITIVE_PARENTS):
            self.add("hostile", "sensitive-path", raw,
                     f"a {_TYPE_NAME[e.type]} in place of the directory /{show(landing)}")

    def _check_symlink(self, raw: bytes, landed: list[bytes], target: bytes) -> None:
        if not target:
            self.add("warning", "symlink-empty", raw, "symlink with an empty target")
            return
        if re.search(rb"[\x00-\x1f\x7f]", target):
            self.add("warning", "control-char", raw, f"control character in the symlink "
                                                     f"target {show(target)}")
        absolute = target.startswith(b"/")
        start = [] if absolute else landed[:-1]
        resolved, escaped, _, loop = self._walk(target.split(b"/"), start=start)
        landing = b"/".join(resolved)
        if loop:
            self.add("warning", "symlink-loop", raw,
                     f"-> {show(target)}: too many levels of symlinks in this archive")
        if escaped and not absolute:
            self.add("hostile", "symlink-escape", raw,
                     f"-> {show(target)}: climbs above the target root")
        elif _under(landing, SENSITIVE_TARGETS):
            self.add("hostile", "symlink-sensitive", raw,
                     f"-> {show(target)}: points into /{show(landing)}")
        elif absolute and (not resolved or resolved[0] not in SYSTEM_TOP):
            self.add("hostile", "symlink-outside", raw,
                     f"-> {show(target)}: absolute target outside the system's directories")
        elif absolute:
            self._absolute_links += 1
            if self._absolute_links <= 5:
                self.add("info", "symlink-absolute", raw,
                         f"-> {show(target)}: resolves against whatever root is booted")

    def _check_hardlink(self, raw: bytes, e: Entry) -> None:
        target = e.hardlink or b""
        if not target:
            self.add("hostile", "hardlink-missing", raw, "hard link with an empty target")
            return
        comps, climbs = _lexical(target)
        if target.startswith(b"/") or climbs or b".." in target.split(b"/"):
            self.add("hostile", "hardlink-escape", raw,
                     f"=> {show(target)}: a hard link to a path outside the archive's tree")
            return
        if not comps:
            self.add("hostile", "hardlink-missing", raw, f"=> {show(target)}: names the root")
            return
        _, _, followed, _ = self._walk(comps[:-1])
        if followed:
            self.add("hostile", "hardlink-escape", raw,
                     f"=> {show(target)}: through the symlink {show(followed[0])}")
            return
        kind = self.seen.get(b"/".join(comps))
        if kind is None:
            self.add("hostile", "hardlink-missing", raw,
                     f"=> {show(target)}: not earlier in the archive: links a file already on "
                     f"the system (and applies this entry's mode and owner to it)")
        elif kind == "d":
            self.add("hostile", "hardlink-type", raw, f"=> {show(target)}: a directory")
        elif kind not in ("f", "h"):
            self.add("warning", "hardlink-type", raw,
                     f"=> {show(target)}: a {_TYPE_NAME[kind]}")

    def _check_mode(self, raw: bytes, landing: bytes, e: Entry) -> None:
        mode = e.mode & 0o7777
        kind = "h" if e.hardlink is not None else e.type
        if kind in ("f", "h"):
            usual = _below(landing, PRIVILEGED_PLACES)
            for bit, name in ((0o4000, "setuid"), (0o2000, "setgid")):
                if not mode & bit:
                    continue
                if mode & 0o002:
                    self.add("hostile", name, raw, f"{name} and world-writable "
                                                   f"(mode {mode:04o})")
                elif not usual:
                    self.add("hostile", name, raw, f"{name} program outside the usual program "
                                                   f"directories (mode {mode:04o})")
                else:
                    self.add("warning", name, raw, f"{name} program (mode {mode:04o}, owner "
                                                   f"{e.uid}:{e.gid})")
            if mode & 0o002 and not mode & 0o6000:
                self.add("warning", "world-writable", raw,
                         f"world-writable file (mode {mode:04o})")
        elif kind == "d" and mode & 0o002 and not mode & 0o1000:
            self.add("warning", "world-writable", raw,
                     f"world-writable directory without the sticky bit (mode {mode:04o})")

    def _check_xattrs(self, raw: bytes, landing: bytes, e: Entry) -> None:
        for name in e.xattrs:
            if name == b"security.capability":
                mode = e.mode & 0o7777
                if mode & 0o002 or not _below(landing, PRIVILEGED_PLACES):
                    self.add("hostile", "capability", raw, "file capabilities (extended "
                             "attribute security.capability) " + ("on a world-writable file"
                                                                  if mode & 0o002 else
                                                                  "outside the usual program "
                                                                  "directories"))
                else:
                    self.add("warning", "capability", raw, "file capabilities (extended "
                             "attribute security.capability): privileges like setuid")
            elif name.startswith((b"security.", b"trusted.", b"system.")):
                self.add("warning", "xattr", raw, f"extended attribute {show(name)} "
                                                  f"(pacman extracts extended attributes)")

    # -- metadata ---------------------------------------------------------------------------

    def metadata_data(self, name: bytes, data: bytes, *, complete: bool) -> None:
        if not complete:
            self.add("warning", "limit", name, f"larger than {self.limits.metadata_bytes} bytes")
            return
        self.metadata[name] = data

    def finish(self, *, error: str | None = None) -> None:
        """After the last header (or an error): archive-level findings."""
        if self.entries == 0 and error is None:
            self.add("warning", "empty-archive", b"", "no entries: not a package")
        if b".PKGINFO" in self.metadata:
            info, findings = parse_pkginfo(self.metadata[b".PKGINFO"])
            self.pkginfo = info
            for f in findings:
                self.add(f.severity, f.kind, b".PKGINFO", f.detail)
        elif b".PKGINFO" not in self.seen and self.entries and not self.stopped \
                and error is None:
            self.add("warning", "pkginfo-missing", b"", "no .PKGINFO: pacman would refuse it "
                                                        "(this is not a package)")
        if b".INSTALL" in self.metadata:
            functions, findings = parse_install(self.metadata[b".INSTALL"])
            self.install_functions = functions
            for f in findings:
                self.add(f.severity, f.kind, b".INSTALL", f.detail)
        if b".MTREE" in self.metadata:
            self._check_mtree(self.metadata[b".MTREE"])
        elif b".MTREE" not in self.seen and b".PKGINFO" in self.seen and error is None \
                and not self.stopped:
            self.add("warning", "mtree-missing", b"", "no .MTREE: `pacman -Qk` cannot check "
                                                      "the installed files later")
        if self._owners:
            self.add("info", "owner", b"", f"{self._owners} entries owned by non-root users "
                                           f"(first: {self._owner_example})")
        if self._absolute_links > 5:
            self.add("info", "symlink-absolute", b"",
                     f"{self._absolute_links - 5} more absolute symlinks")
        if self._dropped:
            self.findings.append(Finding(severity="info", kind="findings-truncated", entry="",
                                         detail=f"{self._dropped} more findings not shown"))

    def _check_mtree(self, data: bytes) -> None:
        text, problem = _mtree_text(data, self.limits.mtree_text)
        if problem:
            self.add("warning", "limit" if "larger" in problem else "mtree-invalid",
                     b".MTREE", problem)
            return
        listed = parse_mtree(text)
        if listed is None:
            self.add("warning", "mtree-invalid", b".MTREE", "not an mtree file list")
            return
        archive = {k: v for k, v in self.seen.items() if k != b".MTREE"}
        missing = [p for p in archive if p not in listed]
        extra = [p for p in listed if p not in archive]
        differ = [p for p in archive if p in listed and listed[p] and
                  listed[p] != {"h": "f"}.get(archive[p], archive[p])]
        for paths, what in ((missing, "in the archive but not in .MTREE"),
                            (extra, "in .MTREE but not in the archive"),
                            (differ, "of another type in .MTREE")):
            if paths:
                self.add("warning", "mtree-mismatch", paths[0],
                         f"{what}" + (f" (and {len(paths) - 1} more)" if len(paths) > 1
                                      else ""))

    def result(self, *, fmt: str) -> dict:
        return {"findings": [f.as_dict() for f in self.findings], "pkginfo": self.pkginfo,
                "install_functions": list(self.install_functions), "entries": self.entries,
                "bytes": self.bytes, "format": fmt}


def _lexical(raw: bytes) -> tuple[list[bytes], bool]:
    """Components of a name with '.', '' and '..' resolved lexically; True if '..' climbed
    above the root (the components are then clamped at it)."""
    out: list[bytes] = []
    climbs = False
    for c in raw.split(b"/"):
        if c in (b"", b"."):
            continue
        if c == b"..":
            if out:
                out.pop()
            else:
                climbs = True
            continue
        out.append(c)
    return out, climbs


# ---------------------------------------------------------------------------------------------
# Metadata parsers (pure).

def parse_pkginfo(data: bytes) -> tuple[dict, list[Finding]]:
    """libalpm's reading of .PKGINFO ("key = value" lines), with checks. Returns the fields
    (escaped for display) and findings."""
    findings: list[Finding] = []

    def add(severity, kind, detail):
        findings.append(Finding(severity=severity, kind=kind, entry=".PKGINFO", detail=detail))

    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        add("warning", "pkginfo-invalid", f"not valid UTF-8 (byte {exc.start})")
        return {}, findings
    raw_single: dict[str, bytes] = {}
    info: dict = {}
    for number, line in enumerate(data.split(b"\n"), 1):
        line = line.strip(b" \t\r")
        if not line or line.startswith(b"#"):
            continue
        key, sep, value = line.partition(b"=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            add("warning", "pkginfo-syntax", f"line {number}: not 'key = value'")
            continue
        name = key.decode()
        if name in SINGLE_KEYS:
            if name in raw_single:
                add("warning", "pkginfo-syntax", f"line {number}: {show(name)} given twice")
            raw_single[name] = value
            info[SINGLE_KEYS[name]] = show(value, 4096)
        elif name in MULTI_KEYS:
            values = info.setdefault(MULTI_KEYS[name], [])
            if len(values) < _MAX_LIST:
                values.append(show(value, 4096))
            if name == "backup":
                comps, climbs = _lexical(value)
                if value.startswith(b"/") or climbs or b".." in value.split(b"/") or not comps:
                    add("hostile", "pkginfo-path", f"backup = {show(value)}: not a path "
                        f"inside the package (pacman renames backup files on upgrade/removal)")
        if re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", value) and name not in ("pkgname", "pkgver"):
            add("warning", "pkginfo-field", f"line {number}: control character in "
                                            f"{show(name)} (terminal escapes?)")
    for key in ("pkgname", "pkgver"):
        value = raw_single.get(key, b"")
        if not value:
            add("warning", "pkginfo-invalid", f"no {key}: pacman refuses the package")
            continue
        if re.search(rb"[\x00-\x1f\x7f]", value):
            add("hostile", "pkginfo-control", f"control character in {key} {show(value)}: "
                "the local database stores it one value per line")
        if b"/" in value or value in (b".", b".."):
            add("hostile", "pkginfo-path", f"{key} {show(value)} would become a path in the "
                "local database ({dbpath}/local/NAME-VERSION)")
        elif key == "pkgname" and not _PKGNAME.match(value):
            add("warning", "pkginfo-field", f"pkgname {show(value)}: characters makepkg "
                                            f"rejects")
        elif key == "pkgver" and not _PKGVER.match(value):
            add("warning", "pkginfo-field", f"pkgver {show(value)}: not [epoch:]version-release")
    arch = raw_single.get("arch")
    if arch is not None and not _ARCH.match(arch):
        add("warning", "pkginfo-field", f"arch {show(arch)}: not a plain word")
    size = raw_single.get("size")
    if size is not None and not size.isdigit():
        add("warning", "pkginfo-field", f"size {show(size)}: not a number")
    return info, findings


def parse_install(data: bytes) -> tuple[tuple[str, ...], list[Finding]]:
    """Which of the six scriptlet functions an .INSTALL defines (bash `name()` or
    `function name` definitions), in FUNCTIONS order."""
    findings = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        findings.append(Finding(severity="warning", kind="not-utf8", entry=".INSTALL",
                                detail="scriptlet is not valid UTF-8"))
        text = data.decode("utf-8", "replace")
    defined = {a or b for a, b in _FUNCTION_DEF.findall(text)}
    functions = tuple(f for f in FUNCTIONS if f in defined)
    findings.append(Finding(severity="info", kind="install", entry=".INSTALL",
                            detail="scriptlet run as root defining: " +
                            (", ".join(functions) or "none of the six functions")))
    return functions, findings


def _mtree_text(data: bytes, limit: int) -> tuple[bytes, str]:
    """The .MTREE text: gzip-compressed as makepkg writes it, or plain."""
    if not data.startswith(b"\x1f\x8b"):
        return data[:limit], ""
    d = zlib.decompressobj(wbits=47)
    try:
        text = d.decompress(data, limit + 1)
    except zlib.error as exc:
        return b"", f"cannot decompress: {exc}"
    if len(text) > limit:
        return b"", f"decompressed .MTREE larger than {limit} bytes"
    return text, ""


_MTREE_TYPES = {b"file": "f", b"dir": "d", b"link": "l", b"char": "c", b"block": "b",
                b"fifo": "p", b"socket": "s"}


def parse_mtree(text: bytes) -> dict[bytes, str] | None:
    """Paths of an mtree file list (bsdtar's full-path form, `./path key=value ...`, with
    /set and /unset) -> type letter ("" when not given). None if no line looks like mtree."""
    out: dict[bytes, str] = {}
    defaults: dict[bytes, bytes] = {}
    lines = 0
    for line in text.split(b"\n"):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        words = line.split()
        if words[0] == b"/set":
            defaults.update(w.split(b"=", 1) for w in words[1:] if b"=" in w)
            continue
        if words[0] == b"/unset":
            for w in words[1:]:
                defaults.pop(w, None)
            continue
        lines += 1
        path = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8) & 0xFF]), words[0])
        keys = dict(defaults)
        keys.update(w.split(b"=", 1) for w in words[1:] if b"=" in w)
        comps, _ = _lexical(path)
        if comps:
            out[b"/".join(comps)] = _MTREE_TYPES.get(keys.get(b"type", b""), "")
    return out if lines else None


# ---------------------------------------------------------------------------------------------
# The child: libarchive (pkgsandbox.archive). Runs only inside the domain, after the drop.

def _error(lib: archive.Libarchive, a, status: int | None = None) -> str:
    return show(lib.error(a, status), 400)


def _entry(lib: archive.Libarchive, e) -> Entry:
    ftype = lib.entry_filetype(e) & archive.IFMT
    xattrs = []
    for _ in range(lib.entry_xattr_reset(e)):
        name, value, size = ctypes.c_char_p(), ctypes.c_void_p(), ctypes.c_size_t()
        if lib.entry_xattr_next(e, ctypes.byref(name), ctypes.byref(value),
                                ctypes.byref(size)) != archive.OK:
            break
        xattrs.append(name.value or b"")
    return Entry(path=lib.entry_pathname(e), type=_TYPE.get(ftype, "?"),
                 mode=lib.entry_mode(e), size=lib.entry_size(e),
                 size_set=bool(lib.entry_size_is_set(e)), uid=lib.entry_uid(e),
                 gid=lib.entry_gid(e), symlink=lib.entry_symlink(e),
                 hardlink=lib.entry_hardlink(e), xattrs=tuple(xattrs))


def nobody() -> tuple[int, int] | None:
    """The identity the parsing child drops to when started as root; None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def address_space() -> int:
    """This process's virtual size in bytes (read in the parent: /proc is outside the
    domain); 0 if unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def open_target(path: str, identity: tuple[int, int] | None, limits: Limits = DEFAULT_LIMITS,
                *, inherited: int = 0) -> int:
    """In the child, inside the domain: open the archive, then give up root and lower the
    resource limits, so that libarchive never parses hostile bytes as root. `inherited`: the
    address space the child started with (address_space() in the parent)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:   # replaced since the parent checked it: the grant is on the inode
        raise BadInput(f"{show(path)}: {exc.strerror} (inside the sandbox)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInput(f"{show(path)}: not a regular file")
    if identity is not None:
        uid, gid = identity
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid,) * 3 or os.getgroups():
            raise SetupError("could not drop root in the inspect child")
    for which, value in ((resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_AS, inherited + limits.memory),
                         (resource.RLIMIT_FSIZE, 64 << 20), (resource.RLIMIT_NPROC, 0)):
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass
    try:
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
    except locale.Error:
        pass
    return fd


def scan(path: str, identity: tuple[int, int] | None, limits: Limits, inherited: int = 0
         ) -> dict:
    """The sandboxed child: read the archive's headers and metadata; return the findings."""
    fd = open_target(path, identity, limits, inherited=inherited)
    lib = archive.library()
    analyzer = Analyzer(limits)
    try:
        return _scan(lib, analyzer, fd, limits)
    except MemoryError:
        analyzer.add("warning", "limit", b"", f"needed more than {limits.memory} bytes of "
                                              f"memory")
        return analyzer.result(fmt="")
    finally:
        os.close(fd)


def _scan(lib: archive.Libarchive, analyzer: Analyzer, fd: int, limits: Limits) -> dict:
    a = lib.read_new()
    if not a:
        raise MemoryError("archive_read_new")
    error = None
    fmt = ""
    try:
        lib.read_support_filter_all(a)
        lib.read_support_format_all(a)
        status = lib.read_open_fd(a, fd, archive.BLOCK)
        if status != archive.OK:
            error = _error(lib, a, status)
            analyzer.add("warning", _error_kind(error), b"", f"not a readable archive: {error}")
            analyzer.finish(error=error)
            return analyzer.result(fmt="")
        entry = ctypes.c_void_p()
        retries = 0
        buf = ctypes.create_string_buffer(archive.BLOCK)
        while not analyzer.stopped:
            r = lib.read_next_header(a, ctypes.byref(entry))
            if r == archive.EOF:
                break
            if r == archive.RETRY and retries < 8:
                retries += 1
                continue
            if r not in (archive.OK, archive.WARN):
                error = _error(lib, a, r)
                analyzer.add("warning", _error_kind(error), b"", error)
                break
            if not fmt:
                fmt = _format(lib, a)
                family = lib.format(a) & archive.FORMAT_BASE_MASK
                if family == archive.FORMAT_MTREE:
                    analyzer.add("hostile", "format", b"", f"{fmt}: a file list whose entries "
                                 f"take their data from files of the system reading it "
                                 f"(contents=/etc/shadow), which libalpm accepts as a package")
                elif family != archive.FORMAT_TAR:
                    analyzer.add("warning", "format", b"", f"{fmt}: packages are tar "
                                                           f"archives")
            e = _entry(lib, entry)
            if r == archive.WARN:
                analyzer.add("warning", "archive-warning", e.path or b"", _error(lib, a))
            if analyzer.entry(e):
                data, complete, problem = archive.read_data(lib, a, buf,
                                                            limits.metadata_bytes)
                if problem:
                    problem = show(problem, 400)
                    analyzer.add("warning", _error_kind(problem), e.path or b"", problem)
                    error = problem
                    break
                analyzer.metadata_data(e.path, data, complete=complete)
            elif not analyzer.stopped and \
                    (status := lib.read_data_skip(a)) not in (archive.OK, archive.WARN):
                error = _error(lib, a, status)
                analyzer.add("warning", _error_kind(error), e.path or b"", error)
                break
            if lib.filter_bytes(a, 0) > limits.total_bytes + 512 * analyzer.entries + (1 << 20):
                analyzer.stop("limit", b"", f"decompressed stream exceeds "
                                            f"{limits.total_bytes} bytes")
    finally:
        lib.read_free(a)
    analyzer.finish(error=error)
    return analyzer.result(fmt=fmt)


def _error_kind(message: str) -> str:
    """libarchive's message -> finding kind: a truncated stream, the memory limit (a
    decompressor refused its window), or any other error."""
    lowered = message.lower()
    if "truncated" in lowered or "unexpected end" in lowered:
        return "truncated"
    if "allocate memory" in lowered or "cannot allocate" in lowered:
        return "limit"
    return "archive-error"


def _format(lib: archive.Libarchive, a) -> str:
    name = (lib.format_name(a) or b"?").decode("ascii", "replace")
    filters = [(lib.filter_name(a, i) or b"?").decode("ascii", "replace")
               for i in range(lib.filter_count(a))]
    filters = [f for f in filters if f != "none"]
    return name + (f", {'+'.join(filters)}" if filters else "")


# ---------------------------------------------------------------------------------------------
# The parent: policy, one sandboxed call per archive, checking what comes back.

def policy_for(file: str, scratch: str, library: profile.Library) -> Policy:
    """The `inspect` profile resolved for one archive: {scratch} writable, the archive
    readable (and nothing else beyond base)."""
    prof = library.load(PROFILE)
    policy = profile.resolve(prof, {"scratch": scratch})
    grant = PathGrant(path=file, rights=frozenset({"read_file"}), origin="inspect target")
    return replace(policy, paths=policy.paths + (grant,))


class Unreadable(BadInput):
    """A FILE argument that does not open as a regular file: bad input, not an archive."""
    kind = "unreadable"


def check_file(file: str) -> str:
    """The absolute path of FILE if it opens as a regular file; Unreadable otherwise."""
    path = os.path.abspath(file)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise Unreadable(f"{show(file)}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable(f"{show(file)}: not a regular file")
    finally:
        os.close(fd)
    return path


def inspect_file(file: str, *, library: profile.Library, cap, compat,
                 limits: Limits = DEFAULT_LIMITS) -> Report:
    """Inspect one archive in its own domain. Unreadable if FILE cannot be opened at all;
    RequirementError / SetupError if the sandbox cannot be built (nothing was parsed)."""
    path = check_file(file)
    identity = nobody()
    scratch = tempfile.mkdtemp(prefix="pkgsandbox-inspect-")
    try:
        if identity is not None:
            os.chown(scratch, *identity)
        policy = policy_for(path, scratch, library)
        with enforce.prepare(policy, cap=cap, compat=compat) as prepared:
            report = prepared.report
            try:
                result = runner.call(scan, path, identity, limits, address_space(),
                                     prepared=prepared, timeout=limits.timeout, cwd=scratch)
            except TimeoutExpired:
                return _failed(file, "limit", f"parsing took longer than {limits.timeout:g} s: "
                                              f"killed with its process group", report)
            except SetupError as exc:
                crash = _CRASH.search(exc.message)
                if not crash:
                    raise
                return _failed(file, "parser-crash", "the sandboxed parser died without an "
                               "answer" + _status(crash.group(1)), report)
            except BadInput as exc:
                return _failed(file, "unreadable", exc.message, report)
        return _from_child(file, result.value, result.report)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


#: runner.call's message when the child ended without writing an answer (after the domain
#: was entered: a setup failure writes its own message instead).
_CRASH = re.compile(r"^sandbox setup failed: wait status (-?\d+|None)$")


def _status(text: str) -> str:
    """' (killed by signal N)' / ' (exit status N)' from runner's exit code (negative for a
    signal); nothing when runner did not say."""
    if text in ("None", "0"):
        return ""
    code = int(text)
    return f" (killed by signal {-code})" if code < 0 else f" (exit status {code})"


def _failed(file: str, kind: str, detail: str, enforcement: EnforcementReport | None
            ) -> Report:
    finding = Finding(severity="warning", kind=kind, entry="", detail=detail)
    return Report(file=file, verdict="invalid", findings=(finding,), enforcement=enforcement)


_KIND = re.compile(r"^[a-z][a-z0-9-]{0,40}$")


def _clean(value, limit: int = 8192) -> str:
    if not isinstance(value, str):
        raise ValueError("a value is not a string")
    return re.sub(r"[\x00-\x1f\x7f]", "?", value[:limit])


def _from_child(file: str, value, enforcement: EnforcementReport) -> Report:
    """The child's JSON answer, checked: it comes from a process that parsed hostile bytes."""
    try:
        if not isinstance(value, dict):
            raise ValueError("not an object")
        raw = value.get("findings")
        if not isinstance(raw, list) or len(raw) > MAX_FINDINGS * 2:
            raise ValueError("no list of findings")
        findings = []
        for f in raw:
            if not isinstance(f, dict) or f.get("severity") not in SEVERITIES \
                    or not isinstance(f.get("kind"), str) or not _KIND.match(f["kind"]):
                raise ValueError("a finding without severity or kind")
            findings.append(Finding(severity=f["severity"], kind=f["kind"],
                                    entry=_clean(f.get("entry", "")),
                                    detail=_clean(f.get("detail", ""))))
        pkginfo = {}
        for key, item in dict(value.get("pkginfo") or {}).items():
            pkginfo[_clean(key, 64)] = ([_clean(v) for v in item[:_MAX_LIST]]
                                        if isinstance(item, list) else _clean(item))
        functions = tuple(f for f in value.get("install_functions", ()) if f in FUNCTIONS)
        counts = [value.get("entries"), value.get("bytes")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise ValueError("bad counts")
        fmt = _clean(value.get("format", ""), 200)
    except (ValueError, AttributeError, TypeError) as exc:
        return _failed(file, "parser-crash", f"the sandboxed parser returned a malformed "
                                             f"answer ({exc})", enforcement)
    findings = _owned_places(findings, str(pkginfo.get("pkgname", "")))
    return Report(file=file, verdict=verdict_for(findings), findings=tuple(findings),
                  pkginfo=pkginfo, install_functions=functions, entries=counts[0],
                  bytes=counts[1], format=fmt, enforcement=enforcement)


#: Sensitive places that a package of this name legitimately owns (Arch's packages): its own
#: files there are reported as a warning, not as hostile. Prefixes relative to the root.
OWNED_SENSITIVE: dict[str, tuple[str, ...]] = {
    "sudo": ("etc/sudoers", "etc/sudoers.d/"),
    "pacman": ("etc/pacman.conf", "etc/makepkg.conf", "etc/pacman.d/"),
    "pacman-mirrorlist": ("etc/pacman.d/mirrorlist",),
    "archlinux-keyring": ("etc/pacman.d/",),
    "intel-ucode": ("boot/",), "amd-ucode": ("boot/",), "memtest86+": ("boot/",),
    "memtest86+-efi": ("boot/",), "grub": ("boot/",), "syslinux": ("boot/",),
    "filesystem": ("root/", "home/", "boot/", "etc/"),
}


def _owned_places(findings, pkgname: str):
    owned = OWNED_SENSITIVE.get(pkgname, ())
    if not owned:
        return findings
    out = []
    for f in findings:
        entry = f.entry.lstrip("./")
        if f.kind == "sensitive-path" and f.severity == "hostile" and \
                any(entry == o.rstrip("/") or entry.startswith(o) for o in owned):
            f = Finding(severity="warning", kind=f.kind, entry=f.entry,
                        detail=f.detail + f" (owned by the {pkgname} package)")
        out.append(f)
    return out


def pending_archives(names: list[str], conf) -> tuple[list[str], list[str]]:
    """For the PreTransaction hook (NeedsTargets gives package names): each name's newest
    archive in the cache directories. Returns (archives, names not found)."""
    import glob
    from .. import alpm
    found, missing = [], []
    for name in names:
        best, best_ver = None, None
        for d in conf.cachedirs:
            for path in glob.glob(os.path.join(glob.escape(d), glob.escape(name) + "-*.pkg.tar*")):
                base = os.path.basename(path)
                if base.endswith(".sig"):
                    continue
                stem = base.split(".pkg.tar", 1)[0]
                parts = stem.rsplit("-", 3)
                if len(parts) != 4 or parts[0] != name:
                    continue
                version = f"{parts[1]}-{parts[2]}"
                if best is None or alpm.vercmp(version, best_ver) > 0:
                    best, best_ver = path, version
        if best:
            found.append(best)
        else:
            missing.append(name)
    return found, missing


# ---------------------------------------------------------------------------------------------
# The command.

def command(files: list[str], *, library, cap, compat, as_json: bool, out, err,
            limits: Limits = DEFAULT_LIMITS) -> int:
    """`pkgsandbox inspect FILE...`: one report per FILE, in order; the exit status rule is
    in the module docstring (0 all ok, 3 any hostile or invalid archive, else 2 if a FILE
    could not be opened)."""
    reports: list[Report] = []
    unopened = 0
    warned: set[str] = set()
    for file in files:
        try:
            report = inspect_file(file, library=library, cap=cap, compat=compat, limits=limits)
        except Unreadable as exc:
            err(f"pkgsandbox: error: {exc.message}")
            unopened += 1
            report = _failed(file, "unreadable", exc.message, None)
        if report.enforcement is not None:
            warning = enforce.unconfined_warning(report.enforcement)
            if warning and warning not in warned:
                warned.add(warning)
                err(warning)
        reports.append(report)
    if as_json:
        out(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        for r in reports:
            n = len(r.findings)
            out(f"{show(r.file)}: {r.verdict} ({n} finding{'' if n == 1 else 's'})")
            for f in r.findings:
                out(f"  {f.line()}")
        summaries = dict.fromkeys(r.enforcement.summary() for r in reports if r.enforcement)
        for summary in summaries:
            out(f"enforcement: {summary}")
    if sum(r.verdict != "ok" for r in reports) > unopened:
        return EXIT_FINDINGS
    return EXIT_BAD_INPUT if unopened else EXIT_OK
