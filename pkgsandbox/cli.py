"""Command line: the only module that parses argv or prints.

Global options (--abi, --compat, --profile-dir, --json) are accepted before or after the
subcommand. main() is the only place that turns exceptions into exit codes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import __version__, abi, enforce, landlock, profile, runner
from .abi import Compat
from .errors import (EXIT_BAD_INPUT, EXIT_FAILED, BadInput, PkgsandboxError, UsageError)

EXIT_CODES = """exit codes:
  0        success
  1        an operation failed
  2        bad input: a profile, an argument, a configuration file (one line names the place)
  120      a sandbox requirement is not met (hard-requirement, min_abi): nothing was run
  121      the sandbox could not be set up: nothing untrusted was run
  124      the sandboxed program timed out; its process group was killed
  126/127  the program could not be executed / was not found
  128+N    the program was killed by signal N
  run: any other status is the program's own.
environment:
  PKGSANDBOX_ABI=N   same as --abi N (0 = behave as if Landlock were absent)"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    g = parser.add_argument_group("global options")
    g.add_argument("--abi", type=int, metavar="N", default=default,
                   help="behave as if the kernel's Landlock ABI were at most N (0: none)")
    g.add_argument("--compat", choices=[c.value for c in Compat], default=default,
                   help="override every profile's compatibility level")
    g.add_argument("--profile-dir", action="append", metavar="DIR",
                   dest="profile_dir_sub" if suppress else "profile_dir",
                   default=default, help="search DIR for profiles first (repeatable)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress
                   else False, help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pkgsandbox",
                description="Run each untrusted phase of a pacman transaction in its own "
                            "Landlock domain.",
                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"pkgsandbox {__version__}")
    _global_options(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name, help_):
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EXIT_CODES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        _global_options(sp, suppress=True)
        return sp

    r = add("run", "run a command in a Landlock domain built from a profile; when it exits, "
                   "whatever it left running is killed")
    r.add_argument("--profile", required=True, metavar="NAME|FILE")
    r.add_argument("--var", action="append", default=[], metavar="K=V",
                   help="give a profile variable a value (e.g. --var root=/mnt)")
    r.add_argument("--chroot", metavar="DIR", help="chroot into DIR before running")
    r.add_argument("--cwd", metavar="DIR", help="working directory (inside the chroot)")
    r.add_argument("--user", metavar="NAME", help="run as this user (groups, gid, uid)")
    r.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="kill the command, its process group and what it left after this long")
    r.add_argument("--report", action="store_true",
                   help="print the enforcement report on stderr even when fully enforced")
    r.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")

    d = add("doctor", "what this kernel offers, and what each shipped profile enforces here")
    del d

    pr = add("profile", "list, show, check and explain profiles")
    psub = pr.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    for name, help_ in (("list", "every profile on the search path"),
                        ("show", "a profile merged with what it extends"),
                        ("check", "validate profile files"),
                        ("explain", "what a profile enforces on this kernel, or on ABI N")):
        sp = psub.add_parser(name, help=help_, description=help_)
        _global_options(sp, suppress=True)
        if name in ("show", "explain"):
            sp.add_argument("name", metavar="NAME|FILE")
            sp.add_argument("--var", action="append", default=[], metavar="K=V")
        if name == "check":
            sp.add_argument("files", nargs="+", metavar="FILE")

    f = add("fetch", "download URL to OUTPUT in the download domain (pacman's XferCommand)")
    f.add_argument("url", metavar="URL")
    f.add_argument("-o", "--output", required=True, metavar="OUTPUT")
    f.add_argument("--config", default="/etc/pacman.conf", metavar="PATH",
                   help="pacman.conf to read DownloadUser from (default /etc/pacman.conf)")

    i = add("inspect", "open package archives in the extract domain and report what they "
                       "would do to a system")
    i.add_argument("files", nargs="*", metavar="FILE")
    i.add_argument("--pending", action="store_true",
                   help="read package names on stdin (alpm hook NeedsTargets) and inspect "
                        "each one's newest archive in the cache")
    i.add_argument("--config", default="/etc/pacman.conf", metavar="PATH",
                   help="pacman.conf naming the cache directories (with --pending)")

    add("demo", "a sandboxed -Sy/-S with a hostile package, into a throwaway root")
    return p


