"""`pkgsandbox inspect`: hostile archives are flagged, real packages pass, limits hold, and the
parsing child really is confined.

- the pure analysis, entry by entry (no archive, no kernel);
- every archive of ../shared/corpus/evil/ (extractor test suites), each against a verdict
  written here by hand from the corpus README and the file's name, in bounded time;
- every real package of ../shared/corpus/pkgs/: ok, .PKGINFO and .INSTALL read;
- packages built with pkgsandbox.repobuild with one problem each, and a clean one;
- decompression bombs and the other limits;
- the domain of the parsing child, observed from inside it (EACCES for a write outside the
  scratch directory and for a TCP connect; the scratch write works);
- the CLI: exit codes 0 / 2 / 3, human and --json output.

Nothing here restricts the pytest process: every archive is parsed in a forked child.
"""
from __future__ import annotations

import errno
import io
import json
import shutil
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import pytest

from pkgsandbox import abi, enforce, landlock, profile, runner
from pkgsandbox.phases import inspect
from pkgsandbox.phases.inspect import Analyzer, Entry, Limits
from pkgsandbox.repobuild import PkgFile, PkgSpec, build_package

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared/corpus"
EVIL = CORPUS / "evil"
PKGS = CORPUS / "pkgs"
KERNEL = landlock.probe()
LIB = profile.Library(include_system=False)
#: Bound on one archive of the corpus (they are all small; most take a few milliseconds).
PER_ARCHIVE_SECONDS = 20

needs_corpus = pytest.mark.skipif(not EVIL.is_dir(), reason="shared corpus not present")
needs_landlock = pytest.mark.skipif(KERNEL.abi < 4, reason=f"needs Landlock ABI >= 4 for TCP "
                                    f"rules (kernel: {KERNEL.abi}, {KERNEL.state})")


def run(path, limits: Limits = inspect.DEFAULT_LIMITS) -> inspect.Report:
    return inspect.inspect_file(str(path), library=LIB, cap=None, compat=None, limits=limits)


def kinds(report, severity=None) -> set[str]:
    return {f.kind for f in report.findings if severity in (None, f.severity)}


def triples(report) -> set[tuple[str, str, str]]:
    return {(f.severity, f.kind, f.entry) for f in report.findings}


# ---------------------------------------------------------------------------------------------
# 1. The analysis, entry by entry (pure).

def analyze(*entries: Entry, limits: Limits = inspect.DEFAULT_LIMITS) -> Analyzer:
    a = Analyzer(limits)
    for e in entries:
        a.entry(e)
    a.finish()
    return a


def found(a: Analyzer) -> set[tuple[str, str, str]]:
    """(severity, kind, entry) of every finding but the ever-present missing .PKGINFO."""
    return {(f.severity, f.kind, f.entry) for f in a.findings if f.kind != "pkginfo-missing"}


def F(path, **kw) -> Entry:
    return Entry(path=path.encode() if isinstance(path, str) else path, type=kw.pop("type", "f"),
                 **kw)


def D(path, **kw) -> Entry:
    return F(path, type="d", **{"mode": 0o755, **kw})


def L(path, target, **kw) -> Entry:
    return F(path, type="l", symlink=target.encode(), **{"mode": 0o777, **kw})


def H(path, target, **kw) -> Entry:
    return F(path, hardlink=target.encode(), **kw)


