"""YAML profiles: parse -> validate -> merge (extends) -> resolve (variables) -> Policy.

Pure apart from reading profile files and checking that resolved paths exist. Every error
names the file, the line and the key: `profiles/x.yaml:12: filesystem[2].path: must be
absolute (got 'src')`. A profile that does not validate is never used, in part or whole.
The format is documented in docs/profiles.md.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import abi
from .abi import Compat
from .errors import BadInput, ProfileError, ProfileNotFound
from .policy import Environment, Logging, PathGrant, Policy, PortGrant

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "profiles"
SYSTEM_DIRS = (Path("/etc/pkgsandbox/profiles"), Path("/usr/share/pkgsandbox/profiles"),
               Path(sys.prefix) / "share/pkgsandbox/profiles")

PHASES = ("download", "extract", "scriptlet", "hook", "source", "prepare", "build", "package")

#: Every variable a profile may use, with the value `profile check/explain` assume.
VARIABLES: dict[str, str] = {
    "root": "/",
    "dbpath": "/var/lib/pacman",
    "cachedir": "/var/cache/pacman/pkg",
    "logfile": "/var/log/pacman.log",
    "gpgdir": "/etc/pacman.d/gnupg",
    "hookdir": "/etc/pacman.d/hooks",
    "downloaddir": "/var/cache/pacman/pkg/download-XXXXXX",
    "scratch": "/tmp/pkgsandbox-scratch",
    "tmpdir": "/tmp",
    "pkgname": "pkgname",
    "pkgver": "1.0-1",
    "hookname": "hookname",
    "startdir": "/tmp/pkgbuild",
    "srcdir": "/tmp/pkgbuild/src",
    "pkgdir": "/tmp/pkgbuild/pkg/pkgname",
    "srcdest": "/tmp/pkgbuild",
    "outdir": "/tmp/pkgbuild",
    "home": "/root",
    "server_ports": "80,443",
}

_VAR = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")
_OWNER = re.compile(r"^[A-Za-z0-9@_+.*?\[\]!-]+$")     # a package name, or an fnmatch pattern

TOP_KEYS = ("profile", "description", "phase", "extends", "compat", "min_abi", "filesystem",
            "network", "scope", "logging", "environment", "capabilities", "unix_sockets",
            "private_network", "copy_on_write", "protected", "datagram_sockets", "owners")
GRANT_KEYS = ("path", "access", "optional")
NETWORK_KEYS = tuple(abi.NET_RIGHTS)
LOGGING_KEYS = ("same_exec", "new_exec", "subdomains")
ENV_KEYS = ("allow", "set")


@dataclass(frozen=True, kw_only=True)
class Grant:
    """A filesystem grant as written: the path may still hold variables."""
    path: str
    rights: frozenset[str]
    optional: bool
    origin: str      # file:line
    where: str       # filesystem[2]


@dataclass(frozen=True, kw_only=True)
class Ports:
    right: str
    port: int | None       # None: the {server_ports} variable
    origin: str


@dataclass(frozen=True, kw_only=True)
class Profile:
    """One profile, validated and merged with what it extends."""
    name: str
    file: str
    phase: str | None = None
    description: str = ""
    compat: Compat = Compat.BEST_EFFORT
    min_abi: int = 0
    filesystem: tuple[Grant, ...] = ()
    ports: tuple[Ports, ...] = ()
    scopes: frozenset[str] = frozenset(abi.SCOPES)
    logging: Logging = field(default_factory=Logging)
    env_allow: tuple[str, ...] = ()
    env_set: tuple[tuple[str, str], ...] = ()
    capabilities: frozenset[str] | None = None
    unix_sockets: tuple[Grant, ...] | None = None
    private_network: bool = False
    datagram_sockets: bool = True
    copy_on_write: tuple[Grant, ...] = ()
    protected: tuple[Grant, ...] = ()
    #: a per-hook override's owners: globs of the package names whose hook file it is for
    #: (None: not declared: the override applies to any hook of its name). Not inherited.
    owners: tuple[str, ...] | None = None
    chain: tuple[str, ...] = ()   # files merged, base first
    explicit: frozenset[str] = frozenset()   # single-value keys some file in the chain set


# ---------------------------------------------------------------------------------------------
# Reading YAML with line numbers.

class _Doc:
    """Walks composed YAML nodes, converting scalars and failing with file:line: key."""

    def __init__(self, file: str):
        self.file = file
        self._loader = yaml.SafeLoader("")

    def fail(self, node, key: str, problem: str):
        line = node.start_mark.line + 1 if node is not None else None
        raise ProfileError(self.file, line, key, problem)

    def scalar(self, node, key: str):
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, key, f"must be a single value (got a {_kind(node)})")
        try:
            return self._loader.construct_object(node, deep=True)
        except ProfileError:
            raise
        except Exception as exc:  # noqa: BLE001 - YAML's constructors raise many kinds
            problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
            self.fail(node, key, f"unreadable value ({_oneline(problem)})")

    def string(self, node, key: str) -> str:
        value = self.scalar(node, key)
        if not isinstance(value, str) or not value:
            self.fail(node, key, f"must be a non-empty string (got {_show(value)})")
        return value

    def boolean(self, node, key: str) -> bool:
        value = self.scalar(node, key)
        if not isinstance(value, bool):
            self.fail(node, key, f"must be true or false (got {_show(value)})")
        return value

    def integer(self, node, key: str) -> int:
        value = self.scalar(node, key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(node, key, f"must be an integer (got {_show(value)})")
        return value

    def mapping(self, node, key: str, allowed: tuple[str, ...] | None) -> dict[str, tuple]:
        """{key: (key_node, value_node)}; unknown (when `allowed` is given) and duplicate
        keys are errors. Keys must be strings."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, f"must be a mapping (got a {_kind(node)})")
        out: dict[str, tuple] = {}
        for knode, vnode in node.value:
            name = self.scalar(knode, key or "key")
            shown = _oneline(str(name))
            path = f"{key}.{shown}" if key else shown
            if not isinstance(name, str):
                self.fail(knode, path, f"key must be a string (got {_show(name)})")
            if allowed is not None and name not in allowed:
                self.fail(knode, path, "unknown key (known: " + ", ".join(allowed) + ")")
            if name in out:
                self.fail(knode, path, "duplicate key")
            out[name] = (knode, vnode)
        return out

    def sequence(self, node, key: str) -> list:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, key, f"must be a list (got a {_kind(node)})")
        return list(node.value)


