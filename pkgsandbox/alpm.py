"""The only module that imports pyalpm (and pycman, which ships with it).

Parent side (unconfined, parses nothing untrusted): read pacman.conf through pycman's
enumerator, create the libalpm handle, take the database lock with an empty transaction and
remove libalpm's hook directories (pyalpm cannot pass ALPM_TRANS_FLAG_NOHOOKS, and libalpm adds
{root}/usr/share/libalpm/hooks by itself: pkgsandbox runs hooks in their own domains instead).

Child side, `engine()`: runs inside the `extract` domain, in a child forked after the lock was
taken; it inherits the handle and the transaction, resolves targets (reading the sync and local
databases and package files, all untrusted), sends the plan to the parent, and commits with
scriptlets disabled, pausing at each package so the parent can run that package's scriptlets in
their own domains, in pacman's order. It reads each scriptlet in-process (the package file's
.INSTALL through pkgsandbox.archive, the local database's `install` for a removal), and none
under --noscriptlet. It never releases the transaction: the parent does, which removes the lock.
"""
from __future__ import annotations

import ctypes
import logging
import os
import warnings

import pyalpm
from pycman import config as pycman_config

from . import archive, pacmanconf
from .errors import BadInput, PkgsandboxError, SetupError

log = logging.getLogger(__name__)


class LockError(PkgsandboxError):
    """The database is locked by another pacman or pkgsandbox."""


class TransactionError(PkgsandboxError):
    """libalpm refused or failed the transaction (pacman's exit status 1)."""


# ---------------------------------------------------------------------------------------------
# pacman.conf

def read_conf(path: str) -> pacmanconf.PacmanConf:
    """pacman.conf through pycman's enumerator; a bad file is one line naming file and line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise BadInput(f"config file {path} could not be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise BadInput(f"{path}:{line}: not valid UTF-8") from None
    lines = _line_index(path, text)
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with pycman_config.PacmanConfEnumeratorSession(path) as enumerate_conf:
                triples = list(enumerate_conf())
        except pycman_config.InvalidSyntax as exc:
            raise BadInput(f"{_where(exc, lines)}: {exc.problem}: {exc.arg}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"{path}: {exc}") from None
    for w in caught:
        if isinstance(w.message, pycman_config.InvalidSyntax):
            problems.append(f"{_where(w.message, lines)}: {w.message.problem}: {w.message.arg}")
    conf = pacmanconf.build(path, triples, lines=lines)
    if problems:
        from dataclasses import replace
        conf = replace(conf, warnings=tuple(problems))
    return conf


def _line_index(path: str, text: str) -> dict[str, int]:
    """'section/Key' -> first line number (for error messages), plus 'line:TEXT' entries."""
    out: dict[str, int] = {}
    section = None
    for number, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
            continue
        if not s or s.startswith("#"):
            continue
        key = s.partition("=")[0].strip()
        out.setdefault(f"{section}/{key}", number)
        out.setdefault(f"line:{s}", number)
        out.setdefault(f"key:{key}", number)
    return out


def _where(exc, lines: dict[str, int]) -> str:
    arg = str(getattr(exc, "arg", ""))
    line = lines.get(f"line:{arg.strip()}") or lines.get(f"key:{arg.strip()}")
    return f"{exc.filename}:{line}" if line else str(exc.filename)


# ---------------------------------------------------------------------------------------------
# handle and lock (parent)

_libalpm = None


def _lib():
    global _libalpm
    if _libalpm is None:
        for name in ("libalpm.so.15", "libalpm.so.14", "libalpm.so.13", "libalpm.so"):
            try:
                _libalpm = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise SetupError("libalpm shared library not found")
        _libalpm.alpm_option_get_root.restype = ctypes.c_char_p
        _libalpm.alpm_option_get_root.argtypes = [ctypes.c_void_p]
        _libalpm.alpm_option_get_dbpath.restype = ctypes.c_char_p
        _libalpm.alpm_option_get_dbpath.argtypes = [ctypes.c_void_p]
        _libalpm.alpm_option_get_hookdirs.restype = ctypes.c_void_p
        _libalpm.alpm_option_get_hookdirs.argtypes = [ctypes.c_void_p]
        _libalpm.alpm_option_set_hookdirs.restype = ctypes.c_int
        _libalpm.alpm_option_set_hookdirs.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return _libalpm


def _raw_handle(handle) -> int:
    """The alpm_handle_t* inside a pyalpm.Handle (PyObject_HEAD, then the pointer), checked
    against libalpm's own answer for root and dbpath before it is trusted."""
    pointer = ctypes.c_void_p.from_address(id(handle) + object.__basicsize__).value
    lib = _lib()
    if not pointer:
        raise SetupError("cannot reach libalpm's handle to disable its hooks")
    root = lib.alpm_option_get_root(pointer)
    dbpath = lib.alpm_option_get_dbpath(pointer)
    if root is None or dbpath is None or root.decode() != handle.root \
            or dbpath.decode() != handle.dbpath:
        raise SetupError("cannot reach libalpm's handle to disable its hooks")
    return pointer