@pytest.mark.parametrize("entries,expected", [
    ([F("/tmp/moo")], {("hostile", "absolute-path", "/tmp/moo")}),
    ([F("../moo")], {("hostile", "dotdot", "../moo")}),
    ([F("a/../b")], {("hostile", "dotdot", "a/../b")}),
    # a chain of the archive's own symlinks: par -> cur/.. with cur -> . climbs above /
    ([L("cur", "."), L("par", "cur/.."), F("par/moo")],
     {("hostile", "symlink-escape", "par"), ("hostile", "through-symlink", "par/moo")}),
    # a symlink created through a symlinked parent, then used
    ([L("cur", "."), L("cur/par", ".."), F("par/moo")],
     {("hostile", "through-symlink", "cur/par"), ("hostile", "symlink-escape", "cur/par"),
      ("hostile", "through-symlink", "par/moo")}),
    ([D("usr/"), L("usr/x", "../../etc")], {("hostile", "symlink-escape", "usr/x")}),
    ([L("usr/lib/x", "/etc/shadow")], {("hostile", "symlink-sensitive", "usr/lib/x")}),
    ([L("usr/lib/x", "/tmp/evil")], {("hostile", "symlink-sensitive", "usr/lib/x")}),
    ([L("usr/lib/x", "/mnt/evil")], {("hostile", "symlink-outside", "usr/lib/x")}),
    ([L("usr/bin/vi", "/usr/bin/vim")], {("info", "symlink-absolute", "usr/bin/vi")}),
    ([L("usr/bin/vi", "vim")], set()),
    ([L("etc/mtab", "../proc/self/mounts")], set()),
    ([F("a"), F("b"), H("c", "a")], set()),
    ([H("c", "etc/shadow")], {("hostile", "hardlink-missing", "c")}),
    ([F("a"), H("c", "../a")], {("hostile", "hardlink-escape", "c")}),
    ([F("a"), H("c", "")], {("hostile", "hardlink-missing", "c")}),
    ([F("dev/null", type="c", mode=0o666)], {("hostile", "device", "dev/null")}),
    ([F("dev/sda", type="b")], {("hostile", "device", "dev/sda")}),
    ([F("run/fifo", type="p")], {("warning", "special-file", "run/fifo")}),
    ([F("usr/bin/su", mode=0o4755)], {("warning", "setuid", "usr/bin/su")}),
    ([F("usr/bin/su", mode=0o4757)], {("hostile", "setuid", "usr/bin/su")}),
    ([F("usr/share/su", mode=0o4755)], {("hostile", "setuid", "usr/share/su")}),
    ([F("usr/bin/wall", mode=0o2755)], {("warning", "setgid", "usr/bin/wall")}),
    ([D("var/games", mode=0o2775)], set()),
    ([F("usr/share/f", mode=0o666)], {("warning", "world-writable", "usr/share/f")}),
    ([F("usr/bin/ping", xattrs=(b"security.capability",))],
     {("warning", "capability", "usr/bin/ping")}),
    ([F("var/ping", xattrs=(b"security.capability",))], {("hostile", "capability", "var/ping")}),
    ([F("usr/f", xattrs=(b"user.note",))], set()),
    ([F("etc/ld.so.preload")], {("hostile", "sensitive-path", "etc/ld.so.preload")}),
    ([F("etc/pacman.conf")], {("hostile", "sensitive-path", "etc/pacman.conf")}),
    ([F("etc/sudoers")], {("hostile", "sensitive-path", "etc/sudoers")}),
    ([F("etc/sudoers.d/x")], {("hostile", "sensitive-path", "etc/sudoers.d/x")}),
    ([F("etc/pacman.d/mirrorlist")], {("hostile", "sensitive-path", "etc/pacman.d/mirrorlist")}),
    ([F("root/.bashrc")], {("hostile", "sensitive-path", "root/.bashrc")}),
    ([F("home/u/.profile")], {("hostile", "sensitive-path", "home/u/.profile")}),
    ([F("boot/vmlinuz")], {("hostile", "sensitive-path", "boot/vmlinuz")}),
    ([F("var/lib/pacman/local/x")], {("hostile", "sensitive-path", "var/lib/pacman/local/x")}),
    ([F("var/cache/pacman/pkg/x")], {("hostile", "sensitive-path", "var/cache/pacman/pkg/x")}),
    ([F("etc/pkgsandbox/profiles/base.yaml")],
     {("hostile", "sensitive-path", "etc/pkgsandbox/profiles/base.yaml")}),
    ([F("usr/share/pkgsandbox/x")], {("hostile", "sensitive-path", "usr/share/pkgsandbox/x")}),
    # the directories themselves may be shipped (filesystem, pacman do); replacing them may not
    ([D("etc/pacman.d/"), D("boot/"), D("root/")], set()),
    ([L("etc/pacman.d", "/tmp/x")], {("hostile", "sensitive-path", "etc/pacman.d"),
                                     ("hostile", "symlink-sensitive", "etc/pacman.d")}),
    ([L("etc", "/tmp/e")], {("hostile", "sensitive-path", "etc"),
                            ("hostile", "symlink-sensitive", "etc")}),
    # through an innocent-looking symlink into a sensitive place
    ([L("usr/share/x", "../../etc/pacman.d"), F("usr/share/x/evil.conf")],
     {("hostile", "symlink-sensitive", "usr/share/x"),
      ("hostile", "through-symlink", "usr/share/x/evil.conf"),
      ("hostile", "sensitive-path", "usr/share/x/evil.conf")}),
    ([F("a\nb")], {("hostile", "control-char", "a\\x0ab")}),
    ([F(b"a\xffb")], {("warning", "not-utf8", "a\\xffb")}),
    ([F("a\u202eb")], {("warning", "unusual-char", "a\\u202eb")}),
    ([F("..\\..\\x")], {("warning", "backslash", "..\\\\..\\\\x"),
                        ("info", "not-installed", "..\\\\..\\\\x")}),
    ([F("x" * 256)], {("warning", "long-name", "x" * 256)}),
    ([L("moo", "/tmp/moo"), F("moo")], {("hostile", "symlink-sensitive", "moo"),
                                        ("hostile", "duplicate", "moo")}),
    ([D("d/"), L("d", "/usr")], {("hostile", "duplicate", "d"),
                                 ("info", "symlink-absolute", "d")}),
    ([F("a"), F("a")], {("warning", "duplicate", "a")}),
    ([D("a/"), D("a/")], {("warning", "duplicate", "a/")}),
    ([F("a"), F("a/b")], {("warning", "type-conflict", "a/b")}),
    ([F("a"), D("a/")], {("warning", "type-conflict", "a/")}),
    ([F("a", size_set=False)], {("warning", "size-unset", "a")}),
    ([F("a", size=-1)], {("warning", "negative-size", "a")}),
    ([F(""), D("")], {("warning", "empty-name", "")}),
    ([F(".hidden")], {("info", "not-installed", ".hidden")}),
    ([F("usr/a", uid=1000), F("usr/b", gid=5)], {("info", "owner", "")}),
], ids=lambda v: None)
def test_analysis(entries, expected):
    assert found(analyze(*entries)) == expected


def test_verdicts():
    assert inspect.verdict_for(analyze(F("usr/bin/x")).findings) == "ok"   # a warning only
    assert inspect.verdict_for(analyze(F("/x"), F("y", size=-1)).findings) == "hostile"
    assert inspect.verdict_for(analyze(F("y", size=-1)).findings) == "invalid"
    assert inspect.verdict_for(analyze().findings) == "invalid"             # no entries


def test_limits_in_the_analysis():
    small = Limits(entries=3, total_bytes=100, path_bytes=10)
    assert ("warning", "limit", "") in found(analyze(*[F(f"f{i}") for i in range(5)],
                                                     limits=small))
    a = analyze(F("a", size=60), F("b", size=60), F("c"), limits=small)
    assert ("warning", "limit", "b") in found(a) and a.stopped
    assert ("warning", "limit", "x" * 11) in found(analyze(F("x" * 11), limits=small))


def test_finding_caps_never_hide_the_verdict():
    limits = Limits(findings=2, findings_per_kind=2)
    a = analyze(*[F(f"w{i}", mode=0o666) for i in range(20)], F("/abs"), limits=limits)
    assert inspect.verdict_for(a.findings) == "hostile"
    assert len([f for f in a.findings if f.kind == "world-writable"]) == 2
    assert a.findings[-1].kind == "findings-truncated"
    a = analyze(*[F(f"w{i}", mode=0o666) for i in range(20)], F("n", size=-1), limits=limits)
    assert inspect.verdict_for(a.findings) == "invalid"


