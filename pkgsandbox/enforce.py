"""Build a Landlock ruleset for a Policy (in the parent) and enter it (in the child).

prepare() does the costly part once, in the unconfined orchestrator: decide with
abi.downgrade(), create the ruleset, open each granted path and add its rule. The result can be
entered by any number of children: Prepared.layers() is what pkgsandbox._native needs to apply
every layer with system calls only (runner.py). The ruleset descriptor is close-on-exec, so no
sandboxed program inherits it.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
from dataclasses import dataclass, replace

from . import abi, hardening, landlock, safepath
from .abi import Compat, Status
from .errors import RequirementError, SetupError
from .policy import EnforcementReport, Policy

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Prepared:
    """A ruleset ready to be entered, and the report that entering it yields; plus the layers
    beside Landlock the child applies (hardening.py)."""
    decision: abi.Downgrade
    report: EnforcementReport
    ruleset_fd: int | None
    flags: int
    private_network: bool = False
    capabilities: frozenset[str] | None = None
    deny_unix: bool = False
    deny_datagrams: bool = False
    policy: Policy | None = None
    #: copy-on-write overlays as detached mounts: ((mount fd, target path), ...); the rules
    #: on paths under a target were made on the overlay's inodes; the child attaches them
    mounts: tuple[tuple[int, str], ...] = ()

    def layers(self) -> dict:
        """The child's layer arguments for pkgsandbox._native (spawn/apply)."""
        seccomp = None
        if self.deny_unix or self.deny_datagrams:
            seccomp = hardening.socket_filter_program(unix=self.deny_unix,
                                                      datagrams=self.deny_datagrams)
        return {
            "netns": self.private_network,
            "limit_caps": self.capabilities is not None,
            "caps_keep": hardening.capability_mask(self.capabilities or frozenset()),
            "last_cap": hardening.last_cap(),
            "seccomp": seccomp,
            "ruleset_fd": -1 if self.ruleset_fd is None else self.ruleset_fd,
            "restrict_flags": self.flags,
        }

    def close(self) -> None:
        if self.ruleset_fd is not None:
            os.close(self.ruleset_fd)
            self.ruleset_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except OSError:
            pass


def decide(policy: Policy, *, kernel: landlock.KernelSupport, cap: int | None,
           compat: Compat | None = None) -> abi.Downgrade:
    """Pure decision for this kernel and cap (what `profile explain` shows)."""
    level = compat or policy.compat
    in_force = abi.clamp(kernel.abi, cap)
    # No special case is needed for the cap at 1 on a newer kernel: the kernel treats REFER
    # as handled by any ruleset that handles filesystem access, so reparenting is refused
    # (EXDEV) exactly as on a real ABI 1 kernel (shown by tests/test_enforcement.py).
    return abi.downgrade(policy.request(), in_force, level, policy.min_abi)


