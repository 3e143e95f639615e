"""The orchestrator of a pacman transaction: -S, -Sy, -Syu, -Sw, -U, -R.

Runs in the unconfined parent and handles no untrusted byte itself: it reads pacman.conf,
takes the database lock, and drives three kinds of sandboxed children, each in its own domain:
  download   fetches databases and packages into a private directory (as DownloadUser);
             the parent checks size and sha256, then moves verified files into place;
  extract    libalpm resolves and commits (scriptlets and libalpm's hooks disabled), pausing
             at each package;
  scriptlet  each .INSTALL function, in pacman's order around that package.
It prints like pacman, asks like pacman, and returns pacman's exit status; every phase run is
listed in the report.
"""
from __future__ import annotations

import logging
import os
import stat
import sys
import time
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit, unquote

from . import alpm, enforce, pacmanconf, profile, runner
from .abi import Compat
from .errors import BadInput, PkgsandboxError, SetupError
from .phases import cow, scriptlet
from .policy import EnforcementReport, PathGrant

log = logging.getLogger(__name__)

DOWNLOAD_DIR = "download-pkgsandbox"
#: The whole download phase of one transaction may take this long (a mirror trickling bytes
#: just fast enough to escape the stall check is cut off here).
DOWNLOAD_DEADLINE = 3600.0
#: libalpm's own cap for a database download
DB_MAX_SIZE = 128 << 20
#: and for a detached signature
SIG_MAX_SIZE = 16 << 10
#: a transaction's file lists for hook triggers travel from the extract worker as JSON
CHANGES_LIMIT = 512 << 20


class TransactionFailed(PkgsandboxError):
    """pacman's exit status 1: the transaction did not happen (or not completely)."""


@dataclass(kw_only=True)
class Options:
    op: str                                # sync | upgrade | remove
    targets: list[str] = field(default_factory=list)
    refresh: int = 0                       # -y count
    sysupgrade: bool = False
    downloadonly: bool = False
    print_only: bool = False
    noconfirm: bool = False
    needed: bool = False
    asdeps: bool = False
    asexplicit: bool = False
    noscriptlet: bool = False
    recursive: bool = False
    cascade: bool = False
    nosave: bool = False
    nodeps: int = 0
    config: str = "/etc/pacman.conf"
    root: str | None = None
    dbpath: str | None = None
    cachedir: str | None = None
    logfile: str | None = None
    gpgdir: str | None = None
    hookdirs: list[str] = field(default_factory=list)
    cap: int | None = None
    compat: Compat | None = None
    profile_dirs: list[str] = field(default_factory=list)
    json: bool = False


@dataclass(frozen=True, kw_only=True)
class PhaseRun:
    phase: str
    subject: str
    report: EnforcementReport
    status: str = "ok"

    def as_dict(self) -> dict:
        return {"phase": self.phase, "subject": self.subject, "status": self.status,
                "report": self.report.as_dict()}


