"""`pkgsandbox fetch URL -o OUTPUT`: one download in the download domain, for stock pacman.

In pacman.conf: `XferCommand = /usr/bin/pkgsandbox fetch %u -o %o` (add `--config PATH` when
pacman runs with another configuration: pacman passes only %u and %o). pacman 6 runs it with
its working directory set to the download directory, %o being that directory's NAME.part;
on exit status 0 it renames NAME.part to NAME, on anything else it tries the next server (or
gives up with its own errors, after this command's one line saying why). A NAME.part left by an earlier
attempt is resumed (pacman removes it first only when it forces a refresh, -Syy).

How "the domain may write only OUTPUT" is built: the unconfined parent (root, under pacman)
opens OUTPUT itself, O_NOFOLLOW, creating it if needed, and checks that it is a regular file
with one link; the child, forked into the domain as pacman.conf's DownloadUser, receives that
descriptor over its channel (SCM_RIGHTS) and writes every byte through it
(download.fetch_into). The domain itself grants NO filesystem write right: the profile's
`{downloaddir}` grants are dropped (policy_for), so the child cannot create, remove, rename or
even reopen a file by path, OUTPUT included, and a descriptor is the only capability it
holds. This was chosen over a Landlock rule on the file (write_file + truncate on OUTPUT's
inode) because such a rule lets the child open OUTPUT by path, which needs the DownloadUser
to own the file (so pacman's cached packages would end up owned by the download user) and to
search every directory above it; with a descriptor the file stays root's, the path is
resolved once by the parent, and the child sees no path at all. A descriptor must not outlive
the download, though: pacman verifies the file once this command exits, and a process the
child left behind (setsid() escapes a process-group kill) could change it afterwards. So the
parent is a child subreaper while the child runs, and kills its process group and then every
process re-parented to it before it returns. The parent sets the file's mtime to the
Last-Modified the child reports (the child, not the owner, may not), so a failed download is
resumed with a matching If-Range next time.

The domain connects only to the URL's port (download.ports_for); a file:// URL gets read
access to that one source file instead. Sizes are capped by what the name says (libalpm's
own caps: 16 KiB for a signature, 128 MiB for a database; packages, whose exact size pacman
does not pass to an XferCommand, PACKAGE_MAX_SIZE), and the whole fetch by DEADLINE.
Quiet on success; one error line and exit status 1 on failure; --json prints one object.
It touches: pacman.conf (read), OUTPUT (the parent opens it, and removes it again only if it
created it and nothing was written), and the download child.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
from dataclasses import replace
from urllib.parse import unquote, urlsplit

from .. import enforce, profile, runner
from ..errors import BadInput, EXIT_FAILED, SetupError
from ..policy import PathGrant, Policy
from . import download

log = logging.getLogger(__name__)

#: libalpm's caps (be_sync.c, sync.c); an XferCommand is not told them, so they are applied here
SIG_MAX_SIZE = 16 << 10
DB_MAX_SIZE = 128 << 20
#: a package's exact size is in the sync database, which an XferCommand is not given; this only
#: keeps a hostile mirror from filling the disk (libalpm checks size and checksum afterwards)
PACKAGE_MAX_SIZE = 8 << 30
#: the whole fetch, in seconds (an endless trickle ends here; the .part is kept for a resume)
DEADLINE = 6 * 3600.0
#: how long the parent waits beyond the deadline before it kills the child's process group
_GRACE = 60.0

_DB_NAME = re.compile(r"\.(db|files)(\.tar(\.[A-Za-z0-9]+)?)?$")


def max_size_for(name: str) -> int:
    """The most bytes a file of this name may have: libalpm's caps by kind."""
    if name.endswith(".sig"):
        return SIG_MAX_SIZE
    if _DB_NAME.search(name):
        return DB_MAX_SIZE
    return PACKAGE_MAX_SIZE


