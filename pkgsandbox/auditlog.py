"""The kernel audit subsystem, read through NETLINK_AUDIT: is it built, is it enabled.

Only asks (AUDIT_GET); never changes audit state. Used by `doctor`.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_AUDIT = 9
AUDIT_GET = 1000
NLM_F_REQUEST = 1
NLMSG_ERROR = 2


@dataclass(frozen=True, kw_only=True)
class AuditState:
    available: bool
    enabled: bool | None
    detail: str


def status() -> AuditState:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    except OSError as exc:
        if exc.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
            return AuditState(available=False, enabled=None, detail="audit not built in")
        return AuditState(available=False, enabled=None, detail=f"audit socket: {exc.strerror}")
    try:
        sock.settimeout(2)
        sock.bind((0, 0))
        header = struct.pack("=IHHII", 16, AUDIT_GET, NLM_F_REQUEST, 1, 0)
        sock.send(header)
        while True:
            data = sock.recv(8192)
            length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data)
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, 16)[0]
                if err == 0:
                    continue
                return AuditState(available=True, enabled=None,
                                  detail=f"audit present; status not readable "
                                         f"({os.strerror(err)})")
            if kind == AUDIT_GET:
                _mask, enabled = struct.unpack_from("=II", data, 16)
                return AuditState(available=True, enabled=bool(enabled),
                                  detail="enabled" if enabled else
                                  "built in, disabled (enable with `auditctl -e 1`)")
    except OSError as exc:
        return AuditState(available=True, enabled=None, detail=f"audit query: {exc.strerror}")
    finally:
        sock.close()
