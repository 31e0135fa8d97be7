"""Seeded trees, contents, table plans and sparse copies: the parts of the image factory
that need no external tool."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from vmguard.errors import ConfigError
from vmguard_lab.imaging import table
from vmguard_lab.imaging.content import Content, Patch
from vmguard_lab.imaging.sparse import changed_ranges, copy_range, data_extents, sha256_sparse
from vmguard_lab.imaging.tree import (
    AWKWARD_NAMES,
    BIG_FILE,
    POSIX,
    WINDOWS,
    NamePolicy,
    TreeSpec,
    evolve,
    filter_tree,
    generate_tree,
    materialize,
)

pytestmark = pytest.mark.unit


def test_tree_is_a_function_of_spec_and_seed() -> None:
    a, b = generate_tree(TreeSpec(), 1), generate_tree(TreeSpec(), 1)
    assert a.manifest() == b.manifest()
    assert generate_tree(TreeSpec(), 2).manifest() != a.manifest()


def test_tree_has_the_promised_variety() -> None:
    tree = generate_tree(TreeSpec(), 5)
    files = [e for e in tree if e.kind == "file"]
    links = [e for e in tree if e.kind == "symlink"]
    assert tree.entries[BIG_FILE].size == 10 << 20
    assert sum(e.size == 0 for e in files) >= 3
    assert {e.name for e in files} >= set(AWKWARD_NAMES)
    assert max(len(e.name.encode()) for e in files) == 255
    assert any(len(e.target or "") > 60 for e in links)
    assert any(e.target and e.target.endswith("no/such/target") for e in links)
    assert all(e.mtime % 2 == 0 for e in tree)
    assert len({e.mode for e in files}) >= 3
    assert max(e.path.count("/") for e in tree) >= 2


def test_evolution_is_deterministic_and_reports_its_changes() -> None:
    g0 = generate_tree(TreeSpec(), 9)
    step = evolve(g0, 9, 1)
    assert step == evolve(g0, 9, 1)
    assert step.tree.manifest() == generate_tree(TreeSpec(), 9, 1).manifest()
    before, after = g0.manifest(), step.tree.manifest()
    assert set(after) == (set(before) - set(step.deleted)) | set(step.added)
    for path in step.changed:
        assert after[path].sha256 != before[path].sha256
    unchanged = set(before) & set(after) - set(step.changed)
    changed_files = [p for p in unchanged if before[p].type == "file" and before[p] != after[p]]
    assert changed_files == []
    assert after[BIG_FILE].size == before[BIG_FILE].size
    assert not any(p.rsplit("/", 1)[-1] in AWKWARD_NAMES for p in step.changed + step.deleted)


def test_filters_drop_what_a_filesystem_cannot_hold() -> None:
    tree = generate_tree(TreeSpec(), 3)
    assert filter_tree(tree, POSIX).entries == tree.entries
    win = filter_tree(tree, WINDOWS)
    assert "line\nbreak.txt" not in win.entries
    assert "with space dir/colon:star*question?.txt" not in win.entries
    assert "with space.txt" in win.entries
    no_space = filter_tree(tree, NamePolicy("no-space", forbidden=frozenset("/\0 ")))
    # A directory that cannot be held takes its whole subtree with it.
    assert not any(p.startswith("with space dir") for p in no_space.entries)


def test_content_is_stable_and_patches_land_where_asked() -> None:
    base = Content("text", 3 << 20, 42)
    assert base.read() == Content("text", 3 << 20, 42).read()
    patched = Content("text", 3 << 20, 42, (Patch((1 << 20) - 100, 200, 7),))
    a, b = base.read(), patched.read()
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    assert diff[0] >= (1 << 20) - 100 and diff[-1] < (1 << 20) + 100
    sparse = Content("sparse", 4 << 20, 1).read()
    assert sparse[64 << 10 : 1 << 20] == bytes((1 << 20) - (64 << 10))
    assert sparse[:100] != bytes(100)


def test_table_plan_aligns_and_rejects_what_cannot_fit() -> None:
    slots = table.plan(64 << 20, "gpt", [16 << 20, None])
    assert slots == [table.Slot(1 << 20, 16 << 20), table.Slot(17 << 20, 46 << 20)]
    with pytest.raises(ConfigError):
        table.plan(64 << 20, "mbr", [1 << 20] * 5)
    with pytest.raises(ConfigError):
        table.plan(64 << 20, "gpt", [128 << 20])
    with pytest.raises(ConfigError):
        table.plan(64 << 20, None, [1 << 20, 1 << 20])


def test_sparse_copy_keeps_holes_and_content(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(b"x" * 4096 + bytes(4096) + b"y" * 4096)
    with open(dst, "wb") as f:
        f.truncate(16 << 20)
    copy_range(src, dst, 4 << 20)
    with open(dst, "rb") as f:
        f.seek((4 << 20) + (1 << 20))
        assert f.read(3 * 4096) == b"x" * 4096 + bytes(4096) + b"y" * 4096
    exts = data_extents(dst)
    assert sum(e.length for e in exts) <= 2 * 4096 * 2  # the zero block in between is a hole
    assert sha256_sparse(dst) == hashlib.sha256(dst.read_bytes()).hexdigest()
    assert [(e.offset, e.length) for e in changed_ranges(dst, dst)] == []
    other = tmp_path / "other"
    other.write_bytes(dst.read_bytes()[:-1] + b"z")
    assert [(e.offset, e.length) for e in changed_ranges(dst, other)] == [
        ((16 << 20) - (64 << 10), 64 << 10)
    ]


def test_materialized_tree_has_modes_times_and_digests(tmp_path: Path) -> None:
    tree = filter_tree(generate_tree(TreeSpec(files=10, big_file_size=0), 4), POSIX)
    digests = materialize(tree, tmp_path / "t")
    manifest = tree.manifest(digests)
    assert manifest == tree.manifest()
    for e in tree:
        st = os.lstat(tmp_path / "t" / e.path)
        assert int(st.st_mtime) == e.mtime, e.path
        if e.kind != "symlink":
            assert st.st_mode & 0o777 == e.mode, e.path