def layers_for(policy: Policy, decision: abi.Downgrade, *, as_root: bool
               ) -> tuple[dict, tuple[tuple[str, str], ...]]:
    """Pure: which layers beside Landlock apply, and how each is reported.
    - capabilities: as root, everything but the profile's `capabilities` list is dropped;
    - network: a phase granted no port gets a private network namespace when it runs as root
      (no UDP, raw or abstract sockets reach the host's, whatever the ABI);
    - UNIX sockets: on ABI >= 9 Landlock's resolve_unix confines pathname sockets; below it,
      a seccomp filter refuses new AF_UNIX sockets unless the profile lists sockets (then
      they are open, and reported so)."""
    plan = {"private_network": False, "capabilities": None, "deny_unix": False,
            "deny_datagrams": False}
    covered: dict[str, str] = {}
    out = [("landlock", decision.status.value + f" (ABI {decision.abi})"),
           ("no_new_privs", "set before landlock_restrict_self")]
    if as_root and policy.capabilities is not None:
        plan["capabilities"] = policy.capabilities
        out.append(("capabilities", "bounding/effective/permitted/inheritable limited to "
                    + (", ".join(sorted(policy.capabilities)) or "none")))
    elif as_root:
        out.append(("capabilities", "unchanged (the profile lists none): full root"))
    else:
        out.append(("capabilities", "none (unprivileged user)"))
    if policy.private_network and as_root:
        plan["private_network"] = True
        out.append(("network", "private network namespace: no TCP, UDP, raw or abstract "
                               "socket reaches the host"))
        for item in ("bind_tcp", "connect_tcp", "bind_udp", "connect_send_udp",
                     "abstract_unix_socket"):
            covered[item] = "private network namespace"
    elif not policy.ports:
        out.append(("network", "TCP refused by Landlock" if "connect_tcp" in
                    decision.handled_net else "NOT confined (no Landlock TCP rules here)"))
    else:
        udp = "udp by Landlock" if "connect_send_udp" in decision.handled_net else \
            "UDP NOT confined (ABI < 10)"
        out.append(("network", f"TCP ports {', '.join(str(p.port) for p in policy.ports if p.right == 'connect_tcp') or '-'}; {udp}"))
    if not policy.datagram_sockets and hardening.seccomp_supported() \
            and not plan["private_network"]:
        plan["deny_datagrams"] = True
        out.append(("udp", "seccomp: no datagram (UDP) socket at all"))
        covered.setdefault("bind_udp", "seccomp (no UDP socket)")
        covered.setdefault("connect_send_udp", "seccomp (no UDP socket)")
    if "resolve_unix" in decision.handled_fs:
        out.append(("unix_sockets", "pathname sockets: Landlock resolve_unix"
                    + (f" ({', '.join(policy.unix_sockets)})" if policy.unix_sockets else "")))
    elif policy.unix_sockets == () and hardening.seccomp_supported():
        plan["deny_unix"] = True
        out.append(("unix_sockets", "seccomp: new AF_UNIX sockets refused (ABI < 9)"))
        covered.setdefault("resolve_unix", "seccomp (no AF_UNIX socket)")
        covered.setdefault("abstract_unix_socket", "seccomp (no AF_UNIX socket)")
    elif policy.unix_sockets is None:
        out.append(("unix_sockets", "NOT confined (ABI < 9; the profile does not ask)"))
    else:
        out.append(("unix_sockets", "NOT confined (ABI < 9): the profile allows "
                    + ", ".join(policy.unix_sockets)))
    plan["covered"] = tuple(sorted(covered.items()))
    return plan, tuple(out)


def build_ruleset(policy: Policy, decision: abi.Downgrade,
                  mounts: tuple[tuple[int, str], ...] = ()) -> tuple[int, int, list[str]]:
    """Create the ruleset and add every rule: (fd, rules added, grants skipped and why).
    `mounts`: copy-on-write overlays, detached ((fd, target), ...): a grant on a path under a
    target is opened through the overlay's descriptor, because Landlock ignores rules on a
    directory a mount hides; the rule must be on the overlay's own inodes."""
    fd = None
    anchors: dict[str, int] = {}
    try:
        fd = landlock.create_ruleset(
            fs=abi.mask(abi.FS_RIGHTS, decision.handled_fs),
            net=abi.mask(abi.NET_RIGHTS, decision.handled_net),
            scoped=abi.mask(abi.SCOPES, decision.scopes),
            size=abi.ruleset_attr_size(decision.abi))
        rules = 0
        refused: list[str] = []
        if decision.handled_fs:
            rules, refused = _add_path_rules(fd, policy, decision, mounts, anchors)
        for port in policy.ports:
            if port.right in decision.handled_net:
                landlock.add_port_rule(fd, port.port, abi.NET_RIGHTS[port.right][0])
                rules += 1
    except landlock.LandlockError as exc:
        if fd is not None:
            os.close(fd)
        raise SetupError(f"profile {policy.name}: {exc.strerror}") from None
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    finally:
        for anchor_fd in anchors.values():
            os.close(anchor_fd)
    return fd, rules, refused