def disable_libalpm_hooks(handle) -> None:
    """Empty libalpm's hook directory list so commit() runs no hook; verified after."""
    lib = _lib()
    pointer = _raw_handle(handle)
    if lib.alpm_option_set_hookdirs(pointer, None) != 0 or lib.alpm_option_get_hookdirs(pointer):
        raise SetupError("could not disable libalpm's own hook runs")


def open_handle(conf: pacmanconf.PacmanConf):
    try:
        handle = pyalpm.Handle(conf.root, conf.dbpath)
    except pyalpm.error as exc:
        raise TransactionError(f"failed to initialize alpm library: {_alpm_message(exc)} "
                               f"(root {conf.root}, dbpath {conf.dbpath})") from None
    handle.logfile = conf.logfile
    handle.gpgdir = conf.gpgdir
    handle.arch = conf.arch
    for d in conf.cachedirs:
        handle.add_cachedir(d)
    for name in conf.ignore_pkgs:
        handle.add_ignorepkg(name)
    for name in conf.ignore_groups:
        handle.add_ignoregrp(name)
    for name in conf.no_upgrade:
        handle.add_noupgrade(name)
    for name in conf.no_extract:
        handle.add_noextract(name)
    handle.checkspace = False
    for repo in conf.repos:
        db = handle.register_syncdb(repo.name, repo.siglevel)
        db.servers = list(repo.servers)
    disable_libalpm_hooks(handle)
    return handle


TRANS_FLAGS = ("nodeps", "force", "nosave", "nodepversion", "cascade", "recurse", "dbonly",
               "alldeps", "downloadonly", "noscriptlet", "noconflicts", "needed",
               "allexplicit", "unneeded", "recurseall")


def lock(handle, flags: dict[str, bool]):
    """Take pacman's database lock with a transaction the worker will fill. Scriptlets are
    always disabled in it: pkgsandbox runs them itself."""
    unknown = set(flags) - set(TRANS_FLAGS)
    if unknown:
        raise SetupError(f"unknown transaction flags {sorted(unknown)}")
    kw = dict(flags)
    kw["noscriptlet"] = True
    try:
        return handle.init_transaction(**kw)
    except pyalpm.error as exc:
        message = _alpm_message(exc)
        if "lock" in message or os.path.exists(os.path.join(handle.dbpath, "db.lck")):
            raise LockError(f"failed to init transaction (unable to lock database)\n"
                            f"  if you're sure a package manager is not already running, "
                            f"you can remove {os.path.join(handle.dbpath, 'db.lck')}") from None
        raise TransactionError(f"failed to init transaction ({message})") from None


def lock_only(conf: pacmanconf.PacmanConf):
    """Hold the database lock while sync databases are refreshed, with a handle that has no
    database registered (libalpm checks a sync database when it is registered, so the real
    handle is made after the refresh). Returns the transaction that holds the lock."""
    try:
        handle = pyalpm.Handle(conf.root, conf.dbpath)
    except pyalpm.error as exc:
        raise TransactionError(f"failed to initialize alpm library: {_alpm_message(exc)} "
                               f"(root {conf.root}, dbpath {conf.dbpath})") from None
    disable_libalpm_hooks(handle)
    return handle, lock(handle, {})


def handover(holder, handle, flags: dict[str, bool]):
    """Pass the lock from the refresh's holder to the transaction's handle in one step (the
    same hand-over pacman makes between its database update and its transaction)."""
    release(holder)
    return lock(handle, flags)


