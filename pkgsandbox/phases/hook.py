"""The hook phase: one alpm hook's Exec in its own domain, as libalpm runs it.

Chroot into {root} (when it is not /), cwd /, umask 022, the Exec words as argv with no PATH
lookup (a bare name is taken relative to /, as execv would), the matched targets sorted and
de-duplicated on stdin when NeedsTargets. The profile is `hook`, overridden by
`hooks/HOOKNAME.yaml`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .. import profile, runner
from . import cow
from ..policy import EnforcementReport


@dataclass(frozen=True, kw_only=True)
class Outcome:
    hook: str
    status: int
    output: str
    report: EnforcementReport
    refused: tuple[str, ...] = ()


def run(*, hook, targets: tuple[str, ...] | None, root: str, library: profile.Library,
        cap, compat, timeout: float | None = None, override: bool = True) -> Outcome:
    """`override`: whether `hooks/NAME.yaml` may apply (the caller checked its owners)."""
    prof = library.load_override("hook", hook.name, "hooks") if override else \
        library.load("hook")
    policy = profile.resolve(prof, {"root": root, "hookname": hook.name}, phase="hook",
                            check_paths=False)  # build_ruleset checks, once
    argv = list(hook.exec)
    if "/" not in argv[0]:
        argv[0] = "/" + argv[0]
    data = None
    if hook.needs_targets:
        data = "".join(f"{t}\n" for t in (targets or ())).encode("utf-8", "surrogateescape")
    env = policy.environment.build(dict(os.environ))
    result, refused = cow.run_with(policy, lambda prepared: runner.run(
        argv, prepared, env=env, chroot=None if root == "/" else root, cwd="/", umask=0o022,
        capture=True, merge_stderr=True, timeout=timeout,
        input=data if data is not None else b""), cap=cap, compat=compat)
    return Outcome(hook=hook.name, status=result.exit_status,
                   output=result.stdout.decode("utf-8", errors="replace"), report=result.report,
                   refused=tuple(refused))