def test_show_is_one_unambiguous_line():
    assert inspect.show(b"a\nb\x00c") == "a\\x0ab\\x00c"
    assert inspect.show(b"\xff\\") == "\\xff\\\\"
    assert inspect.show("é ok") == "é ok"
    assert inspect.show(b"x" * 1000).endswith("...(1000 characters)")


PKGINFO = b"""# Generated by makepkg
pkgname = hello
pkgbase = hello
pkgver = 1:2.0-3
pkgdesc = says hello
size = 100
arch = x86_64
depend = glibc
depend = bash
backup = etc/hello.conf
"""


def test_pkginfo_parsed():
    info, findings = inspect.parse_pkginfo(PKGINFO)
    assert findings == []
    assert info["name"] == "hello" and info["version"] == "1:2.0-3"
    assert info["depends"] == ["glibc", "bash"] and info["backup"] == ["etc/hello.conf"]


@pytest.mark.parametrize("data,severity,kind", [
    (b"pkgver = 1-1\n", "warning", "pkginfo-invalid"),
    (b"pkgname = a\n", "warning", "pkginfo-invalid"),
    (b"pkgname = \xff\npkgver = 1-1\n", "warning", "pkginfo-invalid"),
    (b"pkgname = ../../etc\npkgver = 1-1\n", "hostile", "pkginfo-path"),
    (b"pkgname = a\npkgver = 1-1/../../x\n", "hostile", "pkginfo-path"),
    (b"pkgname = a\x1b\npkgver = 1-1\n", "hostile", "pkginfo-control"),
    (b"pkgname = a\npkgver = 1-1\nbackup = /etc/shadow\n", "hostile", "pkginfo-path"),
    (b"pkgname = a\npkgver = 1-1\nbackup = ../x\n", "hostile", "pkginfo-path"),
    (b"pkgname = a b\npkgver = 1-1\n", "warning", "pkginfo-field"),
    (b"pkgname = a\npkgver = 1\n", "warning", "pkginfo-field"),
    (b"pkgname = a\npkgver = 1-1\npkgdesc = \x1b[2J\n", "warning", "pkginfo-field"),
    (b"pkgname = a\npkgver = 1-1\nno equals sign\n", "warning", "pkginfo-syntax"),
])
def test_pkginfo_problems(data, severity, kind):
    _, findings = inspect.parse_pkginfo(data)
    assert (severity, kind) in {(f.severity, f.kind) for f in findings}, findings


def test_install_functions():
    script = ("pre_install() {\n  :\n}\nfunction post_upgrade {\n :\n}\n"
              "post_remove () { :; }\n# pre_remove() is only mentioned\necho pre_upgrade\n")
    functions, findings = inspect.parse_install(script.encode())
    assert functions == ("pre_install", "post_upgrade", "post_remove")
    assert findings[0].kind == "install"


def test_mtree_parsed():
    text = (b"#mtree\n/set type=file uid=0 gid=0 mode=644\n./.PKGINFO time=1 size=2\n"
            b"./usr time=1 mode=755 type=dir\n./usr/a\\040b time=1\n"
            b"./usr/l type=link link=a\n")
    assert inspect.parse_mtree(text) == {b".PKGINFO": "f", b"usr": "d", b"usr/a b": "f",
                                         b"usr/l": "l"}
    assert inspect.parse_mtree(b"#mtree\n") is None
    gz = zlib.compressobj(wbits=31)
    packed = gz.compress(text) + gz.flush()
    assert inspect._mtree_text(packed, 1 << 20) == (text, "")
    assert "larger" in inspect._mtree_text(packed, 10)[1]


def test_malformed_answers_from_the_child_are_not_believed():
    report = inspect._from_child("x", {"findings": [{"severity": "fine", "kind": "ok"}]}, None)
    assert report.verdict == "invalid" and report.findings[0].kind == "parser-crash"
    report = inspect._from_child("x", {"findings": [], "entries": -1, "bytes": 0}, None)
    assert report.verdict == "invalid"
    report = inspect._from_child("x", {"findings": [], "entries": 1, "bytes": 0,
                                       "pkginfo": {"name": "a\nb"},
                                       "install_functions": ["rm_rf"]}, None)
    assert report.verdict == "ok" and report.pkginfo == {"name": "a?b"}
    assert report.install_functions == ()


# ---------------------------------------------------------------------------------------------
# 2. The hostile corpus: every archive, against a verdict written by hand.

#: Hostile archives (README "what they attack") and the finding kinds each must produce.
HOSTILE = {
    "jwilk-path-traversal/absolute1.tar": {"absolute-path"},
    "jwilk-path-traversal/absolute2.tar": {"absolute-path"},
    "jwilk-path-traversal/relative0.tar": {"dotdot"},
    "jwilk-path-traversal/relative2.tar": {"dotdot"},
    "jwilk-path-traversal/symlink.tar": {"symlink-sensitive", "duplicate"},
    "jwilk-path-traversal/dirsymlink.tar": {"symlink-sensitive", "through-symlink"},
    "jwilk-path-traversal/dirsymlink2a.tar": {"symlink-escape", "through-symlink"},
    "jwilk-path-traversal/dirsymlink2b.tar": {"symlink-escape", "through-symlink"},
    "snyk-zip-slip/archives/zip-slip.tar": {"dotdot"},
    "snyk-zip-slip/archives/zip-slip.zip": {"dotdot", "format"},
    # the same names with backslashes in a zip: libarchive's zip reader turns them into '/'
    "snyk-zip-slip/archives/zip-slip-win.zip": {"dotdot", "format"},
    "libarchive/tar/test/test_leading_slash.tar": {"absolute-path", "hardlink-escape"},
    "libarchive/tar/test/test_patterns_2.tar": {"absolute-path"},
    "libarchive/tar/test/test_patterns_3.tar": {"absolute-path"},
    "libarchive/tar/test/test_patterns_4.tar": {"absolute-path", "dotdot", "backslash"},
    "libarchive/unzip/test/test_symlink_dotdot.zip": {"symlink-escape", "format"},
    "node-tar/test/dir-normalization.tar": {"symlink-outside"},
    "node-tar/test/fixtures/tars/links-invalid.tar": {"hardlink-missing"},
    "go-archive-tar/archive/tar/testdata/hdr-only.tar": {"device", "special-file", "duplicate"},
    "python-tarfile/tests/archivetestdata/testtar.tar": {"device", "special-file", "not-utf8"},
}