def release(trans) -> None:
    try:
        trans.release()
    except pyalpm.error as exc:
        log.warning("could not release the transaction: %s", _alpm_message(exc))


def _alpm_message(exc) -> str:
    args = getattr(exc, "args", ())
    return str(args[0]) if args else str(exc)


# ---------------------------------------------------------------------------------------------
# the engine (child, inside the extract domain)

EVENT_TEXT = {5: "resolving dependencies...", 7: "looking for conflicting packages...",
              28: "checking keyring...", 13: "checking package integrity...",
              15: "loading package files...", 3: "checking for file conflicts...",
              9: ":: Processing package changes..."}
EVENT_START, EVENT_DONE = 11, 12
EVENT_TRANSACTION_START = 9
MAX_SCRIPTLET = 1 << 20


def engine(chan, handle, trans, request: dict, narrow=None) -> dict:
    """Resolve, report the plan, wait for the go, commit. Returns a summary dict."""
    state = {"sequence": [], "index": -1, "progress": None,
             "depends": list(request.get("depends", [])), "narrow": narrow}

    def on_event(event, _text=""):
        if event in EVENT_TEXT and event != EVENT_TRANSACTION_START:
            chan.send({"type": "status", "text": EVENT_TEXT[event]})
        if event == EVENT_TRANSACTION_START and state["sequence"]:
            # libalpm's own PreTransaction hook run happened just before (with no hook
            # directory); nothing has changed yet: the parent runs the pre-transaction hooks
            # in their domains and may abort here.
            changes = _changes(local, trans, state)
            chan.send({"type": "pre_hooks", "changes": changes})
            reply = chan.recv()
            while reply and reply.get("type") == "owners":      # hook overrides' owners
                chan.send({"type": "owned", "owned": _owned(handle, reply.get("files"))})
                reply = chan.recv()
            if reply and reply.get("type") == "continue" and state.get("narrow") is not None:
                files = [f for c in changes["packages"]
                         for f in c.get("new_files", []) + c.get("old_files", [])]
                from . import enforce
                count = enforce.narrow_to(*state["narrow"], root=handle.root, paths=files)
                chan.send({"type": "narrowed", "directories": count})
            if not reply or reply.get("type") != "continue":
                chan.send({"type": "__result__", "value": {"ok": False, "committed": False,
                                                           "aborted": True}})
                os._exit(1)
            chan.send({"type": "status", "text": EVENT_TEXT[event]})
        elif event == EVENT_START:
            state["index"] += 1
            item = state["sequence"][state["index"]]
            script = None if request.get("noscriptlet") else \
                _scriptlet_for(handle, trans, item)
            item["paused"] = script is not None
            # Only a package with a scriptlet makes libalpm wait for the parent.
            chan.send({"type": "pkg_start", **_public(item), "scriptlet": script,
                       "wait": item["paused"]})
            if item["paused"]:
                _wait(chan, "continue")
        elif event == EVENT_DONE:
            item = state["sequence"][state["index"]]
            chan.send({"type": "pkg_done", **_public(item), "wait": item.get("paused", True)})
            if item.get("paused", True):
                _wait(chan, "continue")

    def on_log(level, line):
        if level & pyalpm.LOG_ERROR:
            chan.send({"type": "log", "level": "error", "text": line.rstrip("\n")})
        elif level & pyalpm.LOG_WARNING:
            chan.send({"type": "log", "level": "warning", "text": line.rstrip("\n")})

    def on_progress(*args):
        pass

    handle.eventcb = on_event
    handle.logcb = on_log
    handle.progresscb = on_progress
    local = handle.get_localdb()
    _add_targets(handle, trans, local, request)
    try:
        trans.prepare()
    except pyalpm.error as exc:
        raise TransactionError(_describe_failure("prepare", exc)) from None
    adds = list(trans.to_add)
    removes = list(trans.to_remove)
    plan_add = []
    for p in adds:
        old = local.get_pkg(p.name)
        plan_add.append({
            "name": p.name, "version": p.version, "oldversion": old.version if old else None,
            "filename": p.filename, "repo": p.db.name if p.db else None,
            "servers": list(p.db.servers) if p.db and p.db.name != "local" else [],
            "size": p.size, "isize": p.isize, "download_size": p.download_size,
            "sha256": p.sha256sum or None, "md5": p.md5sum or None,
            "has_sig": bool(p.base64_sig), "has_scriptlet": bool(p.has_scriptlet)})
    plan_remove = [{"name": p.name, "version": p.version, "isize": p.isize} for p in removes]
    chan.send({"type": "plan", "add": plan_add, "remove": plan_remove})
    answer = chan.recv()
    if not answer or answer.get("type") != "go":
        return {"ok": True, "committed": False}
    # The order libalpm works in: removals (conflicts, replaces, -R) first, then additions.
    # Scriptlets are looked up when each package starts (never under --noscriptlet): only
    # then are the package files loaded (a sync database does not say whether a package has
    # an .INSTALL).
    sequence = []
    for p in removes:
        sequence.append({"op": "remove", "name": p.name, "version": p.version,
                         "oldversion": p.version, "pkg": p, "remove": True})
    for p, info in zip(adds, plan_add):
        old = info["oldversion"]
        if old is None:
            kind = "install"
        else:
            cmp = pyalpm.vercmp(p.version, old)
            kind = "upgrade" if cmp > 0 else "reinstall" if cmp == 0 else "downgrade"
        sequence.append({"op": kind, "name": p.name, "version": p.version, "oldversion": old,
                         "add_index": len(sequence) - len(removes)})
    state["sequence"] = sequence
    try:
        trans.commit()
    except pyalpm.error as exc:
        raise TransactionError(_describe_failure("commit", exc)) from None
    # The parent runs the post-transaction hooks now; it may ask which Depends are met.
    chan.send({"type": "committed"})
    while True:
        msg = chan.recv()
        if not msg or msg.get("type") == "done":
            break
        if msg.get("type") == "depends":
            local_after = handle.get_localdb()
            chan.send({"type": "satisfied", "satisfied": {
                str(d): pyalpm.find_satisfier(local_after.pkgcache, str(d)) is not None
                for d in msg.get("depends", [])}})
        elif msg.get("type") == "owners":
            chan.send({"type": "owned", "owned": _owned(handle, msg.get("files"))})
    return {"ok": True, "committed": True, "done": state["index"] + 1}