def _kind(node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return "value"


def _show(value) -> str:
    return "nothing" if value is None else _oneline(repr(value))


def _oneline(text: str) -> str:
    """Messages are one line whatever a profile contains."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


#: libyaml's composer when PyYAML has it (6x faster; same nodes and marks), else Python's
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(file: str, text: str):
    try:
        return yaml.compose(text, Loader=_COMPOSER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.context_mark and exc.problem_mark \
                and exc.context_mark.line != exc.problem_mark.line:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise ProfileError(file, line, "", f"invalid YAML: {_oneline(problem)}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(file, None, "", f"invalid YAML: {_oneline(str(exc))}") from None
    except RecursionError:
        raise ProfileError(file, None, "", "invalid YAML: nested too deeply") from None


# ---------------------------------------------------------------------------------------------
# Validation of one file.

@dataclass(frozen=True, kw_only=True)
class _Parsed:
    name: str
    file: str
    extends: tuple[tuple[str, int], ...]
    fields: dict            # only the keys present


def _rights(doc: _Doc, node, key: str) -> frozenset[str]:
    items = doc.sequence(node, key)
    if not items:
        doc.fail(node, key, "must list at least one access right")
    out: set[str] = set()
    for i, item in enumerate(items):
        name = doc.string(item, f"{key}[{i}]")
        if name in abi.ACCESS_GROUPS:
            out |= abi.ACCESS_GROUPS[name]
        elif name in abi.FS_RIGHTS:
            out.add(name)
        else:
            doc.fail(item, f"{key}[{i}]",
                     f"unknown access right {name!r} (groups: {', '.join(abi.ACCESS_GROUPS)}; "
                     f"rights: {', '.join(abi.FS_RIGHTS)})")
    return frozenset(out)


def check_template(doc: _Doc, node, key: str, template: str) -> None:
    """A path template must be absolute once substituted, and use only known variables."""
    for var in _VAR.findall(template):
        if var not in VARIABLES or var == "server_ports":
            doc.fail(node, key, f"unknown variable {{{_oneline(var)}}} (known: "
                     + ", ".join(v for v in VARIABLES if v != "server_ports") + ")")
    stripped = _VAR.sub("", template)
    if "{" in stripped or "}" in stripped:
        doc.fail(node, key, f"unbalanced brace in {_show(template)}")
    if not (template.startswith("/") or template.startswith("{")):
        doc.fail(node, key, f"must be absolute (got {template!r})")
    if template.startswith("{") and not substitute(template, VARIABLES).startswith("/"):
        doc.fail(node, key, f"must be absolute (got {template!r})")
    if ".." in template.split("/"):
        doc.fail(node, key, f"must not contain '..' (got {template!r})")
    if "\0" in template:
        doc.fail(node, key, "must not contain a NUL byte")


def _parse(file: str, text: str, default_name: str) -> _Parsed:
    doc = _Doc(file)
    root = _compose(file, text)
    if root is None:
        raise ProfileError(file, None, "", "empty profile")
    top = doc.mapping(root, "", TOP_KEYS)
    fields: dict = {}
    name = default_name
    if "profile" in top:
        kn, vn = top["profile"]
        name = doc.string(vn, "profile")
        if not _NAME.match(name):
            doc.fail(vn, "profile", f"invalid name {name!r}")
    extends: list[tuple[str, int]] = []
    if "extends" in top:
        _, vn = top["extends"]
        nodes = [vn] if isinstance(vn, yaml.ScalarNode) else doc.sequence(vn, "extends")
        for i, n in enumerate(nodes):
            key = "extends" if n is vn else f"extends[{i}]"
            parent = doc.string(n, key)
            if not _NAME.match(parent):
                doc.fail(n, key, f"invalid profile name {parent!r}")
            extends.append((parent, n.start_mark.line + 1))
    if "description" in top:
        fields["description"] = doc.string(top["description"][1], "description")
    if "phase" in top:
        vn = top["phase"][1]
        phase = doc.string(vn, "phase")
        if phase not in PHASES:
            doc.fail(vn, "phase", f"unknown phase {phase!r} (known: {', '.join(PHASES)})")
        fields["phase"] = phase
    if "compat" in top:
        vn = top["compat"][1]
        value = doc.string(vn, "compat")
        try:
            fields["compat"] = Compat(value)
        except ValueError:
            doc.fail(vn, "compat", f"must be one of {', '.join(c.value for c in Compat)} "
                                   f"(got {value!r})")
    if "min_abi" in top:
        vn = top["min_abi"][1]
        value = doc.integer(vn, "min_abi")
        if not 0 <= value <= abi.KNOWN_ABI:
            doc.fail(vn, "min_abi", f"must be between 0 and {abi.KNOWN_ABI} (got {value})")
        fields["min_abi"] = value
    if "filesystem" in top:
        grants = []
        for i, item in enumerate(doc.sequence(top["filesystem"][1], "filesystem")):
            key = f"filesystem[{i}]"
            entry = doc.mapping(item, key, GRANT_KEYS)
            if "path" not in entry:
                doc.fail(item, key, "missing key 'path'")
            if "access" not in entry:
                doc.fail(item, key, "missing key 'access'")
            pnode = entry["path"][1]
            path = doc.string(pnode, f"{key}.path")
            check_template(doc, pnode, f"{key}.path", path)
            rights = _rights(doc, entry["access"][1], f"{key}.access")
            optional = doc.boolean(entry["optional"][1], f"{key}.optional") \
                if "optional" in entry else False
            grants.append(Grant(path=path, rights=rights, optional=optional,
                                origin=f"{file}:{pnode.start_mark.line + 1}", where=key))
        fields["filesystem"] = tuple(grants)
    if "network" in top:
        net = doc.mapping(top["network"][1], "network", NETWORK_KEYS)
        ports = []
        for right, (_, vn) in net.items():
            for i, item in enumerate(doc.sequence(vn, f"network.{right}")):
                key = f"network.{right}[{i}]"
                value = doc.scalar(item, key)
                origin = f"{file}:{item.start_mark.line + 1}"
                if value == "{server_ports}":
                    ports.append(Ports(right=right, port=None, origin=origin))
                    continue
                if isinstance(value, bool) or not isinstance(value, int):
                    doc.fail(item, key, f"must be a port number or '{{server_ports}}' "
                                        f"(got {_show(value)})")
                if not 1 <= value <= 65535:
                    doc.fail(item, key, f"port must be between 1 and 65535 (got {value})")
                ports.append(Ports(right=right, port=value, origin=origin))
        fields["ports"] = tuple(ports)
    if "scope" in top:
        vn = top["scope"][1]
        scopes = set()
        for i, item in enumerate(doc.sequence(vn, "scope")):
            value = doc.string(item, f"scope[{i}]")
            if value not in abi.SCOPES:
                doc.fail(item, f"scope[{i}]", f"unknown scope {value!r} "
                                              f"(known: {', '.join(abi.SCOPES)})")
            scopes.add(value)
        fields["scopes"] = frozenset(scopes)
    if "capabilities" in top:
        from .hardening import CAPABILITIES
        caps = set()
        for i, item in enumerate(doc.sequence(top["capabilities"][1], "capabilities")):
            cap_name = doc.string(item, f"capabilities[{i}]")
            bare = cap_name.lower().removeprefix("cap_")
            if bare not in CAPABILITIES:
                doc.fail(item, f"capabilities[{i}]", f"unknown capability {_show(cap_name)}")
            caps.add(bare)
        fields["capabilities"] = frozenset(caps)
    if "unix_sockets" in top:
        socks = []
        for i, item in enumerate(doc.sequence(top["unix_sockets"][1], "unix_sockets")):
            key = f"unix_sockets[{i}]"
            path = doc.string(item, key)
            check_template(doc, item, key, path)
            socks.append(Grant(path=path, rights=frozenset({"resolve_unix"}), optional=True,
                               origin=f"{file}:{item.start_mark.line + 1}", where=key))
        fields["unix_sockets"] = tuple(socks)
    if "private_network" in top:
        fields["private_network"] = doc.boolean(top["private_network"][1], "private_network")
    if "datagram_sockets" in top:
        fields["datagram_sockets"] = doc.boolean(top["datagram_sockets"][1],
                                                 "datagram_sockets")
    for key in ("copy_on_write", "protected"):
        if key in top:
            items = []
            for i, item in enumerate(doc.sequence(top[key][1], key)):
                where = f"{key}[{i}]"
                path = doc.string(item, where)
                check_template(doc, item, where, path)
                items.append(Grant(path=path, rights=frozenset(), optional=True,
                                   origin=f"{file}:{item.start_mark.line + 1}", where=where))
            fields[key] = tuple(items)
    if "owners" in top:
        owners = []
        for i, item in enumerate(doc.sequence(top["owners"][1], "owners")):
            value = doc.string(item, f"owners[{i}]")
            if not _OWNER.match(value):
                doc.fail(item, f"owners[{i}]", f"not a package name or name pattern: "
                                               f"{_show(value)}")
            owners.append(value)
        if not owners:
            doc.fail(top["owners"][1], "owners", "list at least one package name")
        fields["owners"] = tuple(owners)
        fields["owners_line"] = top["owners"][0].start_mark.line + 1
    if "logging" in top:
        entry = doc.mapping(top["logging"][1], "logging", LOGGING_KEYS)
        fields["logging"] = {k: doc.boolean(v, f"logging.{k}") for k, (_, v) in entry.items()}
    if "environment" in top:
        entry = doc.mapping(top["environment"][1], "environment", ENV_KEYS)
        if "allow" in entry:
            allow = []
            for i, item in enumerate(doc.sequence(entry["allow"][1], "environment.allow")):
                value = doc.string(item, f"environment.allow[{i}]")
                if not _ENV_NAME.match(value):
                    doc.fail(item, f"environment.allow[{i}]",
                             f"not a variable name or NAME* prefix: {value!r}")
                allow.append(value)
            fields["env_allow"] = tuple(allow)
        if "set" in entry:
            setmap = doc.mapping(entry["set"][1], "environment.set", None)
            values = []
            for k, (kn, vn) in setmap.items():
                if not _ENV_NAME.match(k) or k.endswith("*"):
                    doc.fail(kn, f"environment.set.{k}", "not a variable name")
                v = doc.scalar(vn, f"environment.set.{k}")
                if isinstance(v, (dict, list)) or v is None:
                    doc.fail(vn, f"environment.set.{k}", "must be a value")
                values.append((k, str(v).lower() if isinstance(v, bool) else str(v)))
            fields["env_set"] = tuple(values)
    return _Parsed(name=name, file=file, extends=tuple(extends), fields=fields)


# ---------------------------------------------------------------------------------------------
# Search path and merging.

class Library:
    """Profiles found through a search path; earlier directories override later ones by name."""

    def __init__(self, extra_dirs=(), *, include_system: bool = True):
        dirs = [Path(d) for d in extra_dirs]
        if include_system:
            dirs += list(SYSTEM_DIRS)
        dirs.append(SHIPPED_DIR)
        seen, self.dirs = set(), []
        for d in dirs:
            key = os.path.abspath(d)
            if key not in seen:
                seen.add(key)
                self.dirs.append(d)
        self._cache: dict[tuple, Profile] = {}
        self._found: dict[tuple[str, str], Path | None] = {}    # (name, kind) -> its file
        self._listings: dict[Path, frozenset[str]] = {}         # directory -> its names

    def find(self, name: str, kind: str = "") -> Path | None:
        """The file that wins for `name` (looked up once per Library: one command)."""
        if not _NAME.match(name):
            raise ProfileNotFound(f"invalid profile name {name!r}")
        key = (name, kind)
        if key not in self._found:
            file = f"{name}.yaml"
            self._found[key] = next(
                (d / kind / file for d in self.dirs
                 if file in self._listing(d / kind) and (d / kind / file).is_file()), None)
        return self._found[key]

    def _listing(self, directory: Path) -> frozenset[str]:
        """A directory's names, read once (a transaction looks up an override per package)."""
        if directory not in self._listings:
            try:
                self._listings[directory] = frozenset(os.listdir(directory))
            except OSError:
                self._listings[directory] = frozenset()
        return self._listings[directory]

    def names(self, kind: str = "") -> list[tuple[str, Path]]:
        """Every profile name visible, with the file that wins for it."""
        out: dict[str, Path] = {}
        for d in self.dirs:
            base = d / kind if kind else d
            if base.is_dir():
                for f in sorted(base.glob("*.yaml")):
                    out.setdefault(f.stem, f)
        return sorted(out.items())

    def load(self, name_or_file: str) -> Profile:
        """A profile by name (search path) or by file path (contains '/' or ends in .yaml)."""
        if "/" in name_or_file or name_or_file.endswith(".yaml"):
            return self.load_file(Path(name_or_file))
        path = self.find(name_or_file)
        if path is None:
            raise ProfileNotFound(f"profile {name_or_file!r} not found in "
                                  + ", ".join(str(d) for d in self.dirs))
        return self.load_file(path)

    def load_file(self, path: Path, *, implicit_parent: str | None = None) -> Profile:
        return self._load(path, stack=(), implicit_parent=implicit_parent)

    def load_override(self, phase_profile: str, name: str, kind: str) -> Profile:
        """The phase profile, with the per-package or per-hook override merged on top if the
        search path has one (`packages/NAME.yaml`, `hooks/NAME.yaml`)."""
        path = self.find(name, kind) if _NAME.match(name) else None
        if path is None:
            return self.load(phase_profile)
        return self._load(path, stack=(), implicit_parent=phase_profile)

    def _read(self, path: Path) -> str:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ProfileNotFound(f"{path}: no such profile file") from None
        except OSError as exc:
            raise BadInput(f"{path}: cannot read: {exc.strerror}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            raise ProfileError(str(path), line, "", "not valid UTF-8") from None

    def _load(self, path: Path, *, stack: tuple[str, ...],
              implicit_parent: str | None = None) -> Profile:
        # A Library lives for one command: profiles read once (a transaction resolves the
        # scriptlet profile for every package).
        cache_key = (os.path.realpath(str(path)), implicit_parent, stack)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        profile = self._load_uncached(path, stack=stack, implicit_parent=implicit_parent)
        self._cache[cache_key] = profile
        return profile

    def _load_uncached(self, path: Path, *, stack: tuple[str, ...],
                       implicit_parent: str | None = None) -> Profile:
        file = str(path)
        key = os.path.realpath(file)
        if key in stack:
            raise ProfileError(file, None, "extends", "loop: " + " -> ".join(
                list(stack[stack.index(key):]) + [key]))
        try:
            parsed = _parse(file, self._read(path), path.stem)
        except RecursionError:
            raise ProfileError(file, None, "", "nested too deeply") from None
        parents: list[Profile] = []
        if "owners" in parsed.fields and implicit_parent != "hook" and \
                path.parent.name != "hooks":
            raise ProfileError(file, parsed.fields["owners_line"], "owners",
                               "only a per-hook override (hooks/NAME.yaml) names the packages "
                               "whose hook it is for")
        extends = parsed.extends or (((implicit_parent, 0),) if implicit_parent else ())
        for parent_name, line in extends:
            if parent_name == path.stem and self._on_path(path):
                # An admin's profile extending the one of the same name further down the
                # search path (the shipped one, in the end).
                parent_path = self._next_after(parent_name, path)
                if parent_path is None:
                    raise ProfileError(file, line or None, "extends",
                                       f"loop: {parent_name} extends itself")
            else:
                parent_path = self.find(parent_name)
            if parent_path is None:
                raise ProfileError(file, line or None, "extends",
                                   f"profile {parent_name!r} not found")
            try:
                parents.append(self._load(parent_path, stack=stack + (key,)))
            except ProfileError as exc:
                if "loop:" in exc.message and exc.fields.get("file") != file:
                    raise ProfileError(file, line or None, "extends",
                                       exc.message.split("extends: ", 1)[-1]) from None
                raise
        return _merge(parsed, parents)

    def _on_path(self, path: Path) -> bool:
        real = os.path.realpath(path.parent)
        return any(os.path.realpath(d) == real for d in self.dirs)

    def _next_after(self, name: str, path: Path) -> Path | None:
        found = False
        for d in self.dirs:
            candidate = d / f"{name}.yaml"
            if not candidate.is_file():
                continue
            if found:
                return candidate
            if os.path.realpath(candidate) == os.path.realpath(path):
                found = True
        return None


def _merge(parsed: _Parsed, parents: list[Profile]) -> Profile:
    """Lists accumulate (parents first); single values and scope: the child's win."""
    base = dict(phase=None, description="", compat=Compat.BEST_EFFORT, min_abi=0,
                filesystem=(), ports=(), scopes=frozenset(abi.SCOPES), logging=Logging(),
                env_allow=(), env_set=(), capabilities=None, unix_sockets=None,
                private_network=False, datagram_sockets=True, copy_on_write=(), protected=(),
                chain=())
    explicit: set[str] = set()
    for p in parents:
        for k in ("phase", "description", "compat", "scopes", "logging", "capabilities",
                  "private_network", "datagram_sockets"):
            if k in p.explicit:
                base[k] = getattr(p, k)
        if p.unix_sockets is not None:
            base["unix_sockets"] = (base["unix_sockets"] or ()) + p.unix_sockets
        base["copy_on_write"] += p.copy_on_write
        base["protected"] += p.protected
        base["min_abi"] = max(base["min_abi"], p.min_abi)
        base["filesystem"] += p.filesystem
        base["ports"] += p.ports
        explicit |= p.explicit
        base["env_allow"] += tuple(a for a in p.env_allow if a not in base["env_allow"])
        base["env_set"] = _merge_env(base["env_set"], p.env_set)
        base["chain"] += tuple(c for c in p.chain if c not in base["chain"])
    f = parsed.fields
    for k in ("phase", "description", "compat", "min_abi", "scopes", "capabilities",
              "private_network", "datagram_sockets"):
        if k in f:
            base[k] = f[k]
            explicit.add(k)
    if "unix_sockets" in f:
        base["unix_sockets"] = (base["unix_sockets"] or ()) + f["unix_sockets"]
    base["owners"] = f.get("owners")          # the override's own, never a parent's
    base["copy_on_write"] += f.get("copy_on_write", ())
    base["protected"] += f.get("protected", ())
    base["filesystem"] += f.get("filesystem", ())
    base["ports"] += f.get("ports", ())
    if "logging" in f:
        cur = base["logging"]
        base["logging"] = Logging(**{**cur.__dict__, **f["logging"]})
        explicit.add("logging")
    base["env_allow"] += tuple(a for a in f.get("env_allow", ()) if a not in base["env_allow"])
    base["env_set"] = _merge_env(base["env_set"], f.get("env_set", ()))
    base["chain"] += (parsed.file,)
    return Profile(name=parsed.name, file=parsed.file, explicit=frozenset(explicit), **base)


def _merge_env(a, b):
    out = dict(a)
    out.update(dict(b))
    return tuple(out.items())


# ---------------------------------------------------------------------------------------------
# Resolution for a context.

def substitute(template: str, values: dict[str, str]) -> str:
    names = _variables_in(template)
    return _substitute(template, tuple(values[n] for n in names))


@functools.lru_cache(maxsize=4096)
def _variables_in(template: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_VAR.findall(template)))


@functools.lru_cache(maxsize=8192)
def _substitute(template: str, args: tuple[str, ...]) -> str:
    """Pure, so cached: a transaction resolves the same templates with the same {root} for
    every package; only the few with {pkgname} differ."""
    values = dict(zip(_variables_in(template), args))

    def one(m):
        return values[m.group(1)]
    out = _VAR.sub(one, template)
    out = re.sub(r"/+", "/", out)
    if len(out) > 1:
        out = out.rstrip("/")
    return os.path.normpath(out) if out.startswith("/") else out


def resolve(profile: Profile, variables: dict[str, str] | None = None, *,
            phase: str | None = None, check_paths: bool = True) -> Policy:
    """Substitute variables and check paths: a Policy ready for enforce.prepare()."""
    values = dict(variables or {})
    for name, value in values.items():
        check_value(name, value)
    paths, skipped = [], []
    for g in profile.filesystem + (profile.unix_sockets or ()):
        missing = [v for v in _variables_in(g.path) if v not in values]
        if missing:
            raise BadInput(f"{g.origin}: {g.where}.path: variable {{{missing[0]}}} has no value "
                           f"for this run (give it with --var {missing[0]}=VALUE)")
        path = substitute(g.path, values)
        if not path.startswith("/"):
            raise BadInput(f"{g.origin}: {g.where}.path: {g.path!r} resolves to a relative "
                           f"path {path!r}")
        anchor = None
        if g.path.startswith("{root}") and "root" in values:
            anchor = substitute("{root}", values)
        grant = PathGrant(path=path, rights=g.rights, optional=g.optional, origin=g.origin,
                          anchor=anchor)
        if check_paths and not os.path.lexists(path):
            if g.optional:
                skipped.append(grant)
                continue
            raise BadInput(f"{g.origin}: {g.where}.path: {path} does not exist "
                           f"(mark the grant 'optional: true' if it may be missing)")
        paths.append(grant)
    ports = []
    for p in profile.ports:
        if p.port is not None:
            ports.append(PortGrant(port=p.port, right=p.right, origin=p.origin))
            continue
        text = values.get("server_ports")
        if text is None:
            raise BadInput(f"{p.origin}: network.{p.right}: {{server_ports}} has no value "
                           f"for this run (give it with --var server_ports=80,443)")
        for item in filter(None, text.split(",")):
            if not item.strip().isdigit() or not 1 <= int(item) <= 65535:
                raise BadInput(f"server_ports: not a port number: {item!r}")
            ports.append(PortGrant(port=int(item), right=p.right, origin=p.origin))
    return Policy(
        name=profile.name, phase=phase or profile.phase or profile.name, source=profile.file,
        compat=profile.compat, min_abi=profile.min_abi,
        handled_fs=frozenset(abi.FS_RIGHTS), handled_net=frozenset(abi.NET_RIGHTS),
        scopes=profile.scopes, paths=tuple(paths), ports=tuple(sorted(set(ports),
                                                                      key=lambda x: (x.port, x.right))),
        logging=profile.logging,
        environment=Environment(allow=profile.env_allow, set=profile.env_set),
        skipped=tuple(skipped), capabilities=profile.capabilities,
        private_network=profile.private_network,
        datagram_sockets=profile.datagram_sockets,
        copy_on_write=tuple(dict.fromkeys(substitute(g.path, values)
                                          for g in profile.copy_on_write
                                          if all(v in values for v in _variables_in(g.path)))),
        protected=tuple(dict.fromkeys(substitute(g.path, values) for g in profile.protected
                                      if all(v in values for v in _variables_in(g.path)))),
        unix_sockets=None if profile.unix_sockets is None else
        tuple(substitute(g.path, values) for g in profile.unix_sockets))


NAME_VARIABLES = frozenset({"pkgname", "pkgver", "hookname"})
_NAME_VALUE = re.compile(r"^[A-Za-z0-9@_+][A-Za-z0-9@._+:~-]*$")


def check_value(name: str, value: str) -> None:
    """A variable's value: names are plain names (never a path: '{root}/var/lib/{pkgname}'
    with pkgname '../../bin' would grant /bin); paths are absolute, without '..'."""
    if name not in VARIABLES:
        raise BadInput(f"unknown variable {{{_oneline(name)}}} (known: {', '.join(VARIABLES)})")
    if not isinstance(value, str) or "\0" in value or "\n" in value:
        raise BadInput(f"variable {{{name}}}: invalid value {_show(value)}")
    if name in NAME_VARIABLES:
        if not _NAME_VALUE.match(value):
            raise BadInput(f"variable {{{name}}}: not a plain name: {_show(value)}")
    elif name == "server_ports":
        return
    else:
        if not value.startswith("/"):
            raise BadInput(f"variable {{{name}}}: must be an absolute path (got {_show(value)})")
        if ".." in value.split("/"):
            raise BadInput(f"variable {{{name}}}: must not contain '..' (got {_show(value)})")


def parse_var(text: str) -> tuple[str, str]:
    """--var K=V."""
    if "=" not in text:
        raise BadInput(f"--var {text!r}: expected NAME=VALUE")
    k, v = text.split("=", 1)
    if k not in VARIABLES:
        raise BadInput(f"--var {_oneline(k)}: unknown variable (known: {', '.join(VARIABLES)})")
    check_value(k, v)
    return k, v