#: Malformed, truncated or oversized archives, and the finding kind that makes each invalid.
INVALID = {
    # not recognised at all (fuzzer crashers, negative sizes, bad headers)
    "go-archive-tar/archive/tar/testdata/issue10968.tar": "archive-error",
    "go-archive-tar/archive/tar/testdata/issue11169.tar": "archive-error",
    "go-archive-tar/archive/tar/testdata/issue12435.tar": "archive-error",
    "go-archive-tar/archive/tar/testdata/neg-size.tar": "archive-error",
    "go-archive-tar/archive/tar/testdata/pax-path-hdr.tar": "archive-error",
    "go-archive-tar/archive/tar/testdata/pax-bad-hdr-large.tar.bz2": "archive-error",
    "libarchive/libarchive/test/test_read_format_tar_acl_oob_read.tar": "archive-error",
    "libarchive/libarchive/test/test_read_format_tar_invalid_pax_size.tar": "archive-error",
    "libarchive/libarchive/test/test_read_format_tar_pax_g_large.tar": "archive-error",
    "python-tarfile/tests/archivetestdata/recursion.tar": "archive-error",
    # a GNU volume header with a negative size and nothing else
    "libarchive/libarchive/test/test_read_format_tar_V_negative_size.tar": "empty-archive",
    # headers claiming 16 GiB bodies that are not there
    "go-archive-tar/archive/tar/testdata/writer-big.tar": "truncated",
    "go-archive-tar/archive/tar/testdata/writer-big-long.tar": "truncated",
    # sparse files of 60 GB: over the uncompressed-size limit
    "go-archive-tar/archive/tar/testdata/gnu-sparse-big.tar": "limit",
    "go-archive-tar/archive/tar/testdata/pax-sparse-big.tar": "limit",
    # a 444 749-byte name
    "node-tar/test/fixtures/excessively-deep.tar": "limit",
    # entries without a name
    "libarchive/libarchive/test/test_read_format_tar_empty_filename.tar": "empty-name",
    "tar-rs/tests/archives/empty_filename.tar": "empty-name",
    "node-tar/test/fixtures/tars/path-missing.tar": "empty-name",
}