class Transaction:
    def __init__(self, opts: Options, *, out=None, err=None, ask=None):
        self.opts = opts
        self.out = out or (lambda s: (sys.stdout.write(s + "\n"), sys.stdout.flush()))
        self.err = err or (lambda s: (sys.stderr.write(s + "\n"), sys.stderr.flush()))
        self.ask = ask or _ask_stdin
        self.library = profile.Library(opts.profile_dirs)
        self.runs: list[PhaseRun] = []
        self.conf: pacmanconf.PacmanConf | None = None
        self.installed: list[str] = []
        self.refused_files: list[str] = []
        self.changes: dict = {}
        self._tempdirs: list[str] = []
        self.protected_refusals = 0
        self.narrowed = None
        self.hook_errors: list[str] = []
        self._pre_hooks = None
        self._quiet_status = False

    # -- setup -------------------------------------------------------------------------------

    def load_conf(self) -> pacmanconf.PacmanConf:
        o = self.opts
        conf = alpm.read_conf(o.config)
        for w in conf.warnings:
            self.err(f"warning: {w}")
        explicit = _explicit_keys(o.config)
        conf = pacmanconf.with_overrides(conf, root=o.root, dbpath=o.dbpath,
                                         cachedir=o.cachedir, logfile=o.logfile,
                                         gpgdir=o.gpgdir, hookdirs=o.hookdirs or None,
                                         explicit=explicit)
        for path, what in ((conf.root, "root"), (conf.dbpath, "database path")):
            if not os.path.isdir(path):
                raise BadInput(f"{what} {path} does not exist")
        self.conf = conf
        return conf

    # -- main --------------------------------------------------------------------------------

    def run(self) -> int:
        conf = self.load_conf()
        o = self.opts
        if o.op == "upgrade":
            o.targets = self._local_targets(o.targets)
        flags = {"needed": o.needed, "cascade": o.cascade, "recurse": o.recursive,
                 "nosave": o.nosave, "nodeps": o.nodeps > 0, "nodepversion": o.nodeps > 0,
                 "downloadonly": o.downloadonly, "alldeps": o.asdeps,
                 "allexplicit": o.asexplicit}
        if o.op == "remove" and o.recursive:
            flags["recurse"] = True
        flags = {k: v for k, v in flags.items() if v}
        if o.refresh:
            _, holder = alpm.lock_only(conf)
            try:
                self.refresh_databases(force=o.refresh > 1)
            except BaseException:
                alpm.release(holder)
                raise
            if o.op == "sync" and not o.targets and not o.sysupgrade:
                alpm.release(holder)
                return 0
            handle = alpm.open_handle(conf)
            trans = alpm.handover(holder, handle, flags)
        else:
            if o.op == "sync" and not o.targets and not o.sysupgrade:
                return 0
            handle = alpm.open_handle(conf)
            trans = alpm.lock(handle, flags)
        try:
            return self.commit(handle, trans)
        finally:
            alpm.release(trans)
            cow.drain()           # the last overlays' teardown (phases/cow.py)

    def _local_targets(self, targets: list[str]) -> list[str]:
        out = []
        remote = [t for t in targets if "://" in t]
        if remote:
            out += self.fetch_remote(remote)
        for t in targets:
            if "://" in t:
                continue
            path = os.path.abspath(t)
            if not os.path.isfile(path):
                raise BadInput(f"'{t}': cannot open package file: No such file")
            out.append(path)
        return out

    # -- download phase ---------------------------------------------------------------------

    def _download_user(self) -> runner.User | None:
        from .phases import xfer
        return xfer.download_user(self.conf, self.conf.file)

    def _download_dir(self, user: runner.User | None) -> str:
        cachedir = self.conf.cachedir
        os.makedirs(cachedir, mode=0o755, exist_ok=True)
        path = os.path.join(cachedir, DOWNLOAD_DIR)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o700)
            st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise SetupError(f"{path} exists and is not a directory: remove it")
        uid = user.uid if user else os.geteuid()
        gid = user.gid if user else os.getegid()
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, 0o700)
        return path

    def _fetch(self, jobs: list, label: str) -> list[dict]:
        """Run the download phase for jobs; returns fetch_all's results."""
        from .phases import download
        user = self._download_user()
        ddir = self._download_dir(user)
        urls = [u for j in jobs for u in j.urls]
        ports = download.ports_for(urls)
        policy = profile.resolve(self.library.load("download"),
                                 {"downloaddir": ddir,
                                  "server_ports": ",".join(map(str, sorted(ports)))},
                                 phase="download")
        extra = []
        for u in urls:
            parts = urlsplit(u)
            if parts.scheme == "file":
                src = os.path.dirname(unquote(parts.path))
                if os.path.isdir(src):
                    extra.append(PathGrant(path=src, rights=frozenset({"read_file", "read_dir"}),
                                           origin="file:// server"))
        if extra:
            policy = replace(policy, paths=policy.paths + tuple(dict.fromkeys(extra)))
        if not ports:
            policy = replace(policy, ports=())
        with enforce.prepare(policy, cap=self.opts.cap, compat=self.opts.compat,
                             as_root=user is None and os.geteuid() == 0) as prepared:
            self._warn(prepared.report)
            result = runner.call(download.fetch_all, jobs, ddir,
                                 parallel=self.conf.parallel_downloads, progress=True,
                                 addresses=download.resolve_hosts(urls),
                                 env=policy.environment.build(dict(os.environ)),
                                 prepared=prepared,
                                 user=user, cwd=ddir, timeout=DOWNLOAD_DEADLINE)
        self.runs.append(PhaseRun(phase="download", subject=label, report=result.report))
        return result.value

    def refresh_databases(self, *, force: bool) -> None:
        from .phases import download
        conf = self.conf
        self.out(":: Synchronizing package databases...")
        syncdir = os.path.join(conf.dbpath, "sync")
        os.makedirs(syncdir, mode=0o755, exist_ok=True)
        jobs = []
        for repo in conf.repos:
            if not repo.servers:
                raise TransactionFailed(f"no servers configured for repository: {repo.name}")
            current = os.path.join(syncdir, f"{repo.name}.db")
            mtime = None
            if not force and os.path.isfile(current):
                mtime = os.stat(current).st_mtime
            jobs.append(download.Job(name=f"{repo.name}.db",
                                     urls=tuple(f"{s.rstrip('/')}/{repo.name}.db"
                                                for s in repo.servers),
                                     if_modified_since=mtime, max_size=DB_MAX_SIZE))
            if repo.siglevel & pacmanconf.SIG_DATABASE:
                jobs.append(download.Job(name=f"{repo.name}.db.sig",
                                         urls=tuple(f"{s.rstrip('/')}/{repo.name}.db.sig"
                                                    for s in repo.servers),
                                         max_size=SIG_MAX_SIZE))
        if not jobs:
            return
        results = self._fetch(jobs, "sync databases")
        ddir = os.path.join(conf.cachedir, DOWNLOAD_DIR)
        failed = []
        sig_levels = {r.name: r.siglevel for r in conf.repos}
        for job, res in zip(jobs, results):
            if job.name.endswith(".db.sig"):
                repo = job.name[:-7]
                target = os.path.join(syncdir, job.name)
                if res["status"] == "downloaded":
                    self._install_file(os.path.join(ddir, job.name), target,
                                       expected_sha256=None)
                elif sig_levels.get(repo, 0) & pacmanconf.SIG_DATABASE_OPTIONAL:
                    if os.path.lexists(target):
                        os.unlink(target)        # a stale signature would fail the new db
                else:
                    self.err(f"error: failed retrieving file '{job.name}' from all mirrors "
                             f"({res['error']})")
                    failed.append(repo)
                continue
            repo = job.name[:-3]
            if res["status"] == "unchanged":
                self.out(f" {repo} is up to date")
                continue
            if res["status"] != "downloaded":
                self.err(f"error: failed retrieving file '{job.name}' from all mirrors "
                         f"({res['error']})")
                failed.append(repo)
                continue
            self._install_file(os.path.join(ddir, job.name), os.path.join(syncdir, job.name),
                               expected_sha256=None, mtime=res.get("mtime"))
            self.out(f" {repo} downloaded")
        if failed:
            raise TransactionFailed("failed to synchronize all databases "
                                    f"({', '.join(failed)})")

    def fetch_remote(self, urls: list[str]) -> list[str]:
        from .phases import download
        jobs, names = [], []
        for u in urls:
            name = unquote(os.path.basename(urlsplit(u).path))
            if not name or name in (".", ".."):
                raise BadInput(f"'{u}': no file name in the URL")
            names.append(name)
            jobs.append(download.Job(name=name, urls=(u,)))
        results = self._fetch(jobs, "remote packages")
        ddir = os.path.join(self.conf.cachedir, DOWNLOAD_DIR)
        out = []
        for name, res in zip(names, results):
            if res["status"] != "downloaded":
                raise TransactionFailed(f"failed retrieving file '{name}' ({res['error']})")
            dest = os.path.join(self.conf.cachedir, name)
            self._install_file(os.path.join(ddir, name), dest, expected_sha256=None)
            out.append(dest)
        return out

    def _install_file(self, src: str, dest: str, *, expected_sha256: str | None,
                      expected_size: int | None = None, mtime: float | None = None) -> None:
        """Move a downloaded file into place: regular file only (no links), verified, owned
        by root, mode 0644; the final name only ever holds a complete, verified file."""
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise TransactionFailed(f"{os.path.basename(src)}: download is not a plain file")
            if expected_size is not None and st.st_size != expected_size:
                raise TransactionFailed(f"{os.path.basename(src)}: size {st.st_size} != "
                                        f"expected {expected_size}")
            if expected_sha256:
                import hashlib         # only with downloads (loads OpenSSL)
                h = hashlib.sha256()
                while chunk := os.read(fd, 1 << 20):
                    h.update(chunk)
                if h.hexdigest() != expected_sha256:
                    raise TransactionFailed(f"{os.path.basename(src)}: sha256 mismatch: the "
                                            f"package is corrupted; it was not cached")
            os.fchown(fd, 0, 0) if os.geteuid() == 0 else None
            os.fchmod(fd, 0o644)
            if mtime:
                os.utime(fd, (mtime, mtime))
        except BaseException:
            os.close(fd)
            try:
                os.unlink(src)
            except OSError:
                pass
            raise
        os.close(fd)
        os.replace(src, dest)

    def download_packages(self, plan_add: list[dict]) -> bool:
        """Download what the plan needs; True if anything was downloaded."""
        need = [p for p in plan_add if p["download_size"] and p["servers"]]
        if not need:
            return False
        from .phases import download   # http.client, ssl: only when something is fetched
        self.out(":: Retrieving packages...")
        jobs = [download.Job(name=p["filename"],
                             urls=tuple(f"{s.rstrip('/')}/{p['filename']}" for s in p["servers"]),
                             size=p["size"]) for p in need]
        levels = {r.name: r.siglevel for r in self.conf.repos}
        sigs = [p for p in need if not p.get("has_sig")
                and levels.get(p.get("repo"), 0) & pacmanconf.SIG_PACKAGE]
        sig_jobs = [download.Job(name=p["filename"] + ".sig",
                                 urls=tuple(f"{s.rstrip('/')}/{p['filename']}.sig"
                                            for s in p["servers"]),
                                 max_size=SIG_MAX_SIZE) for p in sigs]
        results = self._fetch(jobs + sig_jobs,
                              f"{len(jobs)} package{'s' if len(jobs) != 1 else ''}")
        ddir = os.path.join(self.conf.cachedir, DOWNLOAD_DIR)
        failed = []
        for p, res in zip(sigs, results[len(jobs):]):
            name = p["filename"] + ".sig"
            if res["status"] == "downloaded":
                self._install_file(os.path.join(ddir, name),
                                   os.path.join(self.conf.cachedir, name), expected_sha256=None)
            elif not levels.get(p.get("repo"), 0) & pacmanconf.SIG_PACKAGE_OPTIONAL:
                self.err(f"error: failed retrieving file '{name}' from all mirrors "
                         f"({res['error']})")
                failed.append(name)
        results = results[:len(jobs)]
        for p, res in zip(need, results):
            if res["status"] != "downloaded":
                self.err(f"error: failed retrieving file '{p['filename']}' from all mirrors "
                         f"({res['error']})")
                failed.append(p["filename"])
                continue
            try:
                self._install_file(os.path.join(ddir, p["filename"]),
                                   os.path.join(self.conf.cachedir, p["filename"]),
                                   expected_sha256=p["sha256"], expected_size=p["size"])
            except TransactionFailed as exc:
                self.err(f"error: {exc.message}")
                failed.append(p["filename"])
        if failed:
            raise TransactionFailed("failed to commit transaction (failed to retrieve some "
                                    "files)")
        return True

    # -- extract + scriptlets ---------------------------------------------------------------

    def _keyring_copy(self, handle) -> str | None:
        """libalpm verifies signatures in the extract domain with gpg, which writes lock and
        trust files in its home: give it a private copy of GPGDir, never the real one."""
        import shutil
        import tempfile
        src = self.conf.gpgdir
        if not os.path.isdir(src):
            return None
        dest = tempfile.mkdtemp(prefix="pkgsandbox-gnupg-")
        self._tempdirs.append(dest)

        def ignore(_dir, names):
            return [n for n in names if n.startswith("S.") or n.endswith(".lock")]
        shutil.copytree(src, os.path.join(dest, "gnupg"), symlinks=True, ignore=ignore,
                        dirs_exist_ok=True)
        os.chmod(os.path.join(dest, "gnupg"), 0o700)
        handle.gpgdir = os.path.join(dest, "gnupg")
        return os.path.join(dest, "gnupg")

    def _extract_policy(self, gpgdir: str | None = None):
        conf = self.conf
        if not os.path.exists(conf.logfile):
            os.makedirs(os.path.dirname(conf.logfile), exist_ok=True)
            with open(conf.logfile, "a"):
                pass
        policy = profile.resolve(self.library.load("extract"),
                                 {"root": conf.root, "dbpath": conf.dbpath,
                                  "cachedir": conf.cachedir, "logfile": conf.logfile,
                                  "gpgdir": gpgdir or "/nonexistent/gnupg"},
                                 phase="extract")
        extra = [PathGrant(path=t, rights=frozenset({"read_file"}), origin="-U target")
                 for t in self.opts.targets if self.opts.op == "upgrade"]
        extra += [PathGrant(path=d, rights=frozenset({"read_file", "read_dir"}),
                            origin="CacheDir") for d in conf.cachedirs[1:] if os.path.isdir(d)]
        if extra:
            policy = replace(policy, paths=policy.paths + tuple(extra))
        return policy

    def commit(self, handle, trans) -> int:
        """Resolve in an extract-domain worker; if packages must be downloaded, end it, run
        the download phase, and commit in a second worker forked from the same locked
        transaction (libalpm decides what to download when it resolves, so the files must be
        in the cache before the committing worker resolves)."""
        first = len(self.runs)
        status = 1
        try:
            status = self._commit(handle, trans)
            return status
        finally:
            for i in range(first, len(self.runs)):
                if self.runs[i].phase != "extract" or self.runs[i].status != "ok":
                    continue
                if status != 0:
                    # the phase ran, but the transaction did not complete: say so
                    self.runs[i] = replace(self.runs[i], status="transaction failed")
                elif self.narrowed is not None:
                    self.runs[i] = replace(self.runs[i], status=f"ok, writes narrowed to "
                                                                f"{self.narrowed} directories")
            import shutil
            for d in self._tempdirs:
                shutil.rmtree(d, ignore_errors=True)
            self._tempdirs.clear()

    def _commit(self, handle, trans) -> int:
        o = self.opts
        policy = self._extract_policy(self._keyring_copy(handle))
        self._extract_env = policy.environment.build(dict(os.environ))
        self._extract_protected = policy.protected
        pre_hooks = self._pre_hooks = self._hooks("PreTransaction")
        request = {"op": o.op, "targets": list(o.targets), "sysupgrade": o.sysupgrade,
                   "noscriptlet": o.noscriptlet,
                   "depends": sorted({d for h in pre_hooks for d in h.depends})}
        with enforce.prepare(policy, cap=o.cap, compat=o.compat) as prepared:
            self._warn(prepared.report)
            w = self._spawn(prepared, handle, trans, request)
            resolver = len(self.runs) - 1
            try:
                plan = self._until_plan(w)
                decision = self.on_plan(plan)
                if decision != "go":
                    w.channel.send({"type": "abort"})
                    self._finish_worker(w)
                if decision == "declined":
                    return 1
                if decision in ("done",):
                    return 0
                if decision == "downloaded":
                    w.close()
                    # this worker only resolved: its line says so, the next one commits
                    self.runs[resolver] = replace(self.runs[resolver],
                                                  subject=f"{o.op} (resolve)",
                                                  status="ok, resolved before the downloads")
                    w = self._spawn(prepared, handle, trans, request)
                    self._quiet_status = True      # it resolves again: say it once
                    again = self._until_plan(w)
                    self._quiet_status = False
                    if _plan_key(again) != _plan_key(plan):
                        w.channel.send({"type": "abort"})
                        raise TransactionFailed("the transaction changed while packages were "
                                                "downloaded; nothing was installed")
                    if any(p.get("download_size") for p in again.get("add", [])):
                        w.channel.send({"type": "abort"})
                        raise TransactionFailed("downloaded packages were not found in the "
                                                "cache; nothing was installed")
                w.channel.send({"type": "go"})
                status = self._until_done(w)
                if self.refused_files:
                    self.err(f"error: {len(self.refused_files)} file(s) were refused by the "
                             f"extract domain and are NOT installed (outside its install "
                             f"prefixes; see `pkgsandbox profile explain extract`)")
                    return 1
                return status
            except PkgsandboxError as exc:
                if isinstance(exc, TransactionFailed):
                    raise
                raise TransactionFailed(exc.message) from None
            finally:
                w.close()

    def _spawn(self, prepared, handle, trans, request):
        # Once the file lists are known, the worker narrows its own domain to the
        # directories this transaction touches (enforce.narrow_to).
        narrow = (prepared.policy, prepared.decision) if prepared.ruleset_fd is not None \
            else None
        w = runner.worker(alpm.engine, handle, trans, request, narrow, prepared=prepared,
                          cwd=self.conf.root, limit=CHANGES_LIMIT, env=self._extract_env)
        self.runs.append(PhaseRun(phase="extract", subject=self.opts.op, report=w.report))
        return w

    def _next(self, w) -> dict:
        msg = w.channel.recv()
        if msg is None:
            raise TransactionFailed(f"the extraction phase ended unexpectedly "
                                    f"(status {w.wait()})")
        kind = msg.get("type")
        if kind == "narrowed":
            self.narrowed = msg.get("directories")
        elif kind == "status":
            if not self._quiet_status:
                self.out(str(msg.get("text", "")))
        elif kind == "log":
            text = str(msg.get("text", ""))
            if "extracting" in text or "could not extract" in text:
                self.refused_files.append(text)
            self.err(f"{msg.get('level', 'error')}: {text}")
        elif kind == "__error__":
            runner.raise_remote(msg)
        return msg

    def _until_plan(self, w) -> dict:
        while True:
            msg = self._next(w)
            kind = msg.get("type")
            if kind == "plan":
                return msg
            if kind == "__result__":
                raise TransactionFailed("the extraction phase ended before resolving")
            if kind not in ("status", "log"):
                raise TransactionFailed(f"unexpected message from the extraction phase: "
                                        f"{kind!r}")

    def _until_done(self, w) -> int:
        pending: dict[str, str | None] = {}
        while True:
            msg = self._next(w)
            kind = msg.get("type")
            if kind == "pkg_start":
                self.on_pkg(msg, "pre", pending)
                if msg.get("wait", True):
                    w.channel.send({"type": "continue"})
            elif kind == "pkg_done":
                self.on_pkg(msg, "post", pending)
                if msg.get("wait", True):
                    w.channel.send({"type": "continue"})
            elif kind == "pre_hooks":
                self.changes = msg.get("changes") or {}
                ok = self.check_protected(self.changes)
                if ok:
                    ok = self.run_hooks("PreTransaction", self.changes,
                                        satisfied=self.changes.get("satisfied", {}), worker=w)
                    if not ok:
                        self.err("error: failed to commit transaction (failed to run "
                                 "transaction hooks)")
                w.channel.send({"type": "continue" if ok else "abort"})
            elif kind == "committed":
                self.run_hooks("PostTransaction", self.changes, worker=w)
                w.channel.send({"type": "done"})
            elif kind == "__result__":
                return 0 if (msg.get("value") or {}).get("committed") else 1
            elif kind not in ("status", "log", "narrowed"):
                raise TransactionFailed(f"unexpected message from the extraction phase: "
                                        f"{kind!r}")

    def _finish_worker(self, w) -> None:
        while True:
            msg = w.channel.recv(timeout=60)
            if msg is None or msg.get("type") in ("__result__", "__error__"):
                return

    def on_plan(self, plan: dict) -> str:
        """Print the targets like pacman, ask, download. Returns "go", "downloaded" (go, in a
        new worker), "done" (nothing more: print-only, download-only, nothing to do) or
        "declined"."""
        o = self.opts
        adds, removes = plan.get("add", []), plan.get("remove", [])
        if not adds and not removes:
            self.out(" there is nothing to do")
            return "done"
        if o.print_only:
            for p in adds:
                urls = [f"{s.rstrip('/')}/{p['filename']}" for s in p["servers"]]
                self.out(urls[0] if urls else p["filename"])
            for p in removes:
                self.out(f"{p['name']}-{p['version']}")
            return "done"
        if o.op == "remove":
            names = "  ".join(f"{p['name']}-{p['version']}" for p in removes)
            self.out(f"\nPackages ({len(removes)}) {names}\n")
            total = sum(p.get("isize") or 0 for p in removes)
            self.out(f"Total Removed Size:  {total / 1048576:.2f} MiB\n")
            question = "Do you want to remove these packages?"
        else:
            names = "  ".join(f"{p['name']}-{p['version']}" for p in adds)
            self.out(f"\nPackages ({len(adds)}) {names}\n")
            dl = sum(p.get("download_size") or 0 for p in adds)
            inst = sum(p.get("isize") or 0 for p in adds)
            if dl:
                self.out(f"Total Download Size:   {dl / 1048576:.2f} MiB")
            self.out(f"Total Installed Size:  {inst / 1048576:.2f} MiB\n")
            question = "Proceed with download?" if o.downloadonly else \
                "Proceed with installation?"
        if not self.confirm(question):
            return "declined"
        downloaded = False
        if o.op != "remove":
            downloaded = self.download_packages(adds)
        if o.downloadonly:
            return "done"
        return "downloaded" if downloaded else "go"

    def confirm(self, question: str) -> bool:
        if self.opts.noconfirm:
            self.out(f":: {question} [Y/n] ")
            return True
        return self.ask(f":: {question} [Y/n] ", default=True)

    def on_pkg(self, msg: dict, when: str, pending: dict) -> None:
        op, name = str(msg.get("op")), str(msg.get("name"))
        version, old = str(msg.get("version")), msg.get("oldversion")
        if when == "pre":
            verb = {"install": "installing", "upgrade": "upgrading", "reinstall": "reinstalling",
                    "downgrade": "downgrading", "remove": "removing"}.get(op, op)
            self.out(f"{verb} {name}...")
            pending[name] = msg.get("scriptlet")
        script = pending.get(name)
        if when == "post":
            pending.pop(name, None)
            if op != "remove":
                self.installed.append(name)
        if not script or self.opts.noscriptlet:
            return
        function = scriptlet.function_for(op, when)
        if not scriptlet.defines(script, function):
            return
        args = scriptlet.arguments(op, version, old)
        try:
            outcome = scriptlet.run(script=script, function=function, args=args,
                                    pkgname=name, pkgver=version, root=self.conf.root,
                                    library=self.library, cap=self.opts.cap,
                                    compat=self.opts.compat, timeout=600)
        except PkgsandboxError as exc:
            self.err(f"error: {name}: {function}: {exc.message}")
            return
        for line in outcome.output.splitlines():
            self.out(line)
        self._log_scriptlet(outcome.output)
        status = "ok" if outcome.status == 0 else f"exit {outcome.status}"
        if outcome.status != 0:
            self.err("error: command failed to execute correctly")
        if outcome.refused:
            self._refused_changes(f"{name} {function}", outcome.refused)
            status += f", {len(outcome.refused)} protected change(s) refused"
        self.runs.append(PhaseRun(phase="scriptlet", subject=f"{name} {function}",
                                  report=outcome.report, status=status))

    def check_protected(self, changes: dict) -> bool:
        """No package file may land at a protected path of the extract profile, unless the
        package is the one that owns it (inspect.OWNED_SENSITIVE). Checked when libalpm is
        about to change the system: a refusal aborts before any change."""
        from .phases.inspect import OWNED_SENSITIVE
        root = self.conf.root.rstrip("/")
        protected = [os.path.relpath(p, root or "/") for p in self._extract_protected]
        bad = []
        for c in changes.get("packages", []):
            owned = OWNED_SENSITIVE.get(str(c.get("name")), ())
            for f in c.get("new_files", []):
                rel = str(f).rstrip("/")
                if any(rel == p or rel.startswith(p + "/") for p in protected) and \
                        not any(rel == o.rstrip("/") or rel.startswith(o) for o in owned):
                    if not str(f).endswith("/"):
                        bad.append(f"{c.get('name')}: /{rel}")
        for b in bad:
            self.err(f"error: package file at a protected path: {b}")
        if bad:
            self.err("error: failed to commit transaction (a package would install files at "
                     "protected paths; nothing was changed)")
        return not bad

    # -- hooks --------------------------------------------------------------------------------

    def _hook_dirs(self) -> list[str]:
        return [os.path.join(self.conf.root, "usr/share/libalpm/hooks"),
                *self.conf.hookdirs]

    def _hooks(self, when: str):
        from . import hooks
        found, errors = hooks.discover(self._hook_dirs())
        for e in errors:
            self.err(f"error: {e}")
        self.hook_errors = errors
        return [h for h in found if h.when == when]

    def run_hooks(self, when: str, changes: dict, *, satisfied: dict | None = None,
                  worker=None) -> bool:
        """Run the hooks of one kind whose triggers match, in file-name order, each in its
        own domain. Returns False when a PreTransaction hook asks for the abort."""
        from . import hooks
        from .phases import hook as hookphase
        # PreTransaction hooks were read when the transaction started (nothing has changed
        # since); PostTransaction hooks are read again: the transaction may have added some.
        candidates = self._pre_hooks if when == "PreTransaction" and \
            self._pre_hooks is not None else self._hooks(when)
        if when == "PreTransaction" and getattr(self, "hook_errors", None):
            return False
        pkgs = tuple(hooks.Change(name=c["name"], op=c["op"],
                                  new_files=tuple(c.get("new_files", ())),
                                  old_files=tuple(c.get("old_files", ())))
                     for c in changes.get("packages", []))
        matched = []
        for h in candidates:
            targets = hooks.match(h, pkgs)
            if targets is not None:
                matched.append((h, targets))
        if not matched:
            return True
        if satisfied is None:
            deps = sorted({d for h, _ in matched for d in h.depends})
            satisfied = {}
            if deps and worker is not None:
                worker.channel.send({"type": "depends", "depends": deps})
                reply = self._next(worker)
                satisfied = reply.get("satisfied", {}) if reply.get("type") == "satisfied" \
                    else {}
        allowed = self._overrides_allowed(matched, worker)
        label = "pre" if when == "PreTransaction" else "post"
        self.out(f":: Running {label}-transaction hooks...")
        ok = True
        for n, (h, targets) in enumerate(matched, 1):
            self.out(f"({n}/{len(matched)}) {h.description or h.name + '.hook'}")
            if not all(satisfied.get(d) for d in h.depends):
                self.err(f"error: unable to run hook {h.name}: could not satisfy dependencies")
                if when == "PreTransaction" and h.abort_on_fail:
                    ok = False
                continue
            try:
                outcome = hookphase.run(hook=h, targets=targets, root=self.conf.root,
                                        library=self.library, cap=self.opts.cap,
                                        compat=self.opts.compat, timeout=600,
                                        override=allowed.get(h.name, True))
            except PkgsandboxError as exc:
                self.err(f"error: hook {h.name}: {exc.message}")
                if when == "PreTransaction" and h.abort_on_fail:
                    ok = False
                continue
            for line in outcome.output.splitlines():
                self.out(line)
            status = "ok" if outcome.status == 0 else f"exit {outcome.status}"
            if outcome.refused:
                self._refused_changes(f"hook {h.name}", outcome.refused)
                status += f", {len(outcome.refused)} protected change(s) refused"
            self.runs.append(PhaseRun(phase="hook", subject=h.name, report=outcome.report,
                                      status=status))
            if outcome.status != 0:
                self.err("error: command failed to execute correctly")
                if when == "PreTransaction" and h.abort_on_fail:
                    ok = False
            if not ok:
                break
        return ok

    def _overrides_allowed(self, matched, worker) -> dict[str, bool]:
        """Per hook name: whether its override (hooks/NAME.yaml) may apply. An override that
        names its `owners` applies to a hook file that an installed package of one of those
        names owns, or that no package owns (an administrator's own hook: packages cannot
        leave unowned files in the hook directories, their phases may not write there);
        not to a hook file another package owns: any package can ship a hook named like
        mkinitcpio's, and must not get mkinitcpio's grants with it. Ownership is asked of
        the extract worker, which reads the local database; without a worker to ask, such
        an override does not apply. Each refusal is said on stderr."""
        wanted: dict[str, tuple[str, tuple[str, ...]]] = {}
        for h, _ in matched:
            try:
                if self.library.find(h.name, "hooks") is None:
                    continue
                owners = self.library.load_override("hook", h.name, "hooks").owners
            except PkgsandboxError:
                continue                 # hookphase.run reports the broken override
            if owners:
                rel = os.path.relpath(h.file, self.conf.root)
                wanted[h.name] = (rel, owners)
        if not wanted:
            return {}
        owned: dict = {}
        if worker is not None:
            worker.channel.send({"type": "owners",
                                 "files": {rel: list(o) for rel, o in wanted.values()}})
            reply = self._next(worker)
            if reply.get("type") == "owned" and isinstance(reply.get("owned"), dict):
                owned = reply["owned"]
        allowed = {}
        for name, (rel, owners) in wanted.items():
            found = owned.get(rel)
            if not isinstance(found, dict):
                allowed[name] = False
                why = "its owner could not be checked"
            else:
                others = [str(o) for o in found.get("others") or ()]
                allowed[name] = bool(found.get("match")) or not others
                why = f"it is owned by {', '.join(others)}, not by {' or '.join(owners)}"
            if not allowed[name]:
                self.err(f"warning: hook {name}: /{rel}: {why}: it runs under the plain hook "
                         f"profile, not under hooks/{name}.yaml")
        return allowed

    def _refused_changes(self, who: str, paths) -> None:
        root = self.conf.root.rstrip("/")
        shown = ", ".join("/" + os.path.relpath(p, root or "/") if root else p for p in paths)
        self.err(f"error: {who}: changes to protected paths refused (not applied): {shown}")
        self.protected_refusals += len(paths)

    def _log_scriptlet(self, output: str) -> None:
        if not output:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            with open(self.conf.logfile, "a", encoding="utf-8") as f:
                for line in output.splitlines():
                    f.write(f"[{stamp}] [ALPM-SCRIPTLET] {line}\n")
        except OSError:
            pass

    def _warn(self, report: EnforcementReport) -> None:
        if not report.landlock:
            warning = enforce.unconfined_warning(report)
            if warning:
                self.err(warning)

    # -- report ------------------------------------------------------------------------------

    def report_lines(self) -> list[str]:
        if not self.runs:
            return []
        lines = [":: pkgsandbox: what each phase ran under"]
        for r in self.runs:
            rep = r.report
            open_items = rep.uncovered()
            closed = sorted({v for _, v in rep.covered})
            extra = f"; not enforced: {', '.join(open_items)}" if open_items else \
                "; nothing left open"
            also = f" + {', '.join(closed)}" if closed else ""
            lines.append(f" {r.phase:<9} {r.subject:<30} [{rep.profile}] Landlock ABI "
                         f"{rep.abi} {rep.status.split()[0]}{also}{extra}; {r.status}")
        return lines


def _explicit_keys(path: str) -> frozenset[str]:
    keys = set()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                s = line.strip()
                if s and not s.startswith("#") and "=" in s:
                    keys.add(s.partition("=")[0].strip())
    except OSError:
        pass
    return frozenset(keys)


def _ask_stdin(prompt: str, *, default: bool) -> bool:
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        sys.stdout.write("\n")
        return False          # pacman: no answer (EOF) is no
    answer = line.strip().lower()
    if not answer:
        return default
    return answer in ("y", "yes")


def _plan_key(plan: dict) -> tuple:
    return (tuple((p.get("name"), p.get("version")) for p in plan.get("add", [])),
            tuple((p.get("name"), p.get("version")) for p in plan.get("remove", [])))