def _add_path_rules(fd: int, policy: Policy, decision: abi.Downgrade, mounts,
                    anchors: dict[str, int]) -> tuple[int, list[str]]:
    """Every path grant as a rule, in one call to pkgsandbox._native (open, fstat, add,
    close per grant, in C): (rules added, grants skipped and why). How each path is opened
    is decided here: under a copy-on-write target, through the overlay's descriptor; under
    the grant's anchor ({root}), from the anchor with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
    (a package's symlink cannot redirect the grant); anything else, as given."""
    from . import _native
    batch, grants = [], []
    refused: list[str] = []
    for grant in policy.paths:
        try:
            through = _mount_for(grant.path, mounts) or \
                (grant.anchor and _anchored(grant.anchor, grant.path, anchors))
            if not through and grant.anchor:
                raise OSError(errno.EXDEV, f"not under {grant.anchor}")
        except OSError as exc:
            if _skip(grant, exc.errno, refused):
                continue
            raise SetupError(f"{grant.origin}: {grant.path}: {exc.strerror}",
                             path=grant.path) from None
        if through:
            dirfd, rel = through
            resolve = safepath.RESOLVE_BENEATH | safepath.RESOLVE_NO_MAGICLINKS
            if grant.anchor:
                resolve |= safepath.RESOLVE_NO_SYMLINKS
        else:
            dirfd, rel, resolve = -1, grant.path, 0
        batch.append((dirfd, os.fsencode(rel), resolve,
                      *_rule_masks(grant.rights, decision.handled_fs)))
        grants.append(grant)
    rules = 0
    for grant, result in zip(grants, _native.add_path_rules(fd, batch)):
        if result == 1:
            rules += 1
        elif result <= -1000:
            err = -1000 - result
            raise landlock.LandlockError(err, f"landlock_add_rule(path): {os.strerror(err)}")
        elif result < 0:
            err = -result
            if err == errno.ELOOP and grant.anchor:
                refused.append(f"{grant.path} (a symlink below {grant.anchor}: not "
                               f"followed, grant skipped; {grant.origin})")
            elif not _skip(grant, err, refused):
                raise SetupError(f"{grant.origin}: {grant.path}: {os.strerror(err)}",
                                 path=grant.path)
    return rules, refused


def _skip(grant, err: int, refused: list[str]) -> bool:
    """An optional grant whose path cannot be opened is skipped; a missing one is reported
    as profile.resolve reports it (phases that start many children check here, once)."""
    if not grant.optional:
        return False
    if err in (errno.ENOENT, errno.ENOTDIR):
        refused.append(f"{grant.path} (optional, missing; {grant.origin})")
    return True


@functools.lru_cache(maxsize=1024)
def _rule_masks(rights: frozenset[str], handled: frozenset[str]) -> tuple[int, int]:
    """(rights of the rule on a directory, on anything else), as kernel masks."""
    return (abi.mask(abi.FS_RIGHTS, abi.effective_rule_rights(rights, handled, is_dir=True)),
            abi.mask(abi.FS_RIGHTS, abi.effective_rule_rights(rights, handled, is_dir=False)))


