"""Assemble pacman packages and repositories from a description, with bsdtar and repo-add.

For the demo, the tests and the benchmarks: a package is .PKGINFO + .MTREE (+ .INSTALL) + its
files, exactly what makepkg would put in the archive, without running makepkg (which refuses
root). Writes only into the directories it is given; runs bsdtar and repo-add with argv lists
and a clean environment.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SetupError

_ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C", "TZ": "UTC"}
_MTREE_OPTIONS = "!all,use-set,type,uid,gid,mode,time,size,md5,sha256,link"


@dataclass(frozen=True, kw_only=True)
class PkgFile:
    path: str                 # relative to the root, e.g. "usr/bin/hello"
    content: bytes = b""
    mode: int = 0o644
    symlink: str | None = None
    directory: bool = False


@dataclass(frozen=True, kw_only=True)
class PkgSpec:
    name: str
    version: str = "1.0-1"
    arch: str = "any"
    description: str = "test package"
    files: tuple[PkgFile, ...] = ()
    depends: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    backup: tuple[str, ...] = ()
    install: str | None = None      # .INSTALL text
    compression: str = "zst"        # zst | gz | xz
    extra_pkginfo: tuple[tuple[str, str], ...] = field(default=())

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.arch}.pkg.tar.{self.compression}"


def _run(argv: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, env=_ENV, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    if proc.returncode != 0:
        raise SetupError(f"{argv[0]} failed: {proc.stderr.strip()[:400]}")


def build_package(spec: PkgSpec, outdir: Path) -> Path:
    """Write spec as a package archive into outdir; returns its path."""
    outdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pkgsandbox-pkg-"))
    try:
        size = 0
        top: set[str] = set()
        for f in spec.files:
            target = work / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            top.add(f.path.split("/", 1)[0])
            if f.directory:
                target.mkdir(exist_ok=True)
                target.chmod(f.mode if f.mode != 0o644 else 0o755)
            elif f.symlink is not None:
                target.symlink_to(f.symlink)
            else:
                target.write_bytes(f.content)
                target.chmod(f.mode)
                size += len(f.content)
        lines = [f"pkgname = {spec.name}", f"pkgbase = {spec.name}",
                 f"pkgver = {spec.version}", f"pkgdesc = {spec.description}",
                 "url = https://example.invalid", f"builddate = {int(time.time())}",
                 "packager = pkgsandbox tests", f"size = {size}", f"arch = {spec.arch}",
                 "license = GPL"]
        lines += [f"depend = {d}" for d in spec.depends]
        lines += [f"provides = {p}" for p in spec.provides]
        lines += [f"conflict = {c}" for c in spec.conflicts]
        lines += [f"replaces = {r}" for r in spec.replaces]
        lines += [f"backup = {b}" for b in spec.backup]
        lines += [f"{k} = {v}" for k, v in spec.extra_pkginfo]
        (work / ".PKGINFO").write_text("\n".join(lines) + "\n")
        meta = [".PKGINFO"]
        if spec.install is not None:
            (work / ".INSTALL").write_text(spec.install)
            meta.append(".INSTALL")
        for p in [work, *work.rglob("*")]:
            os.utime(p, (0, 0), follow_symlinks=False)
        entries = sorted(top)
        _run(["bsdtar", "-czf", ".MTREE", "--format=mtree", f"--options={_MTREE_OPTIONS}",
              *meta, *entries], cwd=work)
        comp = {"zst": "--zstd", "gz": "-z", "xz": "-J"}[spec.compression]
        out = outdir / spec.filename
        _run(["bsdtar", "-cf", str(out), comp, "--uid", "0", "--gid", "0", "--uname", "root",
              "--gname", "root", ".MTREE", *meta, *entries], cwd=work)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_repo(specs, repodir: Path, name: str = "test") -> Path:
    """Build every package and a repository database `name.db` in repodir."""
    repodir.mkdir(parents=True, exist_ok=True)
    paths = [str(build_package(s, repodir)) for s in specs]
    db = repodir / f"{name}.db.tar.gz"
    if paths:
        for chunk in range(0, len(paths), 500):
            _run(["repo-add", "-q", str(db), *paths[chunk:chunk + 500]])
    return db


def make_root(root: Path, *, busybox: str | None = None) -> Path:
    """A minimal target root: the directories pacman expects, and a busybox shell so
    scriptlets and hooks can run chrooted. Returns root."""
    for d in ("bin", "etc", "tmp", "usr/bin", "usr/share", "var/lib/pacman", "var/cache/pacman/pkg",
              "var/log", "dev", "proc", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    bb = busybox or shutil.which("busybox") or "/bin/busybox"
    if os.path.exists(bb):
        shutil.copy2(bb, root / "usr/bin/busybox")
        for tool in ("sh", "cat", "echo", "grep", "sed", "mkdir", "rm", "touch", "ls", "id",
                     "cp", "mv", "chmod", "printf", "test", "true", "false", "env", "kill",
                     "sleep", "wc", "head", "tail", "tr", "cut", "nc", "ln", "chown", "stat",
                     "readlink", "date", "mktemp", "basename", "dirname", "timeout"):
            link = root / "usr/bin" / tool
            if not link.exists():
                link.symlink_to("busybox")
        if not (root / "bin/sh").exists():
            (root / "bin/sh").symlink_to("../usr/bin/busybox")
    for name in ("passwd", "group"):
        f = root / "etc" / name
        if not f.exists():
            f.write_text("root:x:0:0:root:/root:/bin/sh\n" if name == "passwd" else "root:x:0:\n")
    return root