#: Benign for an installation: regular files, directories, links staying inside, odd but
#: harmless encodings. Each is "ok" (with the warning that it is not a package at all).
OK = [
    # ordinary tar variants and compressions
    "go-archive-tar/archive/tar/testdata/file-and-dir.tar",
    "go-archive-tar/archive/tar/testdata/gnu.tar",
    "go-archive-tar/archive/tar/testdata/gnu-utf8.tar",
    "go-archive-tar/archive/tar/testdata/gnu-long-nul.tar",
    "go-archive-tar/archive/tar/testdata/gnu-incremental.tar",
    "go-archive-tar/archive/tar/testdata/nil-uid.tar",
    "go-archive-tar/archive/tar/testdata/invalid-go17.tar",
    "go-archive-tar/archive/tar/testdata/pax.tar",
    "go-archive-tar/archive/tar/testdata/pax-records.tar",
    "go-archive-tar/archive/tar/testdata/pax-global-records.tar",
    "go-archive-tar/archive/tar/testdata/pax-pos-size-file.tar",
    "go-archive-tar/archive/tar/testdata/pax-bad-mtime-file.tar",
    "go-archive-tar/archive/tar/testdata/star.tar",
    "go-archive-tar/archive/tar/testdata/trailing-slash.tar",
    "go-archive-tar/archive/tar/testdata/ustar.tar",
    "go-archive-tar/archive/tar/testdata/ustar-file-reg.tar",
    "go-archive-tar/archive/tar/testdata/ustar-file-devs.tar",  # device numbers on a file
    "go-archive-tar/archive/tar/testdata/v7.tar",
    "go-archive-tar/archive/tar/testdata/writer.tar",
    "go-archive-tar/archive/tar/testdata/hardlink.tar",         # link to an earlier file
    "go-archive-tar/archive/tar/testdata/gnu-multi-hdrs.tar",
    "go-archive-tar/tar/asm/testdata/extranils.tar.gz",
    "go-archive-tar/tar/asm/testdata/notenoughnils.tar.gz",
    "go-archive-tar/tar/asm/testdata/fatlonglink.tar.gz",
    "go-archive-tar/tar/asm/testdata/longlink.tar.gz",
    "go-archive-tar/tar/asm/testdata/t.tar.gz",
    "libarchive/libarchive/test/test_compat_gtar_1.tar",
    "libarchive/libarchive/test/test_compat_tar_directory_1.tar",
    "libarchive/libarchive/test/test_compat_tar_hardlink_1.tar",
    "libarchive/libarchive/test/test_compat_zstd_1.tar.zst",
    "libarchive/libarchive/test/test_compat_zstd_2.tar.zst",
    "libarchive/libarchive/test/test_read_format_tar_concatenated.tar",
    "libarchive/libarchive/test/test_read_format_tar_pax_negative_time.tar",
    "libarchive/libarchive/test/test_read_format_tar_timestamp_overflow.tar",
    "libarchive/tar/test/test_extract.tar.gz",
    "libarchive/tar/test/test_extract.tar.xz",
    "libarchive/tar/test/test_extract.tar.zst",
    "node-tar/test/fixtures/long-linkname.tar",
    "node-tar/test/fixtures/parses.tar",
    "node-tar/test/fixtures/sync-gzip-fail.tgz",
    "node-tar/test/fixtures/tars/bad-cksum.tar",
    "node-tar/test/fixtures/tars/body-byte-counts.tar",
    "node-tar/test/fixtures/tars/dir.tar",
    "node-tar/test/fixtures/tars/emptypax.tar",
    "node-tar/test/fixtures/tars/file.tar",
    "node-tar/test/fixtures/tars/global-header.tar",
    "node-tar/test/fixtures/tars/links.tar",
    "node-tar/test/fixtures/tars/links-strip.tar",
    "node-tar/test/fixtures/tars/long-paths.tar",
    "node-tar/test/fixtures/tars/long-pax.tar",
    "node-tar/test/fixtures/tars/next-file-has-long.tar",
    "node-tar/test/fixtures/tars/null-byte.tar",
    "node-tar/test/fixtures/tars/trailing-slash-corner-case.tar",
    "node-tar/test/fixtures/tars/utf8.tar",
    "python-tarfile/tests/archivetestdata/testtar.tar.xz",
    "tar-rs/tests/archives/biguid_gnu.tar",
    "tar-rs/tests/archives/biguid_pax.tar",
    "tar-rs/tests/archives/directory.tar",
    "tar-rs/tests/archives/file_times.tar",
    "tar-rs/tests/archives/link.tar",
    "tar-rs/tests/archives/pax.tar",
    "tar-rs/tests/archives/pax2.tar",
    "tar-rs/tests/archives/pax_size.tar",
    "tar-rs/tests/archives/reading_files.tar",
    "tar-rs/tests/archives/simple.tar",
    "tar-rs/tests/archives/simple_missing_last_header.tar",   # no end blocks: a clean EOF
    "tar-rs/tests/archives/sparse.tar",
    "tar-rs/tests/archives/sparse-1.tar",
    "tar-rs/tests/archives/sparse-large.tar",
    "go-archive-tar/archive/tar/testdata/gnu-nil-sparse-data.tar",
    "go-archive-tar/archive/tar/testdata/gnu-nil-sparse-hole.tar",
    "go-archive-tar/archive/tar/testdata/pax-nil-sparse-data.tar",
    "go-archive-tar/archive/tar/testdata/pax-nil-sparse-hole.tar",
    "go-archive-tar/archive/tar/testdata/sparse-formats.tar",
    "libarchive/libarchive/test/test_read_format_gtar_sparse_reuse.tar",
    # names: not UTF-8 (a warning), Windows separators (literal letters on Linux)
    "go-archive-tar/archive/tar/testdata/gnu-not-utf8.tar",
    "go-archive-tar/tar/asm/testdata/iso-8859.tar.gz",
    "snyk-zip-slip/archives/zip-slip-win.tar",
    # a NUL inside a pax path: libarchive cuts the name there, and pacman uses the same cut name
    "go-archive-tar/archive/tar/testdata/pax-nul-path.tar",
    # malformed pax records libarchive ignores (a warning), SELinux labels (a warning)
    "go-archive-tar/archive/tar/testdata/pax-bad-hdr-file.tar",
    "go-archive-tar/archive/tar/testdata/pax-multi-hdrs.tar",
    "go-archive-tar/archive/tar/testdata/pax-nul-xattrs.tar",
    "libarchive/libarchive/test/test_read_pax_empty_val_no_nl.tar",
    "go-archive-tar/archive/tar/testdata/xattrs.tar",
    "libarchive/libarchive/test/test_read_pax_xattr_rht_security_selinux.tar",
    "tar-rs/tests/archives/xattrs.tar",
    # world-writable files and directories: a warning, not an attack on the system
    "libarchive/libarchive/test/test_compat_gtar_2.tar",
    "tar-rs/tests/archives/7z_long_path.tar",
    "tar-rs/tests/archives/spaces.tar",
    # duplicate directory entries
    "tar-rs/tests/archives/duplicate_dirs.tar",
]

EXPECTED = {**{k: "hostile" for k in HOSTILE}, **{k: "invalid" for k in INVALID},
            **{k: "ok" for k in OK}}


def corpus_files() -> list[str]:
    if not EVIL.is_dir():
        return []
    return sorted(str(p.relative_to(EVIL)) for p in EVIL.rglob("*")
                  if p.is_file() and not p.name.startswith("README"))


@needs_corpus
def test_every_corpus_archive_has_a_written_expectation():
    files = corpus_files()
    assert len(HOSTILE) + len(INVALID) + len(OK) == len(EXPECTED), "listed twice"
    assert sorted(EXPECTED) == files


@needs_corpus
@pytest.mark.parametrize("name", corpus_files())
def test_evil_corpus(name):
    start = time.monotonic()
    report = run(EVIL / name)
    elapsed = time.monotonic() - start
    assert elapsed < PER_ARCHIVE_SECONDS, f"{name}: {elapsed:.1f} s"
    expected = EXPECTED.get(name, "hostile or invalid")
    assert report.verdict == expected, [f.line() for f in report.findings]
    assert report.enforcement is not None and report.enforcement.landlock == (KERNEL.abi > 0)
    if name in HOSTILE:
        assert HOSTILE[name] <= kinds(report), [f.line() for f in report.findings]
    elif name in INVALID:
        assert INVALID[name] in kinds(report), [f.line() for f in report.findings]
    else:
        assert kinds(report, "hostile") == set()
        assert "pkginfo-missing" in kinds(report)          # none of them is a package


# ---------------------------------------------------------------------------------------------
# 3. Real packages.

def real_packages() -> list[Path]:
    return sorted(PKGS.rglob("*.pkg.tar.*")) if PKGS.is_dir() else []


#: Findings a real package may have without being suspicious.
EXPECTED_IN_REAL = {"install", "symlink-absolute", "owner"}


@needs_corpus
@pytest.mark.parametrize("path", real_packages(), ids=lambda p: p.name)
def test_real_package(path):
    report = run(path)
    assert report.verdict == "ok", [f.line() for f in report.findings]
    allowed = EXPECTED_IN_REAL | ({"mtree-missing"} if path.name ==
                                  "testpkg-1.0.0-1-any.pkg.tar.zst" else set())
    assert kinds(report) <= allowed, [f.line() for f in report.findings]
    name = report.pkginfo["name"]
    assert path.name.startswith(name + "-") or path.name.startswith(name + ".")
    if path.name.startswith(name + "-"):               # name-version-release-arch.pkg.tar.*
        assert path.name.startswith(f"{name}-{report.pkginfo['version']}-")
    assert report.entries > 0 and report.format.startswith(("POSIX", "GNU"))


