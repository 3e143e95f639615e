"""The CLI as users and scripts see it: exit codes, reports, demo, doctor, chroot, user switch.

Every test runs `python -m pkgsandbox` as a subprocess: restrictions happen in its children.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pkgsandbox import landlock

ROOT = Path(__file__).resolve().parent.parent
needs_landlock = pytest.mark.skipif(landlock.probe().abi < 6,
                                    reason="needs Landlock ABI >= 6 (this kernel lacks it)")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, user switch)")


def pkgsandbox(*args, env=None, timeout=60, cwd=None):
    full_env = dict(os.environ)
    full_env.pop("PKGSANDBOX_ABI", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pkgsandbox", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd or ROOT,
                          stdin=subprocess.DEVNULL)


def last_json(stderr: str) -> dict:
    return json.loads(stderr.strip().splitlines()[-1])


@needs_landlock
@needs_root
def test_demo_transaction_refuses_every_hostile_attempt_and_installs_the_good_package():
    r = pkgsandbox("demo", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    good = data["greeter"]
    assert good == {"exit_status": 0, "installed": True, "scriptlet_ran": True}
    evil = data["evil"]
    attempts = {a["attempt"]: a for a in evil["attempts"]}
    assert len(attempts) == 7
    legit = [a for name, a in attempts.items() if "legitimate" in name]
    assert [a["outcome"] for a in legit] == ["allowed"]
    hostile = [a for name, a in attempts.items() if "legitimate" not in name]
    assert all(a["outcome"] == "refused" for a in hostile), hostile
    # The kernel's own errors: EACCES for files and TCP, EPERM for the signal scope.
    assert all("Permission denied" in a["error"] or "not permitted" in a["error"]
               for a in hostile), hostile
    assert evil["payload_outside_prefixes_landed"] is False
    assert evil["binary_replaced"] is False
    assert evil["exit_status"] == 1          # the refused payload file is an error, loudly
    phases = {p["phase"] for p in data["phases"]}
    assert phases == {"download", "extract", "scriptlet"}
    assert all(p["report"]["landlock"] for p in data["phases"])


@needs_root
def test_demo_without_landlock_says_so_and_the_attempts_succeed():
    r = pkgsandbox("demo", "--abi", "0", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "WITHOUT Landlock" in r.stderr
    assert "allowed  read the root user's SSH key" in r.stdout
    assert "LANDED" in r.stdout


@needs_root
def test_human_demo_output_names_each_refusal():
    r = pkgsandbox("demo", timeout=300)
    assert r.returncode == 0
    assert "REFUSED  read the root user's SSH key" in r.stdout
    assert "Every phase, and what it ran under:" in r.stdout


def test_exit_status_is_the_programs():
    assert pkgsandbox("run", "--profile", "base", "--", "sh", "-c", "exit 7").returncode == 7
    assert pkgsandbox("run", "--profile", "base", "--", "sh", "-c",
                      "kill -9 $$").returncode == 128 + 9


def test_command_not_found_and_not_executable(tmp_path):
    r = pkgsandbox("run", "--profile", "base", "--", "/nonexistent/program")
    assert r.returncode == 127 and "not found" in r.stderr
    plain = tmp_path / "plain"
    plain.write_text("not a program")
    plain.chmod(0o644)
    r = pkgsandbox("run", "--profile", "base", "--", str(plain))
    assert r.returncode == 126, r.stderr


def test_timeout_kills_and_exits_124():
    r = pkgsandbox("run", "--profile", "base", "--timeout", "0.5", "--", "sh", "-c",
                   "sleep 30 & sleep 30", timeout=20)
    assert r.returncode == 124
    assert "timed out" in r.stderr


def test_no_command_is_usage_error():
    r = pkgsandbox("run", "--profile", "base", "--")
    assert r.returncode == 2
    assert "no command" in r.stderr and "Traceback" not in r.stderr


def test_unknown_profile_is_exit_2_one_line():
    r = pkgsandbox("run", "--profile", "nosuchprofile", "--", "true")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "nosuchprofile" in r.stderr


@needs_landlock
def test_run_json_report_on_stderr():
    r = pkgsandbox("--json", "run", "--profile", "base", "--", "true")
    assert r.returncode == 0
    data = last_json(r.stderr)
    assert data["exit_status"] == 0
    assert data["report"]["landlock"] is True and data["report"]["abi"] == 7
    assert data["report"]["no_new_privs"] is True


def test_no_landlock_best_effort_runs_unconfined_and_says_so(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    r = pkgsandbox("run", "--profile", "base", "--abi", "0", "--json", "--", "cat", str(secret))
    assert r.returncode == 0
    assert r.stdout == "s3cret"
    assert "WITHOUT Landlock" in r.stderr
    report = last_json(r.stderr)["report"]
    assert report["landlock"] is False and report["status"] == "not enforced"
    assert report["dropped"][0]["kind"] == "landlock"


def test_no_landlock_env_var_is_the_same_as_the_option(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    r = pkgsandbox("run", "--profile", "base", "--", "cat", str(secret),
                   env={"PKGSANDBOX_ABI": "0"})
    assert r.returncode == 0 and r.stdout == "s3cret" and "WITHOUT Landlock" in r.stderr


def test_no_landlock_soft_requirement_warns_and_runs():
    r = pkgsandbox("run", "--profile", "base", "--abi", "0", "--compat", "soft-requirement",
                   "--", "true")
    assert r.returncode == 0
    assert "soft-requirement" in r.stderr and "WITHOUT Landlock" in r.stderr


def test_no_landlock_hard_requirement_refuses_with_120(tmp_path):
    marker = tmp_path / "ran"
    r = pkgsandbox("run", "--profile", "base", "--abi", "0", "--compat", "hard-requirement",
                   "--", "touch", str(marker))
    assert r.returncode == 120
    assert "hard-requirement" in r.stderr
    assert not marker.exists()


def test_min_abi_floor_refuses(tmp_path):
    prof = tmp_path / "floor.yaml"
    prof.write_text("extends: base\nmin_abi: 4\n")
    ok = pkgsandbox("run", "--profile", str(prof), "--", "true")
    assert ok.returncode == 0, ok.stderr
    r = pkgsandbox("run", "--profile", str(prof), "--abi", "3", "--", "true")
    assert r.returncode == 120 and "min_abi 4" in r.stderr


@needs_landlock
def test_global_options_before_or_after_the_subcommand(tmp_path):
    a = pkgsandbox("--abi", "3", "--json", "run", "--profile", "base", "--", "true")
    b = pkgsandbox("run", "--abi", "3", "--json", "--profile", "base", "--", "true")
    assert a.returncode == b.returncode == 0
    assert last_json(a.stderr)["report"]["abi"] == last_json(b.stderr)["report"]["abi"] == 3


def test_program_options_after_double_dash_are_the_programs():
    r = pkgsandbox("run", "--profile", "base", "--", "sh", "-c", "echo $1", "x", "--abi")
    assert r.returncode == 0 and r.stdout.strip() == "--abi"


def test_doctor_json():
    r = pkgsandbox("doctor", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    kernel = landlock.probe()
    assert data["kernel_abi"] == kernel.abi and data["errata_mask"] == kernel.errata
    assert data["audit"]["available"] in (True, False)
    names = {row["profile"] for row in data["profiles"]}
    assert {"base", "download", "extract", "scriptlet", "hook", "source", "prepare", "build",
            "package"} <= names
    capped = json.loads(pkgsandbox("--abi", "3", "doctor", "--json").stdout)
    assert capped["abi_in_force"] == min(3, kernel.abi)
    assert "connect_tcp" not in capped["supported"]["net_rights"]


def test_doctor_human_lists_every_shipped_profile():
    r = pkgsandbox("doctor")
    assert r.returncode == 0
    for name in ("download", "extract", "scriptlet", "hook", "source", "build"):
        assert f"\n{name} " in r.stdout


def test_help_documents_exit_codes():
    r = pkgsandbox("--help")
    assert r.returncode == 0
    for code in ("120", "121", "124", "127", "128+N", "PKGSANDBOX_ABI"):
        assert code in r.stdout
    r = pkgsandbox("run", "--help")
    assert "--profile" in r.stdout and "120" in r.stdout


# ---------------------------------------------------------------------------------------------
# chroot and user switch, with a busybox root

def _busybox_root(tmp_path: Path) -> Path:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        pytest.skip("busybox-static is not installed")
    root = tmp_path / "root"
    for d in ("bin", "etc", "tmp", "root", "var/cache"):
        (root / d).mkdir(parents=True)
    shutil.copy(busybox, root / "bin/busybox")
    for tool in ("sh", "cat", "echo", "id", "ls", "touch"):
        (root / "bin" / tool).symlink_to("busybox")
    (root / "etc/secret").write_text("s3cret\n")
    (root / "root/key").write_text("key\n")
    return root


@needs_root
@needs_landlock
def test_chroot_run_confines_inside_the_root(tmp_path):
    root = _busybox_root(tmp_path)
    prof = tmp_path / "chrooted.yaml"
    prof.write_text(
        'filesystem:\n'
        '  - {path: "{root}/bin", access: [read, execute]}\n'
        '  - {path: "{root}/var/cache", access: [read, write, create]}\n')
    script = ("cat /etc/secret || echo DENIED-SECRET; cat /root/key || echo DENIED-KEY; "
              "echo ok > /var/cache/x && cat /var/cache/x")
    r = pkgsandbox("run", "--profile", str(prof), "--var", f"root={root}", "--chroot",
                   str(root), "--", "/bin/sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert "DENIED-SECRET" in r.stdout and "DENIED-KEY" in r.stdout
    assert "Permission denied" in r.stderr
    assert r.stdout.strip().endswith("ok")
    assert (root / "var/cache/x").read_text() == "ok\n"
    # The same without the sandbox: the reads work, proving the denial above was Landlock's.
    r = pkgsandbox("run", "--profile", str(prof), "--var", f"root={root}", "--chroot",
                   str(root), "--abi", "0", "--", "/bin/sh", "-c", script)
    assert "s3cret" in r.stdout and "DENIED" not in r.stdout


@needs_root
def test_user_switch_sets_groups_gid_uid():
    r = pkgsandbox("run", "--profile", "base", "--user", "nobody", "--", "sh", "-c",
                   "id -u; id -g; id -G")
    assert r.returncode == 0, r.stderr
    uid, gid, groups = r.stdout.split("\n")[:3]
    import pwd
    entry = pwd.getpwnam("nobody")
    assert int(uid) == entry.pw_uid and int(gid) == entry.pw_gid
    assert set(map(int, groups.split())) == set(os.getgrouplist("nobody", entry.pw_gid))


def test_unknown_user_is_setup_error_121():
    r = pkgsandbox("run", "--profile", "base", "--user", "no-such-user-here", "--", "true")
    assert r.returncode == 121 and "does not exist" in r.stderr


def test_bad_chroot_is_setup_error_121():
    r = pkgsandbox("run", "--profile", "base", "--chroot", "/nonexistent-root", "--", "true")
    assert r.returncode == 121 and "chroot" in r.stderr and "Traceback" not in r.stderr


@needs_landlock
def test_a_symlink_under_the_root_does_not_redirect_a_grant(tmp_path):
    """A package-controlled path ({root}/var/lib/{pkgname}) that is a symlink to a host
    directory must not become a grant on that directory (found in review)."""
    root, victim = tmp_path / "root", tmp_path / "victim"
    for d in ("usr", "etc", "var/lib/ctl"):
        (root / d).mkdir(parents=True)
    victim.mkdir()
    (root / "var/lib/evil").symlink_to(victim)
    r = pkgsandbox("run", "--profile", "scriptlet", "--var", f"root={root}", "--var",
                   "pkgname=evil", "--report", "--", "touch", str(victim / "x"))
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert "a symlink below" in r.stderr and not (victim / "x").exists()
    # The same grant on a real directory works: the denial above is the symlink's doing.
    r = pkgsandbox("run", "--profile", "scriptlet", "--var", f"root={root}", "--var",
                   "pkgname=ctl", "--", "touch", str(root / "var/lib/ctl/x"))
    assert r.returncode == 0, r.stderr
