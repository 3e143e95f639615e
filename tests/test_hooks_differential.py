"""Differential test: every real alpm hook of the corpus, with its Exec replaced by a recorder,
run by stock pacman (real libalpm) and by pkgsandbox over the same transactions on twin roots.
Both must run the same hooks, in the same order, with the same stdin (NeedsTargets).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pkgsandbox import hooks
from pkgsandbox.repobuild import PkgFile, PkgSpec, build_repo
from tests.support.twin import new_root, query, sandboxed, stock

CORPUS = Path(__file__).resolve().parents[2] / "shared/corpus/hooks"
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="transactions need root"),
              pytest.mark.skipif(not CORPUS.is_dir(), reason="hook corpus not present")]


def recorded_hooks() -> dict[str, str]:
    """name -> hook text with Exec replaced by a recorder; Depends and AbortOnFail dropped so
    that trigger matching, order and stdin are what is compared."""
    out = {}
    for f in sorted(CORPUS.glob("*.hook")):
        text = f.read_text(errors="replace")
        try:
            hooks.parse(str(f), text)
        except hooks.HookError:
            continue                      # the corpus' non-hooks (mkinitcpio install hooks...)
        name = f.stem
        lines = []
        for line in text.splitlines():
            key = line.split("=", 1)[0].strip()
            if key in ("Exec", "Depends", "AbortOnFail"):
                continue
            lines.append(line)
        lines.append(f"Exec = /bin/sh -c 'echo \"== {name}\" >> /var/log/hooks; "
                     f"cat >> /var/log/hooks'")
        out[name] = "\n".join(lines) + "\n"
    return out


def files(*paths: str) -> tuple[PkgFile, ...]:
    return tuple(PkgFile(path=p, content=f"{p}\n".encode()) for p in paths)


V1 = [
    PkgSpec(name="linux", version="6.1-1", files=files(
        "usr/lib/modules/6.1.0-arch1/vmlinuz", "usr/lib/modules/6.1.0-arch1/pkgbase",
        "usr/lib/modules/6.1.0-arch1/kernel/foo.ko")),
    PkgSpec(name="glib2", version="2.0-1", files=files(
        "usr/lib/libglib-2.0.so.0", "usr/share/glib-2.0/schemas/org.gtk.Settings.gschema.xml",
        "usr/lib/gio/modules/libgiofam.so", "usr/bin/gio-querymodules",
        "usr/bin/glib-compile-schemas")),
    PkgSpec(name="fontconfig", version="2.14-1", files=files(
        "usr/share/fonts/TTF/DejaVuSans.ttf", "etc/fonts/conf.d/10-hinting.conf",
        "usr/bin/fc-cache")),
    PkgSpec(name="systemd", version="254-1", files=files(
        "usr/lib/systemd/system/foo.service", "usr/lib/sysusers.d/foo.conf",
        "usr/lib/tmpfiles.d/foo.conf", "usr/lib/udev/hwdb.d/60-foo.hwdb",
        "usr/lib/udev/rules.d/60-foo.rules", "usr/lib/binfmt.d/foo.conf",
        "usr/lib/sysctl.d/50-foo.conf", "usr/lib/systemd/user/bar.service",
        "usr/bin/systemctl", "etc/systemd/system/baz.service")),
    PkgSpec(name="desktop-stuff", version="1-1", files=files(
        "usr/share/applications/foo.desktop", "usr/share/mime/packages/foo.xml",
        "usr/share/icons/hicolor/48x48/apps/foo.png", "usr/share/info/foo.info.gz",
        "usr/share/info/dir", "usr/lib/gdk-pixbuf-2.0/2.10.0/loaders/libfoo.so",
        "usr/lib/gtk-3.0/3.0.0/immodules/im-foo.so", "usr/share/xml/docbook/catalog.xml",
        "usr/lib/libfoo.so.1", "etc/ld.so.conf.d/foo.conf", "usr/share/vim/vimfiles/doc/x.txt",
        "usr/share/texmf-dist/tex/foo.sty", "usr/share/dbus-1/system.d/foo.conf")),
    PkgSpec(name="plain", version="1-1", files=files("usr/share/doc/plain/README")),
]


def v2() -> list[PkgSpec]:
    out = []
    for spec in V1:
        kept = spec.files[1:] if len(spec.files) > 1 else spec.files  # one file removed
        extra = files(f"usr/share/doc/{spec.name}/NEW")
        out.append(PkgSpec(name=spec.name, version=spec.version.replace("-1", "-2"),
                           files=kept + extra))
    return out


@pytest.fixture
def setup(tmp_path):
    repo = tmp_path / "repo"
    build_repo(V1, repo)
    a = new_root(tmp_path, "stock", f"file://{repo}")
    b = new_root(tmp_path, "sandboxed", f"file://{repo}")
    texts = recorded_hooks()
    assert len(texts) > 100
    for root in (a, b):
        d = root.path / "usr/share/libalpm/hooks"
        d.mkdir(parents=True)
        for name, text in texts.items():
            (d / f"{name}.hook").write_text(text)
    return repo, a, b


def log_of(root) -> list[str]:
    f = root.path / "var/log/hooks"
    return f.read_text().splitlines() if f.exists() else []


def ran(lines: list[str]) -> list[str]:
    return [line[3:] for line in lines if line.startswith("== ")]


def test_same_hooks_same_order_same_stdin(setup):
    repo, a, b = setup
    names = [s.name for s in V1]
    steps = [("-Sy", *names[:3]), ("-S", *names[3:])]
    for step in steps:
        stock(a, *step)
        sandboxed(b, *step)
        assert log_of(a) == log_of(b), step
    build_repo(v2(), repo)
    stock(a, "-Syyu")
    sandboxed(b, "-Syyu")
    assert log_of(a) == log_of(b), "upgrade"
    stock(a, "-R", "desktop-stuff", "systemd")
    sandboxed(b, "-R", "desktop-stuff", "systemd")
    assert log_of(a) == log_of(b), "remove"
    assert query(a, "-Q").stdout == query(b, "-Q").stdout
    hooks_run = set(ran(log_of(b)))
    # The scenario is meant to hit many triggers, not a handful.
    assert len(hooks_run) >= 30, sorted(hooks_run)
    assert not re.search(r"error", "\n".join(log_of(b)))
