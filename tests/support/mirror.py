"""A loopback package mirror for tests: serves a directory over HTTP or HTTPS on 127.0.0.1.

Mirror(root) listens on 127.0.0.1 on a free port, in a background thread, until close() (or
the end of its `with` block), which stops every connection thread before it returns. It
answers GET and HEAD for regular files under root with Last-Modified, If-Modified-Since (304),
single byte ranges (206, 416) and If-Range by date, and nothing else: no listings, no '..'.
Every request is recorded in `.requests`, with the status it was answered.

Faults, for testing clients against a misbehaving mirror, either
  - per file: `mirror.set_fault("/core.db", Fault(status=500))`, or
  - by path: `mirror.fault_url("/core.db", stall=5)` gives a URL under /_fault/<spec>/ that
    serves /core.db with that fault (spec: `status=404,stall=5`, flags as bare names).
Each Fault can answer a status code, declare a wrong Content-Length, send more bytes than it
declares, stream an endless body (bounded: ENDLESS_LIMIT bytes or ENDLESS_SECONDS), stall
before the headers or mid-body, drop the connection mid-body, redirect, or ignore Range.

With tls=True it generates (openssl CLI, in a private temp dir) a CA and a server certificate
signed by it for `tls_names` (default 127.0.0.1 and localhost); `.ca_file` is the CA
certificate for clients.

It touches only: its root (read), its temp dir (certificates), and sockets on 127.0.0.1.
"""
from __future__ import annotations

import email.utils
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
ENDLESS_LIMIT = 1 << 30       # an endless body stops after this many bytes ...
ENDLESS_SECONDS = 60.0        # ... or this long, whichever comes first
CHUNK = 1 << 16
FAULT_PREFIX = "/_fault/"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def down_url(path: str = "/") -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused)."""
    return f"http://{HOST}:{free_port()}{path}"


@dataclass(frozen=True, kw_only=True)
class Fault:
    """How to misbehave for one file. Defaults: behave."""
    status: int | None = None          # answer with this status and a short text body
    redirect: str | None = None        # answer 302 with this Location
    content_length: int | None = None  # declare this Content-Length instead of the real one
    extra: int = 0                     # after the body, send this many more bytes
    endless: bool = False              # 200, no Content-Length, bytes until the client leaves
    header_delay: float = 0.0          # sleep this long before the status line
    stall: float = 0.0                 # sleep this long ...
    stall_after: int = 0               # ... after this many body bytes
    drop_after: int | None = None      # close the connection after this many body bytes
    ignore_range: bool = False         # answer 200 with the whole file to a Range request
    times: int | None = None           # only for the first N requests (None: always)

    def spec(self) -> str:
        """The /_fault/<spec>/ form of this fault."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if value is True:
                out.append(f.name)
            else:
                out.append(f"{f.name}={quote(str(value), safe='')}")
        return ",".join(out) or "none"

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        kwargs = {}
        types = {f.name: f.type for f in fields(cls)}
        for item in filter(None, spec.split(",")):
            if item == "none":
                continue
            name, sep, raw = item.partition("=")
            if name not in types:
                raise ValueError(f"unknown fault {name!r}")
            kind = types[name]
            if not sep:
                kwargs[name] = True
            elif "float" in kind:
                kwargs[name] = float(raw)
            elif "int" in kind:
                kwargs[name] = int(raw)
            elif "bool" in kind:
                kwargs[name] = raw.lower() in ("1", "true", "yes")
            else:
                kwargs[name] = unquote(raw)
        return cls(**kwargs)