def _settings(args) -> dict:
    cap = getattr(args, "abi", None)
    if cap is None and os.environ.get("PKGSANDBOX_ABI", "") != "":
        text = os.environ["PKGSANDBOX_ABI"]
        if not text.isdigit():
            raise UsageError(f"PKGSANDBOX_ABI={text!r}: expected a number from 0 to "
                             f"{abi.KNOWN_ABI}")
        cap = int(text)
    if cap is not None and not 0 <= cap <= abi.KNOWN_ABI:
        raise UsageError(f"--abi {cap}: expected a number from 0 to {abi.KNOWN_ABI}")
    compat = getattr(args, "compat", None)
    return {"cap": cap, "compat": Compat(compat) if compat else None,
            "dirs": (getattr(args, "profile_dir", None) or [])
            + (getattr(args, "profile_dir_sub", None) or []),
            "json": bool(getattr(args, "json", False))}


def _bit(name: str) -> int:
    return abi.FS_RIGHTS[name][0]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------------

def cmd_run(args, s) -> int:
    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("run: no command given (pkgsandbox run --profile NAME -- CMD ...)")
    lib = profile.Library(s["dirs"])
    prof = lib.load(args.profile)
    variables = dict(profile.parse_var(v) for v in args.var)
    policy = profile.resolve(prof, variables)
    user = runner.User.lookup(args.user) if args.user else None
    with enforce.prepare(policy, cap=s["cap"], compat=s["compat"]) as prepared:
        report = prepared.report
        warning = enforce.unconfined_warning(report)
        if warning:
            _err(warning)
        env = policy.environment.build(dict(os.environ))
        try:
            result = runner.run(command, prepared, env=env, cwd=args.cwd, chroot=args.chroot,
                                user=user, timeout=args.timeout)
        except PkgsandboxError as exc:
            if s["json"]:
                _err(json.dumps({"report": report.as_dict(), **exc.as_dict()}))
            raise
    if s["json"]:
        _err(json.dumps({"report": result.report.as_dict(),
                         "exit_status": result.exit_status}))
    elif args.report:
        _print_report(result.report, stream=_err)
    return result.exit_status


def _print_report(report, stream=_out) -> None:
    stream(f"enforcement: {report.summary()}")
    if report.landlock:
        stream(f"  handled filesystem rights: {', '.join(report.handled_fs) or '-'}")
        stream(f"  handled network rights:    {', '.join(report.handled_net) or '-'}")
        stream(f"  scopes:                    {', '.join(report.scopes) or '-'}")
        stream(f"  rules: {report.rules}; no_new_privs: yes; "
               f"audit flags: {', '.join(report.flags) or '-'}")
    for d in report.dropped:
        stream(f"  not enforced: {d}")
    for e in report.unfixed_errata:
        stream(f"  unfixed: {e}")
    for p in report.skipped_paths:
        stream(f"  skipped: {p}")


