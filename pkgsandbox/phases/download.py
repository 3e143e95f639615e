"""The download phase: fetch sync databases, packages and signatures from the mirrors.

fetch_all() runs INSIDE the download domain (through runner.call, as pacman.conf's
DownloadUser). It may touch only: the download directory it is given (it creates NAME.part
there, appends to it, renames it to NAME, and removes a .part it must discard), the CA bundle
(read), the files named by file:// URLs (read), and TCP connections to the mirrors' ports.
Everything that comes from a mirror is untrusted: body sizes are capped, redirects may not
leave the mirror ports or turn into a file:// read, text from a server is made printable
before it reaches a message, and nothing here interprets the bytes it stores (the orchestrator
verifies and moves them). A NAME.part left by a failed attempt is resumed with Range and
If-Range: its mtime is the Last-Modified of the file it is part of, so a file that changed on
the mirror since (a sync database) is fetched whole instead of spliced onto stale bytes.
fetch_into() is the same for one job and one descriptor the caller opened (`pkgsandbox fetch`,
pacman's XferCommand): the domain then needs no filesystem write right at all.
Job and ports_for() are pure; standard library only.
"""
from __future__ import annotations

import base64
import email.utils
import errno
import fcntl
import http.client
import logging
import os
import pwd
import re
import socket
import ssl
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from urllib.parse import unquote, urljoin, urlsplit

from .. import __version__
from ..errors import BadInput, SetupError

log = logging.getLogger(__name__)

USER_AGENT = f"pkgsandbox/{__version__}"
MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}
SCHEMES = ("http", "https", "file")
PART_SUFFIX = ".part"
CHUNK = 1 << 20          # per read and write of a body: 64 KiB cost ~40 % of the throughput
REDIRECTS = (301, 302, 303, 307, 308)
_MESSAGE_MAX = 400          # one mirror's error, in characters
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Values.

@dataclass(frozen=True, kw_only=True)
class Job:
    """One file to fetch into the download directory, from the first mirror that works."""
    name: str                    # plain file name inside destdir
    urls: tuple[str, ...]        # mirrors in order: http://, https://, file://
    size: int | None = None      # exact expected size, when known
    max_size: int = 512 << 20    # cap when the size is unknown
    if_modified_since: float | None = None   # mtime of the copy we have (db refresh)

    def __post_init__(self):
        check_name(self.name)
        if isinstance(self.urls, str) or not isinstance(self.urls, (tuple, list)):
            raise BadInput(f"{self.name}: urls must be a list of URLs (got {self.urls!r})")
        object.__setattr__(self, "urls", tuple(self.urls))
        if not self.urls:
            raise BadInput(f"{self.name}: no URL to fetch it from")
        ports_for(self.urls)
        if self.size is not None and (isinstance(self.size, bool)
                                      or not isinstance(self.size, int) or self.size < 0):
            raise BadInput(f"{self.name}: size must be a non-negative integer (got {self.size!r})")
        if isinstance(self.max_size, bool) or not isinstance(self.max_size, int) \
                or self.max_size < 0:
            raise BadInput(f"{self.name}: max_size must be a non-negative integer "
                           f"(got {self.max_size!r})")
        if self.if_modified_since is not None and (
                isinstance(self.if_modified_since, bool)
                or not isinstance(self.if_modified_since, (int, float))):
            raise BadInput(f"{self.name}: if_modified_since must be a time stamp "
                           f"(got {self.if_modified_since!r})")

    @property
    def limit(self) -> int:
        """The most bytes this job may store."""
        return self.size if self.size is not None else self.max_size


@dataclass(frozen=True, kw_only=True)
class Fetched:
    """What happened to one job; fetch_all() returns these as dicts (JSON, for the parent)."""
    name: str
    status: str          # downloaded | unchanged | failed
    url: str             # the mirror URL that worked, or the last one tried
    size: int = 0        # bytes now in destdir/NAME (0 unless downloaded)
    mtime: float | None = None   # Last-Modified (or the file:// source's mtime)
    error: str = ""      # one line; "" unless failed


