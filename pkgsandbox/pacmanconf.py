"""pacman.conf as a value: built from pycman's (section, key, value) stream plus the keys
pycman passes through without using (HookDir, DownloadUser, XferCommand, DisableSandbox*).

Pure apart from what alpm.conf_triples() reads. Errors name the file and, where it can be
found, the line. Command-line options override the file as pacman's do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from .errors import BadInput

# libalpm's alpm_siglevel_t bits (alpm.h)
SIG_PACKAGE = 1 << 0
SIG_PACKAGE_OPTIONAL = 1 << 1
SIG_PACKAGE_MARGINAL_OK = 1 << 2
SIG_PACKAGE_UNKNOWN_OK = 1 << 3
SIG_DATABASE = 1 << 10
SIG_DATABASE_OPTIONAL = 1 << 11
SIG_DATABASE_MARGINAL_OK = 1 << 12
SIG_DATABASE_UNKNOWN_OK = 1 << 13
DEFAULT_SIGLEVEL = SIG_PACKAGE | SIG_DATABASE | SIG_DATABASE_OPTIONAL


@dataclass(frozen=True, kw_only=True)
class Repo:
    name: str
    servers: tuple[str, ...]          # $repo and $arch substituted
    siglevel: int


@dataclass(frozen=True, kw_only=True)
class PacmanConf:
    file: str
    root: str = "/"
    dbpath: str = "/var/lib/pacman"
    cachedirs: tuple[str, ...] = ("/var/cache/pacman/pkg",)
    logfile: str = "/var/log/pacman.log"
    gpgdir: str = "/etc/pacman.d/gnupg"
    hookdirs: tuple[str, ...] = ("/etc/pacman.d/hooks",)
    arch: str = field(default_factory=lambda: os.uname().machine)
    siglevel: int = DEFAULT_SIGLEVEL
    local_siglevel: int = DEFAULT_SIGLEVEL
    remote_siglevel: int = DEFAULT_SIGLEVEL
    parallel_downloads: int = 1
    download_user: str | None = None
    xfer_command: str | None = None
    disable_sandbox: bool = False
    hold: tuple[str, ...] = ()
    ignore_pkgs: tuple[str, ...] = ()
    ignore_groups: tuple[str, ...] = ()
    no_upgrade: tuple[str, ...] = ()
    no_extract: tuple[str, ...] = ()
    color: bool = False
    repos: tuple[Repo, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def cachedir(self) -> str:
        return self.cachedirs[0]


def parse_siglevel(text: str, base: int, where: str) -> int:
    """pacman.conf(5) SigLevel: Never, Optional, Required, TrustedOnly, TrustAll, each
    optionally prefixed with Package or Database."""
    level = base
    for token in text.split():
        scopes = ("Package", "Database")
        for prefix in scopes:
            if token.startswith(prefix):
                scopes, token = (prefix,), token[len(prefix):]
                break
        for scope in scopes:
            pkg = scope == "Package"
            must = SIG_PACKAGE if pkg else SIG_DATABASE
            opt = SIG_PACKAGE_OPTIONAL if pkg else SIG_DATABASE_OPTIONAL
            trust = (SIG_PACKAGE_MARGINAL_OK | SIG_PACKAGE_UNKNOWN_OK) if pkg else \
                (SIG_DATABASE_MARGINAL_OK | SIG_DATABASE_UNKNOWN_OK)
            if token == "Never":
                level &= ~(must | opt)
            elif token == "Optional":
                level |= must | opt
            elif token == "Required":
                level = (level | must) & ~opt
            elif token == "TrustedOnly":
                level &= ~trust
            elif token == "TrustAll":
                level |= trust
            else:
                raise BadInput(f"{where}: SigLevel: invalid value {token!r}")
    return level


def build(file: str, triples, *, lines: dict[str, int] | None = None) -> PacmanConf:
    """Fold pycman's triples into a PacmanConf. `lines` maps 'Section/Key' to a line number
    for error messages."""
    lines = lines or {}
    options: dict[str, list] = {}
    repos: dict[str, dict] = {}
    order: list[str] = []
    for section, key, value in triples:
        if section == "options":
            options.setdefault(key, []).append(value)
        else:
            if section not in repos:
                repos[section] = {"Server": [], "SigLevel": None}
                order.append(section)
            if key == "Server":
                repos[section]["Server"].append(value)
            elif key == "SigLevel":
                repos[section]["SigLevel"] = value

    def where(key, section="options"):
        line = lines.get(f"{section}/{key}")
        return f"{file}:{line}" if line else file

    def one(key, default=None):
        return options[key][-1] if key in options else default

    kw: dict = {"file": file}
    for key, attr in (("RootDir", "root"), ("DBPath", "dbpath"), ("LogFile", "logfile"),
                      ("GPGDir", "gpgdir")):
        if key in options:
            value = one(key)
            if not str(value).startswith("/"):
                raise BadInput(f"{where(key)}: {key}: must be an absolute path (got {value!r})")
            kw[attr] = os.path.normpath(value)
    if "CacheDir" in options:
        kw["cachedirs"] = tuple(os.path.normpath(v) for v in options["CacheDir"])
    if "HookDir" in options:
        # pacman: HookDir entries replace the default /etc/pacman.d/hooks (which, like
        # every HookDir, is not relative to the root); the system directory
        # {root}/usr/share/libalpm/hooks always comes first.
        kw["hookdirs"] = tuple(os.path.normpath(v) for v in options["HookDir"])
    arch = one("Architecture")
    if arch and arch != "auto":
        kw["arch"] = arch.split()[0]
    base = DEFAULT_SIGLEVEL
    if "SigLevel" in options:
        base = parse_siglevel(one("SigLevel"), DEFAULT_SIGLEVEL, where("SigLevel"))
    kw["siglevel"] = base
    kw["local_siglevel"] = parse_siglevel(one("LocalFileSigLevel", ""), base,
                                          where("LocalFileSigLevel"))
    kw["remote_siglevel"] = parse_siglevel(one("RemoteFileSigLevel", ""), base,
                                           where("RemoteFileSigLevel"))
    if "ParallelDownloads" in options:
        text = str(one("ParallelDownloads"))
        if not text.isdigit() or int(text) < 1:
            raise BadInput(f"{where('ParallelDownloads')}: ParallelDownloads: expected a "
                           f"positive number (got {text!r})")
        kw["parallel_downloads"] = int(text)
    if "DownloadUser" in options:
        kw["download_user"] = one("DownloadUser")
    if "XferCommand" in options:
        kw["xfer_command"] = one("XferCommand")
    kw["disable_sandbox"] = any(k.startswith("DisableSandbox") for k in options)
    kw["color"] = "Color" in options
    for key, attr in (("HoldPkg", "hold"), ("IgnorePkg", "ignore_pkgs"),
                      ("IgnoreGroup", "ignore_groups"), ("NoUpgrade", "no_upgrade"),
                      ("NoExtract", "no_extract")):
        if key in options:
            kw[attr] = tuple(options[key])
    machine = kw.get("arch", os.uname().machine)
    out = []
    for name in order:
        r = repos[name]
        level = base
        if r["SigLevel"]:
            level = parse_siglevel(r["SigLevel"], base, where("SigLevel", name))
        servers = tuple(s.replace("$repo", name).replace("$arch", machine) for s in r["Server"])
        out.append(Repo(name=name, servers=servers, siglevel=level))
    kw["repos"] = tuple(out)
    return PacmanConf(**kw)


def with_overrides(conf: PacmanConf, *, root=None, dbpath=None, cachedir=None, logfile=None,
                   gpgdir=None, hookdirs=None, explicit: frozenset[str] = frozenset()
                   ) -> PacmanConf:
    """Apply command-line options. As pacman: with --root and no DBPath/LogFile set anywhere,
    those default to paths inside the root. `explicit` names the keys the file set."""
    changes: dict = {}
    if root:
        changes["root"] = os.path.normpath(os.path.abspath(root))
        if "DBPath" not in explicit and not dbpath:
            changes["dbpath"] = os.path.join(changes["root"], "var/lib/pacman")
        if "LogFile" not in explicit and not logfile:
            changes["logfile"] = os.path.join(changes["root"], "var/log/pacman.log")
    if dbpath:
        changes["dbpath"] = os.path.normpath(os.path.abspath(dbpath))
    if cachedir:
        changes["cachedirs"] = (os.path.normpath(os.path.abspath(cachedir)),)
    if logfile:
        changes["logfile"] = os.path.normpath(os.path.abspath(logfile))
    if gpgdir:
        changes["gpgdir"] = os.path.normpath(os.path.abspath(gpgdir))
    if hookdirs:
        changes["hookdirs"] = tuple(os.path.normpath(os.path.abspath(h)) for h in hookdirs)
    return replace(conf, **changes)