@dataclass(frozen=True, kw_only=True)
class Request:
    """One request as the mirror saw it."""
    method: str
    path: str                          # as sent, e.g. /_fault/stall=1/core.db
    file: str                          # the file it was for, e.g. /core.db
    headers: tuple[tuple[str, str], ...]
    client: tuple[str, int]
    status: int | None = None          # the status answered (None: none sent)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class Mirror:
    """A directory served on 127.0.0.1 (see the module docstring)."""

    def __init__(self, root, *, tls: bool = False, port: int = 0,
                 tls_names: tuple[str, ...] = ("127.0.0.1", "localhost"),
                 keepalive: bool = False):
        self.root = os.path.realpath(str(root))
        #: keep the connection open after a whole 200/206 answer without a fault (HTTP/1.1
        #: keep-alive, as real mirrors do); every other answer closes it
        self.keepalive = keepalive
        self.tls = tls
        self.tls_names = tuple(tls_names)
        self.requests: list[Request] = []
        self.ca_file: str | None = None
        self._port = port
        self._faults: dict[str, Fault] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmp: str | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> "Mirror":
        context = None
        try:
            if self.tls:
                self._tmp = tempfile.mkdtemp(prefix="pkgsandbox-mirror-")
                os.chmod(self._tmp, 0o755)   # unprivileged clients read the CA certificate
                self.ca_file, cert, key = make_certificates(self._tmp, self.tls_names)
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(cert, key)
            self._server = _Server((HOST, self._port), self, context)
        except BaseException:
            self.close()
            raise
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"mirror:{self.port}", daemon=False)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; returns when every thread of this mirror has ended."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()      # joins the connection threads
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "Mirror":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what tests use -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (still known after close)."""
        assert self._port, "mirror not started"
        return self._port

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def file_url(self, path: str) -> str:
        return self.url + "/" + path.lstrip("/")

    def fault_url(self, path: str, fault: Fault | None = None, **kwargs) -> str:
        """A URL serving `path` with a fault: fault_url("/x", status=404)."""
        fault = replace(fault or Fault(), **kwargs)
        return f"{self.url}{FAULT_PREFIX}{fault.spec()}/{path.lstrip('/')}"

    def set_fault(self, path: str, fault: Fault | None) -> None:
        """Misbehave for every request of `path` (None: behave again)."""
        key = "/" + path.lstrip("/")
        with self._lock:
            if fault is None:
                self._faults.pop(key, None)
            else:
                self._faults[key] = fault
            self._counts.pop(key, None)

    def requests_for(self, path: str) -> list[Request]:
        key = "/" + path.lstrip("/")
        with self._lock:
            return [r for r in self.requests if r.file == key]

    # -- serving (connection threads) ---------------------------------------------------------

    def _answered(self, index: int | None, status: int) -> None:
        if index is None:
            return
        with self._lock:
            self.requests[index] = replace(self.requests[index], status=status)

    def _fault_for(self, key: str, fault: Fault | None) -> Fault | None:
        with self._lock:
            if fault is None:
                fault = self._faults.get(key)
            if fault is None:
                return None
            if fault.times is not None:
                count = self._counts.get(key, 0)
                self._counts[key] = count + 1
                if count >= fault.times:
                    return None
            return fault

    def _serve(self, h: "_Handler", *, head: bool) -> None:
        raw_path = urlsplit(h.path).path
        fault = None
        key = raw_path
        if raw_path.startswith(FAULT_PREFIX):
            spec, _, rest = raw_path[len(FAULT_PREFIX):].partition("/")
            try:
                fault = Fault.parse(spec)
            except (TypeError, ValueError) as exc:
                return self._simple(h, 400, f"bad fault spec: {exc}", head=head)
            key = "/" + rest
        key = unquote(key)
        with self._lock:
            h.record_index = len(self.requests)
            self.requests.append(Request(method=h.command, path=h.path, file=key,
                                         headers=tuple(h.headers.items()),
                                         client=h.client_address[:2]))
        fault = self._fault_for(raw_path if raw_path.startswith(FAULT_PREFIX) else key, fault)
        fault = fault or Fault()
        if fault.header_delay and self._stop.wait(fault.header_delay):
            return
        if fault.redirect:
            h.send_response(302)
            h.send_header("Location", fault.redirect)
            h.send_header("Content-Length", "0")
            h.send_header("Connection", "close")
            h.end_headers()
            return
        if fault.status:
            return self._simple(h, fault.status, f"fault: status {fault.status}", head=head)
        path = self._resolve(key)
        if path is None:
            return self._simple(h, 404, "not found", head=head)
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        since = _parse_date(h.headers.get("If-Modified-Since"))
        if since is not None and int(st.st_mtime) <= since:
            h.send_response(304)
            h.send_header("Last-Modified", last_modified)
            h.send_header("Connection", "close")
            h.end_headers()
            return
        if fault.endless:
            return self._endless(h, last_modified, head=head)
        status, start, end = 200, 0, len(data)
        wanted = h.headers.get("Range")
        if_range = h.headers.get("If-Range")
        if if_range is not None and _parse_date(if_range) != int(st.st_mtime):
            wanted = None         # the client's part is of another version: send it whole
        if wanted and not fault.ignore_range:
            span = _parse_range(wanted, len(data))
            if span is None:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.send_header("Connection", "close")
                h.end_headers()
                return
            status, (start, end) = 206, span
        body = data[start:end]
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Last-Modified", last_modified)
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        declared = len(body) if fault.content_length is None else fault.content_length
        h.send_header("Content-Length", str(declared))
        keep = self.keepalive and fault == Fault()
        if not keep:
            h.send_header("Connection", "close")
        h.end_headers()
        if head:
            return
        self._send_body(h, body + b"\xa5" * fault.extra, fault)
        if keep:
            h.close_connection = False

    def _send_body(self, h: "_Handler", body: bytes, fault: Fault) -> None:
        sent = 0
        stops = sorted({n for n in (fault.stall_after if fault.stall else None,
                                    fault.drop_after) if n is not None})
        while True:
            if fault.stall and sent == fault.stall_after:
                h.wfile.flush()
                if self._stop.wait(fault.stall):
                    return
            if fault.drop_after is not None and sent >= fault.drop_after:
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            if sent >= len(body):
                return
            limit = min([len(body)] + [n for n in stops if n > sent])
            step = min(CHUNK, limit - sent)
            h.wfile.write(body[sent:sent + step])
            sent += step

    def _endless(self, h: "_Handler", last_modified: str, *, head: bool) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Last-Modified", last_modified)
        h.send_header("Connection", "close")
        h.end_headers()
        if head:
            return
        block = b"\x5a" * CHUNK
        deadline = time.monotonic() + ENDLESS_SECONDS
        sent = 0
        while sent < ENDLESS_LIMIT and time.monotonic() < deadline and not self._stop.is_set():
            h.wfile.write(block)
            sent += len(block)

    @staticmethod
    def _simple(h: "_Handler", status: int, text: str, *, head: bool) -> None:
        body = (text + "\n").encode()
        h.send_response(status)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _resolve(self, key: str) -> str | None:
        """The regular file under root that `key` names, or None."""
        if "\0" in key or ".." in key.split("/"):
            return None
        path = os.path.realpath(os.path.join(self.root, key.lstrip("/")))
        if not path.startswith(self.root + os.sep) or not os.path.isfile(path):
            return None
        return path


class _Handler(BaseHTTPRequestHandler):
    server_version = "pkgsandbox-test-mirror"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 20        # no connection thread waits on a silent client for longer

    record_index: int | None = None

    def send_response(self, code, message=None):
        self.server.mirror._answered(self.record_index, code)
        super().send_response(code, message)

    def setup(self):
        super().setup()
        # as real servers on kept-alive connections: without it, a body written after its
        # headers waits for the client's delayed ACK (Nagle), ~40 ms per response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def do_GET(self):
        self._run(head=False)

    def do_HEAD(self):
        self._run(head=True)

    def _run(self, *, head: bool):
        self.close_connection = True
        try:
            self.server.mirror._serve(self, head=head)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, ssl.SSLError):
            pass      # the client went away: that is what many tests do on purpose

    def log_message(self, format, *args):
        log.debug("mirror %s: " + format, self.client_address[0], *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True        # server_close() joins every connection thread
    allow_reuse_address = True

    def __init__(self, address, mirror: Mirror, context: ssl.SSLContext | None):
        self.mirror = mirror
        self.context = context
        super().__init__(address, _Handler)

    def get_request(self):
        sock, addr = super().get_request()
        if self.context is not None:
            # The handshake happens in the connection thread (_Handler.setup), so a client
            # that never speaks TLS cannot block the accept loop.
            sock = self.context.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        log.debug("mirror: error with %s", client_address, exc_info=True)


def make_certificates(directory: str, names=("127.0.0.1", "localhost")) -> tuple[str, str, str]:
    """A test CA and a server certificate for `names` (IP addresses or DNS names) signed by
    it, made with the openssl CLI in `directory`: (ca.pem, server.pem, server.key)."""
    d = directory
    san = ", ".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names)
    ca_key, ca_pem = os.path.join(d, "ca.key"), os.path.join(d, "ca.pem")
    key, csr, pem = (os.path.join(d, n) for n in ("server.key", "server.csr", "server.pem"))
    ext = os.path.join(d, "server.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints = critical, CA:FALSE\n"
                "keyUsage = critical, digitalSignature, keyEncipherment\n"
                "extendedKeyUsage = serverAuth\n"
                f"subjectAltName = {san}\n"
                "subjectKeyIdentifier = hash\n"
                "authorityKeyIdentifier = keyid, issuer\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_pem, "-days", "2",
             "-subj", "/CN=pkgsandbox test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash")
    _openssl("req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={names[0]}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
             "-out", pem, "-days", "2", "-sha256", "-extfile", ext)
    for name in (ca_key, key):
        os.chmod(name, 0o600)
    for name in (ca_pem, pem):
        os.chmod(name, 0o644)
    return ca_pem, pem, key


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, timeout=30,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if proc.returncode:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.decode(errors='replace')}")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _parse_date(value: str | None) -> int | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return None if parsed is None or parsed.tzinfo is None else int(parsed.timestamp())


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """One 'bytes=a-b' / 'bytes=a-' / 'bytes=-n' range as [start, end); None: unsatisfiable."""
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:
            n = int(last)
            return (max(0, size - n), size) if n > 0 and size else None
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or end <= start:
        return None
    return start, min(end, size)


def content(name: str, size: int) -> bytes:
    """Deterministic bytes for a mirror file (the same name and size give the same bytes)."""
    import hashlib
    seed = hashlib.sha256(name.encode()).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def fill(root, sizes: dict[str, int], mtime: float) -> dict[str, bytes]:
    """Write each named file of the given size into root with that mtime (its Last-Modified);
    returns name -> bytes."""
    out = {}
    for name, size in sizes.items():
        data = content(name, size)
        (root / name).write_bytes(data)
        os.utime(root / name, (mtime, mtime))
        out[name] = data
    return out
