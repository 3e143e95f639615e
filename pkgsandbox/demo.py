"""The built-in demo: a hostile script confined by the shipped `scriptlet` profile.

Everything happens in a throwaway root under a temp directory, a TCP listener and an abstract
UNIX socket on loopback that the demo itself opens, and signals to the demo's own process. The
script's attempts are harmless even unconfined (reads go to /dev/null, writes target the
throwaway root), so the demo is safe on a kernel without Landlock too.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from . import enforce, profile, runner

HOSTILE = r"""
try() { name=$1; shift
  if err=$( ("$@") 2>&1 >/dev/null ); then echo "$name|allowed|"
  else echo "$name|refused|$(printf %s "$err" | tail -n 1)"; fi; }
try "read the root user's SSH key"           cat "$ROOT/root/.ssh/id_ed25519"
try "read the host's /etc/shadow"            cat /etc/shadow
try "plant a file in /boot"                  sh -c "echo pwned > '$ROOT/boot/vmlinuz-linux'"
try "tamper with the package database"       sh -c "echo pwned > '$ROOT/var/lib/pacman/local/ALPM_DB_VERSION'"
try "replace a system binary"                sh -c "echo pwned > '$ROOT/usr/bin/ls'"
try "connect to 127.0.0.1:$PORT (TCP)"       bash -c "echo hi > /dev/tcp/127.0.0.1/$PORT"
try "signal a process outside (kill -0)"     kill -0 "$PARENT"
try "connect to an abstract UNIX socket"     $PY -c "import socket; s=socket.socket(socket.AF_UNIX); s.connect(b'\0$ABSTRACT')"
try "write its own cache (legitimate)"       sh -c "mkdir -p '$ROOT/var/cache/demo' && echo ok > '$ROOT/var/cache/demo/index'"
"""


def _make_root(base: Path) -> Path:
    root = base / "root"
    for d in ("usr/bin", "etc", "boot", "tmp", "var/cache", "var/lib/pacman/local",
              "root/.ssh"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "root/.ssh/id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY----- demo\n")
    (root / "boot/vmlinuz-linux").write_text("kernel\n")
    (root / "var/lib/pacman/local/ALPM_DB_VERSION").write_text("9\n")
    (root / "usr/bin/ls").write_text("#!/bin/sh\n")
    (root / "tmp/hostile.install").write_text(HOSTILE)
    return root


def main(*, cap, compat, dirs, as_json, out, err) -> int:
    base = Path(tempfile.mkdtemp(prefix="pkgsandbox-demo-"))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        root = _make_root(base)
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        name = f"pkgsandbox-demo-{os.getpid()}"
        abstract.bind(b"\0" + name.encode())
        abstract.listen(4)
        lib = profile.Library(dirs)
        policy = profile.resolve(lib.load("scriptlet"), {"root": str(root), "pkgname": "demo"},
                                 phase="scriptlet")
        python = shutil.which("python3", path="/usr/bin:/bin") or "false"
        env = policy.environment.build(dict(os.environ))
        env.update(ROOT=str(root), PORT=str(port), PARENT=str(os.getpid()), ABSTRACT=name,
                   PY=python)
        if not as_json:
            out("pkgsandbox demo: a hostile install scriptlet under the shipped 'scriptlet' "
                "profile")
            out(f"  throwaway root: {root}   (nothing outside it and {base} is written)")
            out("")
        with enforce.prepare(policy, cap=cap, compat=compat) as prepared:
            warning = enforce.unconfined_warning(prepared.report)
            if warning and not as_json:
                err(warning)
            result = runner.run(["/bin/sh", str(root / "tmp/hostile.install")], prepared,
                                env=env, cwd=str(root), capture=True, timeout=60)
        attempts = []
        for line in result.stdout.decode(errors="replace").splitlines():
            parts = line.split("|", 2)
            if len(parts) == 3:
                attempts.append({"attempt": parts[0], "outcome": parts[1],
                                 "error": parts[2].strip()})
        report = result.report
        if as_json:
            out(json.dumps({"attempts": attempts, "report": report.as_dict()}, indent=2))
            return 0
        out("What the scriptlet tried, and what the kernel said:")
        for a in attempts:
            mark = "REFUSED" if a["outcome"] == "refused" else "allowed"
            detail = f"  ({a['error']})" if a["error"] else ""
            out(f"  {mark:<8} {a['attempt']}{detail}")
        out("")
        out(f"Enforcement report: {report.summary()}")
        out(f"  Landlock domain entered: {'yes' if report.landlock else 'NO'}; "
            f"no_new_privs: yes; {report.rules} rules")
        if report.landlock:
            out(f"  filesystem rights handled (denied unless granted): "
                f"{', '.join(report.handled_fs)}")
            out(f"  network rights handled: {', '.join(report.handled_net) or '-'}; "
                f"scopes: {', '.join(report.scopes) or '-'}")
        for d in report.dropped:
            out(f"  not enforced on this kernel: {d}")
        out("")
        out("Why: the profile grants {root}/var/cache (caches) but not {root}/boot, "
            "{root}/root, {root}/usr (read-only), the package database, any TCP port, or "
            "signals and abstract sockets outside the domain. See: pkgsandbox profile explain "
            "scriptlet")
        return 0
    finally:
        listener.close()
        abstract.close()
        shutil.rmtree(base, ignore_errors=True)
