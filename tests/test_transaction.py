"""Sandboxed transactions compared with stock pacman on twin roots (file:// mirror).

Each test performs the same transaction with stock pacman on one root and with pkgsandbox on
its twin, then compares the installed trees (paths, modes, contents), `pacman -Q`,
`pacman -Qk`, and the scriptlet calls in order.
"""
from __future__ import annotations

import os

import pytest

from pkgsandbox.repobuild import PkgFile, PkgSpec, build_repo
from tests.support.twin import (assert_twins, base_specs, new_root, query, sandboxed,
                                stock)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="transactions need root")


@pytest.fixture
def repo(tmp_path):
    d = tmp_path / "repo"
    build_repo(base_specs(), d)
    return d


@pytest.fixture
def twins(tmp_path, repo):
    server = f"file://{repo}"
    return new_root(tmp_path, "stock", server), new_root(tmp_path, "sandboxed", server)


def test_sync_install_with_dependencies(twins):
    a, b = twins
    stock(a, "-Sy", "hello")
    r = sandboxed(b, "-Sy", "hello")
    assert "installing libfoo..." in r.stdout and "installing hello..." in r.stdout
    assert b.calls() == ["pre_install 1.0-1", "post_install 1.0-1",
                         "pre_install 1.0-1", "post_install 1.0-1"]
    assert_twins(a, b)
    assert "[scriptlet]" in r.stdout and "[extract]" in r.stdout and "[download]" in r.stdout


def test_sysupgrade_runs_upgrade_scriptlets(twins, tmp_path, repo):
    a, b = twins
    stock(a, "-Sy", "hello", "quiet")
    sandboxed(b, "-Sy", "hello", "quiet")
    build_repo(base_specs("2.0-1"), repo)
    stock(a, "-Syyu")
    r = sandboxed(b, "-Syyu")
    assert "upgrading hello..." in r.stdout
    assert "pre_upgrade 2.0-1 1.0-1" in b.calls() and "post_upgrade 2.0-1 1.0-1" in b.calls()
    assert_twins(a, b)


def test_local_files_with_U(twins, repo):
    a, b = twins
    files = [str(repo / "libfoo-1.0-1-any.pkg.tar.zst"), str(repo / "hello-1.0-1-any.pkg.tar.zst")]
    stock(a, "-U", *files)
    sandboxed(b, "-U", *files)
    assert_twins(a, b)


def test_remove_and_recursive_remove(twins):
    a, b = twins
    for root, run in ((a, stock), (b, sandboxed)):
        run(root, "-Sy", "hello", "quiet")
        run(root, "-R", "quiet")
        run(root, "-Rs", "hello")
    assert "pre_remove 1.0-1" in b.calls() and "post_remove 1.0-1" in b.calls()
    assert query(b, "-Q").stdout == ""
    assert_twins(a, b)


def test_backup_file_becomes_pacnew(twins, repo):
    a, b = twins
    for root, run in ((a, stock), (b, sandboxed)):
        run(root, "-Sy", "libfoo")
        (root.path / "etc/foo.conf").write_text("a=local\n")
    build_repo(base_specs("2.0-1", conf_text=b"a=2\n"), repo)
    stock(a, "-Syyu")
    sandboxed(b, "-Syyu")
    assert (b.path / "etc/foo.conf").read_text() == "a=local\n"
    assert (b.path / "etc/foo.conf.pacnew").read_text() == "a=2\n"
    assert_twins(a, b)


def test_file_conflict_is_refused_like_pacman(twins):
    a, b = twins
    for root in (a, b):
        (root.path / "usr/bin/hello").write_text("mine\n")
    ra = stock(a, "-Sy", "hello", check=False)
    rb = sandboxed(b, "-Sy", "hello", check=False)
    assert ra.returncode == rb.returncode == 1
    assert "conflict" in rb.stderr.lower() or "exists in filesystem" in rb.stderr + rb.stdout
    assert (b.path / "usr/bin/hello").read_text() == "mine\n"
    assert query(b, "-Q").stdout == ""
    assert_twins(a, b)


def test_unknown_target_is_an_error(twins):
    _, b = twins
    r = sandboxed(b, "-Sy", "no-such-package", check=False)
    assert r.returncode == 1
    assert "target not found: no-such-package" in r.stderr


def test_lock_is_held_and_refuses_a_concurrent_transaction(twins):
    _, b = twins
    lock = b.path / "var/lib/pacman/db.lck"
    lock.write_text("")
    r = sandboxed(b, "-Sy", "hello", check=False)
    assert r.returncode == 1 and "unable to lock database" in r.stderr
    assert lock.exists()
    lock.unlink()
    sandboxed(b, "-Sy", "hello")
    assert not lock.exists()