def cmd_doctor(args, s) -> int:
    from . import auditlog
    kernel = landlock.probe()
    in_force = abi.clamp(kernel.abi, s["cap"])
    audit = auditlog.status()
    fixed = [n for n in abi.ERRATA if kernel.errata & (1 << (n - 1))]
    lib = profile.Library(s["dirs"])
    rows = []
    for name, path in lib.names():
        try:
            prof = lib.load(name)
            policy = profile.resolve(prof, dict(profile.VARIABLES), check_paths=False)
            decision = enforce.decide(policy, kernel=kernel, cap=s["cap"], compat=s["compat"])
            rows.append({"profile": name, "file": str(path),
                         "status": decision.status.value if decision.may_run else "refused",
                         "dropped": [str(d) for d in decision.dropped],
                         "refusal": decision.refusal})
        except PkgsandboxError as exc:
            rows.append({"profile": name, "file": str(path), "status": "invalid",
                         "dropped": [], "refusal": exc.message})
    data = {
        "kernel": kernel.kernel, "landlock": kernel.state, "kernel_abi": kernel.abi,
        "abi_in_force": in_force, "abi_cap": s["cap"], "known_abi": abi.KNOWN_ABI,
        "errata_mask": kernel.errata, "errata_fixed": fixed,
        "errata_unfixed": [f"{n}: {a}: {c}" for n, a, c in
                           abi.errata_affecting(kernel.abi, kernel.errata)],
        "supported": {"fs_rights": sorted(abi.fs_rights(in_force), key=_bit),
                      "net_rights": sorted(abi.net_rights(in_force)),
                      "scopes": sorted(abi.scopes(in_force)),
                      "restrict_flags": sorted(abi.restrict_flags(in_force))},
        "audit": {"available": audit.available, "enabled": audit.enabled,
                  "detail": audit.detail},
        "layers": _layer_support(in_force),
        "profiles": rows,
    }
    if s["json"]:
        _out(json.dumps(data, indent=2))
        return 0
    _out(f"kernel:        {kernel.kernel}")
    _out(f"landlock:      {kernel.state}, ABI {kernel.abi}"
         + (f" (capped to {in_force})" if in_force != kernel.abi else ""))
    _out(f"errata:        mask {kernel.errata:#x}; fixed: "
         + (", ".join(map(str, fixed)) or "none")
         + "".join(f"\n               UNFIXED {e}" for e in data["errata_unfixed"]))
    sup = data["supported"]
    _out(f"fs rights:     {', '.join(sup['fs_rights']) or '-'}")
    _out(f"net rights:    {', '.join(sup['net_rights']) or '-'}")
    _out(f"scopes:        {', '.join(sup['scopes']) or '-'}")
    _out(f"audit flags:   {', '.join(sup['restrict_flags']) or '-'}")
    _out(f"audit:         {audit.detail}")
    for name, state in data["layers"].items():
        _out(f"{name + ':':<15}{state}")
    _out("")
    _out(f"{'profile':<12} {'on this kernel':<20} not enforced here")
    for row in rows:
        dropped = "; ".join(row["dropped"]) or row["refusal"] or "-"
        _out(f"{row['profile']:<12} {row['status']:<20} {dropped}")
    return 0


def _layer_support(abi_in_force: int) -> dict[str, str]:
    """What each layer beside Landlock can do on this machine (doctor)."""
    from . import hardening
    root = os.geteuid() == 0
    return {
        "no_new_privs": "always set before landlock_restrict_self",
        "capabilities": (f"bounding set of {len(hardening.bounding_set())} capabilities; "
                         "root phases keep only their profile's list") if root else
                        "not root: phases run with no capability",
        "private_netns": "available (root): phases without network get their own"
                         if root else "needs root: unavailable",
        "seccomp_unix": ("not needed: Landlock resolve_unix (ABI >= 9)" if
                         abi_in_force >= 9 else
                         "available: refuses AF_UNIX sockets below ABI 9"
                         if hardening.seccomp_supported() else
                         "unavailable on this architecture: pathname UNIX sockets open"),
        "user_switch": "DownloadUser for downloads (pacman.conf)",
        "spawn": _native_state(),
    }


def _native_state() -> str:
    try:
        from . import _native  # noqa: F401
    except ImportError as exc:
        return f"MISSING native part ({exc}): nothing can be sandboxed; reinstall pkgsandbox"
    return "vfork, every layer entered in C (pkgsandbox._native), no Python in the child"


