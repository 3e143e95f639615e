"""The ABI table, downgrade() and enforce.decide(): pure, no kernel.

Every expected value below is written by hand from the kernel's include/uapi/linux/landlock.h
(bit values) and Documentation/userspace-api/landlock.rst (the ABI that introduced each right,
scope and flag). Nothing here derives an expectation from pkgsandbox.abi itself: the module is
only ever the thing under test.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pkgsandbox import abi, enforce, landlock, profile
from pkgsandbox.abi import Compat, Status
from pkgsandbox.policy import Logging, PathGrant, Policy, PortGrant

# ---------------------------------------------------------------------------------------------
# The hand-written tables.

#: LANDLOCK_ACCESS_FS_* bit values.
FS_BITS = {
    "execute": 1 << 0,
    "write_file": 1 << 1,
    "read_file": 1 << 2,
    "read_dir": 1 << 3,
    "remove_dir": 1 << 4,
    "remove_file": 1 << 5,
    "make_char": 1 << 6,
    "make_dir": 1 << 7,
    "make_reg": 1 << 8,
    "make_sock": 1 << 9,
    "make_fifo": 1 << 10,
    "make_block": 1 << 11,
    "make_sym": 1 << 12,
    "refer": 1 << 13,
    "truncate": 1 << 14,
    "ioctl_dev": 1 << 15,
    "resolve_unix": 1 << 16,
}
#: LANDLOCK_ACCESS_NET_* bit values.
NET_BITS = {"bind_tcp": 1, "connect_tcp": 2, "bind_udp": 4, "connect_send_udp": 8}
#: LANDLOCK_SCOPE_* bit values.
SCOPE_BITS = {"abstract_unix_socket": 1, "signal": 2}
#: LANDLOCK_RESTRICT_SELF_* bit values.
FLAG_BITS = {"log_same_exec_off": 1, "log_new_exec_on": 2, "log_subdomains_off": 4, "tsync": 8}

#: What each ABI adds: (fs rights, net rights, scopes, restrict flags).
ADDED = {
    1: ({"execute", "write_file", "read_file", "read_dir", "remove_dir", "remove_file",
         "make_char", "make_dir", "make_reg", "make_sock", "make_fifo", "make_block",
         "make_sym"}, set(), set(), set()),
    2: ({"refer"}, set(), set(), set()),
    3: ({"truncate"}, set(), set(), set()),
    4: (set(), {"bind_tcp", "connect_tcp"}, set(), set()),
    5: ({"ioctl_dev"}, set(), set(), set()),
    6: (set(), set(), {"abstract_unix_socket", "signal"}, set()),
    7: (set(), set(), set(), {"log_same_exec_off", "log_new_exec_on", "log_subdomains_off"}),
    8: (set(), set(), set(), {"tsync"}),
    9: ({"resolve_unix"}, set(), set(), set()),
    10: (set(), {"bind_udp", "connect_send_udp"}, set(), set()),
}
ABIS = range(0, 11)

#: First ABI of every name (inverse of ADDED, written out again by hand as a cross-check).
FIRST_ABI = {
    "execute": 1, "write_file": 1, "read_file": 1, "read_dir": 1, "remove_dir": 1,
    "remove_file": 1, "make_char": 1, "make_dir": 1, "make_reg": 1, "make_sock": 1,
    "make_fifo": 1, "make_block": 1, "make_sym": 1, "refer": 2, "truncate": 3,
    "ioctl_dev": 5, "resolve_unix": 9,
    "bind_tcp": 4, "connect_tcp": 4, "bind_udp": 10, "connect_send_udp": 10,
    "abstract_unix_socket": 6, "signal": 6,
    "log_same_exec_off": 7, "log_new_exec_on": 7, "log_subdomains_off": 7, "tsync": 8,
}

#: sizeof(struct landlock_ruleset_attr) each ABI takes: handled_access_fs (u64);
#: + handled_access_net (ABI 4); + scoped (ABI 6).
RULESET_ATTR_SIZE = {1: 8, 2: 8, 3: 8, 4: 16, 5: 16, 6: 24, 7: 24, 8: 24, 9: 24, 10: 24}

#: Rights the kernel accepts on a rule for a non-directory (LANDLOCK_ACCESS_FILE).
FILE_RIGHTS = {"execute", "write_file", "read_file", "truncate", "ioctl_dev", "resolve_unix"}

ALL_FS = set(FS_BITS)
ALL_NET = set(NET_BITS)
BOTH_SCOPES = {"abstract_unix_socket", "signal"}


def supported(abi_n: int, column: int) -> set[str]:
    out: set[str] = set()
    for n in range(1, abi_n + 1):
        out |= ADDED[n][column]
    return out


FS, NET, SCOPE, FLAG = 0, 1, 2, 3


def test_first_abi_table_agrees_with_added_table():
    # The two hand tables must not contradict each other (guards typos in this file).
    for n, columns in ADDED.items():
        for names in columns:
            for name in names:
                assert FIRST_ABI[name] == n, name
    assert set(FIRST_ABI) == ALL_FS | ALL_NET | set(SCOPE_BITS) | set(FLAG_BITS)


# ---------------------------------------------------------------------------------------------
# The table itself.

def test_known_abi():
    assert abi.KNOWN_ABI == 10


@pytest.mark.parametrize("table,bits", [
    (abi.FS_RIGHTS, FS_BITS), (abi.NET_RIGHTS, NET_BITS), (abi.SCOPES, SCOPE_BITS),
    (abi.RESTRICT_FLAGS, FLAG_BITS)], ids=["fs", "net", "scopes", "flags"])
def test_bit_values(table, bits):
    assert {name: bit for name, (bit, _) in table.items()} == bits


@pytest.mark.parametrize("name", sorted(FIRST_ABI))
def test_since(name):
    assert abi.since(name) == FIRST_ABI[name]


def test_since_unknown_name():
    with pytest.raises(KeyError):
        abi.since("no_such_right")


@pytest.mark.parametrize("n", ABIS)
def test_supported_sets(n):
    assert abi.fs_rights(n) == supported(n, FS)
    assert abi.net_rights(n) == supported(n, NET)
    assert abi.scopes(n) == supported(n, SCOPE)
    assert abi.restrict_flags(n) == supported(n, FLAG)


def test_supported_sets_spot_checks():
    # A few written out in full, independent of the cumulative helper.
    assert abi.fs_rights(0) == set() and abi.net_rights(3) == set()
    assert abi.fs_rights(1) == {"execute", "write_file", "read_file", "read_dir", "remove_dir",
                                "remove_file", "make_char", "make_dir", "make_reg",
                                "make_sock", "make_fifo", "make_block", "make_sym"}
    assert abi.fs_rights(8) == abi.fs_rights(1) | {"refer", "truncate", "ioctl_dev"}
    assert abi.fs_rights(10) == ALL_FS
    assert abi.net_rights(9) == {"bind_tcp", "connect_tcp"}
    assert abi.net_rights(10) == ALL_NET
    assert abi.scopes(5) == set() and abi.scopes(6) == BOTH_SCOPES
    assert abi.restrict_flags(7) == {"log_same_exec_off", "log_new_exec_on",
                                     "log_subdomains_off"}
    assert abi.restrict_flags(8) == set(FLAG_BITS)


@pytest.mark.parametrize("n", sorted(RULESET_ATTR_SIZE))
def test_ruleset_attr_size(n):
    assert abi.ruleset_attr_size(n) == RULESET_ATTR_SIZE[n]


def test_mask():
    assert abi.mask(abi.FS_RIGHTS, ["read_file", "read_dir", "refer"]) == 4 | 8 | 8192
    assert abi.mask(abi.NET_RIGHTS, ["connect_tcp", "connect_send_udp"]) == 2 | 8
    assert abi.mask(abi.RESTRICT_FLAGS, ["log_new_exec_on", "tsync"]) == 2 | 8
    assert abi.mask(abi.SCOPES, []) == 0


@pytest.mark.parametrize("kernel,cap,expected", [
    (0, None, 0), (7, None, 7), (10, None, 10), (11, None, 10), (42, None, 10),
    (7, 3, 3), (7, 9, 7), (12, 8, 8), (0, 5, 0), (-1, None, 0)])
def test_clamp(kernel, cap, expected):
    assert abi.clamp(kernel, cap) == expected


# ---------------------------------------------------------------------------------------------
# Errata.

@pytest.mark.parametrize("n,mask,expected", [
    (0, 0, []),
    (1, 0, [3]), (3, 0, [3]),
    (4, 0, [1, 3]), (5, 0, [1, 3]),
    (6, 0, [1, 2, 3]), (10, 0, [1, 2, 3]),
    (6, 0b111, []), (10, 0b111, []),
    (6, 0b001, [2, 3]),     # erratum 1 fixed
    (6, 0b010, [1, 3]),     # erratum 2 fixed
    (6, 0b100, [1, 2]),     # erratum 3 fixed
    (3, 0b100, []),
    (4, 0b011, [3]),
    (5, 0b100, [1]),
])
def test_errata_affecting(n, mask, expected):
    got = abi.errata_affecting(n, mask)
    assert [number for number, _, _ in got] == expected
    for _, area, consequence in got:
        assert area and consequence


# ---------------------------------------------------------------------------------------------
# Rule rights.

def test_effective_rule_rights_directory_keeps_handled():
    rights = frozenset({"read_file", "read_dir", "make_reg", "refer", "resolve_unix"})
    handled = frozenset(ALL_FS - {"refer"})
    assert abi.effective_rule_rights(rights, handled, is_dir=True) == {
        "read_file", "read_dir", "make_reg", "resolve_unix"}


def test_effective_rule_rights_file_keeps_only_file_rights():
    every = frozenset(ALL_FS)
    assert abi.effective_rule_rights(every, every, is_dir=False) == FILE_RIGHTS
    assert abi.effective_rule_rights(every, every, is_dir=True) == ALL_FS


@pytest.mark.parametrize("right", sorted(ALL_FS))
def test_effective_rule_rights_each_right_on_a_file(right):
    got = abi.effective_rule_rights(frozenset({right}), frozenset(ALL_FS), is_dir=False)
    assert got == ({right} if right in FILE_RIGHTS else set())


def test_effective_rule_rights_file_also_masked_by_handled():
    rights = frozenset({"read_file", "write_file", "truncate", "read_dir"})
    handled = frozenset({"read_file", "read_dir"})
    assert abi.effective_rule_rights(rights, handled, is_dir=False) == {"read_file"}


# ---------------------------------------------------------------------------------------------
# Every shipped profile, on every ABI, under every compat level.

#: What each shipped profile requests beyond the filesystem (which resolve() always handles
#: in full): scopes, restrict flags, port rules, whether a rule grants refer; its compat and
#: min_abi. Written from profiles/*.yaml by hand. {server_ports} is "80,443" in VARIABLES.
SHIPPED = {
    "base": dict(ports=set()),
    "build": dict(ports=set()),
    "chrooted": dict(ports=set()),
    "download": dict(ports={(80, "connect_tcp"), (443, "connect_tcp")}),


    "extract": dict(ports=set()),
    "hook": dict(ports=set()),
    "inspect": dict(ports=set()),
    "package": dict(ports=set()),
    "prepare": dict(ports=set()),
    "scriptlet": dict(ports=set()),
    "source": dict(ports={(80, "connect_tcp"), (443, "connect_tcp"), (9418, "connect_tcp"),
                          (21, "connect_tcp"), (53, "connect_send_udp")}),
}
for _entry in SHIPPED.values():
    # base.yaml: scope both, logging defaults (new_exec on -> log_new_exec_on), best-effort,
    # min_abi 0; no shipped profile grants rename (refer); all inherit base unchanged.
    _entry.update(scopes=BOTH_SCOPES, flags={"log_new_exec_on"}, refer=False,
                  compat=Compat.BEST_EFFORT, min_abi=0)

COMPATS = list(Compat)


def fake_kernel(n: int) -> landlock.KernelSupport:
    return landlock.KernelSupport(abi=n, errata=7, state="enabled", kernel="test")


_policies: dict[str, Policy] = {}


def shipped_policy(name: str) -> Policy:
    if name not in _policies:
        lib = profile.Library(include_system=False)
        _policies[name] = profile.resolve(lib.load(name), dict(profile.VARIABLES),
                                          check_paths=False)
    return _policies[name]


def test_shipped_profiles_all_in_table():
    shipped = sorted(p.stem for p in (Path(profile.SHIPPED_DIR)).glob("*.yaml"))
    assert shipped == sorted(SHIPPED), "a shipped profile was added or removed: update SHIPPED"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_profile_request(name):
    want = SHIPPED[name]
    pol = shipped_policy(name)
    assert pol.compat is want["compat"] and pol.min_abi == want["min_abi"]
    req = pol.request()
    assert req.handled_fs == ALL_FS
    assert req.handled_net == ALL_NET
    assert req.scopes == want["scopes"]
    assert req.flags == want["flags"]
    assert req.port_rights == want["ports"]
    assert ("refer" in req.granted_fs) == want["refer"]


def expected_decision(want: dict, n: int, compat: Compat) -> dict:
    """The decision for a shipped profile, computed from the hand tables above."""
    if n == 0:
        refusal_has = {Compat.HARD_REQUIREMENT: ["hard-requirement", "Landlock unavailable"],
                       Compat.SOFT_REQUIREMENT: ["soft-requirement", "Landlock unavailable"],
                       Compat.BEST_EFFORT: ["Landlock unavailable", "unconfined"]}[compat]
        return dict(fs=set(), net=set(), scopes=set(), flags=set(),
                    dropped={("landlock", "all rules", "Landlock unavailable (ABI 0)")},
                    status=Status.NOT, may_run=compat is not Compat.HARD_REQUIREMENT,
                    restrict=False, refusal_has=refusal_has, refusal_lacks=[])
    fs_ok, net_ok = supported(n, FS), supported(n, NET)
    sc_ok, fl_ok = supported(n, SCOPE), supported(n, FLAG)
    fs, net = ALL_FS & fs_ok, ALL_NET & net_ok
    sc, fl = want["scopes"] & sc_ok, want["flags"] & fl_ok

    def why(name):
        return f"kernel ABI {n} < {FIRST_ABI[name]}"

    dropped = set()
    dropped |= {("fs_right", r, why(r)) for r in ALL_FS - fs_ok}
    dropped |= {("net_right", r, why(r)) for r in ALL_NET - net_ok}
    dropped |= {("port_rule", f"{r}:{p}", why(r)) for p, r in want["ports"] if r not in net_ok}
    dropped |= {("scope", s, why(s)) for s in want["scopes"] - sc_ok}
    dropped |= {("flag", f, why(f)) for f in want["flags"] - fl_ok}
    security = {d for d in dropped if d[0] != "flag"}
    flags_dropped = {d for d in dropped if d[0] == "flag"}
    if security and compat is Compat.HARD_REQUIREMENT:
        return dict(fs=set(), net=set(), scopes=set(), flags=set(), dropped=dropped,
                    status=Status.NOT, may_run=False, restrict=False,
                    refusal_has=["hard-requirement"] + [d[1] for d in security],
                    refusal_lacks=[d[1] for d in flags_dropped])
    if security and compat is Compat.SOFT_REQUIREMENT:
        return dict(fs=set(), net=set(), scopes=set(), flags=set(), dropped=dropped,
                    status=Status.NOT, may_run=True, restrict=False,
                    refusal_has=["soft-requirement"], refusal_lacks=[])
    return dict(fs=fs, net=net, scopes=sc, flags=fl, dropped=dropped,
                status=Status.PARTIALLY if security else Status.FULLY, may_run=True,
                restrict=True, refusal_has=[], refusal_lacks=[])


def test_expected_decision_spot_checks():
    # The oracle itself, against a few outcomes worked out on paper.
    d = expected_decision(SHIPPED["download"], 10, Compat.BEST_EFFORT)
    assert d["status"] is Status.FULLY and d["dropped"] == set()
    d = expected_decision(SHIPPED["download"], 9, Compat.BEST_EFFORT)
    assert d["status"] is Status.PARTIALLY
    assert d["dropped"] == {("net_right", "bind_udp", "kernel ABI 9 < 10"),
                            ("net_right", "connect_send_udp", "kernel ABI 9 < 10")}
    d = expected_decision(SHIPPED["base"], 6, Compat.HARD_REQUIREMENT)
    assert d["dropped"] == {("fs_right", "resolve_unix", "kernel ABI 6 < 9"),
                            ("net_right", "bind_udp", "kernel ABI 6 < 10"),
                            ("net_right", "connect_send_udp", "kernel ABI 6 < 10"),
                            ("flag", "log_new_exec_on", "kernel ABI 6 < 7")}
    assert d["may_run"] is False
    d = expected_decision(SHIPPED["source"], 3, Compat.BEST_EFFORT)
    assert len(d["dropped"]) == 2 + 4 + 5 + 2 + 1


@pytest.mark.parametrize("compat", COMPATS, ids=[c.value for c in COMPATS])
@pytest.mark.parametrize("n", ABIS)
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_profile_decision(name, n, compat):
    want = expected_decision(SHIPPED[name], n, compat)
    d = enforce.decide(shipped_policy(name), kernel=fake_kernel(n), cap=None, compat=compat)
    assert d.abi == n and d.compat is compat
    assert d.handled_fs == want["fs"]
    assert d.handled_net == want["net"]
    assert d.scopes == want["scopes"]
    assert d.flags == want["flags"]
    got = [(x.kind, x.item, x.reason) for x in d.dropped]
    assert len(got) == len(set(got)), "an item is reported dropped twice"
    assert set(got) == want["dropped"]
    assert d.status is want["status"]
    assert d.may_run is want["may_run"]
    assert d.restrict is want["restrict"]
    for text in want["refusal_has"]:
        assert text in d.refusal
    for text in want["refusal_lacks"]:
        assert text not in d.refusal
    if want["may_run"] and want["restrict"]:
        assert d.refusal == ""


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_profile_kernel_newer_than_known(name):
    d = enforce.decide(shipped_policy(name), kernel=fake_kernel(13), cap=None)
    assert d.abi == 10 and d.status is Status.FULLY and d.dropped == ()


@pytest.mark.parametrize("name", sorted(SHIPPED))
@pytest.mark.parametrize("cap", [1, 3, 6])
def test_shipped_profile_cap_matches_native(name, cap):
    native = enforce.decide(shipped_policy(name), kernel=fake_kernel(cap), cap=None)
    capped = enforce.decide(shipped_policy(name), kernel=fake_kernel(10), cap=cap)
    assert capped.abi == cap
    assert capped.dropped == native.dropped and capped.status is native.status
    # The cap decides exactly as a real kernel of that ABI would (at cap 1 the kernel itself
    # refuses reparenting, as on ABI 1: tests/test_enforcement.py shows EXDEV).
    assert capped.handled_fs == native.handled_fs


# ---------------------------------------------------------------------------------------------
# Compat levels, min_abi and flags on small hand-built policies.

ABI1_FS = frozenset(ADDED[1][FS])


def make_policy(*, fs=ABI1_FS, net=frozenset(), scopes=frozenset(), grants=None, ports=(),
                logging=Logging(new_exec=False), compat=Compat.BEST_EFFORT, min_abi=0):
    if grants is None:
        grants = (PathGrant(path="/usr", rights=frozenset({"read_file", "read_dir"})),)
    return Policy(name="t", phase="t", source="test", compat=compat, min_abi=min_abi,
                  handled_fs=frozenset(fs), handled_net=frozenset(net),
                  scopes=frozenset(scopes), paths=tuple(grants), ports=tuple(ports),
                  logging=logging)


def decide(pol, n, compat=None, cap=None):
    return enforce.decide(pol, kernel=fake_kernel(n), cap=cap, compat=compat)


def test_no_flags_by_default_in_make_policy():
    assert make_policy().request().flags == set()


def test_logging_flags():
    assert Logging().flags() == {"log_new_exec_on"}
    assert Logging(same_exec=False, new_exec=False, subdomains=False).flags() == {
        "log_same_exec_off", "log_subdomains_off"}


NET_POLICY = dict(net={"connect_tcp"}, ports=(PortGrant(port=443, right="connect_tcp"),),
                  scopes={"signal"})


def test_best_effort_partial():
    d = decide(make_policy(**NET_POLICY), 3, Compat.BEST_EFFORT)
    assert d.may_run and d.restrict and d.status is Status.PARTIALLY
    assert d.handled_fs == ABI1_FS and d.handled_net == set() and d.scopes == set()
    assert {(x.kind, x.item, x.reason) for x in d.dropped} == {
        ("net_right", "connect_tcp", "kernel ABI 3 < 4"),
        ("port_rule", "connect_tcp:443", "kernel ABI 3 < 4"),
        ("scope", "signal", "kernel ABI 3 < 6")}


def test_best_effort_nothing_left_is_not_enforced():
    d = decide(make_policy(fs=(), grants=(), **NET_POLICY), 3, Compat.BEST_EFFORT)
    assert d.may_run and not d.restrict and d.status is Status.NOT


def test_soft_requirement_unmet_runs_unconfined():
    d = decide(make_policy(**NET_POLICY), 5, Compat.SOFT_REQUIREMENT)
    assert d.may_run is True and d.restrict is False and d.status is Status.NOT
    assert d.handled_fs == set() and d.handled_net == set() and d.scopes == set()
    assert {x.item for x in d.dropped} == {"signal"}
    assert "soft-requirement" in d.refusal


def test_soft_requirement_met_enforces_all():
    d = decide(make_policy(**NET_POLICY), 6, Compat.SOFT_REQUIREMENT)
    assert d.may_run and d.restrict and d.status is Status.FULLY and d.dropped == ()
    assert d.handled_net == {"connect_tcp"} and d.scopes == {"signal"}


def test_hard_requirement_unmet_refuses_naming_items():
    d = decide(make_policy(**NET_POLICY), 3, Compat.HARD_REQUIREMENT)
    assert d.may_run is False and d.restrict is False and d.status is Status.NOT
    assert d.refusal.startswith("hard-requirement")
    for item in ("connect_tcp", "connect_tcp:443", "signal"):
        assert item in d.refusal
    assert "read_file" not in d.refusal


def test_hard_requirement_met_runs():
    d = decide(make_policy(**NET_POLICY), 7, Compat.HARD_REQUIREMENT)
    assert d.may_run and d.restrict and d.status is Status.FULLY and d.refusal == ""


def test_policy_compat_used_when_not_overridden():
    pol = make_policy(compat=Compat.HARD_REQUIREMENT, **NET_POLICY)
    assert decide(pol, 3).may_run is False
    assert decide(pol, 3, Compat.BEST_EFFORT).may_run is True


@pytest.mark.parametrize("compat", COMPATS, ids=[c.value for c in COMPATS])
@pytest.mark.parametrize("n,min_abi", [(0, 1), (0, 4), (3, 4), (5, 6), (9, 10)])
def test_min_abi_floor_refuses_whatever_compat(compat, n, min_abi):
    # The policy asks only for ABI 1 rights: nothing is dropped, the floor alone refuses.
    d = decide(make_policy(min_abi=min_abi), n, compat)
    assert d.may_run is False and d.restrict is False and d.status is Status.NOT
    assert "min_abi" in d.refusal and str(min_abi) in d.refusal


@pytest.mark.parametrize("compat", COMPATS, ids=[c.value for c in COMPATS])
def test_min_abi_met(compat):
    d = decide(make_policy(min_abi=4), 4, compat)
    assert d.may_run and d.restrict and d.status is Status.FULLY


@pytest.mark.parametrize("compat", COMPATS, ids=[c.value for c in COMPATS])
def test_min_abi_floor_applies_to_empty_policy(compat):
    d = decide(make_policy(fs=(), grants=(), min_abi=2), 1, compat)
    assert d.may_run is False


@pytest.mark.parametrize("compat", COMPATS, ids=[c.value for c in COMPATS])
def test_flags_never_count_against_requirements(compat):
    pol = make_policy(logging=Logging(new_exec=True, subdomains=False))   # two ABI 7 flags
    d = decide(pol, 6, compat)
    assert d.may_run and d.restrict and d.status is Status.FULLY
    assert d.handled_fs == ABI1_FS and d.flags == set()
    assert {(x.kind, x.item) for x in d.dropped} == {("flag", "log_new_exec_on"),
                                                     ("flag", "log_subdomains_off")}
    assert d.refusal == ""
    d7 = decide(pol, 7, compat)
    assert d7.flags == {"log_new_exec_on", "log_subdomains_off"} and d7.dropped == ()


@pytest.mark.parametrize("compat", COMPATS, ids=[c.value for c in COMPATS])
def test_tsync_flag_dropped_below_8_without_refusal(compat):
    req = abi.Request(handled_fs=ABI1_FS, handled_net=frozenset(), scopes=frozenset(),
                      flags=frozenset({"tsync", "log_new_exec_on"}),
                      granted_fs=frozenset({"read_file"}), port_rights=frozenset())
    d = abi.downgrade(req, 7, compat)
    assert d.may_run and d.restrict and d.status is Status.FULLY
    assert d.flags == {"log_new_exec_on"}
    assert [(x.kind, x.item, x.reason) for x in d.dropped] == [
        ("flag", "tsync", "kernel ABI 7 < 8")]
    assert abi.downgrade(req, 8, compat).flags == {"tsync", "log_new_exec_on"}


def test_nothing_requested_is_fully_enforced_trivially():
    for n in ABIS:
        d = decide(make_policy(fs=(), grants=()), n)
        assert d.may_run and not d.restrict and d.status is Status.FULLY and d.dropped == ()


@pytest.mark.parametrize("compat", COMPATS, ids=[c.value for c in COMPATS])
def test_abi0_single_landlock_drop(compat):
    d = decide(make_policy(**NET_POLICY), 0, compat)
    assert [(x.kind, x.reason) for x in d.dropped] == [("landlock",
                                                        "Landlock unavailable (ABI 0)")]
    assert d.restrict is False and d.status is Status.NOT
    assert d.may_run is (compat is not Compat.HARD_REQUIREMENT)


# ---------------------------------------------------------------------------------------------
# REFER on ABI 1.

REFER_GRANTS = (
    PathGrant(path="/usr", rights=frozenset({"read_file", "read_dir"})),
    PathGrant(path="/tmp", rights=frozenset({"read_file", "make_reg", "refer"})),
)


def refer_policy(**kw):
    return make_policy(fs=ALL_FS, grants=REFER_GRANTS, **kw)


def test_refer_on_abi1_best_effort_drops_all_filesystem_rules():
    d = decide(refer_policy(), 1, Compat.BEST_EFFORT)
    assert d.handled_fs == set()
    kinds = {(x.kind, x.item) for x in d.dropped}
    assert ("filesystem", "all filesystem rules") in kinds
    assert ("fs_right", "refer") in kinds
    assert d.may_run and not d.restrict and d.status is Status.NOT


def test_refer_on_abi1_best_effort_keeps_net_and_scopes_shape():
    # Nothing else is enforceable on ABI 1, so the whole ruleset is gone: loud NOT.
    d = decide(refer_policy(**NET_POLICY), 1, Compat.BEST_EFFORT)
    assert d.handled_fs == set() and d.handled_net == set() and d.scopes == set()
    assert d.status is Status.NOT


def test_refer_on_abi1_hard_requirement_refuses():
    d = decide(refer_policy(), 1, Compat.HARD_REQUIREMENT)
    assert d.may_run is False and "refer" in d.refusal


def test_refer_on_abi1_soft_requirement_unconfined():
    d = decide(refer_policy(), 1, Compat.SOFT_REQUIREMENT)
    assert d.may_run is True and d.restrict is False


def test_refer_on_abi1_by_cap_drops_filesystem():
    d = decide(refer_policy(), 7, Compat.BEST_EFFORT, cap=1)
    assert d.abi == 1 and d.handled_fs == set()
    assert "filesystem" in {x.kind for x in d.dropped}


def test_refer_on_abi2_keeps_filesystem():
    d = decide(refer_policy(), 2, Compat.BEST_EFFORT)
    assert d.handled_fs == supported(2, FS)
    assert "filesystem" not in {x.kind for x in d.dropped}
    assert d.restrict and d.status is Status.PARTIALLY


def test_no_refer_grant_on_abi1_keeps_filesystem():
    d = decide(make_policy(fs=ALL_FS), 1, Compat.BEST_EFFORT)
    assert d.handled_fs == supported(1, FS)
    assert "filesystem" not in {x.kind for x in d.dropped}
    assert d.restrict and d.status is Status.PARTIALLY


def test_refer_granted_through_profile_group(tmp_path):
    # The YAML route: access "rename" is refer.
    (tmp_path / "mover.yaml").write_text(
        "extends: base\nphase: build\n"
        "filesystem:\n  - {path: /tmp, access: [read, create, rename]}\n")
    lib = profile.Library([tmp_path], include_system=False)
    pol = profile.resolve(lib.load("mover"), dict(profile.VARIABLES), check_paths=False)
    assert "refer" in pol.request().granted_fs
    d = decide(pol, 1, Compat.BEST_EFFORT)
    assert d.handled_fs == set() and "filesystem" in {x.kind for x in d.dropped}
    assert decide(pol, 1, Compat.HARD_REQUIREMENT).may_run is False


# ---------------------------------------------------------------------------------------------
# Product bugs (see the reasons).

# Regression (was a strict xfail):  enforce.decide() with cap=1 on a newer kernel adds 'refer' to the *request* before  abi.downgrade(), which then reports it dropped ('kernel ABI 1 < 2'): a policy that  handles only ABI 1 rights runs fully on a real ABI 1 kernel but is refused under  hard-requirement (and reported partially enforced under best-effort) when capped to 1
@pytest.mark.parametrize("compat", COMPATS, ids=[c.value for c in COMPATS])
def test_cap1_matches_native_abi1_for_abi1_only_policy(compat):
    pol = make_policy()                      # handles ABI 1 rights only, grants no refer
    native = decide(pol, 1, compat)
    capped = decide(pol, 7, compat, cap=1)
    assert native.may_run and native.status is Status.FULLY and native.dropped == ()
    assert (capped.may_run, capped.status, capped.dropped) == (True, Status.FULLY, ())


# Regression (was a strict xfail):  abi.downgrade() reports a port rule whose right the policy does not handle as  dropped with the false reason 'kernel ABI 10 < 4' (it tests `right not in net`, the  supported *handled* set, and blames the kernel); hard-requirement then refuses on a  kernel that supports everything
def test_port_rule_for_unhandled_right_not_blamed_on_kernel():
    pol = make_policy(net={"bind_tcp"}, ports=(PortGrant(port=443, right="connect_tcp"),))
    d = decide(pol, 10, Compat.HARD_REQUIREMENT)
    for x in d.dropped:
        assert not x.reason.startswith("kernel ABI 10 <"), x
    assert d.may_run
