"""Twin roots: the same transaction by stock pacman and by pkgsandbox, then compared.

Each root is a throwaway directory under a test's tmp_path with a busybox shell (so
scriptlets run chrooted, as pacman runs them). Scriptlets used in tests append
"FUNCTION ARGS" to /var/log/calls, so the calls and their order can be compared too.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pkgsandbox.repobuild import PkgFile, PkgSpec, make_root

REPO_ROOT = Path(__file__).resolve().parents[2]


def recorder(*functions: str, extra: str = "") -> str:
    """An .INSTALL whose functions record their calls in /var/log/calls."""
    body = "".join(f'{fn}() {{\n  echo "{fn} $*" >> /var/log/calls\n{extra}}}\n'
                   for fn in functions)
    return body


ALL_FUNCTIONS = ("pre_install", "post_install", "pre_upgrade", "post_upgrade", "pre_remove",
                 "post_remove")


@dataclass
class Root:
    path: Path
    conf: Path

    def args(self) -> list[str]:
        p = self.path
        return ["--root", str(p), "--dbpath", str(p / "var/lib/pacman"),
                "--cachedir", str(p / "var/cache/pacman/pkg"), "--config", str(self.conf),
                "--logfile", str(p / "var/log/pacman.log"), "--hookdir",
                str(p / "etc/pacman.d/hooks"), "--noconfirm"]

    def calls(self) -> list[str]:
        f = self.path / "var/log/calls"
        return f.read_text().splitlines() if f.exists() else []


def write_conf(path: Path, server: str, *, extra_options: str = "", repo: str = "test") -> Path:
    path.write_text(f"[options]\nArchitecture = auto\nSigLevel = Never\n{extra_options}\n"
                    f"[{repo}]\nServer = {server}\n")
    return path


def new_root(base: Path, name: str, server: str, extra_options: str = "") -> Root:
    path = make_root(base / name)
    (path / "etc/pacman.d/hooks").mkdir(parents=True, exist_ok=True)
    conf = write_conf(base / f"{name}.conf", server, extra_options=extra_options)
    return Root(path=path, conf=conf)


def stock(root: Root, *op: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["pacman", *op, *root.args()], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"stock pacman {op} failed: {proc.stdout}\n{proc.stderr}")
    return proc


def sandboxed(root: Root, *op: str, check: bool = True, extra=(), env=None
              ) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("PKGSANDBOX_ABI", None)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "pkgsandbox", *op, *root.args(), *extra],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300, cwd=REPO_ROOT, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"pkgsandbox {op} failed ({proc.returncode}): {proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


IGNORED = ("var/log/pacman.log", "var/cache/pacman/pkg", "var/lib/pacman/sync",
           "var/lib/pacman/db.lck")


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, mode and content (or link target); the
    install date in local database entries is normalised."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames
                       if not any(os.path.normpath(os.path.join(rel_dir, d)).startswith(i)
                                  for i in IGNORED)]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if any(rel.startswith(i) for i in IGNORED):
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            else:
                data = Path(full).read_bytes()
                if rel.startswith("var/lib/pacman/local/") and rel.endswith("/desc"):
                    data = _strip_installdate(data)
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                            hashlib.sha256(data).hexdigest())
    return out


def _strip_installdate(data: bytes) -> bytes:
    lines = data.split(b"\n")
    out, skip = [], False
    for line in lines:
        if skip:
            skip = False
            continue
        if line == b"%INSTALLDATE%":
            skip = True
            continue
        out.append(line)
    return b"\n".join(out)


def query(root: Root, *flags: str) -> subprocess.CompletedProcess:
    p = root.path
    return subprocess.run(["pacman", *flags, "--root", str(p), "--dbpath",
                           str(p / "var/lib/pacman")], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def assert_twins(a: Root, b: Root) -> None:
    ta, tb = tree(a.path), tree(b.path)
    only_a = sorted(set(ta) - set(tb))
    only_b = sorted(set(tb) - set(ta))
    differ = sorted(k for k in set(ta) & set(tb) if ta[k] != tb[k])
    assert not (only_a or only_b or differ), (
        f"trees differ: only stock {only_a[:10]}, only pkgsandbox {only_b[:10]}, "
        f"different {[(k, ta[k], tb[k]) for k in differ[:5]]}")
    qa, qb = query(a, "-Q"), query(b, "-Q")
    assert qa.stdout == qb.stdout and qa.returncode == qb.returncode
    ka = query(b, "-Qk")
    assert ka.returncode == 0 and " 0 missing files" in ka.stdout or not ka.stdout, ka.stdout
    assert a.calls() == b.calls()


def copy_root(src: Root, base: Path, name: str) -> Root:
    dest = base / name
    shutil.copytree(src.path, dest, symlinks=True)
    conf = base / f"{name}.conf"
    shutil.copy(src.conf, conf)
    return Root(path=dest, conf=conf)


def base_specs(version: str = "1.0-1", conf_text: bytes = b"a=1\n") -> list[PkgSpec]:
    """The small repository most transaction tests use: a library with a backup file, a
    program depending on it (both with every scriptlet function recorded), a quiet one."""
    return [
        PkgSpec(name="libfoo", version=version,
                files=(PkgFile(path="usr/lib/libfoo.so", content=b"libfoo " + version.encode()),
                       PkgFile(path="etc/foo.conf", content=conf_text)),
                backup=("etc/foo.conf",), install=recorder(*ALL_FUNCTIONS)),
        PkgSpec(name="hello", version=version, depends=("libfoo",),
                files=(PkgFile(path="usr/bin/hello", content=b"#!/bin/sh\necho hello\n",
                               mode=0o755),
                       PkgFile(path="usr/share/hello/doc", content=b"doc " + version.encode()),
                       PkgFile(path="usr/share/hello/link", symlink="doc")),
                install=recorder(*ALL_FUNCTIONS)),
        PkgSpec(name="quiet", version=version,
                files=(PkgFile(path="usr/share/quiet/data", content=b"q"),)),
    ]