def _changes(local, trans, state) -> dict:
    """What the transaction changes, for hook triggers: per package, its operation and the
    file lists (libalpm form) of the new and the installed package; plus which hook Depends
    are met now (for PreTransaction hooks)."""
    out = []
    current = {p.name: p for p in trans.to_add}
    for item in state["sequence"]:
        name = item["name"]
        if item.get("remove"):
            pkg = item["pkg"]
            out.append({"name": name, "op": "remove", "new_files": [],
                        "old_files": [f[0] for f in pkg.files]})
            continue
        new = current.get(name)
        old = local.get_pkg(name)
        out.append({"name": name, "op": "install" if old is None else "upgrade",
                    "new_files": [f[0] for f in new.files] if new is not None else [],
                    "old_files": [f[0] for f in old.files] if old is not None else []})
    return {"packages": out,
            "satisfied": {d: pyalpm.find_satisfier(local.pkgcache, d) is not None
                          for d in state.get("depends", [])}}


def _owned(handle, files) -> dict:
    """For each hook file (relative to the root) and the package-name patterns its override
    is for: {"match": installed packages matching a pattern whose file list holds it,
    "others": when none matches, every other package that owns it}. The matching packages'
    file lists are read first; all of them only when none of those owns the file (a hook an
    administrator wrote is owned by no package; an impostor's is owned by the impostor)."""
    import fnmatch
    out: dict[str, dict] = {}
    if not isinstance(files, dict):
        return out
    packages = handle.get_localdb().pkgcache
    for path, patterns in files.items():
        if not isinstance(path, str) or not isinstance(patterns, list):
            continue
        named = {p.name for p in packages
                 if any(fnmatch.fnmatchcase(p.name, str(g)) for g in patterns)}
        match = [p.name for p in packages if p.name in named
                 and any(f[0] == path for f in p.files)]
        others = [] if match else [p.name for p in packages if p.name not in named
                                   and any(f[0] == path for f in p.files)]
        out[path] = {"match": match, "others": others}
    return out