def cmd_profile(args, s) -> int:
    lib = profile.Library(s["dirs"])
    action = getattr(args, "action", None)
    if action is None:
        raise UsageError("profile: expected an action: list, show, check, explain")
    if action == "list":
        rows = []
        for kind in ("", "packages", "hooks"):
            for name, path in lib.names(kind):
                try:
                    description = lib.load_file(path).description if not kind else ""
                except PkgsandboxError as exc:
                    description = f"INVALID: {exc.message}"
                rows.append({"name": f"{kind}/{name}" if kind else name, "file": str(path),
                             "description": description})
        if s["json"]:
            _out(json.dumps(rows, indent=2))
        else:
            for row in rows:
                _out(f"{row['name']:<32} {row['file']}")
                if row["description"]:
                    _out(f"{'':<32} {row['description']}")
        return 0
    if action == "check":
        failed = 0
        results = []
        for f in args.files:
            try:
                prof = lib.load_file(profile.Path(f))
                profile.resolve(prof, dict(profile.VARIABLES), check_paths=False)
                results.append({"file": f, "ok": True})
                if not s["json"]:
                    _out(f"{f}: ok ({prof.name}, {len(prof.filesystem)} path grants, "
                         f"{len(prof.ports)} port grants)")
            except BadInput as exc:
                failed += 1
                results.append({"file": f, "ok": False, "error": exc.message})
                if not s["json"]:
                    _err(exc.message)
        if s["json"]:
            _out(json.dumps(results, indent=2))
        return EXIT_BAD_INPUT if failed else 0
    prof = lib.load(args.name)
    variables = dict(profile.VARIABLES)
    variables.update(dict(profile.parse_var(v) for v in args.var))
    if action == "show":
        data = _profile_dict(prof)
        if s["json"]:
            _out(json.dumps(data, indent=2))
        else:
            _out(f"# {prof.name}: merged from {' <- '.join(prof.chain)}")
            for key in ("phase", "description", "compat", "min_abi", "scope"):
                _out(f"{key}: {data[key]}")
            if data["owners"] is not None:
                _out(f"owners: {data['owners']}    # applies only to these packages' hook file")
            _out("filesystem:")
            for g in data["filesystem"]:
                opt = ", optional" if g["optional"] else ""
                _out(f"  - {g['path']}: {', '.join(g['access'])}{opt}    # {g['origin']}")
            _out("network:")
            for p in data["network"]:
                _out(f"  - {p['right']} {p['port']}    # {p['origin']}")
            _out(f"logging: {data['logging']}")
            _out(f"environment: allow {data['environment']['allow']}, "
                 f"set {data['environment']['set']}")
        return 0
    # explain
    policy = profile.resolve(prof, variables, check_paths=False)
    kernel = landlock.probe()
    decision = enforce.decide(policy, kernel=kernel, cap=s["cap"], compat=s["compat"])
    rules = []
    for g in policy.paths:
        eff = abi.effective_rule_rights(g.rights, decision.handled_fs, is_dir=True)
        rules.append({"path": g.path, "requested": sorted(g.rights, key=_bit),
                      "enforced_as": sorted(eff, key=_bit), "origin": g.origin,
                      "optional": g.optional})
    data = {"profile": prof.name, "kernel_abi": kernel.abi, "abi": decision.abi,
            "compat": decision.compat.value, "status": decision.status.value,
            "may_run": decision.may_run, "refusal": decision.refusal,
            "handled_fs": sorted(decision.handled_fs, key=_bit),
            "handled_net": sorted(decision.handled_net), "scopes": sorted(decision.scopes),
            "flags": sorted(decision.flags), "paths": rules,
            "ports": [{"port": p.port, "right": p.right, "enforced": p.right in
                       decision.handled_net, "origin": p.origin} for p in policy.ports],
            "dropped": [{"kind": d.kind, "item": d.item, "reason": d.reason}
                        for d in decision.dropped]}
    if s["json"]:
        _out(json.dumps(data, indent=2))
        return 0
    _out(f"profile {prof.name} on ABI {decision.abi} ({decision.compat.value}): "
         + (decision.status.value if decision.may_run else f"REFUSED: {decision.refusal}"))
    if decision.refusal and decision.may_run:
        _out(f"  {decision.refusal}")
    _out(f"handled filesystem rights (denied unless granted): "
         f"{', '.join(data['handled_fs']) or 'none'}")
    _out(f"handled network rights: {', '.join(data['handled_net']) or 'none'}")
    _out(f"scopes: {', '.join(data['scopes']) or 'none'}")
    _out("grants:")
    for r in rules:
        _out(f"  {r['path']}: {', '.join(r['enforced_as']) or '(nothing handled)'}"
             f"    # {r['origin']}")
    for p in data["ports"]:
        _out(f"  port {p['port']} {p['right']}" + ("" if p["enforced"] else " (not handled)"))
    for d in decision.dropped:
        _out(f"not enforced: {d}")
    return 0