def job_for(url: str, output: str, *, max_size: int | None = None) -> download.Job:
    """The download job: named for OUTPUT without its .part (the name pacman renames it to)."""
    base = os.path.basename(output.rstrip("/"))
    name = base[:-len(download.PART_SUFFIX)] if base.endswith(download.PART_SUFFIX) \
        and len(base) > len(download.PART_SUFFIX) else base
    download.check_name(name)
    return download.Job(name=name, urls=(url,),
                        max_size=max_size_for(name) if max_size is None else max_size)


def policy_for(url: str, *, library: profile.Library, read: tuple[str, ...] = ()) -> Policy:
    """The `download` profile for one URL: TCP connect to the URL's port only (none for
    file://), read on a file:// source file and on `read` (e.g. a CA file), and no grant
    written with {downloaddir}: the child writes only through the descriptor it is handed."""
    ports = download.ports_for([url])
    prof = library.load("download")
    prof = replace(prof, filesystem=tuple(g for g in prof.filesystem
                                          if "{downloaddir}" not in g.path))
    policy = profile.resolve(prof, {"server_ports": ",".join(map(str, sorted(ports)))},
                             phase="download")
    extra = []
    parts = urlsplit(url)
    if parts.scheme == "file":
        source = unquote(parts.path)
        if os.path.isfile(source):
            extra.append(PathGrant(path=source, rights=frozenset({"read_file"}),
                                   origin="file:// source"))
    extra += [PathGrant(path=p, rights=frozenset({"read_file"}), origin="fetch: read")
              for p in read]
    if extra:
        policy = replace(policy, paths=policy.paths + tuple(extra))
    return policy


def download_user(conf, conf_path: str) -> runner.User | None:
    """pacman.conf's DownloadUser when running as root; None: download as the caller (not
    root, or no DownloadUser set). A DownloadUser that does not exist is an error."""
    name = conf.download_user
    if not name or os.geteuid() != 0:
        return None
    try:
        return runner.User.lookup(name)
    except SetupError:
        raise SetupError(
            f"DownloadUser '{name}' (in {conf_path}) does not exist: create it (useradd "
            f"--system --no-create-home --shell /usr/sbin/nologin {name}) or remove "
            f"DownloadUser; pkgsandbox never falls back to downloading as root") from None