def _public(item: dict) -> dict:
    return {k: item[k] for k in ("op", "name", "version", "oldversion")}


def _scriptlet_for(handle, trans, item: dict) -> str | None:
    if item.get("remove"):
        pkg = item["pkg"]
        return _installed_scriptlet(handle, pkg) if pkg.has_scriptlet else None
    current = list(trans.to_add)
    pkg = current[item["add_index"]] if item["add_index"] < len(current) else None
    if pkg is None or pkg.name != item["name"]:
        raise TransactionError(f"libalpm's package order changed under pkgsandbox "
                               f"(expected {item['name']})")
    return _archive_scriptlet(handle, pkg) if pkg.has_scriptlet else None


def _wait(chan, kind: str) -> None:
    reply = chan.recv()
    if not reply or reply.get("type") != kind:
        raise TransactionError("the parent ended the transaction")


def _add_targets(handle, trans, local, request) -> None:
    op = request["op"]
    missing = []
    try:
        if op == "sync":
            if request.get("sysupgrade"):
                trans.sysupgrade(False)
            syncdbs = handle.get_syncdbs()
            for target in request["targets"]:
                pkgs = _find_sync(syncdbs, target)
                if not pkgs:
                    missing.append(target)
                    continue
                for p in pkgs:
                    trans.add_pkg(p)
        elif op == "upgrade":
            for path in request["targets"]:
                try:
                    trans.add_pkg(handle.load_pkg(path))
                except pyalpm.error as exc:
                    raise TransactionError(f"'{path}': {_alpm_message(exc)}") from None
        elif op == "remove":
            for name in request["targets"]:
                p = local.get_pkg(name)
                if p is None:
                    group = local.read_grp(name)
                    if group:
                        for gp in group[1]:
                            trans.remove_pkg(gp)
                        continue
                    missing.append(name)
                    continue
                trans.remove_pkg(p)
    except pyalpm.error as exc:
        raise TransactionError(_alpm_message(exc)) from None
    if missing:
        raise TransactionError("\n".join(f"target not found: {m}" for m in missing))


def _find_sync(syncdbs, target: str):
    repo, _, name = target.rpartition("/")
    dbs = [db for db in syncdbs if not repo or db.name == repo]
    for db in dbs:
        p = db.get_pkg(name)
        if p is not None:
            return [p]
    for db in dbs:
        p = pyalpm.find_satisfier(db.pkgcache, name)
        if p is not None:
            return [p]
    for db in dbs:
        group = db.read_grp(name)
        if group:
            return list(group[1])
    return []


def _archive_scriptlet(handle, pkg) -> str | None:
    """.INSTALL of the package file in the cache (or the -U file), read in this process
    through libarchive, found as libalpm finds the one it runs (archive.read_member)."""
    path = None
    for d in handle.cachedirs:
        candidate = os.path.join(d, pkg.filename)
        if os.path.exists(candidate):
            path = candidate
            break
    if path is None and os.path.isabs(pkg.filename):
        path = pkg.filename
    if path is None:
        return None
    data = archive.read_member(path, b".INSTALL", limit=MAX_SCRIPTLET)
    return None if data is None else data.decode("utf-8", errors="replace")


def _installed_scriptlet(handle, pkg) -> str | None:
    path = os.path.join(handle.dbpath, "local", f"{pkg.name}-{pkg.version}", "install")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SCRIPTLET + 1)
    except OSError:
        return None
    return None if len(data) > MAX_SCRIPTLET else data.decode("utf-8", errors="replace")


def _describe_failure(stage: str, exc) -> str:
    args = getattr(exc, "args", ())
    message = str(args[0]) if args else str(exc)
    details = []
    for extra in args[1:]:
        if isinstance(extra, (list, tuple)):
            for item in extra:
                details.append(_format_detail(item))
    text = f"failed to {stage} transaction ({message})"
    if details:
        text += "\n" + "\n".join(f":: {d}" for d in details if d)
    return text


def _format_detail(item) -> str:
    if isinstance(item, (list, tuple)):
        return " ".join(str(x) for x in item)
    return str(item)


def vercmp(a: str, b: str) -> int:
    return pyalpm.vercmp(a, b)
