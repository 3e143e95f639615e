"""The built-in demo: a sandboxed `-Sy` then `-S` into a throwaway root, from a loopback mirror
that serves a small repository with one hostile package.

Everything it writes is under one temp directory (the repository, the root, its database,
cache and log); the mirror listens on 127.0.0.1 only; the hostile package's attempts are aimed
at the throwaway root, the demo's own mirror port and the demo's own process, so the demo is
harmless even on a kernel without Landlock.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from . import repobuild, transaction
from .repobuild import PkgFile, PkgSpec

HOSTILE_INSTALL = r"""
post_install() {
  try() { name=$1; shift
    if out=$( ("$@") 2>&1 ); then echo "$name|allowed|" >> /var/log/demo-attempts
    else echo "$name|refused|$(printf %s "$out" | tail -n 1)" >> /var/log/demo-attempts; fi; }
  try "read the root user's SSH key"            cat /root/.ssh/id_ed25519
  try "replace a system binary (/usr/bin/ls)"   sh -c 'echo pwned > /usr/bin/ls'
  try "plant a file in /boot"                   sh -c 'echo pwned > /boot/vmlinuz-linux'
  try "tamper with the package database"        sh -c 'echo pwned > /var/lib/pacman/local/ALPM_DB_VERSION'
  try "phone home (TCP to the mirror's port)"   sh -c 'echo hi | nc -w 2 127.0.0.1 @PORT@'
  try "signal a process outside (kill -0)"      kill -0 @PID@
  try "write its own state (legitimate)"        sh -c 'echo ok > /var/lib/evil/state'
}
"""

GREETER_INSTALL = """post_install() {
  echo "greeter: building the greeting cache"
  echo cached > /var/cache/greeter/index
}
"""


def _specs(port: int) -> list[PkgSpec]:
    hostile = HOSTILE_INSTALL.replace("@PORT@", str(port)).replace("@PID@", str(os.getpid()))
    return [
        PkgSpec(name="libgreet", version="1.0-1", description="a library",
                files=(PkgFile(path="usr/lib/libgreet.so", content=b"\x7fELF demo"),)),
        PkgSpec(name="greeter", version="1.0-1", description="a well-behaved program",
                depends=("libgreet",), install=GREETER_INSTALL,
                files=(PkgFile(path="usr/bin/greeter", content=b"#!/bin/sh\necho hello\n",
                               mode=0o755),
                       PkgFile(path="var/cache/greeter", directory=True))),
        PkgSpec(name="evil", version="6.6.6-1", description="a hostile package",
                install=hostile,
                files=(PkgFile(path="usr/bin/evil", content=b"#!/bin/sh\n", mode=0o755),
                       PkgFile(path="var/lib/evil", directory=True),
                       # payload outside the install prefixes: the extract domain refuses it
                       PkgFile(path="root/.ssh/authorized_keys", content=b"ssh-ed25519 AAAA evil\n"))),
    ]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main(*, cap, compat, dirs, as_json, out, err) -> int:
    base = Path(tempfile.mkdtemp(prefix="pkgsandbox-demo-"))
    server = None
    try:
        repo = base / "repo"
        repo.mkdir()
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(repo)))
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        repobuild.build_repo(_specs(port), repo, name="demo")
        root = repobuild.make_root(base / "root")
        (root / "root/.ssh").mkdir(parents=True, exist_ok=True)
        (root / "root/.ssh/id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY----- demo\n")
        (root / "boot").mkdir(exist_ok=True)
        (root / "boot/vmlinuz-linux").write_text("kernel\n")
        (root / "usr/bin/ls").unlink(missing_ok=True)
        (root / "usr/bin/ls").write_text("#!/bin/sh\n")
        hooks = root / "etc/pacman.d/hooks"
        hooks.mkdir(parents=True, exist_ok=True)
        conf = base / "pacman.conf"
        conf.write_text(f"[options]\nArchitecture = auto\nSigLevel = Never\n\n"
                        f"[demo]\nServer = http://127.0.0.1:{port}\n")
        lines: list[str] = []
        show = (lambda s: lines.append(s)) if as_json else out
        show_err = (lambda s: lines.append(s)) if as_json else err

        def txn(targets, refresh=0):
            opts = transaction.Options(
                op="sync", targets=list(targets), refresh=refresh, noconfirm=True,
                config=str(conf), root=str(root), dbpath=str(root / "var/lib/pacman"),
                cachedir=str(root / "var/cache/pacman/pkg"),
                logfile=str(root / "var/log/pacman.log"), hookdirs=[str(hooks)], cap=cap,
                compat=compat, profile_dirs=list(dirs))
            t = transaction.Transaction(opts, out=show, err=show_err)
            try:
                status = t.run()
            except transaction.PkgsandboxError as exc:
                show_err(f"error: {exc.message}")
                status = exc.exit_code
            return t, status

        if not as_json:
            out("pkgsandbox demo: a sandboxed pacman transaction into a throwaway root")
            out(f"  root {root}, mirror http://127.0.0.1:{port} (loopback), all under {base}")
            out("")
            out("$ pkgsandbox -Sy greeter        # a well-behaved package and its dependency")
        t1, s1 = txn(["greeter"], refresh=1)
        if not as_json:
            out("")
            out("$ pkgsandbox -S evil            # a hostile package: scriptlet and payload")
        t2, s2 = txn(["evil"])
        attempts = []
        log = root / "var/log/demo-attempts"
        if log.exists():
            for line in log.read_text(errors="replace").splitlines():
                parts = line.split("|", 2)
                if len(parts) == 3:
                    attempts.append({"attempt": parts[0], "outcome": parts[1],
                                     "error": parts[2].strip()})
        payload = (root / "root/.ssh/authorized_keys").exists()
        result = {
            "greeter": {"exit_status": s1,
                        "installed": (root / "usr/bin/greeter").exists(),
                        "scriptlet_ran": (root / "var/cache/greeter/index").exists()},
            "evil": {"exit_status": s2, "attempts": attempts,
                     "payload_outside_prefixes_landed": payload,
                     "binary_replaced": (root / "usr/bin/ls").read_text() != "#!/bin/sh\n"},
            "phases": [r.as_dict() for r in t1.runs + t2.runs],
        }
        if as_json:
            out(json.dumps(result, indent=2))
            return 0
        out("")
        out("What the hostile post_install tried (each in its own scriptlet domain):")
        for a in attempts:
            mark = "REFUSED" if a["outcome"] == "refused" else "allowed"
            detail = f"  ({a['error']})" if a["error"] else ""
            out(f"  {mark:<8} {a['attempt']}{detail}")
        out(f"  {'REFUSED' if not payload else 'LANDED':<8} its payload file "
            f"/root/.ssh/authorized_keys (outside the extract domain's install prefixes)")
        out("")
        out("Every phase, and what it ran under:")
        for line in t1.report_lines()[1:] + t2.report_lines()[1:]:
            out(line)
        out("")
        out("See `pkgsandbox profile explain scriptlet` (and extract, download) for every "
            "grant, and docs/profiles.md to change one.")
        return 0
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        shutil.rmtree(base, ignore_errors=True)