def check_name(name) -> None:
    """A job's name must be a plain file name: it is joined to the download directory."""
    if not isinstance(name, str) or not name:
        raise BadInput(f"download name must be a non-empty string (got {name!r})")
    if "/" in name or "\0" in name or name in (".", ".."):
        raise BadInput(f"download name must be a plain file name (got {name!r})")
    if not name.isprintable():
        raise BadInput(f"download name must be printable (got {name!r})")


def _split(url):
    """urlsplit() plus the checks every URL must pass; raises BadInput naming the URL."""
    if not isinstance(url, str) or not url:
        raise BadInput(f"not a URL: {url!r}")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise BadInput(f"URL contains spaces or control characters: {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInput(f"invalid URL {url!r}: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise BadInput(f"unsupported URL scheme in {url!r} (supported: "
                       + ", ".join(f"{s}://" for s in SCHEMES) + ")")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadInput(f"file URL with a remote host: {url!r}")
        if not parts.path.startswith("/"):
            raise BadInput(f"file URL without an absolute path: {url!r}")
        return parts, None
    if not parts.hostname:
        raise BadInput(f"URL without a host: {url!r}")
    if port == 0:
        raise BadInput(f"invalid port 0 in {url!r}")
    return parts, port or DEFAULT_PORTS[parts.scheme]


def ports_for(urls) -> frozenset[int]:
    """The TCP ports the download domain must be allowed to connect to for these URLs:
    http 80, https 443, an explicit port as written; file:// needs none."""
    if isinstance(urls, str):
        urls = (urls,)
    out = set()
    for url in urls:
        _, port = _split(url)
        if port is not None:
            out.add(port)
    return frozenset(out)


# ---------------------------------------------------------------------------------------------
# The phase.

class _Progress:
    """One line on the terminal (standard error), redrawn at most five times a second:
    files done, bytes, percent of what the jobs announced. Nothing when not on a tty."""

    def __init__(self, jobs, stream_fd: int = 2):
        self.fd = stream_fd
        self.total = sum(j.size or 0 for j in jobs)
        self.files = len(jobs)
        self.done_files = 0
        self.bytes = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def add(self, n: int = 0, *, finished: bool = False) -> None:
        with self._lock:
            self.bytes += n
            self.done_files += 1 if finished else 0
            now = time.monotonic()
            if now - self._last < 0.2 and not finished:
                return
            self._last = now
            pct = f" {min(100, self.bytes * 100 // self.total):3d}%" if self.total else ""
            line = (f"\r:: downloading {self.done_files}/{self.files} files, "
                    f"{self.bytes / 1048576:.1f}"
                    + (f"/{self.total / 1048576:.1f}" if self.total else "") + f" MiB{pct}")
            try:
                os.write(self.fd, line.encode())
            except OSError:
                pass

    def close(self) -> None:
        try:
            os.write(self.fd, b"\n")
        except OSError:
            pass


def resolve_hosts(urls) -> dict[str, list[str]]:
    """Run by the orchestrator before the download phase: the addresses of every http(s)
    host in `urls` (IP literals are left out), so the phase itself needs no DNS and therefore
    no UDP. A name that does not resolve is left out: its jobs fail with a clear error."""
    import socket
    out: dict[str, list[str]] = {}
    for url in urls:
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host or host in out:
            continue
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            continue
        except OSError:
            pass
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            continue
        out[host] = list(dict.fromkeys(info[4][0] for info in infos))
    return out


def fetch_all(jobs, destdir: str, *, parallel: int = 1, connect_timeout: float = 10,
              stall_timeout: float = 10, ca_file: str | None = None,
              progress: bool = False, addresses: dict | None = None) -> list[dict]:
    """Fetch every job into destdir, up to `parallel` at a time; one result dict per job, in
    job order (see Fetched). A per-job failure is reported, never raised; BadInput for bad
    jobs or arguments and SetupError for an unusable download directory are raised before
    anything is fetched."""
    jobs = list(jobs)
    for job in jobs:
        if not isinstance(job, Job):
            raise BadInput(f"not a download job: {job!r}")
    names = [job.name for job in jobs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInput("the same name is downloaded twice: " + ", ".join(dupes))
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise BadInput(f"parallel must be a positive integer (got {parallel!r})")
    for label, value in (("connect_timeout", connect_timeout), ("stall_timeout", stall_timeout)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise BadInput(f"{label} must be a positive number of seconds (got {value!r})")
    session = _Session(destdir=destdir, connect_timeout=float(connect_timeout),
                       stall_timeout=float(stall_timeout), ca_file=ca_file)
    session.addresses = {str(k): [str(a) for a in v] for k, v in (addresses or {}).items()}
    if progress and jobs and os.isatty(2):
        session.progress = _Progress(jobs)

    def one(job):
        result = session.fetch(job)
        if session.progress is not None:
            session.progress.add(finished=True)
        return result
    try:
        if not jobs:
            return []
        if parallel == 1 or len(jobs) == 1:
            results = [one(job) for job in jobs]
        else:
            with ThreadPoolExecutor(max_workers=min(parallel, len(jobs)),
                                    thread_name_prefix="download") as pool:
                results = list(pool.map(one, jobs))
    finally:
        if session.progress is not None:
            session.progress.close()
        session.close()
    return [asdict(r) for r in results]


class _Failure(Exception):
    """One attempt on one mirror failed. `discard`: the .part must not be resumed."""

    def __init__(self, message: str, *, discard: bool = False, retry: bool = False):
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.discard = discard


class _Session:
    """State shared by the jobs of one fetch_all(): the directory and the TLS context.
    destdir None: no directory (_IntoSession writes through a descriptor instead)."""

    def __init__(self, *, destdir: str | None, connect_timeout: float, stall_timeout: float,
                 ca_file: str | None):
        self.destdir = destdir
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.ca_file = ca_file
        self._tls: ssl.SSLContext | None = None
        self._tls_error: str | None = None
        self._lock = threading.Lock()
        self.dirfd = _open_destdir(destdir) if destdir is not None else -1
        self.progress: _Progress | None = None
        self.addresses: dict[str, list[str]] = {}
        #: (scheme, host, port) -> idle connections (HTTP/1.1 keep-alive between files)
        self._keepalive: dict[tuple, list[http.client.HTTPConnection]] = {}

    def close(self) -> None:
        if self.dirfd >= 0:
            os.close(self.dirfd)
            self.dirfd = -1
        with self._lock:
            idle, self._keepalive = self._keepalive, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def tls(self) -> ssl.SSLContext:
        """The client TLS context, made once (on first https use): the system CA bundle or
        ca_file, hostname checking on."""
        with self._lock:
            if self._tls is None and self._tls_error is None:
                try:
                    self._tls = ssl.create_default_context(cafile=self.ca_file)
                except (OSError, ssl.SSLError) as exc:
                    where = self.ca_file or "the system CA bundle"
                    self._tls_error = f"cannot load {where}: {_os_message(exc)}"
            if self._tls_error:
                raise _Failure(self._tls_error)
            return self._tls

    # -- one job ------------------------------------------------------------------------------

    def fetch(self, job: Job) -> Fetched:
        errors = []
        for url in job.urls:
            try:
                try:
                    result = self._attempt(job, url)
                except _Failure as first:
                    if not first.retry:
                        raise
                    log.info("%s: %s: %s; trying once more", job.name, _redact(url),
                             first.message)
                    result = self._attempt(job, url)
            except _Failure as failure:
                errors.append(f"{_redact(url)}: {_clip(failure.message)}")
                log.info("%s: %s failed: %s", job.name, _redact(url), failure.message)
                if failure.discard:
                    self._unlink_part(job)
                continue
            log.info("%s: %s from %s (%d bytes)", job.name, result.status, _redact(url),
                     result.size)
            return result
        if len(errors) > 1:
            message = f"all {len(errors)} mirrors failed: " + "; ".join(errors)
        else:
            message = errors[0]
        return Fetched(name=job.name, status="failed", url=job.urls[-1], error=message)

    def _attempt(self, job: Job, url: str) -> Fetched:
        try:
            parts, _ = _split(url)
        except BadInput as exc:
            raise _Failure(exc.message) from None
        if parts.scheme == "file":
            return self._copy_file(job, url, unquote(parts.path))
        return self._http(job, url)

    # -- the download directory ---------------------------------------------------------------

    def _part(self, job: Job) -> tuple[int, float]:
        """(bytes, mtime) of NAME.part if it may be resumed; (0, 0) to start afresh. A failed
        attempt leaves the .part's mtime at the Last-Modified of the file it came from."""
        try:
            st = os.stat(job.name + PART_SUFFIX, dir_fd=self.dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return 0, 0.0
        except OSError as exc:
            raise _Failure(f"{job.name}{PART_SUFFIX}: {_os_message(exc)}") from None
        if not stat.S_ISREG(st.st_mode):
            self._unlink_part(job)
            return 0, 0.0
        if st.st_size > job.limit or (job.size is None and st.st_size == job.limit):
            self._unlink_part(job)
            return 0, 0.0
        return st.st_size, st.st_mtime

    def _open_part(self, job: Job, *, append: bool):
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
        flags |= os.O_APPEND if append else os.O_TRUNC
        try:
            fd = os.open(job.name + PART_SUFFIX, flags, 0o644, dir_fd=self.dirfd)
        except OSError as exc:
            raise _Failure(f"cannot write {job.name}{PART_SUFFIX}: {_os_message(exc)}") from None
        return open(fd, "ab" if append else "wb", buffering=0)

    def _unlink_part(self, job: Job) -> None:
        try:
            os.unlink(job.name + PART_SUFFIX, dir_fd=self.dirfd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("%s%s: cannot remove: %s", job.name, PART_SUFFIX, _os_message(exc))

    def _finish(self, job: Job, out, url: str, *, mtime_ns: int | None) -> Fetched:
        """Set the mtime on the finished .part and rename it to its final name."""
        try:
            if mtime_ns is not None:
                os.utime(out.fileno(), ns=(mtime_ns, mtime_ns))
            size = os.fstat(out.fileno()).st_size
            out.close()
            os.rename(job.name + PART_SUFFIX, job.name, src_dir_fd=self.dirfd,
                      dst_dir_fd=self.dirfd)
        except OSError as exc:
            raise _Failure(f"cannot store {job.name}: {_os_message(exc)}") from None
        return Fetched(name=job.name, status="downloaded", url=url, size=size,
                       mtime=None if mtime_ns is None else mtime_ns / 1e9)

    def _store(self, job: Job, url: str, source, *, offset: int, expected: int | None,
               mtime_ns: int | None, read) -> Fetched:
        """Write what read(n) yields to NAME.part (appending after `offset` bytes, or from
        zero), within the job's limit; `expected`: the total the source promised."""
        limit = job.limit
        out = self._open_part(job, append=offset > 0)
        try:
            total = offset
            while True:
                try:
                    chunk = read(min(CHUNK, limit - total + 1))
                except TimeoutError:
                    raise _Failure(f"stalled: no data for {self.stall_timeout:g} s "
                                   f"(after {total - offset} bytes of the body)") from None
                except OSError as exc:
                    raise _Failure(f"reading {source}: {_os_message(exc)} (after "
                                   f"{total - offset} bytes of the body)") from None
                except http.client.HTTPException as exc:
                    raise _Failure(f"bad response body: {_describe(exc)}") from None
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    what = f"expected {job.size}" if job.size is not None \
                        else f"the limit is {job.max_size}"
                    raise _Failure(f"too large: more than {limit} bytes ({what})", discard=True)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _Failure(f"cannot write {job.name}{PART_SUFFIX}: "
                                   f"{_os_message(exc)}") from None
                if self.progress is not None:
                    self.progress.add(len(chunk))
            if expected is not None and total < expected:
                raise _Failure(f"short: {source} ended after {total} of {expected} bytes")
            if job.size is not None and total != job.size:
                raise _Failure(f"short: {source} ended after {total} of {job.size} bytes")
            return self._finish(job, out, url, mtime_ns=mtime_ns)
        except _Failure as failure:
            if mtime_ns is not None and not failure.discard and not out.closed:
                # Mark what the bytes are a part of: the next attempt resumes with this date
                # as its If-Range, so a file that changed since is fetched whole, not spliced.
                try:
                    os.utime(out.fileno(), ns=(mtime_ns, mtime_ns))
                except OSError:
                    pass
            raise
        finally:
            out.close()

    # -- file:// ------------------------------------------------------------------------------

    def _copy_file(self, job: Job, url: str, path: str) -> Fetched:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise _Failure(f"cannot open {path} as {_whoami()}: {_os_message(exc)}") from None
        with open(fd, "rb", buffering=0) as src:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Failure(f"{path}: not a regular file")
            if job.if_modified_since is not None and st.st_mtime <= job.if_modified_since:
                return Fetched(name=job.name, status="unchanged", url=url, mtime=st.st_mtime)
            if job.size is not None and st.st_size != job.size:
                raise _Failure(f"size mismatch: {path} has {st.st_size} bytes, expected "
                               f"{job.size}", discard=st.st_size > job.size)
            if job.size is None and st.st_size > job.max_size:
                raise _Failure(f"too large: {path} has {st.st_size} bytes (the limit is "
                               f"{job.max_size})", discard=True)
            return self._store(job, url, path, offset=0, expected=st.st_size,
                               mtime_ns=st.st_mtime_ns, read=src.read)

    # -- http:// and https:// -----------------------------------------------------------------

    def _http(self, job: Job, url: str) -> Fetched:
        allowed = ports_for(job.urls)
        origin = urlsplit(url)
        current = url
        hops = 0
        offset, part_mtime = self._part(job)
        restarted = False
        while True:
            parts, port = _split(current)
            conn, reused = self._connection(parts, port)
            keep = False
            try:
                headers = {"User-Agent": USER_AGENT, "Accept": "*/*",
                           "Accept-Encoding": "identity"}
                if offset:
                    headers["Range"] = f"bytes={offset}-"
                    headers["If-Range"] = email.utils.formatdate(part_mtime, usegmt=True)
                if job.if_modified_since is not None:
                    headers["If-Modified-Since"] = email.utils.formatdate(
                        job.if_modified_since, usegmt=True)
                if parts.username is not None and _same_origin(parts, origin):
                    creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                    headers["Authorization"] = "Basic " + base64.b64encode(
                        creds.encode()).decode()
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                try:
                    for attempt in (1, 2):
                        try:
                            conn.request("GET", target, headers=headers)
                            resp = conn.getresponse()
                            break
                        except (http.client.RemoteDisconnected, ConnectionError):
                            if not reused or attempt == 2:
                                raise
                            # an idle connection the server had closed: once more, a new one
                            conn.close()
                            conn, reused = self._connect(parts, port), False
                except TimeoutError:
                    raise _Failure(f"stalled: no response for {self.stall_timeout:g} s") \
                        from None
                except OSError as exc:
                    # A server that closed without a word (a dropped keep-alive, an
                    # overloaded mirror) gets one more try before the next mirror.
                    raise _Failure(f"request failed: {_os_message(exc)}",
                                   retry=isinstance(exc, http.client.RemoteDisconnected)) \
                        from None
                except http.client.HTTPException as exc:
                    raise _Failure(f"bad HTTP response: {_describe(exc)}") from None
                status = resp.status
                if status in REDIRECTS:
                    hops += 1
                    current = self._redirect(resp, current, allowed, hops)
                    continue
                if status == 304:
                    if job.if_modified_since is None:
                        raise _Failure("HTTP 304 to a request that was not conditional")
                    return Fetched(name=job.name, status="unchanged", url=url,
                                   mtime=_http_date(resp.getheader("Last-Modified")))
                if status == 416 and offset and not restarted:
                    total = _unsatisfied_total(resp.getheader("Content-Range"))
                    if total == offset and (job.size is None or job.size == offset):
                        # The .part is complete: a previous run stopped before the rename.
                        out = self._open_part(job, append=True)
                        try:
                            return self._finish(job, out, url, mtime_ns=_ns(_http_date(
                                resp.getheader("Last-Modified"))))
                        finally:
                            out.close()
                    self._unlink_part(job)
                    offset, restarted = 0, True
                    continue
                if status == 206 and offset:
                    start, total = _content_range(resp.getheader("Content-Range"))
                    if start != offset:
                        raise _Failure(f"server resumed at byte {start}, asked for {offset}")
                    if total is not None and job.size is not None and total != job.size:
                        raise _Failure(f"size mismatch: the server has {total} bytes, expected "
                                       f"{job.size}", discard=True)
                    resume_from = offset
                elif status == 200:
                    resume_from = 0
                else:
                    reason = _printable(resp.reason or "")
                    raise _Failure(f"HTTP {status}" + (f" {reason}" if reason else ""))
                fetched = self._body(job, url, resp, offset=resume_from)
                if not resp.isclosed() and resp.length == 0:
                    resp.read()                  # the body is whole: let the response go
                keep = resp.isclosed() and not resp.will_close
                return fetched
            finally:
                if keep:
                    self._idle(parts, port, conn)
                else:
                    conn.close()

    # -- connections: kept alive between the files of one session, per origin -------------------

    @staticmethod
    def _origin(parts, port: int) -> tuple:
        return (parts.scheme, parts.hostname, port)

    def _connection(self, parts, port: int) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection to this origin left by a finished download (and True), or a
        new one (and False)."""
        with self._lock:
            idle = self._keepalive.get(self._origin(parts, port))
            if idle:
                return idle.pop(), True
        return self._connect(parts, port), False

    def _idle(self, parts, port: int, conn) -> None:
        """A connection whose response was read to its end, for the next file."""
        with self._lock:
            self._keepalive.setdefault(self._origin(parts, port), []).append(conn)

    def _connect(self, parts, port: int) -> http.client.HTTPConnection:
        host = parts.hostname
        where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        cls = http.client.HTTPSConnection if parts.scheme == "https" else \
            http.client.HTTPConnection
        kwargs = {"context": self.tls()} if parts.scheme == "https" else {}
        conn = cls(host, port, timeout=self.connect_timeout, **kwargs)
        resolved = self.addresses.get(host)
        if resolved:
            # Names were resolved before the phase (no DNS, no UDP in here): connect to those
            # addresses; Host, SNI and certificate checks still use the name.
            def create_connection(_address, timeout, source_address=None, _ips=resolved):
                last = None
                for ip in _ips:
                    try:
                        return socket.create_connection((ip, port), timeout, source_address)
                    except OSError as exc:
                        last = exc
                raise last or OSError(errno.EHOSTUNREACH, "no address")
            conn._create_connection = create_connection
        try:
            # TCP first (HTTPConnection.connect), TLS second: each failure named for its step.
            http.client.HTTPConnection.connect(conn)
        except TimeoutError:
            conn.close()
            raise _Failure(f"connect to {where}: timed out after {self.connect_timeout:g} s") \
                from None
        except OSError as exc:
            conn.close()
            raise _Failure(f"connect to {where}: {_os_message(exc)}") from None
        if parts.scheme == "https":
            try:
                conn.sock = self.tls().wrap_socket(conn.sock, server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                conn.close()
                raise _Failure(f"TLS with {where}: certificate verification failed: "
                               f"{_printable(exc.verify_message or str(exc))}") from None
            except ssl.SSLError as exc:
                conn.close()
                raise _Failure(f"TLS with {where}: {_printable(exc.reason or str(exc))}") \
                    from None
            except TimeoutError:
                conn.close()
                raise _Failure(f"TLS with {where}: handshake timed out after "
                               f"{self.connect_timeout:g} s") from None
            except OSError as exc:
                conn.close()
                raise _Failure(f"TLS with {where}: {_os_message(exc)}") from None
        conn.sock.settimeout(self.stall_timeout)
        return conn

    @staticmethod
    def _redirect(resp, current: str, allowed: frozenset[int], hops: int) -> str:
        location = resp.getheader("Location")
        if not location:
            raise _Failure(f"HTTP {resp.status} redirect without a Location")
        if hops > MAX_REDIRECTS:
            raise _Failure(f"more than {MAX_REDIRECTS} redirects")
        target = urljoin(current, location.strip())
        shown = _clip(_printable(_redact(target)), 200)
        try:
            parts, port = _split(target)
        except BadInput:
            raise _Failure(f"redirect to an invalid URL: {shown}") from None
        if parts.scheme not in ("http", "https"):
            raise _Failure(f"redirect to {shown} refused: only http and https are followed")
        if port not in allowed:
            raise _Failure(f"redirect to {shown} refused: port {port} is not a mirror port "
                           f"({', '.join(map(str, sorted(allowed)))}); the download domain "
                           f"would refuse the connection")
        log.debug("redirect %d to %s", hops, shown)
        return target

    def _body(self, job: Job, url: str, resp, *, offset: int) -> Fetched:
        length = resp.length            # Content-Length, None when absent or chunked
        expected = None if length is None else offset + length
        if expected is not None:
            if expected > job.limit:
                raise _Failure(f"too large: the server declares {expected} bytes "
                               + (f"(expected {job.size})" if job.size is not None
                                  else f"(the limit is {job.max_size})"), discard=True)
            if job.size is not None and expected != job.size:
                raise _Failure(f"size mismatch: the server declares {expected} bytes, "
                               f"expected {job.size}", discard=True)
        return self._store(job, url, "the connection", offset=offset, expected=expected,
                           mtime_ns=_ns(_http_date(resp.getheader("Last-Modified"))),
                           read=resp.read1)


def _open_destdir(destdir: str) -> int:
    """The download directory, opened once; it must exist and take new files."""
    try:
        fd = os.open(destdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError(f"download directory {destdir}: cannot open it as {_whoami()}: "
                         f"{_os_message(exc)}", path=destdir) from None
    probe = f".pkgsandbox-probe.{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=fd))
        os.unlink(probe, dir_fd=fd)
    except OSError as exc:
        os.close(fd)
        raise SetupError(f"download directory {destdir}: cannot create files there as "
                         f"{_whoami()}: {_os_message(exc)}", path=destdir) from None
    return fd


# ---------------------------------------------------------------------------------------------
# One job into a descriptor (pkgsandbox fetch: pacman's XferCommand names the file).

def fetch_into(job: Job, fd: int, *, connect_timeout: float = 10, stall_timeout: float = 10,
               ca_file: str | None = None, deadline: float | None = None) -> dict:
    """Fetch one job into `fd`, an open, writable regular file, instead of destdir/NAME.

    For `pkgsandbox fetch` (pacman's XferCommand), where pacman names the output file (its
    NAME.part) and renames it itself. Runs INSIDE the download domain, which then needs no
    filesystem write right at all: every byte goes through the descriptor the unconfined
    parent opened. The file's bytes are a part to resume, exactly like a NAME.part in
    fetch_all (Range, and If-Range with the file's mtime); a part that must not be resumed
    is truncated, never unlinked, and nothing is renamed. `deadline`: seconds for the whole
    job, after which it fails with its bytes kept for a resume.

    Returns a Fetched dict. downloaded: size is the file's size, mtime the Last-Modified.
    failed: size is the number of bytes kept for a resume, mtime the Last-Modified of the
    file they are part of (None if unknown). The mtime is set on the file here when the
    caller's user may (it owns the file); otherwise the caller sets it from the result, so
    the next attempt's If-Range matches. A per-job failure is reported, never raised;
    BadInput for bad arguments or a descriptor that is not a writable regular file."""
    if not isinstance(job, Job):
        raise BadInput(f"not a download job: {job!r}")
    for label, value in (("connect_timeout", connect_timeout), ("stall_timeout", stall_timeout),
                         ("deadline", 1 if deadline is None else deadline)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise BadInput(f"{label} must be a positive number of seconds (got {value!r})")
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise BadInput(f"not a file descriptor: {fd!r}")
    try:
        st = os.fstat(fd)
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError as exc:
        raise BadInput(f"{job.name}{PART_SUFFIX}: unusable descriptor: "
                       f"{_os_message(exc)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{job.name}{PART_SUFFIX}: not a regular file")
    if mode == os.O_RDONLY:
        raise BadInput(f"{job.name}{PART_SUFFIX}: descriptor not open for writing")
    session = _IntoSession(fd, connect_timeout=float(connect_timeout),
                           stall_timeout=float(stall_timeout), ca_file=ca_file,
                           deadline=None if deadline is None else float(deadline))
    try:
        result = session.fetch(job)
    finally:
        session.close()
    out = asdict(result)
    if result.status == "failed":
        try:
            kept = os.fstat(fd).st_size
        except OSError:
            kept = 0
        out["size"] = kept
        out["mtime"] = (session.stamp_ns / 1e9 if kept and session.stamp_ns is not None
                        else None)
    return out


class _IntoSession(_Session):
    """A _Session whose one 'NAME.part' is an open descriptor: resumed from its size and
    mtime, appended to, truncated instead of unlinked, never renamed."""

    def __init__(self, fd: int, *, deadline: float | None, **kwargs):
        super().__init__(destdir=None, **kwargs)
        self.fd = fd
        self.budget = deadline
        self.deadline = None if deadline is None else time.monotonic() + deadline
        #: Last-Modified (ns) of the file the descriptor's bytes are part of, when known
        self.stamp_ns: int | None = None

    def _part(self, job: Job) -> tuple[int, float]:
        try:
            st = os.fstat(self.fd)
        except OSError as exc:
            raise _Failure(f"{job.name}{PART_SUFFIX}: {_os_message(exc)}") from None
        if st.st_size > job.limit or (job.size is None and st.st_size == job.limit):
            self._unlink_part(job)
            return 0, 0.0
        return st.st_size, st.st_mtime

    def _open_part(self, job: Job, *, append: bool):
        try:
            if not append:
                os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_END)
            dup = os.dup(self.fd)          # shares the offset; close-on-exec
        except OSError as exc:
            raise _Failure(f"cannot write {job.name}{PART_SUFFIX}: {_os_message(exc)}") from None
        return open(dup, "wb", buffering=0)    # an int: no O_TRUNC, nothing is reopened

    def _unlink_part(self, job: Job) -> None:
        self.stamp_ns = None
        try:
            os.ftruncate(self.fd, 0)
        except OSError as exc:
            log.warning("%s%s: cannot truncate: %s", job.name, PART_SUFFIX, _os_message(exc))

    def _finish(self, job: Job, out, url: str, *, mtime_ns: int | None) -> Fetched:
        self.stamp_ns = mtime_ns
        if mtime_ns is not None:
            try:
                os.utime(self.fd, ns=(mtime_ns, mtime_ns))
            except OSError:
                pass        # not this user's file: the caller sets it from the result
        try:
            size = os.fstat(self.fd).st_size
        except OSError as exc:
            raise _Failure(f"cannot store {job.name}: {_os_message(exc)}") from None
        out.close()
        return Fetched(name=job.name, status="downloaded", url=url, size=size,
                       mtime=None if mtime_ns is None else mtime_ns / 1e9)

    def _store(self, job: Job, url: str, source, *, offset: int, expected: int | None,
               mtime_ns: int | None, read) -> Fetched:
        self.stamp_ns = mtime_ns
        if self.deadline is not None:
            read = self._within_deadline(read)
        return super()._store(job, url, source, offset=offset, expected=expected,
                              mtime_ns=mtime_ns, read=read)

    def _within_deadline(self, read):
        """read(n), failing (the bytes kept, as for a stall) once the job's time is up."""
        got = 0

        def bounded(n):
            nonlocal got
            if time.monotonic() > self.deadline:
                raise _Failure(f"took longer than {self.budget:g} s (after {got} bytes of "
                               f"the body)")
            chunk = read(n)
            got += len(chunk)
            return chunk
        return bounded


# ---------------------------------------------------------------------------------------------
# Small pure helpers.

def _whoami() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, OSError):
        return f"uid {uid}"


def _os_message(exc: BaseException) -> str:
    """'Permission denied (EACCES)' for an OSError; the class and text otherwise."""
    if isinstance(exc, OSError) and exc.strerror:
        name = errno.errorcode.get(exc.errno) if isinstance(exc.errno, int) else None
        return _printable(exc.strerror + (f" ({name})" if name else ""))
    return _describe(exc)


def _describe(exc: BaseException) -> str:
    text = _printable(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _printable(text: str) -> str:
    """Server text in a message: one line, printable characters only."""
    return "".join(c if c.isprintable() else "?" for c in str(text)).strip()


def _clip(text: str, limit: int = _MESSAGE_MAX) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _redact(url: str) -> str:
    """A URL for messages and logs: without its password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


def _same_origin(a, b) -> bool:
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds) * 1_000_000_000


def _content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total or None) of a 206's Content-Range."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        raise _Failure(f"HTTP 206 with an unreadable Content-Range "
                       f"{_clip(_printable(value or ''), 80)!r}")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _unsatisfied_total(value: str | None) -> int | None:
    match = _UNSATISFIED_RANGE.match(value or "")
    return int(match.group(1)) if match else None