def _profile_dict(prof: profile.Profile) -> dict:
    return {
        "name": prof.name, "file": prof.file, "chain": list(prof.chain), "phase": prof.phase,
        "description": prof.description, "compat": prof.compat.value, "min_abi": prof.min_abi,
        "scope": sorted(prof.scopes),
        "filesystem": [{"path": g.path, "access": sorted(g.rights, key=_bit),
                        "optional": g.optional, "origin": g.origin} for g in prof.filesystem],
        "network": [{"right": p.right, "port": p.port if p.port is not None
                     else "{server_ports}", "origin": p.origin} for p in prof.ports],
        "logging": {"same_exec": prof.logging.same_exec, "new_exec": prof.logging.new_exec,
                    "subdomains": prof.logging.subdomains},
        "environment": {"allow": list(prof.env_allow), "set": dict(prof.env_set)},
        "owners": None if prof.owners is None else list(prof.owners),
    }


def cmd_demo(args, s) -> int:
    from . import demo
    return demo.main(cap=s["cap"], compat=s["compat"], dirs=s["dirs"], as_json=s["json"],
                     out=_out, err=_err)


def cmd_pacman(argv: list[str]) -> int:
    """pacman's operations: -S/-U/-R run sandboxed; read-only ones go to stock pacman."""
    from . import pacmanargs, transaction
    parsed = pacmanargs.parse(argv)
    if parsed.read_only:
        passthrough = _strip_own_options(argv)
        try:
            os.execvp("pacman", ["pacman", *passthrough])
        except OSError as exc:
            raise UsageError(f"pacman is needed for this operation: {exc.strerror}") from None
    cap = parsed.value("abi")
    fake = argparse.Namespace(abi=int(cap) if cap is not None and cap.isdigit() else cap,
                              compat=parsed.value("compat"),
                              profile_dir=parsed.values.get("profile_dir"),
                              json="json" in parsed.bools)
    if fake.abi is not None and not isinstance(fake.abi, int):
        raise UsageError(f"--abi {cap!r}: expected a number from 0 to {abi.KNOWN_ABI}")
    if fake.compat is not None and fake.compat not in [c.value for c in Compat]:
        raise UsageError(f"--compat {fake.compat!r}: expected one of "
                         + ", ".join(c.value for c in Compat))
    s = _settings(fake)
    if parsed.op in ("sync", "upgrade") and parsed.count("s") and parsed.op == "sync":
        raise UsageError("-Ss is a query: it is handed to pacman")
    opts = transaction.Options(
        op=parsed.op, targets=parsed.targets, refresh=parsed.count("y"),
        sysupgrade=parsed.count("u") > 0, downloadonly=parsed.count("w") > 0,
        print_only=parsed.count("p") > 0, noconfirm="noconfirm" in parsed.bools,
        needed="needed" in parsed.bools, asdeps="asdeps" in parsed.bools,
        asexplicit="asexplicit" in parsed.bools, noscriptlet="noscriptlet" in parsed.bools,
        recursive=parsed.op == "remove" and parsed.count("s") > 0,
        cascade=parsed.op == "remove" and parsed.count("c") > 0,
        nosave=parsed.op == "remove" and parsed.count("n") > 0,
        nodeps=parsed.count("d"), config=parsed.value("config") or "/etc/pacman.conf",
        root=parsed.value("root"), dbpath=parsed.value("dbpath"),
        cachedir=parsed.value("cachedir"), logfile=parsed.value("logfile"),
        gpgdir=parsed.value("gpgdir"), hookdirs=parsed.values.get("hookdir", []),
        cap=s["cap"], compat=s["compat"], profile_dirs=s["dirs"], json=s["json"])
    if parsed.op == "sync" and not parsed.targets and not (parsed.count("y") or
                                                           parsed.count("u")):
        raise UsageError("no targets specified (use -h for help)")
    if parsed.op in ("upgrade", "remove") and not parsed.targets:
        raise UsageError("no targets specified (use -h for help)")
    if os.geteuid() != 0 and not opts.print_only:
        raise UsageError("you cannot perform this operation unless you are root.")
    out = _err if opts.json else _out
    t = transaction.Transaction(opts, out=out, err=_err)
    status = 1
    try:
        status = t.run()
        return status
    except PkgsandboxError as exc:
        if exc.exit_code == EXIT_FAILED or isinstance(exc, transaction.TransactionFailed):
            _err(f"error: {exc.message}")
            status = 1
            return 1
        raise
    finally:
        if opts.json:
            _out(json.dumps({"exit_status": status, "installed": t.installed,
                             "phases": [r.as_dict() for r in t.runs]}, indent=2))
        else:
            for line in t.report_lines():
                _out(line)


