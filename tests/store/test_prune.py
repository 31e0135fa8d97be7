"""Retention selection (a pure function) and pruning archives into the trash."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import FAST_KDF_N, backup, disk_image, restore
from vmguard.errors import ConfigError
from vmguard.store import MasterKey, ObjectLockPolicy, Repository, ScryptParams, names
from vmguard.store.backend import MemoryBackend
from vmguard.store.clock import ManualClock
from vmguard.store.prune import RetentionPolicy, prune, select_retained

T0 = datetime(2025, 1, 1, 0, 30, tzinfo=UTC)  # a Wednesday


def _hourly(count: int, start: datetime = T0) -> list[tuple[str, datetime]]:
    return [(f"a{i:04d}", start + timedelta(hours=i)) for i in range(count)]


@pytest.mark.unit
def test_keep_last_keeps_the_newest() -> None:
    kept = select_retained(_hourly(10), RetentionPolicy(keep_last=3))
    assert sorted(kept) == ["a0007", "a0008", "a0009"]


@pytest.mark.unit
def test_keep_daily_keeps_the_newest_of_each_of_the_newest_days() -> None:
    archives = _hourly(24 * 5)  # five days, one per hour
    kept = select_retained(archives, RetentionPolicy(keep_daily=3))
    assert sorted(kept) == ["a0071", "a0095", "a0119"]  # 23:30 of days 3, 4, 5
    assert all(reasons == ["daily"] for reasons in kept.values())


@pytest.mark.unit
def test_periods_without_archives_do_not_count() -> None:
    archives = [("old", T0), ("new", T0 + timedelta(days=30))]
    kept = select_retained(archives, RetentionPolicy(keep_daily=2))
    assert sorted(kept) == ["new", "old"]


@pytest.mark.unit
def test_weekly_uses_iso_weeks_and_reasons_combine() -> None:
    archives = [(f"d{i:02d}", T0 + timedelta(days=i)) for i in range(21)]  # Wed .. Tue
    kept = select_retained(archives, RetentionPolicy(keep_last=1, keep_weekly=3))
    # ISO weeks end on Sunday: Jan 5, Jan 12, Jan 19 and the partial week to Jan 21.
    assert kept == {"d20": ["last", "weekly"], "d18": ["weekly"], "d11": ["weekly"]}


@pytest.mark.unit
def test_monthly_and_yearly() -> None:
    archives = [
        (f"m{i:02d}", datetime(2023 + i // 12, i % 12 + 1, 15, tzinfo=UTC)) for i in range(30)
    ]
    kept = select_retained(archives, RetentionPolicy(keep_monthly=2, keep_yearly=3))
    assert kept == {
        "m29": ["monthly", "yearly"],
        "m28": ["monthly"],
        "m23": ["yearly"],
        "m11": ["yearly"],
    }


@pytest.mark.unit
def test_days_are_counted_in_the_policy_time_zone() -> None:
    archives = [
        ("jan-1", datetime(2025, 1, 1, 23, 30, tzinfo=UTC)),
        ("jan-2", datetime(2025, 1, 2, 1, 0, tzinfo=UTC)),
    ]
    policy = RetentionPolicy(keep_daily=2)
    assert sorted(select_retained(archives, policy)) == ["jan-1", "jan-2"]
    # In New York both are on the evening of January 1st: one day, one archive kept.
    new_york = select_retained(archives, policy, ZoneInfo("America/New_York"))
    assert sorted(new_york) == ["jan-2"]


@pytest.mark.unit
def test_a_policy_that_keeps_nothing_is_refused() -> None:
    with pytest.raises(ConfigError):
        select_retained(_hourly(3), RetentionPolicy())
    with pytest.raises(ConfigError):
        RetentionPolicy(keep_last=-1)


def test_prune_retires_per_vm_and_keeps_the_rest_restorable(
    make_repo: Callable[..., Repository],
) -> None:
    repo = make_repo()
    images = {}
    for vm in ("vm-a", "vm-b"):
        for i in range(4):
            image = disk_image(hash((vm, i)) % 1000, 3, CHUNK)
            manifest = backup(repo, vm, {"d": image})
            images[manifest.archive_id] = image
    report = prune(repo, RetentionPolicy(keep_last=2))
    assert len(report.pruned) == 4 and len(report.kept) == 4 and not report.locked
    remaining = {a.archive_id for a in repo.list_archives()}
    assert remaining == set(report.kept)
    for archive_id in remaining:
        manifest = repo.load_archive(archive_id)
        assert restore(repo, manifest, "d") == images[archive_id]
    trashed = {i.name.split("/")[1] for i in repo.backend.list(names.TRASH)}
    assert trashed == set(report.pruned)


def test_dry_run_changes_nothing(make_repo: Callable[..., Repository]) -> None:
    repo = make_repo()
    for _ in range(3):
        backup(repo, "vm", {"d": disk_image(1, 2, CHUNK)})
    report = prune(repo, RetentionPolicy(keep_last=1), dry_run=True)
    assert len(report.pruned) == 2 and len(repo.list_archives()) == 3


@pytest.mark.unit
def test_locked_archives_are_reported_not_deleted() -> None:
    clock = ManualClock()
    backend = MemoryBackend(object_lock=True, clock=clock.now)
    repo = Repository.init(
        backend,
        master_key=MasterKey(b"sixteen bytes or more"),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
        object_lock=ObjectLockPolicy("GOVERNANCE", 7),
        clock=clock,
    )
    made = []
    for i in range(3):
        made.append(backup(repo, "vm", {"d": disk_image(i, 2, CHUNK)}))
        clock.advance(3 * 86400)
    # Now: day 9. The first archive's lock ended on day 7, the second's ends on day 10.
    report = prune(repo, RetentionPolicy(keep_last=1))
    assert report.pruned == [made[0].archive_id]
    assert report.locked == [(made[1].archive_id, made[1].retain_until)]
    assert {a.archive_id for a in repo.list_archives()} == {made[1].archive_id, made[2].archive_id}
    assert list(backend.list(names.trash_manifest_name(made[1].archive_id))) == []
