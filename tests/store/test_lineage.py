"""Which archive is a VM's newest, when archive ids cannot tell (store/lineage.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import backup, disk_image
from vmguard.store import Repository
from vmguard.store.clock import ManualClock
from vmguard.store.lineage import latest_archive

pytestmark = pytest.mark.unit


def test_an_incremental_in_the_same_second_as_its_parent_is_the_newest(
    make_repo: Callable[..., Repository],
) -> None:
    """Archive ids carry the start second and a random suffix: a full and the quick
    incremental made from it in the same second sort by chance. The next backup must
    take the incremental as its parent (a CBT chain judged against the older one hides
    a revert, tests/vsphere/test_cbt_after_restore.py). Twenty VMs, so that about half
    of the pairs have the child's suffix sort first."""
    clock = ManualClock(datetime(2026, 12, 6, 8, 0, 0, tzinfo=UTC))  # never moves
    repo = make_repo(clock=clock)
    image = disk_image(3, 4, CHUNK)
    for n in range(20):
        vm = f"vm-{n}"
        full = backup(repo, vm, {"d": image})
        child = backup(repo, vm, {"d": image}, parent=full.archive_id, changed={"d": {1}})
        assert full.archive_id[:-9] == child.archive_id[:-9], "same VM, same second"
        newest = latest_archive(repo, vm)
        assert newest is not None and newest.archive_id == child.archive_id, vm
