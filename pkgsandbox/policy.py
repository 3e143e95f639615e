"""Values that describe a sandbox: grants, a resolved policy, and the enforcement report.

Pure: frozen, keyword-only dataclasses, no I/O. A Policy is a profile resolved for one context
(variables substituted, paths absolute); abi.downgrade() decides what of it the kernel enforces;
enforce.py applies it and fills an EnforcementReport.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import abi
from .abi import Compat


@dataclass(frozen=True, kw_only=True)
class PathGrant:
    """Rights on one file hierarchy; `origin` is "file:line" of the profile line that grants it."""
    path: str
    rights: frozenset[str]
    optional: bool = False
    origin: str = ""
    #: for paths under a target root: that root; no symlink below it is followed
    anchor: str | None = None


@dataclass(frozen=True, kw_only=True)
class PortGrant:
    port: int
    right: str          # bind_tcp | connect_tcp | bind_udp | connect_send_udp
    origin: str = ""


@dataclass(frozen=True, kw_only=True)
class Logging:
    """Audit logging of denials (ABI 7). Defaults log what executed programs are refused."""
    same_exec: bool = True
    new_exec: bool = True
    subdomains: bool = True

    def flags(self) -> frozenset[str]:
        out = set()
        if not self.same_exec:
            out.add("log_same_exec_off")
        if self.new_exec:
            out.add("log_new_exec_on")
        if not self.subdomains:
            out.add("log_subdomains_off")
        return frozenset(out)


@dataclass(frozen=True, kw_only=True)
class Environment:
    """Which variables of the caller's environment pass, and which are set."""
    allow: tuple[str, ...] = ()      # exact names, or prefixes ending in '*'
    set: tuple[tuple[str, str], ...] = ()

    def build(self, source: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, value in source.items():
            for pattern in self.allow:
                if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
                    out[name] = value
                    break
        out.update(dict(self.set))
        return out


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A profile resolved for one context: everything needed to build a ruleset."""
    name: str
    phase: str
    source: str                       # file the profile came from (for explanations)
    compat: Compat
    min_abi: int
    handled_fs: frozenset[str]
    handled_net: frozenset[str]
    scopes: frozenset[str]
    paths: tuple[PathGrant, ...]
    ports: tuple[PortGrant, ...]
    logging: Logging = field(default_factory=Logging)
    environment: Environment = field(default_factory=Environment)
    #: optional grants whose path did not exist when resolved (reported, not enforced)
    skipped: tuple[PathGrant, ...] = ()
    #: capabilities kept when the phase runs as root; None: the profile says nothing
    capabilities: frozenset[str] | None = None
    #: pathname UNIX sockets the phase may connect to; None: the profile does not confine them
    #: beyond what Landlock does on this ABI
    unix_sockets: tuple[str, ...] | None = None
    #: run in a private network namespace (when root)
    private_network: bool = False
    #: directories the phase sees through a copy-on-write overlay (when root); the parent
    #: applies the changes after, except to `protected` paths
    copy_on_write: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()
    #: False: no UDP (datagram) socket at all, by seccomp, whatever the ABI
    datagram_sockets: bool = True

    def request(self) -> abi.Request:
        granted = frozenset().union(*(g.rights for g in self.paths)) if self.paths else frozenset()
        return abi.Request(
            handled_fs=self.handled_fs, handled_net=self.handled_net, scopes=self.scopes,
            flags=self.logging.flags(), granted_fs=granted,
            port_rights=frozenset((p.port, p.right) for p in self.ports))


@dataclass(frozen=True, kw_only=True)
class EnforcementReport:
    """What was enforced for one sandboxed process, and what was not, and why."""
    phase: str
    profile: str
    kernel_abi: int
    abi: int                          # in force: kernel's, capped
    errata: int
    compat: str
    status: str                       # abi.Status value
    landlock: bool                    # a Landlock domain was entered
    no_new_privs: bool
    dropped: tuple[abi.Dropped, ...] = ()
    unfixed_errata: tuple[str, ...] = ()
    skipped_paths: tuple[str, ...] = ()
    handled_fs: tuple[str, ...] = ()
    handled_net: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    rules: int = 0
    user: str = ""
    chroot: str = ""
    note: str = ""
    #: every layer and what it does here, in order: (layer, state)
    layers: tuple[tuple[str, str], ...] = ()
    #: dropped Landlock items that another layer closes: item -> layer
    covered: tuple[tuple[str, str], ...] = ()

    def uncovered(self) -> list[str]:
        """What is requested and enforced by no layer at all."""
        closed = dict(self.covered)
        if not self.landlock and self.dropped and self.dropped[0].kind == "landlock":
            return ["all Landlock rules"]
        return [d.item for d in self.dropped
                if d.kind != "flag" and d.item.split(":")[0] not in closed]

    def as_dict(self) -> dict:
        return {
            "phase": self.phase, "profile": self.profile, "kernel_abi": self.kernel_abi,
            "abi": self.abi, "errata": self.errata, "compat": self.compat,
            "status": self.status, "landlock": self.landlock, "no_new_privs": self.no_new_privs,
            "dropped": [{"kind": d.kind, "item": d.item, "reason": d.reason} for d in self.dropped],
            "unfixed_errata": list(self.unfixed_errata), "skipped_paths": list(self.skipped_paths),
            "handled_fs": list(self.handled_fs), "handled_net": list(self.handled_net),
            "scopes": list(self.scopes), "flags": list(self.flags), "rules": self.rules,
            "user": self.user, "chroot": self.chroot, "note": self.note,
            "layers": {k: v for k, v in self.layers},
            "covered_by_other_layers": {k: v for k, v in self.covered},
            "not_enforced": self.uncovered(),
        }

    def summary(self) -> str:
        text = (f"{self.phase} [{self.profile}]: {self.status} (ABI {self.abi}"
                + (f", kernel {self.kernel_abi}" if self.kernel_abi != self.abi else "")
                + f", {self.compat})")
        if self.note:
            text += f": {self.note}"
        return text
