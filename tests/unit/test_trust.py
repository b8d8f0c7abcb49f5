"""tracer/trust.py: which paths root may import code from."""

from __future__ import annotations

import os

import pytest

from tracer import trust

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating files owned by other users needs root")


def _tree(tmp_path, mode=0o755, uid=0, gid=0):
    d = tmp_path / "site" / "pkg"
    d.mkdir(parents=True)
    (d / "mod.py").write_text("")
    for p in (tmp_path, tmp_path / "site", d):
        os.chmod(p, 0o755)
    os.chown(d, uid, gid)
    os.chmod(d, mode)
    return d


def test_root_owned_tree_is_trusted(tmp_path):
    assert trust._tree(str(_tree(tmp_path))) is None


@pytest.mark.parametrize("mode,uid,gid,why", [
    (0o757, 0, 0, "writable by others"),
    (0o775, 0, 4242, "writable by group 4242"),
    (0o755, 4242, 0, "owned by uid 4242"),
])
def test_writable_by_someone_else_is_not(tmp_path, mode, uid, gid, why):
    why_found = trust._tree(str(_tree(tmp_path, mode, uid, gid)))
    assert why_found and why in why_found


def test_group_root_and_sticky_ancestors_are_fine(tmp_path):
    d = _tree(tmp_path, mode=0o775)                  # group-writable, but the group is root's
    assert trust._tree(str(d)) is None
    os.chmod(tmp_path / "site", 0o1777)              # like /tmp: others cannot move root's entries
    assert trust._tree(str(d)) is None
    os.chmod(tmp_path / "site", 0o777)               # without the sticky bit they can
    assert "writable by others" in trust._tree(str(d))


def test_a_file_inside_and_a_symlink_target_are_checked(tmp_path):
    d = _tree(tmp_path)
    os.chown(d / "mod.py", 4242, 4242)
    assert "mod.py is owned by uid 4242" in trust._tree(str(d))
    os.chown(d / "mod.py", 0, 0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.h").write_text("")
    os.chown(elsewhere / "data.h", 4242, 4242)
    (d / "data").symlink_to(elsewhere)
    assert "data.h is owned by uid 4242" in trust._tree(str(d))