def test_no_hook_runs_inside_the_extraction_child(twins):
    """libalpm adds {root}/usr/share/libalpm/hooks by itself; pkgsandbox empties that list, so
    the hook runs exactly once, in its own domain (phase "hook"), not also inside the
    extraction child. /var/log is writable from both domains, so a second run would show."""
    a, b = twins
    for root in (a, b):
        hooks = root.path / "usr/share/libalpm/hooks"
        hooks.mkdir(parents=True)
        (hooks / "marker.hook").write_text(
            "[Trigger]\nOperation = Install\nType = Package\nTarget = *\n\n[Action]\n"
            "When = PostTransaction\nExec = /bin/sh -c 'echo ran >> /var/log/hook-ran'\n")
    stock(a, "-Sy", "hello")
    r = sandboxed(b, "-Sy", "hello")
    assert query(b, "-Q").stdout.startswith("hello")
    assert (a.path / "var/log/hook-ran").read_text() == "ran\n"
    assert (b.path / "var/log/hook-ran").read_text() == "ran\n"
    assert " hook      marker " in r.stdout


def test_download_only_and_print(twins):
    _, b = twins
    r = sandboxed(b, "-Syp", "hello")
    assert r.returncode == 0
    assert "hello-1.0-1-any.pkg.tar.zst" in r.stdout
    assert query(b, "-Q").stdout == ""
    r = sandboxed(b, "-Sw", "hello")
    assert r.returncode == 0
    cache = b.path / "var/cache/pacman/pkg"
    assert (cache / "hello-1.0-1-any.pkg.tar.zst").exists()
    assert query(b, "-Q").stdout == ""


HOSTILE = r'''
post_install() {
  try() { name=$1; shift
    if out=$( ("$@") 2>&1 ); then echo "$name allowed" >> /var/log/attempts
    else echo "$name refused: $out" >> /var/log/attempts; fi; }
  try write-usr sh -c 'echo pwned > /usr/bin/evil'
  try read-secret cat /root/secret
  try tcp-connect sh -c 'echo hi | nc -w 2 127.0.0.1 @PORT@'
  try signal kill -0 @PID@
  echo done > /var/lib/hostile/state
}
'''


def test_scriptlet_domain_refuses_escapes_while_legitimate_work_succeeds(tmp_path):
    """From inside a real transaction: the same hostile post_install under stock pacman (every
    attempt works: the test can fail) and under pkgsandbox (each refused by the kernel)."""
    import socket
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    def serve():                      # accept and hang up, so nc ends at once
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    try:
        script = HOSTILE.replace("@PORT@", str(port)).replace("@PID@", str(os.getpid()))
        repo = tmp_path / "repo"
        build_repo([PkgSpec(name="hostile", install=script,
                            files=(PkgFile(path="var/lib/hostile", directory=True),
                                   PkgFile(path="usr/share/hostile/x", content=b"x")))], repo)
        a = new_root(tmp_path, "stock", f"file://{repo}")
        b = new_root(tmp_path, "sandboxed", f"file://{repo}")
        for root in (a, b):
            (root.path / "root/secret").write_text("s3cret\n")
        stock(a, "-Sy", "hostile")
        sandboxed(b, "-Sy", "hostile")
        unconfined = (a.path / "var/log/attempts").read_text().splitlines()
        confined = dict(line.split(" ", 1) for line in
                        (b.path / "var/log/attempts").read_text().splitlines())
        assert unconfined == ["write-usr allowed", "read-secret allowed", "tcp-connect allowed",
                              "signal allowed"]
        assert (a.path / "usr/bin/evil").exists()
        assert confined["write-usr"].startswith("refused") and \
            "Permission denied" in confined["write-usr"]
        assert "Permission denied" in confined["read-secret"]
        assert "Permission denied" in confined["tcp-connect"] and \
            "nc:" in confined["tcp-connect"]
        assert confined["signal"].startswith("refused") and \
            "not permitted" in confined["signal"].lower()
        assert not (b.path / "usr/bin/evil").exists()
        assert (b.path / "var/lib/hostile/state").read_text() == "done\n"
        assert query(b, "-Q").stdout == "hostile 1.0-1\n"
    finally:
        listener.close()