def open_output(output: str) -> tuple[int, bool]:
    """(descriptor, created) for OUTPUT: a regular file with one link, never followed through
    a symlink; created (0644) when missing. BadInput when it cannot be used."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    created = True
    try:
        try:
            fd = os.open(output, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            created = False
            st = os.lstat(output)
            if not stat.S_ISREG(st.st_mode):
                raise BadInput(f"output {output}: exists and is not a regular file") from None
            fd = os.open(output, flags)
    except OSError as exc:
        raise BadInput(f"output {output}: {download._os_message(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"output {output}: not a regular file")
        if st.st_nlink != 1:
            raise BadInput(f"output {output}: has {st.st_nlink} hard links; refusing to "
                           f"write through it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def _child(chan, job: download.Job, options: dict) -> dict:
    """In the domain: take the output descriptor from the channel, fetch into it."""
    _, fds, _, _ = socket.recv_fds(chan.sock, 1, 1)
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise SetupError("the download child was not handed its output descriptor")
    try:
        return download.fetch_into(job, fds[0], **options)
    finally:
        os.close(fds[0])


def fetch(url: str, output: str, *, prepared: enforce.Prepared, user: runner.User | None,
          max_size: int | None = None, ca_file: str | None = None,
          connect_timeout: float = 10, stall_timeout: float = 10,
          deadline: float = DEADLINE) -> dict:
    """Fetch URL into OUTPUT in the prepared domain, as `user`; the child's result dict
    (download.fetch_into), with the file's mtime set from it. Raises what the sandbox setup
    raises; a failed download is a result, not an exception."""
    job = job_for(url, output, max_size=max_size)
    fd, created = open_output(output)
    result = None
    try:
        result = _run_child(job, fd, output, prepared=prepared, user=user, deadline=deadline,
                            options={"connect_timeout": connect_timeout,
                                     "stall_timeout": stall_timeout, "ca_file": ca_file,
                                     "deadline": deadline})
        mtime = result.get("mtime")
        if isinstance(mtime, (int, float)) and not isinstance(mtime, bool) \
                and os.fstat(fd).st_size > 0:
            try:
                os.utime(fd, (mtime, mtime))
            except (OSError, OverflowError, ValueError):
                pass                      # a date the child made up: leave the mtime
        return result
    finally:
        try:
            if created and (result is None or result.get("status") != "downloaded") \
                    and os.fstat(fd).st_size == 0:
                _remove_if_same(output, fd)
        finally:
            os.close(fd)


def _run_child(job: download.Job, fd: int, output: str, *, prepared: enforce.Prepared,
               user: runner.User | None, deadline: float, options: dict) -> dict:
    """Start the download child, hand it fd, return its result dict. However it ends, no
    process below this one is left holding fd: pacman verifies the file once this command
    exits, so nothing may write to it then. The child's process group is killed first, then
    whatever left it (re-parented here: the _Reaper)."""
    reaper = runner.Reaper()
    w = None
    try:
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "LANG", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
               or k.startswith("LC_")}
        w = runner.worker(_child, job, options, prepared=prepared, user=user, cwd="/", env=env)
        try:
            socket.send_fds(w.channel.sock, [b"\0"], [fd])
        except OSError as exc:
            raise SetupError(f"cannot hand {output} to the download child: "
                             f"{exc.strerror or exc}") from None
        msg = w.channel.recv(timeout=deadline + _GRACE)
        if msg is None:
            raise SetupError(f"the download child ended without a result "
                             f"(status {w.wait(timeout=10)})")
        if msg.get("type") == "__error__":
            runner.raise_remote(msg)
        if msg.get("type") != "__result__" or not isinstance(msg.get("value"), dict):
            raise SetupError("the download child sent an unexpected message")
        return msg["value"]
    finally:
        try:
            if w is not None:
                w.kill()
                w.close()
            leftovers = reaper.sweep()
            if leftovers:
                log.warning("killed %d process(es) the download child left behind",
                            leftovers)
        finally:
            reaper.close()


def _remove_if_same(path: str, fd: int) -> None:
    """Unlink path if it still names the file fd is open on."""
    try:
        a, b = os.fstat(fd), os.lstat(path)
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            os.unlink(path)
    except OSError as exc:
        log.warning("%s: cannot remove the empty output: %s", path, exc.strerror)


def command(url: str, output: str, *, conf_path: str, library, cap, compat, as_json: bool,
            out, err, max_size: int | None = None, ca_file: str | None = None,
            stall_timeout: float = 10, deadline: float = DEADLINE) -> int:
    """pkgsandbox fetch URL -o OUTPUT. 0 when OUTPUT holds the whole file; 1 (one error line)
    when the download failed; setup problems raise (cli.main gives them their exit codes)."""
    from .. import alpm          # the only module that imports pyalpm (pacman.conf)
    download.ports_for([url])    # a bad URL is bad input before anything else happens
    output = os.path.abspath(output)
    job_for(url, output, max_size=max_size)
    conf = alpm.read_conf(conf_path)
    user = download_user(conf, conf_path)
    policy = policy_for(url, library=library, read=(ca_file,) if ca_file else ())
    with enforce.prepare(policy, cap=cap, compat=compat) as prepared:
        warning = enforce.unconfined_warning(prepared.report)
        if warning and not prepared.report.landlock:
            err(warning)
        result = fetch(url, output, prepared=prepared, user=user, max_size=max_size,
                       ca_file=ca_file, stall_timeout=stall_timeout, deadline=deadline)
        report = replace(prepared.report, user=user.name if user else "")
    ok = result.get("status") == "downloaded"
    if as_json:
        out(json.dumps({"url": download._redact(url), "output": output,
                        "status": result.get("status"), "size": result.get("size"),
                        "mtime": result.get("mtime"), "error": result.get("error", ""),
                        "report": report.as_dict()}, indent=2))
    elif not ok:
        err(f"pkgsandbox: error: failed retrieving {job_for(url, output).name}: "
            f"{result.get('error') or result.get('status')}")
    return 0 if ok else EXIT_FAILED
