"""A per-hook override applies only to the hook file of the packages it names (`owners:`).

Any package can ship a hook file named like mkinitcpio's (when mkinitcpio is not installed,
nothing conflicts); with the override keyed by name alone, that package's hook would run with
mkinitcpio's grants (write /boot). Each test installs a package that ships
/usr/share/libalpm/hooks/90-mkinitcpio-install.hook, then a second package that triggers it,
with pkgsandbox on a real root: the hook tries to write /boot. Shipped by a package named
mkinitcpio, the override applies and the write succeeds; shipped by any other package, the
hook runs under the plain hook profile and the kernel refuses the write (EACCES). A hook file
no package owns (an administrator's, in /etc/pacman.d/hooks) gets the override.
"""
from __future__ import annotations

import os

import pytest

from pkgsandbox.repobuild import PkgFile, PkgSpec, build_repo
from tests.support.twin import new_root, query, sandboxed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="transactions need root")

HOOK = "90-mkinitcpio-install"


def hook_text(when: str) -> str:
    return ("[Trigger]\nOperation = Install\nType = Package\nTarget = victim\n\n[Action]\n"
            f"When = {when}\nExec = /bin/sh -c 'echo image > /boot/planted && echo HOOK-WROTE "
            f"|| echo HOOK-REFUSED'\n")


@pytest.mark.parametrize("when", ["PreTransaction", "PostTransaction"])
@pytest.mark.parametrize("owner, applies", [("mkinitcpio", True), ("impostor", False),
                                            ("mkinitcpio-evil", False)])
def test_hook_override_applies_only_to_its_owners_hook(tmp_path, owner, applies, when):
    repo = tmp_path / "repo"
    build_repo([
        PkgSpec(name=owner, files=(
            PkgFile(path=f"usr/share/libalpm/hooks/{HOOK}.hook",
                    content=hook_text(when).encode()),)),
        PkgSpec(name="victim", files=(PkgFile(path="usr/share/victim/f", content=b"v\n"),)),
    ], repo)
    root = new_root(tmp_path, "sandboxed", f"file://{repo}")
    (root.path / "boot").mkdir()
    sandboxed(root, "-Sy", owner)
    r = sandboxed(root, "-S", "victim", check=False)
    assert r.returncode == 0, r.stderr
    assert query(root, "-Q").stdout == f"{owner} 1.0-1\nvictim 1.0-1\n"
    planted = root.path / "boot/planted"
    if applies:
        assert "HOOK-WROTE" in r.stdout and planted.read_text() == "image\n"
        assert "not owned by" not in r.stderr
    else:
        assert "HOOK-REFUSED" in r.stdout and "Permission denied" in r.stdout
        assert not planted.exists()
        assert (f"warning: hook {HOOK}: /usr/share/libalpm/hooks/{HOOK}.hook: it is owned by "
                f"{owner}, not by mkinitcpio: it runs under the plain hook profile, not under "
                f"hooks/{HOOK}.yaml") in r.stderr


@pytest.mark.parametrize("when", ["PreTransaction", "PostTransaction"])
def test_an_administrators_own_hook_gets_the_override(tmp_path, when):
    """No package owns /etc/pacman.d/hooks/90-mkinitcpio-install.hook (the administrator
    wrote it; packages' phases cannot write there): the override applies."""
    repo = tmp_path / "repo"
    build_repo([PkgSpec(name="victim", files=(PkgFile(path="usr/share/victim/f",
                                                        content=b"v\n"),))], repo)
    root = new_root(tmp_path, "sandboxed", f"file://{repo}")
    (root.path / "boot").mkdir()
    (root.path / f"etc/pacman.d/hooks/{HOOK}.hook").write_text(hook_text(when))
    r = sandboxed(root, "-Sy", "victim", check=False)
    assert r.returncode == 0, r.stderr
    assert "HOOK-WROTE" in r.stdout and (root.path / "boot/planted").read_text() == "image\n"
    assert "warning: hook" not in r.stderr