def _anchored(anchor: str, path: str, anchors: dict[str, int]) -> tuple[int, str] | None:
    """(descriptor of `anchor`, `path` relative to it) for a path below its anchor; the
    anchor is opened once per ruleset (`anchors`), then every grant below it is reached from
    that descriptor with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS (_add_path_rules)."""
    rel = safepath.below(path, anchor)
    if rel is None:
        return None                      # refused by the caller (EXDEV)
    if anchor not in anchors:
        anchors[anchor] = os.open(anchor, os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
    return anchors[anchor], rel


def _mount_for(path: str, mounts) -> tuple[int, str] | None:
    """(overlay fd, path relative to its target) when `path` lies in a copy-on-write target."""
    for fd, target in mounts:
        rel = safepath.below(path, target)
        if rel is not None:
            return fd, rel
    return None


def prepare(policy: Policy, *, cap: int | None = None, compat: Compat | None = None,
            kernel: landlock.KernelSupport | None = None, as_root: bool | None = None,
            mounts: tuple[tuple[int, str], ...] = ()) -> Prepared:
    """Decide and build the ruleset. Raises RequirementError when the policy may not run.
    `as_root`: whether the sandboxed process will be root (default: this process's euid).
    `mounts`: the phase's copy-on-write overlays (phases/cow.py), which the child attaches."""
    kernel = kernel or landlock.probe()
    decision = decide(policy, kernel=kernel, cap=cap, compat=compat)
    if as_root is None:
        as_root = os.geteuid() == 0
    plan, layers = layers_for(policy, decision, as_root=as_root)
    covered = plan.pop("covered")
    unfixed = tuple(f"erratum {n} ({area}): {what}"
                    for n, area, what in abi.errata_affecting(decision.abi, kernel.errata))
    report = EnforcementReport(
        phase=policy.phase, profile=policy.name, kernel_abi=kernel.abi, abi=decision.abi,
        errata=kernel.errata, compat=decision.compat.value, status=decision.status.value,
        landlock=decision.restrict, no_new_privs=True, dropped=decision.dropped,
        unfixed_errata=unfixed,
        skipped_paths=tuple(f"{g.path} (optional, missing; {g.origin})" for g in policy.skipped),
        handled_fs=tuple(sorted(decision.handled_fs, key=lambda r: abi.FS_RIGHTS[r][0])),
        handled_net=tuple(sorted(decision.handled_net)), scopes=tuple(sorted(decision.scopes)),
        flags=tuple(sorted(decision.flags)), note=decision.refusal, layers=layers,
        covered=covered if decision.restrict else ())
    if not decision.may_run:
        raise RequirementError(f"profile {policy.name}: {decision.refusal}",
                               profile=policy.name, abi=decision.abi)
    if not decision.restrict:
        return Prepared(decision=decision, report=report, ruleset_fd=None, flags=0,
                        policy=policy, mounts=mounts, **plan)
    fd, rules, refused = build_ruleset(policy, decision, mounts)
    if refused:
        report = replace(report, skipped_paths=report.skipped_paths + tuple(refused))
    return Prepared(decision=decision, report=replace(report, rules=rules), ruleset_fd=fd,
                    flags=abi.mask(abi.RESTRICT_FLAGS, decision.flags), policy=policy,
                    mounts=mounts, **plan)


def unconfined_warning(report: EnforcementReport) -> str | None:
    """The loud line for stderr when a phase runs with less than was asked."""
    if report.status == Status.FULLY.value:
        return None
    if not report.landlock:
        reason = report.note or (report.dropped[0].reason if report.dropped else "")
        return (f"pkgsandbox: WARNING: {report.phase} [{report.profile}] runs WITHOUT Landlock"
                + (f": {reason}" if reason else ""))
    items = report.uncovered()
    if not items:
        return None
    return (f"pkgsandbox: warning: {report.phase} [{report.profile}] partially enforced on "
            f"ABI {report.abi}; not enforced: {', '.join(items)}")


def narrow_to(policy: Policy, decision: abi.Downgrade, *, root: str,
              paths: list[str]) -> int:
    """In the extract worker, once the transaction's file lists are known: stack a second
    Landlock domain in which the policy's writable install prefixes under `root` are writable
    only in the directories the transaction's packages touch (each file's parent directory,
    or its nearest existing ancestor for a directory still to be created); the prefixes stay
    readable. Everything else (database, log, cache, keyring copy) is kept as granted.
    Landlock domains only ever narrow. Returns the number of directories granted."""
    if not decision.handled_fs:
        return 0
    write_rights = frozenset(abi.FS_RIGHTS) - {"read_file", "read_dir", "execute"}
    root = root.rstrip("/") or "/"
    needed: set[str] = set()
    for rel in paths:
        parent = os.path.dirname(("/" + rel).rstrip("/"))
        here = os.path.normpath(os.path.join(root, parent.lstrip("/")))
        while not os.path.isdir(here) and here != root:
            here = os.path.dirname(here)
        needed.add(here)
    grants = []
    for g in policy.paths:
        under_root = g.anchor is not None and g.path != root
        if under_root and g.rights & write_rights:
            grants.append(replace(g, rights=g.rights - write_rights))
            for d in sorted(needed):
                if safepath.below(d, g.path) is not None:
                    grants.append(replace(g, path=d, rights=g.rights))
        else:
            grants.append(g)
    narrowed = replace(policy, paths=tuple(grants), ports=())
    fd, _, _ = build_ruleset(narrowed, replace(decision, handled_net=frozenset()))
    try:
        landlock.restrict_self(fd, 0)
    finally:
        os.close(fd)
    return len(needed)