@needs_corpus
@pytest.mark.parametrize("name,functions", [
    # read by hand with `bsdtar -xOf FILE .INSTALL`
    ("woof/x86_64/icecream-1.3.1-1-x86_64.pkg.tar.zst",
     ("post_install", "post_upgrade", "post_remove")),
    ("polaris/repo/polo-1.4.3-1-any.pkg.tar.zst", ("post_install", "post_upgrade")),
    ("woof/x86_64/mkinitcpio-openswap-0.1.0-3.1-any.pkg.tar.zst", ("post_install",)),
    ("woof/x86_64/cscroll-0.96.0-1-any.pkg.tar.zst", ()),
])
def test_real_install_functions(name, functions):
    report = run(PKGS / name)
    assert report.install_functions == functions
    assert ("install" in kinds(report)) == bool(functions)


@needs_corpus
def test_real_pkginfo_fields():
    report = run(PKGS / "woof/x86_64/icecream-1.3.1-1-x86_64.pkg.tar.zst")
    info = report.pkginfo
    assert (info["name"], info["version"], info["arch"]) == ("icecream", "1.3.1-1", "x86_64")
    assert info["backup"] == ["etc/icecream.conf"]
    assert "libarchive" in info["depends"]


# ---------------------------------------------------------------------------------------------
# 4. Packages built here, one problem each.

def build(tmp_path, name, files=(), **kw) -> Path:
    return build_package(PkgSpec(name=name, files=tuple(files), **kw), tmp_path / "out")


HELLO = PkgFile(path="usr/bin/hello", content=b"#!/bin/sh\necho hello\n", mode=0o755)


def test_built_clean_package_is_ok(tmp_path):
    path = build(tmp_path, "hello", [HELLO, PkgFile(path="usr/share/doc/hello/README",
                                                    content=b"hi\n")])
    report = run(path)
    assert report.verdict == "ok" and report.findings == ()
    assert report.pkginfo["name"] == "hello" and report.pkginfo["version"] == "1.0-1"
    assert report.install_functions == ()
    assert report.entries == 9          # .MTREE .PKGINFO usr/ usr/bin/ ... README
    assert report.bytes > len(HELLO.content) + 3


@pytest.mark.parametrize("files,expected,verdict", [
    ([PkgFile(path="usr/bin/suid", content=b"x", mode=0o4755)],
     {("warning", "setuid", "usr/bin/suid")}, "ok"),
    ([PkgFile(path="usr/share/suid", content=b"x", mode=0o4755)],
     {("hostile", "setuid", "usr/share/suid")}, "hostile"),
    ([PkgFile(path="etc/pacman.d/evil.conf", content=b"[options]\n")],
     {("hostile", "sensitive-path", "etc/pacman.d/evil.conf")}, "hostile"),
    ([PkgFile(path="usr/share/hello/shadow", symlink="/etc/shadow")],
     {("hostile", "symlink-sensitive", "usr/share/hello/shadow")}, "hostile"),
], ids=["setuid-usual", "setuid-unusual", "pacman.d", "symlink-shadow"])
def test_built_package_with_one_problem(tmp_path, files, expected, verdict):
    report = run(build(tmp_path, "hello", [HELLO, *files]))
    assert triples(report) == expected
    assert report.verdict == verdict


def test_built_package_install_functions(tmp_path):
    script = "pre_install() {\n  echo one\n}\n\npost_remove() {\n  echo two\n}\n"
    report = run(build(tmp_path, "hello", [HELLO], install=script))
    assert report.install_functions == ("pre_install", "post_remove")
    assert triples(report) == {("info", "install", ".INSTALL")}
    assert report.verdict == "ok"


def test_built_package_with_a_hostile_backup_entry(tmp_path):
    report = run(build(tmp_path, "hello", [HELLO], backup=("../../etc/shadow",)))
    assert triples(report) == {("hostile", "pkginfo-path", ".PKGINFO")}
    assert report.verdict == "hostile"


# ---------------------------------------------------------------------------------------------
# 5. Limits: bombs and the rest, in bounded time.

GIB = 1 << 30


