"""Landlock ABI knowledge, pure: which right, scope and flag each ABI adds, and downgrade().

This is the only module that compares ABI numbers. It touches nothing: no kernel, no files.
Everyone else asks it what a given ABI supports and what a requested policy becomes there.

The bit values are the kernel's (include/uapi/linux/landlock.h); the ABI that introduced each
is from Documentation/userspace-api/landlock.rst.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

#: Highest ABI this module knows. A kernel reporting more is treated as this one.
KNOWN_ABI = 10

# name -> (bit, first ABI)
FS_RIGHTS: dict[str, tuple[int, int]] = {
    "execute": (1 << 0, 1),
    "write_file": (1 << 1, 1),
    "read_file": (1 << 2, 1),
    "read_dir": (1 << 3, 1),
    "remove_dir": (1 << 4, 1),
    "remove_file": (1 << 5, 1),
    "make_char": (1 << 6, 1),
    "make_dir": (1 << 7, 1),
    "make_reg": (1 << 8, 1),
    "make_sock": (1 << 9, 1),
    "make_fifo": (1 << 10, 1),
    "make_block": (1 << 11, 1),
    "make_sym": (1 << 12, 1),
    "refer": (1 << 13, 2),
    "truncate": (1 << 14, 3),
    "ioctl_dev": (1 << 15, 5),
    "resolve_unix": (1 << 16, 9),
}

#: Rights that mean something on a non-directory; the kernel refuses the others there.
FILE_RIGHTS = frozenset({"execute", "write_file", "read_file", "truncate", "ioctl_dev", "resolve_unix"})

NET_RIGHTS: dict[str, tuple[int, int]] = {
    "bind_tcp": (1 << 0, 4),
    "connect_tcp": (1 << 1, 4),
    "bind_udp": (1 << 2, 10),
    "connect_send_udp": (1 << 3, 10),
}

SCOPES: dict[str, tuple[int, int]] = {
    "abstract_unix_socket": (1 << 0, 6),
    "signal": (1 << 1, 6),
}

RESTRICT_FLAGS: dict[str, tuple[int, int]] = {
    "log_same_exec_off": (1 << 0, 7),
    "log_new_exec_on": (1 << 1, 7),
    "log_subdomains_off": (1 << 2, 7),
    "tsync": (1 << 3, 8),
}

CREATE_RULESET_VERSION = 1 << 0
CREATE_RULESET_ERRATA = 1 << 1
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

#: Errata (LANDLOCK_CREATE_RULESET_ERRATA bit N-1 set = erratum N fixed): number ->
#: (ABI it belongs to, what is affected, consequence while unfixed).
ERRATA: dict[int, tuple[int, str, str]] = {
    1: (4, "TCP port rules", "TCP restrictions may also apply to non-TCP stream sockets (e.g. SMC, MPTCP)"),
    2: (6, "signal scope", "signals between threads of a sandboxed process may be wrongly denied"),
    3: (1, "filesystem rules", "access through disconnected directories (bind mounts) may escape path rules"),
}

# Groups of rights a profile may name instead of exact rights.
ACCESS_GROUPS: dict[str, frozenset[str]] = {
    "read": frozenset({"read_file", "read_dir"}),
    "write": frozenset({"write_file", "truncate"}),
    "execute": frozenset({"execute"}),
    "create": frozenset({"make_reg", "make_dir", "make_sym", "make_fifo", "make_sock"}),
    "remove": frozenset({"remove_file", "remove_dir"}),
    "rename": frozenset({"refer"}),
    "devices": frozenset({"make_char", "make_block", "ioctl_dev"}),
    "unix_connect": frozenset({"resolve_unix"}),
    "all": frozenset(FS_RIGHTS),
}


def _since(table: dict[str, tuple[int, int]], abi: int) -> frozenset[str]:
    return frozenset(name for name, (_, first) in table.items() if first <= abi)


def fs_rights(abi: int) -> frozenset[str]:
    """Filesystem rights the given ABI can handle (0 means no Landlock: none)."""
    return _since(FS_RIGHTS, abi)


def net_rights(abi: int) -> frozenset[str]:
    return _since(NET_RIGHTS, abi)


def scopes(abi: int) -> frozenset[str]:
    return _since(SCOPES, abi)


def restrict_flags(abi: int) -> frozenset[str]:
    return _since(RESTRICT_FLAGS, abi)


def since(name: str) -> int:
    """First ABI that knows a right, scope or flag by name."""
    for table in (FS_RIGHTS, NET_RIGHTS, SCOPES, RESTRICT_FLAGS):
        if name in table:
            return table[name][1]
    raise KeyError(name)


def mask(table: dict[str, tuple[int, int]], names) -> int:
    value = 0
    for name in names:
        value |= table[name][0]
    return value


def ruleset_attr_size(abi: int) -> int:
    """Size of struct landlock_ruleset_attr this ABI takes: fs; + net (4); + scoped (6)."""
    if abi >= 6:
        return 24
    if abi >= 4:
        return 16
    return 8


def clamp(kernel_abi: int, cap: int | None) -> int:
    """The ABI in force: the kernel's, at most KNOWN_ABI, lowered to the cap if one is given."""
    abi = min(max(kernel_abi, 0), KNOWN_ABI)
    if cap is not None:
        abi = min(abi, cap)
    return abi


