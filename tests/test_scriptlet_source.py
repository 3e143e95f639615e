"""Where the extract worker gets a package's install script: its `.INSTALL`, read in-process
through libarchive (archive.read_member, alpm._archive_scriptlet), found as libalpm finds the
one it runs (_alpm_unpack_single: the first entry named exactly `.INSTALL`, wherever it is).

Unit checks read real package files built with pkgsandbox.repobuild or bsdtar (no stand-in for
libarchive) and compare with `bsdtar -xOf FILE .INSTALL`, the way this was read before. The
transaction checks compare with stock pacman on twin roots (tests/support/twin.py).

What stock pacman does with an `.INSTALL` that is not a regular file (found with
`pacman --debug` 6.0.2 on twin roots): a symlink or a hard link is extracted as a link, so
pre_* runs whatever the link reaches from {root}/tmp/alpm_XXXXXX (usually nothing) and post_*
what it reaches from the package's local database entry, where it is extracted too (a link
into the package's own files then runs); a directory stored as `.INSTALL/` is not a scriptlet
for libalpm, one stored without the slash makes it loop forever (it greps the directory for
the function name). pkgsandbox runs no script for any of them; the cases where stock pacman
runs nothing either are compared below.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pkgsandbox import alpm, archive
from pkgsandbox.repobuild import PkgFile, PkgSpec, build_package, build_repo
from tests.support.twin import (REPO_ROOT, ALL_FUNCTIONS, assert_twins, new_root, recorder,
                                sandboxed, stock)

INSTALL = recorder(*ALL_FUNCTIONS)
PKGINFO = ("pkgname = {name}\npkgbase = {name}\npkgver = 1.0-1\npkgdesc = test\n"
           "builddate = 0\nsize = 1\narch = any\n")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="transactions need root")


def read(path) -> bytes | None:
    return archive.read_member(str(path), b".INSTALL", limit=alpm.MAX_SCRIPTLET)


def bsdtar(path) -> bytes | None:
    """The former reader: `bsdtar -qxOf FILE .INSTALL` (None when it fails)."""
    proc = subprocess.run(["bsdtar", "-qxOf", str(path), ".INSTALL"], capture_output=True,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, timeout=60,
                          stdin=subprocess.DEVNULL)
    return proc.stdout if proc.returncode == 0 else None


def pack(out: Path, members: dict[str, object], order: list[str], *, name: str = "odd"
         ) -> Path:
    """A zstd package whose entries are in `order` (bsdtar recurses into directories). members:
    path -> bytes (a file), ("symlink", target), ("link", existing member) or "dir"."""
    work = out.parent / (out.name + ".d")
    for path, what in {".PKGINFO": PKGINFO.format(name=name).encode(), **members}.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if what == "dir":
            target.mkdir()
        elif isinstance(what, tuple) and what[0] == "symlink":
            target.symlink_to(what[1])
        elif isinstance(what, tuple) and what[0] == "link":
            os.link(work / what[1], target)
        else:
            target.write_bytes(what)
    subprocess.run(["bsdtar", "-cf", str(out), "--zstd", "--uid", "0", "--gid", "0", *order],
                   cwd=work, check=True, timeout=120)
    return out


# ---------------------------------------------------------------------------------------------
# archive.read_member on files

@pytest.mark.parametrize("compression", ["zst", "xz", "gz", "none"])
def test_install_is_read_like_bsdtar_for_each_compression(tmp_path, compression):
    spec = PkgSpec(name="withscript", install=INSTALL + "# é, ü: UTF-8 kept\n",
                   compression="zst" if compression == "none" else compression,
                   files=(PkgFile(path="usr/share/withscript/data", content=b"d" * 5000),))
    path = build_package(spec, tmp_path)
    if compression == "none":                  # the same entries, in a plain tar
        plain = tmp_path / "withscript-1.0-1-any.pkg.tar"
        subprocess.run(["bsdtar", "-cf", str(plain), f"@{path}"], check=True, timeout=60)
        path = plain
    assert read(path) == bsdtar(path) == spec.install.encode()
    assert archive.library() is archive.library()      # loaded once per process


def test_install_after_a_large_payload_is_found(tmp_path):
    """libalpm reads the whole archive for its file list when no .MTREE comes first, so it
    knows of an .INSTALL at the end, and _alpm_unpack_single finds it there."""
    path = pack(tmp_path / "late.pkg.tar.zst",
                {"usr/share/late/blob": os.urandom(8 << 20), ".INSTALL": INSTALL.encode()},
                [".PKGINFO", "usr", ".INSTALL"])
    assert read(path) == bsdtar(path) == INSTALL.encode()


def test_the_first_install_entry_wins(tmp_path):
    first = tmp_path / "first.tar"
    with tarfile.open(first, "w") as t:
        for text in (b"echo first\n", b"echo second\n"):
            info = tarfile.TarInfo(".INSTALL")
            info.size = len(text)
            t.addfile(info, io.BytesIO(text))
    assert read(first) == bsdtar(first) == b"echo first\n"


def test_no_install_entry(tmp_path):
    path = build_package(PkgSpec(name="plain", files=(PkgFile(path="usr/share/p", content=b"p"),)),
                         tmp_path)
    assert read(path) is None


def test_only_an_entry_named_exactly_install_counts(tmp_path):
    """libalpm compares the whole name (`./.INSTALL` or `.INSTALL/x` is not its scriptlet;
    bsdtar's pattern matched both)."""
    for name in ("./.INSTALL", ".INSTALL/x", "usr/.INSTALL", ".install"):
        path = tmp_path / f"{name.replace('/', '_')}.tar"
        with tarfile.open(path, "w") as t:
            info = tarfile.TarInfo(name)
            info.size = len(INSTALL)
            t.addfile(info, io.BytesIO(INSTALL.encode()))
        assert read(path) is None, name


@pytest.mark.parametrize("kind", ["symlink", "dir", "hardlink"])
def test_an_install_that_is_not_a_regular_file_is_no_script(tmp_path, kind):
    members = {"usr/share/odd/install": INSTALL.encode()}
    members[".INSTALL"] = {"symlink": ("symlink", "usr/share/odd/install"), "dir": "dir",
                           "hardlink": ("link", "usr/share/odd/install")}[kind]
    path = pack(tmp_path / f"{kind}.pkg.tar.zst", members, [".PKGINFO", "usr", ".INSTALL"])
    listing = subprocess.run(["bsdtar", "-tvf", str(path)], capture_output=True, text=True,
                             check=True).stdout
    assert {"symlink": " .INSTALL -> ", "dir": " .INSTALL/\n",
            "hardlink": " .INSTALL link to "}[kind] in listing
    assert read(path) is None
    assert bsdtar(path) in (b"", None)          # bsdtar printed nothing for these either


def test_a_directory_stored_without_its_slash_is_no_script(tmp_path):
    path = tmp_path / "dir.tar"
    with tarfile.open(path, "w") as t:
        info = tarfile.TarInfo(".PKGINFO")
        info.size = 2
        t.addfile(info, io.BytesIO(b"x\n"))
        info = tarfile.TarInfo(".INSTALL")
        t.addfile(info, io.BytesIO(b""))
    raw = bytearray(path.read_bytes())
    header = 1024                               # .PKGINFO's header and its one data block
    assert raw[header:header + 8] == b".INSTALL"
    raw[header + 156] = ord("5")                # typeflag: directory, name kept as is
    raw[header + 148:header + 156] = b" " * 8
    raw[header + 148:header + 156] = b"%06o\0 " % sum(raw[header:header + 512])
    path.write_bytes(bytes(raw))
    assert "drw" in subprocess.run(["bsdtar", "-tvf", str(path)], capture_output=True,
                                   text=True).stdout
    assert read(path) is None


def test_the_size_limit(tmp_path):
    at = build_package(PkgSpec(name="at", install="#" * alpm.MAX_SCRIPTLET), tmp_path)
    over = build_package(PkgSpec(name="over", install="#" * (alpm.MAX_SCRIPTLET + 1)), tmp_path)
    assert read(at) == b"#" * alpm.MAX_SCRIPTLET
    assert read(over) is None


def test_unreadable_corrupt_and_truncated_files_are_no_script(tmp_path):
    good = build_package(PkgSpec(name="good", install=INSTALL, compression="xz",
                                 files=(PkgFile(path="usr/share/g",
                                                content=os.urandom(1 << 16)),)),
                         tmp_path)
    raw = good.read_bytes()
    cases = {"empty": b"", "noise": bytes(range(256)) * 64, "head": raw[:64],
             "flipped": raw[:32] + bytes(b ^ 0xFF for b in raw[32:])}
    plain = tmp_path / "plain.tar"              # cut inside .INSTALL's own data
    subprocess.run(["bsdtar", "-cf", str(plain), f"@{good}"], check=True, timeout=60)
    data = plain.read_bytes()
    cases["cut-in-install"] = data[:data.index(b"pre_install()") + 10]
    for label, content in cases.items():
        path = tmp_path / f"{label}.pkg.tar.xz"
        path.write_bytes(content)
        assert read(path) is None, label
    assert read(tmp_path / "missing.pkg.tar.zst") is None
    assert read(tmp_path) is None               # a directory
    fifo = tmp_path / "fifo.pkg.tar.zst"
    os.mkfifo(fifo)
    assert read(fifo) is None                   # not opened for reading: no writer, no wait


def test_a_cut_after_the_install_still_finds_it(tmp_path):
    """The search stops at the first match, as libalpm's does: what follows is not read (the
    worker only looks for the .INSTALL of a package libalpm has read whole)."""
    path = build_package(PkgSpec(name="cut", install=INSTALL,
                                 files=(PkgFile(path="usr/share/c",
                                                content=os.urandom(4 << 20)),)), tmp_path)
    path.write_bytes(path.read_bytes()[:1 << 20])
    assert read(path) == INSTALL.encode()


def test_an_mtree_file_list_is_no_script(tmp_path):
    """format_all reads text as an mtree file list whose entries' contents are files of the
    reading system (relative to the current directory without contents=; libarchive 3.6
    opens them only with its checkfs option): refused whatever the version does."""
    secret = tmp_path / "secret"
    secret.write_text("post_install() { echo host file; }\n")
    for text in (f"#mtree\n.INSTALL type=file contents={secret}\n", ".INSTALL\n"):
        path = tmp_path / "list.pkg.tar.zst"
        path.write_text(text)
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            (tmp_path / ".INSTALL").write_text("post_install() { echo cwd file; }\n")
            assert read(path) is None, text
        finally:
            os.chdir(cwd)


def test_archive_scriptlet_finds_the_cached_or_local_file(tmp_path):
    """alpm._archive_scriptlet: the package file in a cache directory, else the -U path."""
    path = build_package(PkgSpec(name="cached", install=INSTALL), tmp_path / "cache")

    class Handle:
        cachedirs = [str(tmp_path / "elsewhere") + "/", str(tmp_path / "cache") + "/"]

    class Pkg:
        filename = path.name
    assert alpm._archive_scriptlet(Handle, Pkg) == INSTALL
    Pkg.filename = str(path)
    Handle.cachedirs = []
    assert alpm._archive_scriptlet(Handle, Pkg) == INSTALL
    Pkg.filename = "absent-1.0-1-any.pkg.tar.zst"
    assert alpm._archive_scriptlet(Handle, Pkg) is None


# ---------------------------------------------------------------------------------------------
# transactions, compared with stock pacman

@pytest.fixture
def twins(tmp_path):
    return (new_root(tmp_path, "stock", "file:///nonexistent"),
            new_root(tmp_path, "sandboxed", "file:///nonexistent"))


@root_only
def test_a_late_install_runs_as_stock_pacman_runs_it(tmp_path, twins):
    a, b = twins
    path = pack(tmp_path / "late-1.0-1-any.pkg.tar.zst",
                {"usr/share/late/blob": os.urandom(4 << 20), ".INSTALL": INSTALL.encode()},
                [".PKGINFO", "usr", ".INSTALL"], name="late")
    stock(a, "-U", str(path))
    sandboxed(b, "-U", str(path))
    assert b.calls() == ["pre_install 1.0-1", "post_install 1.0-1"]
    assert_twins(a, b)


@root_only
@pytest.mark.parametrize("target", ["missing", "usr/share/odd/install"])
def test_a_symlinked_install_runs_nothing_as_in_stock_pacman(tmp_path, twins, target):
    """Targets that reach nothing from {root}/tmp/alpm_XXXXXX nor from the local database
    entry: stock pacman runs nothing, and neither does pkgsandbox."""
    a, b = twins
    path = pack(tmp_path / "odd-1.0-1-any.pkg.tar.zst",
                {"usr/share/odd/install": INSTALL.encode(), ".INSTALL": ("symlink", target)},
                [".PKGINFO", ".INSTALL", "usr"])
    stock(a, "-U", str(path))
    sandboxed(b, "-U", str(path))
    assert a.calls() == b.calls() == []
    assert_twins(a, b)


_INSTRUMENTED = """
import os, sys
sys.path.insert(0, os.getcwd())
from pkgsandbox import alpm, cli
original = alpm._scriptlet_for
def traced(handle, trans, item):
    os.write(2, ("scriptlet lookup: %s\\n" % item["name"]).encode())
    return original(handle, trans, item)
alpm._scriptlet_for = traced
raise SystemExit(cli.main(sys.argv[1:]))
"""


@root_only
def test_noscriptlet_looks_up_no_install(tmp_path):
    """With --noscriptlet the worker reads no .INSTALL (nor the installed `install` on -R):
    the lookup is traced from a wrapper around alpm._scriptlet_for, which the forked worker
    inherits."""
    repo = tmp_path / "repo"
    build_repo([PkgSpec(name="one", install=INSTALL), PkgSpec(name="two", install=INSTALL)],
               repo)
    root = new_root(tmp_path, "root", f"file://{repo}")

    def run(*op):
        proc = subprocess.run([sys.executable, "-c", _INSTRUMENTED, *op, *root.args()],
                              capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return [line for line in proc.stderr.splitlines() if "scriptlet lookup" in line]

    files = [str(p) for p in sorted(repo.glob("*.pkg.tar.zst"))]
    assert run("-U", "--noscriptlet", *files) == []
    assert root.calls() == []
    assert run("-R", "--noscriptlet", "one") == []
    assert run("-U", *files) == ["scriptlet lookup: one", "scriptlet lookup: two"]
    assert root.calls() == ["pre_install 1.0-1", "post_install 1.0-1",
                            "pre_upgrade 1.0-1 1.0-1", "post_upgrade 1.0-1 1.0-1"]