@pytest.fixture(scope="module")
def zero_member():
    """One gzip member holding 1 GiB of zeros (about 1 MiB): concatenated members are one
    valid gzip stream, so N copies make an N GiB bomb cheaply."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(64 << 20)
    parts = [comp.compress(chunk) for _ in range(GIB // len(chunk))]
    return b"".join(parts) + comp.flush()


def gz(data: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()


def bomb(path: Path, member: bytes, gib: int) -> Path:
    """A complete tar.gz: one file `usr/share/zeros` of `gib` GiB of zeros."""
    info = tarfile.TarInfo("usr/share/zeros")
    info.size = gib * GIB
    with open(path, "wb") as f:
        f.write(gz(info.tobuf(format=tarfile.GNU_FORMAT)))
        for _ in range(gib):
            f.write(member)
        f.write(gz(bytes(1024)))
    return path


def test_bomb_over_the_size_limit_is_invalid_at_once(tmp_path, zero_member):
    path = bomb(tmp_path / "bomb.pkg.tar.gz", zero_member, 17)
    assert path.stat().st_size < 40 << 20 and inspect.MAX_TOTAL_BYTES < 17 * GIB
    start = time.monotonic()
    report = run(path)
    assert time.monotonic() - start < 10
    assert report.verdict == "invalid"
    assert ("warning", "limit", "usr/share/zeros") in triples(report)


def test_bomb_under_the_size_limit_is_killed_by_the_timeout(tmp_path, zero_member):
    path = bomb(tmp_path / "slow.pkg.tar.gz", zero_member, 12)    # 12 GiB to inflate
    start = time.monotonic()
    report = run(path, Limits(timeout=1.0))
    elapsed = time.monotonic() - start
    assert report.verdict == "invalid", [f.line() for f in report.findings]
    assert report.findings[0].kind == "limit" and "longer than 1 s" in report.findings[0].detail
    assert elapsed < 5


@pytest.mark.skipif(not shutil.which("xz"), reason="xz not installed")
def test_memory_limit(tmp_path):
    """An xz stream whose decoder needs a 256 MiB window: refused under a 64 MiB budget."""
    tar = tar_of(tmp_path / "plain.tar", ["usr/share/f"], data=b"x" * 1000, mode="w")
    packed = tmp_path / "window.pkg.tar.xz"
    with open(tar, "rb") as src, open(packed, "wb") as dst:
        subprocess.run(["xz", "--lzma2=dict=256MiB", "-T1", "-c"], stdin=src, stdout=dst,
                       check=True, timeout=60)
    report = run(packed, Limits(memory=64 << 20))
    assert report.verdict == "invalid"
    assert kinds(report) == {"limit"}, [f.line() for f in report.findings]
    assert run(packed).verdict == "ok"


def tar_of(path: Path, names, *, data=b"", fmt=tarfile.PAX_FORMAT, mode="w:gz") -> Path:
    with tarfile.open(path, mode, format=fmt) as t:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def test_entry_count_limit(tmp_path):
    path = tar_of(tmp_path / "many.tar.gz", [f"usr/share/f{i}" for i in range(101)])
    report = run(path, Limits(entries=100))
    assert report.verdict == "invalid" and "limit" in kinds(report)
    assert run(path, Limits(entries=101)).verdict == "ok"


def test_path_length_limit(tmp_path):
    long = "usr/" + "/".join(["d" * 200] * 25)            # 5000 bytes, pax header
    report = run(tar_of(tmp_path / "long.tar.gz", [long]))
    assert report.verdict == "invalid"
    assert any(f.kind == "limit" and "longer than 4096" in f.detail for f in report.findings)


def test_metadata_size_limit(tmp_path):
    path = tar_of(tmp_path / "meta.tar.gz", [".PKGINFO"], data=b"pkgname = a\n" * 200)
    report = run(path, Limits(metadata_bytes=1000))
    assert report.verdict == "invalid"
    assert ("warning", "limit", ".PKGINFO") in triples(report)


def test_not_an_archive_and_empty_file(tmp_path):
    (tmp_path / "noise").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "empty").write_bytes(b"")
    report = run(tmp_path / "noise")
    assert report.verdict == "invalid" and kinds(report) == {"archive-error"}
    report = run(tmp_path / "empty")
    assert report.verdict == "invalid" and kinds(report) == {"empty-archive"}


def test_an_mtree_file_list_is_hostile(tmp_path):
    """libarchive's format_all (libalpm's too) reads an mtree file list as an archive whose
    entries' data come from the host: contents=/etc/shadow would be installed world-readable.
    Even a text file of plain words parses as mtree."""
    (tmp_path / "leak").write_text("#mtree\n.PKGINFO type=file contents=/tmp/x\n"
                                   "usr/share/leak type=file mode=0644 contents=/etc/shadow\n")
    report = run(tmp_path / "leak")
    assert report.verdict == "hostile"
    assert ("hostile", "format", "") in triples(report)
    assert report.format == "mtree"
    (tmp_path / "words").write_text("hello\n")
    assert run(tmp_path / "words").verdict == "hostile"


def test_truncated_package(tmp_path):
    path = build(tmp_path, "hello", [PkgFile(path="usr/share/big", content=os.urandom(300_000))])
    cut = tmp_path / "cut.pkg.tar.zst"
    cut.write_bytes(path.read_bytes()[:100_000])
    report = run(cut)
    assert report.verdict == "invalid" and kinds(report) & {"truncated", "archive-error"}


def crash(path, identity, limits, inherited):
    os.kill(os.getpid(), 11)


def test_a_parser_crash_is_reported_not_raised(tmp_path, monkeypatch):
    """If libarchive dies on an archive (a segfault, the kernel's kill), the archive is
    invalid, with one line saying so; the run goes on."""
    monkeypatch.setattr(inspect, "scan", crash)
    report = run(build(tmp_path, "hello", [HELLO]))
    assert report.verdict == "invalid"
    assert [f.kind for f in report.findings] == ["parser-crash"]
    assert report.findings[0].detail.startswith("the sandboxed parser died without an answer")
    assert "exit status 0" not in report.findings[0].detail


# ---------------------------------------------------------------------------------------------
# 6. The parsing child's domain, observed from inside it.

def probe(path, identity, outside, port, inherited):
    """Runs in the child, exactly as scan() starts: open the archive, drop root, then try."""
    fd = inspect.open_target(path, identity, inherited=inherited)
    os.close(fd)
    out = {"uid": os.getuid(), "groups": os.getgroups()}
    for name, action in (
            ("scratch_write", lambda: open("scratch-file", "w").write("x")),
            ("outside_write", lambda: open(os.path.join(outside, "x"), "w").write("x")),
            ("outside_read", lambda: open(os.path.join(outside, "readable")).read()),
            ("tcp_connect", lambda: socket.create_connection(("127.0.0.1", port), 2))):
        try:
            action()
            out[name] = "ok"
        except OSError as exc:
            out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
    return out


@pytest.fixture
def outside():
    """A directory anyone may write by its permissions (reachable through /tmp, 1777): a
    refusal there can only come from the domain."""
    path = Path(tempfile.mkdtemp(prefix="pkgsandbox-test-outside-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@needs_landlock
def test_the_domain_is_real(tmp_path, outside):
    target = build(tmp_path, "hello", [HELLO])
    outside.chmod(0o777)                    # the file permissions would allow anything here:
    (outside / "readable").write_text("x")  # a refusal can only come from the domain
    (outside / "readable").chmod(0o644)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    identity = inspect.nobody()
    if identity:
        os.chown(scratch, *identity)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        policy = inspect.policy_for(str(target), str(scratch), LIB)
        with enforce.prepare(policy) as prepared:
            result = runner.call(probe, str(target), identity, str(outside), port,
                                 inspect.address_space(), prepared=prepared, timeout=20,
                                 cwd=str(scratch))
    finally:
        listener.close()
    seen = result.value
    assert seen["scratch_write"] == "ok" and (scratch / "scratch-file").read_text() == "x"
    assert seen["outside_write"] == "EACCES"
    assert seen["outside_read"] == "EACCES"
    assert seen["tcp_connect"] == "EACCES"
    assert not (outside / "x").exists()
    if identity:
        assert seen["uid"] == identity[0] and seen["groups"] == []
    report = result.report
    assert report.landlock and "connect_tcp" in report.handled_net
    assert set(report.scopes) == {"abstract_unix_socket", "signal"}


def test_policy_writes_only_scratch(tmp_path):
    target = build(tmp_path, "hello", [HELLO])
    policy = inspect.policy_for(str(target), str(tmp_path), LIB)
    writes = {"write_file", "make_reg", "make_dir", "remove_file", "remove_dir", "make_sym",
              "make_char", "make_block", "make_fifo", "make_sock", "truncate", "refer"}
    writable = {g.path for g in policy.paths if g.rights & writes}
    assert writable <= {str(tmp_path), "/dev/null"}
    assert policy.ports == ()
    grant = policy.paths[-1]
    assert (grant.path, grant.rights, grant.origin) == (str(target), {"read_file"},
                                                         "inspect target")
    decision = enforce.decide(policy, kernel=KERNEL, cap=None)
    if KERNEL.abi >= 6:
        assert set(decision.scopes) == set(abi.SCOPES) & {"abstract_unix_socket", "signal"}


# ---------------------------------------------------------------------------------------------
# 7. The CLI.

def cli(*args, timeout=120):
    env = dict(os.environ)
    env.pop("PKGSANDBOX_ABI", None)
    return subprocess.run([sys.executable, "-m", "pkgsandbox", "inspect", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    clean = build_package(PkgSpec(name="hello", files=(HELLO,)), d)
    evil = build_package(PkgSpec(name="evil", files=(
        HELLO, PkgFile(path="etc/ld.so.preload", content=b"/usr/lib/evil.so\n"))), d)
    return clean, evil


def test_cli_clean_exit_0(pkgs):
    clean, _ = pkgs
    r = cli(clean)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{clean}: ok (0 findings)"
    assert lines[-1].startswith("enforcement: extract [")


def test_cli_hostile_exit_3_human(pkgs):
    clean, evil = pkgs
    r = cli(clean, evil)
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{clean}: ok (0 findings)"
    assert lines[1] == f"{evil}: hostile (1 finding)"
    assert lines[2].startswith("  hostile: sensitive-path: etc/ld.so.preload: ")


def test_cli_json(pkgs):
    clean, evil = pkgs
    r = cli("--json", clean, evil)
    assert r.returncode == 3, r.stderr
    data = json.loads(r.stdout)
    assert [d["verdict"] for d in data] == ["ok", "hostile"]
    assert set(data[0]) == {"file", "verdict", "findings", "pkginfo", "install_functions",
                            "entries", "bytes", "format", "enforcement"}
    assert data[0]["pkginfo"]["name"] == "hello" and data[1]["pkginfo"]["name"] == "evil"
    first = data[1]["findings"][0]
    assert (first["severity"], first["kind"], first["entry"]) == ("hostile", "sensitive-path",
                                                                  "etc/ld.so.preload")
    enforcement = data[0]["enforcement"]
    assert enforcement["phase"] == "extract" and enforcement["landlock"] == (KERNEL.abi > 0)


def test_cli_missing_file_exit_2(pkgs, tmp_path):
    clean, evil = pkgs
    missing = tmp_path / "nope.pkg.tar.zst"
    r = cli(clean, missing)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert errors == [f"pkgsandbox: error: {missing}: No such file or directory"]
    assert f"{missing}: invalid (1 finding)" in r.stdout.splitlines()
    assert cli(evil, missing).returncode == 3          # a hostile archive outranks bad input
    assert cli(tmp_path).returncode == 2               # a directory is not an archive
    r = cli("--json", missing)
    assert r.returncode == 2
    assert json.loads(r.stdout)[0]["findings"][0]["kind"] == "unreadable"


def test_cli_evil_corpus_in_one_run():
    if not EVIL.is_dir():
        pytest.skip("shared corpus not present")
    start = time.monotonic()
    r = cli("--json", *(EVIL / n for n in corpus_files()), timeout=600)
    assert r.returncode == 3
    verdicts = {str(Path(d["file"]).relative_to(EVIL)): d["verdict"] for d in
                json.loads(r.stdout)}
    assert verdicts == EXPECTED
    assert time.monotonic() - start < 120


def test_pending_mode_finds_the_newest_archive_in_the_cache(tmp_path):
    """The alpm hook's mode: names on stdin, archives from pacman.conf's CacheDir."""
    from pkgsandbox.repobuild import PkgFile, PkgSpec, build_package
    cache = tmp_path / "cache"
    build_package(PkgSpec(name="good-pkg", version="1.0-1",
                          files=(PkgFile(path="usr/share/x", content=b"x"),)), cache)
    build_package(PkgSpec(name="good-pkg", version="2.0-1",
                          files=(PkgFile(path="etc/pacman.d/evil", content=b"x"),)), cache)
    conf = tmp_path / "pacman.conf"
    conf.write_text(f"[options]\nCacheDir = {cache}\n")
    r = subprocess.run([sys.executable, "-m", "pkgsandbox", "inspect", "--pending", "--config",
                        str(conf)], input="good-pkg\nmissing-pkg\n", capture_output=True,
                       text=True, timeout=120)
    # the newest (2.0-1) is the hostile one: exit 3 aborts the transaction (AbortOnFail)
    assert r.returncode == 3, r.stderr
    assert "good-pkg-2.0-1-any" in r.stdout and "hostile" in r.stdout
    assert "missing-pkg: no archive in the cache" in r.stderr