def errata_affecting(abi: int, errata_mask: int) -> list[tuple[int, str, str]]:
    """Unfixed errata that matter on this ABI: [(number, area, consequence)]."""
    out = []
    for number, (first, area, consequence) in sorted(ERRATA.items()):
        if abi >= first and not errata_mask & (1 << (number - 1)):
            out.append((number, area, consequence))
    return out


# ---------------------------------------------------------------------------------------------
# Compatibility: what a requested policy becomes on a given ABI.


class Compat(str, Enum):
    BEST_EFFORT = "best-effort"
    SOFT_REQUIREMENT = "soft-requirement"
    HARD_REQUIREMENT = "hard-requirement"


class Status(str, Enum):
    FULLY = "fully enforced"
    PARTIALLY = "partially enforced"
    NOT = "not enforced"


@dataclass(frozen=True, kw_only=True)
class Dropped:
    """One requested item the running kernel (or the cap) cannot enforce, and why."""
    kind: str     # fs_right | net_right | port_rule | scope | flag | filesystem | landlock
    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.item}: {self.reason}"


@dataclass(frozen=True, kw_only=True)
class Request:
    """What a policy asks of Landlock, in names (the input of downgrade)."""
    handled_fs: frozenset[str]
    handled_net: frozenset[str]
    scopes: frozenset[str]
    flags: frozenset[str]
    #: rights granted by at least one path rule (REFER on ABI 1 needs this)
    granted_fs: frozenset[str]
    #: TCP/UDP port rules as (port, right) pairs
    port_rights: frozenset[tuple[int, str]]


@dataclass(frozen=True, kw_only=True)
class Downgrade:
    """The outcome of downgrade(): what will be enforced, what is dropped, and the verdict."""
    abi: int
    compat: Compat
    handled_fs: frozenset[str]
    handled_net: frozenset[str]
    scopes: frozenset[str]
    flags: frozenset[str]
    dropped: tuple[Dropped, ...]
    status: Status
    #: False when the compat level says: do not run at all
    may_run: bool
    #: True when Landlock will be applied (may_run and something to enforce)
    restrict: bool
    refusal: str = ""


def _why(name: str, abi: int) -> str:
    if abi == 0:
        return "Landlock unavailable (ABI 0)"
    return f"kernel ABI {abi} < {since(name)}"


