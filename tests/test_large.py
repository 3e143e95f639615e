"""A large transaction: 200 packages with -U, and with -Sy + -S from a file:// repository,
then -R of all of them, each compared with stock pacman on a twin root.

The packages form a dependency chain and a tree (plus a versioned and a virtual
dependency), half of them have a post_install, some a pre_remove/post_remove (each records its
package name in /var/log/calls, so the order of 100+ scriptlet runs is compared too), a few
ship many files, a symlink, an executable and directories shared with other packages.

Measured on the 2-CPU VM of docs/benchmarks.md: building the repository ~8 s (repo-add is
~6.5 s of it), each test ~5-7 s; the file ~20 s.
"""
from __future__ import annotations

import os
import time

import pytest

from pkgsandbox.repobuild import PkgFile, PkgSpec, build_repo
from tests.support.twin import assert_twins, new_root, query, sandboxed, stock

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="transactions need root")

COUNT = 200
CHAIN = 20                         # big001 -> big000, big002 -> big001, ... big019 -> big018


def _name(i: int) -> str:
    return f"big{i:03d}"


def _version(i: int) -> str:
    return f"1.{i % 5}-{1 + i % 3}"


def _scriptlet(i: int) -> str | None:
    functions = []
    if i % 2 == 0:
        functions.append("post_install")
    if i % 10 == 0:
        functions += ["pre_remove", "post_remove"]
    if not functions:
        return None
    return "".join(f'{fn}() {{\n  echo "{_name(i)} {fn} $*" >> /var/log/calls\n}}\n'
                   for fn in functions)


def _depends(i: int) -> tuple[str, ...]:
    deps = []
    if 0 < i < CHAIN:
        deps.append(_name(i - 1))                       # the chain
    elif i >= CHAIN and i % 3 == 0:
        deps.append(_name(i // 2))                      # a tree: parent i//2 < i
    if i >= CHAIN and i % 7 == 0:
        deps.append(f"{_name(0)}>=1.0")                 # a versioned dependency
    if i == COUNT - 2:
        deps.append("virtual-big")                      # provided by the last package
    return tuple(deps)


def _files(i: int) -> tuple[PkgFile, ...]:
    name = _name(i)
    files = [PkgFile(path=f"usr/share/big/{name}.txt", content=f"{name}\n".encode() * 3)]
    if i % 25 == 0:                                     # a few with many files
        files += [PkgFile(path=f"usr/lib/{name}/mod{j}/data{k}",
                          content=bytes([i % 256, j, k]) * (50 + 10 * k))
                  for j in range(3) for k in range(4)]
        files += [PkgFile(path=f"usr/bin/{name}", content=b"#!/bin/sh\necho big\n",
                          mode=0o755),
                  PkgFile(path=f"usr/lib/{name}/current", symlink="mod0"),
                  PkgFile(path=f"var/lib/{name}", directory=True)]
    return tuple(files)


def specs() -> list[PkgSpec]:
    return [PkgSpec(name=_name(i), version=_version(i), files=_files(i), depends=_depends(i),
                    provides=("virtual-big",) if i == COUNT - 1 else (),
                    install=_scriptlet(i))
            for i in range(COUNT)]


NAMES = [_name(i) for i in range(COUNT)]
POST_INSTALLS = sum(1 for i in range(COUNT) if i % 2 == 0)
REMOVE_CALLS = 2 * sum(1 for i in range(COUNT) if i % 10 == 0)


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("big") / "repo"
    build_repo(specs(), d)
    return d


@pytest.fixture
def twins(tmp_path, big_repo):
    server = f"file://{big_repo}"
    return new_root(tmp_path, "stock", server), new_root(tmp_path, "sandboxed", server)


def _timed(fn, *args):
    t0 = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - t0


def _remove_all_and_compare(a, b, timings: dict) -> None:
    calls_before = len(b.calls())
    _, timings["stock -R"] = _timed(stock, a, "-R", *NAMES)
    r, timings["pkgsandbox -R"] = _timed(sandboxed, b, "-R", *NAMES)
    assert r.stdout.count("removing ") == COUNT
    assert len(b.calls()) == calls_before + REMOVE_CALLS
    assert query(b, "-Q").stdout == ""
    assert_twins(a, b)


def _check_install(r, b) -> None:
    assert r.stdout.count("installing ") == COUNT
    calls = b.calls()
    assert len(calls) == POST_INSTALLS
    assert all(c.split()[1] == "post_install" for c in calls)
    # pacman's order: every dependency's post_install ran before its dependant's
    seen = [c.split()[0] for c in calls]
    assert seen.index(_name(0)) < seen.index(_name(2)) < seen.index(_name(18))
    installed = query(b, "-Q").stdout.split("\n")
    assert len([line for line in installed if line]) == COUNT


def test_200_packages_with_U_then_R(twins, big_repo):
    a, b = twins
    files = [str(big_repo / s.filename) for s in specs()]
    timings: dict[str, float] = {}
    _, timings["stock -U"] = _timed(stock, a, "-U", *files)
    r, timings["pkgsandbox -U"] = _timed(sandboxed, b, "-U", *files)
    _check_install(r, b)
    assert r.stdout.count(" scriptlet ") >= POST_INSTALLS      # each in its own domain
    assert_twins(a, b)
    _remove_all_and_compare(a, b, timings)
    print(" ".join(f"{k}: {v:.2f} s;" for k, v in timings.items()))


def test_200_packages_with_Sy_then_S_then_R(twins):
    a, b = twins
    timings: dict[str, float] = {}
    _, timings["stock -Sy"] = _timed(stock, a, "-Sy")
    _, timings["pkgsandbox -Sy"] = _timed(sandboxed, b, "-Sy")
    _, timings["stock -S"] = _timed(stock, a, "-S", *NAMES)
    r, timings["pkgsandbox -S"] = _timed(sandboxed, b, "-S", *NAMES)
    _check_install(r, b)
    assert "[download]" in r.stdout
    assert len(list((b.path / "var/cache/pacman/pkg").glob("*.pkg.tar.zst"))) == COUNT
    assert_twins(a, b)
    _remove_all_and_compare(a, b, timings)
    print(" ".join(f"{k}: {v:.2f} s;" for k, v in timings.items()))
