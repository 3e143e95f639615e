"""The scriptlet phase: one .INSTALL function, in its own domain, with pacman's protocol.

`/bin/sh -c ". /tmp/alpm_XXXXXX/.INSTALL; FUNCTION NEWVER [OLDVER]"`, the .INSTALL copied into
{root}/tmp/alpm_XXXXXX/, chroot into {root} when it is not /, cwd /, umask 022, SHLVL=1,
BASH_ENV unset. The profile is `scriptlet`, overridden by `packages/PKGNAME.yaml`.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from .. import profile, runner
from . import cow
from ..errors import PkgsandboxError
from ..policy import EnforcementReport

log = logging.getLogger(__name__)

FUNCTIONS = ("pre_install", "post_install", "pre_upgrade", "post_upgrade", "pre_remove",
             "post_remove")


@dataclass(frozen=True, kw_only=True)
class Outcome:
    package: str
    function: str
    status: int
    output: str
    report: EnforcementReport
    #: changes to protected paths the phase made in its copy-on-write view, not applied
    refused: tuple[str, ...] = ()


def function_for(op: str, when: str) -> str:
    """pacman's function for an operation: install, upgrade/reinstall/downgrade, remove."""
    kind = {"install": "install", "remove": "remove"}.get(op, "upgrade")
    return f"{when}_{kind}"


def arguments(op: str, version: str, oldversion: str | None) -> list[str]:
    if op == "install":
        return [version]
    if op == "remove":
        return [oldversion or version]
    return [version, oldversion or version]


def defines(script: str, function: str) -> bool:
    """libalpm runs a function only if its name appears in the script (a plain search)."""
    return function in script


_SAFE_ARG = re.compile(r"^[A-Za-z0-9._+:~-]+$")


def run(*, script: str, function: str, args: list[str], pkgname: str, pkgver: str,
        root: str, library: profile.Library, cap, compat, timeout: float | None = None
        ) -> Outcome:
    for a in args:
        if not _SAFE_ARG.match(a):
            raise PkgsandboxError(f"{pkgname}: refusing scriptlet argument {a!r}")
    tmp_base = os.path.join(root, "tmp")
    try:
        tmpdir = tempfile.mkdtemp(prefix="alpm_", dir=tmp_base)
    except OSError as exc:
        raise PkgsandboxError(f"could not create temp directory in {tmp_base}: "
                              f"{exc.strerror}") from None
    try:
        path = os.path.join(tmpdir, ".INSTALL")
        with open(path, "w", encoding="utf-8") as f:
            f.write(script)
        os.chmod(tmpdir, 0o755)
        inside = path if root == "/" else "/" + os.path.relpath(path, root)
        prof = library.load_override("scriptlet", pkgname, "packages")
        policy = profile.resolve(prof, {"root": root, "pkgname": pkgname, "pkgver": pkgver},
                                 phase="scriptlet",
                                 check_paths=False)  # build_ruleset checks, once
        env = policy.environment.build(dict(os.environ))
        env.pop("BASH_ENV", None)
        env["SHLVL"] = "1"
        argv = ["/bin/sh", "-c", f". {inside}; {function} {' '.join(args)}"]
        result, refused = cow.run_with(policy, lambda prepared: runner.run(
            argv, prepared, env=env, chroot=None if root == "/" else root, cwd="/",
            umask=0o022, capture=True, merge_stderr=True, timeout=timeout,
            stdin=subprocess.DEVNULL), cap=cap, compat=compat)
        return Outcome(package=pkgname, function=function, status=result.exit_status,
                       output=result.stdout.decode("utf-8", errors="replace"),
                       report=result.report, refused=tuple(refused))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