def downgrade(req: Request, abi: int, compat: Compat, min_abi: int = 0) -> Downgrade:
    """Decide what of `req` is enforced on `abi` under `compat`; pure and total.

    - best-effort: enforce what the ABI supports, drop the rest with a reason each.
    - soft-requirement: if anything requested is unsupported, enforce nothing (run unconfined)
      and say so; otherwise enforce all.
    - hard-requirement: if anything requested is unsupported, refuse to run.
    - min_abi: an ABI below it refuses to run whatever the compat level.
    REFER on ABI 1: a ruleset on ABI 1 always denies cross-directory rename and link, even
    where a rule grants REFER. A policy that grants REFER therefore cannot keep filesystem
    rules on ABI 1 without breaking; best-effort drops the filesystem rules as a whole
    (reported), the requirement levels treat it like any unsupported right.
    """
    if abi == 0:
        return _no_landlock(req, compat, min_abi)
    dropped: list[Dropped] = []
    fs = frozenset(r for r in req.handled_fs if since(r) <= abi)
    for r in sorted(req.handled_fs - fs, key=lambda n: FS_RIGHTS[n][0]):
        dropped.append(Dropped(kind="fs_right", item=r, reason=_why(r, abi)))
    net = frozenset(r for r in req.handled_net if since(r) <= abi)
    for r in sorted(req.handled_net - net, key=lambda n: NET_RIGHTS[n][0]):
        dropped.append(Dropped(kind="net_right", item=r, reason=_why(r, abi)))
    for port, right in sorted(req.port_rights):
        if right not in req.handled_net:
            continue  # the policy does not handle this right: the rule changes nothing
        if right not in net:
            dropped.append(Dropped(kind="port_rule", item=f"{right}:{port}",
                                   reason=_why(right, abi)))
    sc = frozenset(s for s in req.scopes if since(s) <= abi)
    for s in sorted(req.scopes - sc):
        dropped.append(Dropped(kind="scope", item=s, reason=_why(s, abi)))
    fl = frozenset(f for f in req.flags if since(f) <= abi)
    for f in sorted(req.flags - fl):
        dropped.append(Dropped(kind="flag", item=f, reason=_why(f, abi)))

    if abi == 1 and "refer" in req.granted_fs and fs:
        dropped.append(Dropped(
            kind="filesystem", item="all filesystem rules",
            reason="ABI 1 always denies cross-directory rename/link, which this policy "
                   "grants (refer); enforcing the other rules would break the phase"))
        fs = frozenset()

    requested_something = bool(req.handled_fs or req.handled_net or req.scopes)
    base = dict(abi=abi, compat=compat)
    if abi < min_abi:
        return Downgrade(**base, handled_fs=frozenset(), handled_net=frozenset(),
                         scopes=frozenset(), flags=frozenset(), dropped=tuple(dropped),
                         status=Status.NOT, may_run=False, restrict=False,
                         refusal=f"kernel ABI {abi} is below the profile's min_abi {min_abi}")
    # Flags only tune logging: they never make a sandbox weaker, so they do not count
    # against the requirement levels.
    security_dropped = [d for d in dropped if d.kind != "flag"]
    if security_dropped and compat is Compat.HARD_REQUIREMENT:
        return Downgrade(**base, handled_fs=frozenset(), handled_net=frozenset(),
                         scopes=frozenset(), flags=frozenset(), dropped=tuple(dropped),
                         status=Status.NOT, may_run=False, restrict=False,
                         refusal="hard-requirement: " + "; ".join(map(str, security_dropped)))
    if security_dropped and compat is Compat.SOFT_REQUIREMENT:
        return Downgrade(**base, handled_fs=frozenset(), handled_net=frozenset(),
                         scopes=frozenset(), flags=frozenset(), dropped=tuple(dropped),
                         status=Status.NOT, may_run=True, restrict=False,
                         refusal="soft-requirement not met: running unconfined")
    restrict = bool(fs or net or sc)
    if not restrict:
        status = Status.NOT if requested_something else Status.FULLY
    elif security_dropped:
        status = Status.PARTIALLY
    else:
        status = Status.FULLY
    return Downgrade(**base, handled_fs=fs, handled_net=net, scopes=sc, flags=fl,
                     dropped=tuple(dropped), status=status, may_run=True, restrict=restrict)


def _no_landlock(req: Request, compat: Compat, min_abi: int) -> Downgrade:
    """ABI 0: nothing can be enforced; one dropped item says so."""
    asked = bool(req.handled_fs or req.handled_net or req.scopes)
    dropped = (Dropped(kind="landlock", item="all rules", reason="Landlock unavailable (ABI 0)"),
               ) if asked else ()
    empty = frozenset()
    common = dict(abi=0, compat=compat, handled_fs=empty, handled_net=empty, scopes=empty,
                  flags=empty, dropped=dropped, restrict=False)
    if min_abi > 0:
        return Downgrade(**common, status=Status.NOT, may_run=False,
                         refusal=f"kernel ABI 0 is below the profile's min_abi {min_abi}")
    if asked and compat is Compat.HARD_REQUIREMENT:
        return Downgrade(**common, status=Status.NOT, may_run=False,
                         refusal="hard-requirement: Landlock unavailable (ABI 0)")
    if asked and compat is Compat.SOFT_REQUIREMENT:
        return Downgrade(**common, status=Status.NOT, may_run=True,
                         refusal="soft-requirement not met: Landlock unavailable, "
                                 "running unconfined")
    return Downgrade(**common, status=Status.NOT if asked else Status.FULLY, may_run=True,
                     refusal="Landlock unavailable (ABI 0): running unconfined" if asked else "")


def effective_rule_rights(rights: frozenset[str], handled: frozenset[str], *,
                          is_dir: bool) -> frozenset[str]:
    """Rights a path rule may carry: only handled ones, only file rights on non-directories."""
    out = rights & handled
    if not is_dir:
        out &= FILE_RIGHTS
    return out