def _first_is_subcommand(argv: list[str]) -> bool:
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--abi", "--compat", "--profile-dir"):
            skip = True
            continue
        if arg.startswith("-"):
            return False
        return arg in COMMANDS
    return False


def _strip_own_options(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.partition("=")[0]
        if name in ("--abi", "--compat", "--profile-dir"):
            skip = "=" not in arg
            continue
        if arg == "--json":
            continue
        out.append(arg)
    return out


def cmd_fetch(args, s) -> int:
    from .phases import xfer
    return xfer.command(args.url, args.output, conf_path=args.config,
                        library=profile.Library(s["dirs"]), cap=s["cap"], compat=s["compat"],
                        as_json=s["json"], out=_out, err=_err)


def cmd_inspect(args, s) -> int:
    from .phases import inspect
    files = list(args.files)
    if args.pending:
        from . import alpm
        conf = alpm.read_conf(args.config)
        names = [line.strip() for line in sys.stdin if line.strip()]
        archives, missing = inspect.pending_archives(names, conf)
        for name in missing:
            _err(f"pkgsandbox: warning: {name}: no archive in the cache to inspect")
        files += archives
        if not files:
            return 0
    elif not files:
        raise UsageError("inspect: no FILE given (or --pending with names on stdin)")
    return inspect.command(files, library=profile.Library(s["dirs"]), cap=s["cap"],
                           compat=s["compat"], as_json=s["json"], out=_out, err=_err)


COMMANDS = {"fetch": cmd_fetch, "inspect": cmd_inspect, "run": cmd_run, "doctor": cmd_doctor, "profile": cmd_profile, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="pkgsandbox: %(message)s")
    parser = build_parser()
    as_json = "--json" in argv
    try:
        from . import pacmanargs
        if argv and argv[0] not in ("-h", "--help", "--version") and \
                pacmanargs.is_operation(argv) and not _first_is_subcommand(argv):
            return cmd_pacman(argv)
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return EXIT_BAD_INPUT
        settings = _settings(args)
        return COMMANDS[args.command](args, settings)
    except PkgsandboxError as exc:
        if as_json:
            _err(json.dumps(exc.as_dict()))
        else:
            _err(f"pkgsandbox: error: {exc.message}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err("pkgsandbox: interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:  # a bug: say so in one line; PKGSANDBOX_DEBUG=1 shows where
        if os.environ.get("PKGSANDBOX_DEBUG"):
            raise
        _err(f"pkgsandbox: internal error: {type(exc).__name__}: {exc} "
             f"(PKGSANDBOX_DEBUG=1 shows the traceback)")
        return EXIT_FAILED