def test_package_files_at_protected_paths_refuse_the_transaction(tmp_path):
    """A payload landing in /etc/ld.so.preload or /etc/pacman.d/hooks (granted /etc for the
    extract domain) is refused before any change; stock pacman installs it (the control)."""
    repo = tmp_path / "repo"
    build_repo([PkgSpec(name="sneaky", files=(
        PkgFile(path="etc/ld.so.preload", content=b"/usr/lib/libevil.so\n"),
        PkgFile(path="etc/pacman.d/hooks/evil.hook", content=b"x"),
        PkgFile(path="usr/share/sneaky/ok", content=b"ok")))], repo)
    a = new_root(tmp_path, "stock", f"file://{repo}")
    b = new_root(tmp_path, "sandboxed", f"file://{repo}")
    stock(a, "-Sy", "sneaky")
    assert (a.path / "etc/ld.so.preload").exists()
    r = sandboxed(b, "-Sy", "sneaky", check=False)
    assert r.returncode == 1
    assert "protected path: sneaky: /etc/ld.so.preload" in r.stderr
    assert not (b.path / "etc/ld.so.preload").exists()
    assert not (b.path / "usr/share/sneaky/ok").exists()
    assert query(b, "-Q").stdout == ""


def _narrowed_writes(policy, decision, root, paths):
    import errno as _errno
    from pkgsandbox import enforce as _enforce
    _enforce.narrow_to(policy, decision, root=root, paths=paths)
    out = {}
    for rel in ("usr/lib/a/new", "usr/lib/b/new", "usr/share/fresh/dir"):
        try:
            if rel.endswith("dir"):
                os.makedirs(os.path.join(root, rel))
            else:
                with open(os.path.join(root, rel), "w") as f:
                    f.write("x")
            out[rel] = "ok"
        except OSError as exc:
            out[rel] = _errno.errorcode[exc.errno]
    try:
        with open(os.path.join(root, "usr/lib/b/old")) as f:
            out["read b"] = f.read()
    except OSError as exc:
        out["read b"] = _errno.errorcode[exc.errno]
    return out


def test_extract_domain_narrows_to_the_transactions_directories(tmp_path):
    """Least privilege in the extract worker: once the file lists are known, writes are
    allowed only in the directories the transaction touches (new ones created under their
    nearest existing ancestor); the rest of the prefixes stays readable, not writable."""
    from pkgsandbox import enforce, profile, runner
    from pkgsandbox.repobuild import make_root
    root = make_root(tmp_path / "root")
    for d in ("usr/lib/a", "usr/lib/b", "var/cache/pacman/pkg"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/b/old").write_text("old")
    (root / "var/log/pacman.log").write_text("")
    policy = profile.resolve(profile.Library(include_system=False).load("extract"), {
        "root": str(root), "dbpath": str(root / "var/lib/pacman"),
        "cachedir": str(root / "var/cache/pacman/pkg"), "logfile": str(root / "var/log/pacman.log"),
        "gpgdir": "/nonexistent/gnupg"})
    with enforce.prepare(policy) as prepared:
        res = runner.call(_narrowed_writes, policy, prepared.decision, str(root),
                          ["usr/lib/a/x", "usr/share/fresh/"], prepared=prepared).value
    assert res["usr/lib/a/new"] == "ok"                 # a directory the transaction touches
    assert res["usr/share/fresh/dir"] == "ok"           # created under its nearest ancestor
    assert res["usr/lib/b/new"] == "EACCES"             # inside the prefix, not touched: refused
    assert res["read b"] == "old"                       # still readable
    # Without the narrowing, the same write into usr/lib/b is allowed (the test can fail).
    def plain(path):
        with open(path, "w") as f:
            f.write("x")
        return "ok"
    with enforce.prepare(policy) as prepared:
        assert runner.call(plain, str(root / "usr/lib/b/new2"), prepared=prepared).value == "ok"


def test_abort_on_fail_pre_hook_aborts_before_any_change(twins):
    """A failing PreTransaction hook with AbortOnFail aborts like libalpm: nothing installed,
    no PostTransaction hook run; the same as stock pacman on the twin root."""
    a, b = twins
    for root in (a, b):
        hooks = root.path / "usr/share/libalpm/hooks"
        hooks.mkdir(parents=True)
        (hooks / "10-gate.hook").write_text(
            "[Trigger]\nOperation = Install\nType = Package\nTarget = hello\n\n[Action]\n"
            "When = PreTransaction\nExec = /bin/sh -c 'echo gate >> /var/log/hooks; exit 1'\n"
            "AbortOnFail\n")
        (hooks / "20-after.hook").write_text(
            "[Trigger]\nOperation = Install\nType = Package\nTarget = *\n\n[Action]\n"
            "When = PostTransaction\nExec = /bin/sh -c 'echo after >> /var/log/hooks'\n")
    ra = stock(a, "-Sy", "hello", check=False)
    rb = sandboxed(b, "-Sy", "hello", check=False)
    assert ra.returncode == rb.returncode == 1
    assert "failed to run transaction hooks" in rb.stderr
    for root in (a, b):
        assert (root.path / "var/log/hooks").read_text() == "gate\n"
        assert query(root, "-Q").stdout == ""
        assert not (root.path / "usr/bin/hello").exists()
