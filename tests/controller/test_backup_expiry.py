"""A finished VMGuardBackup (one backup run) expires after ``ttlSecondsAfterFinished``;
its restore point (in the VM's ProtectedVM) and its archive stay.

The expiry loop (controller/backup/expiry.py) runs here in the test's process against
the lab's real apiserver, on a :class:`~vmguard.store.clock.ManualClock` whose ``sleep``
moves it exactly as far as the loop asks: a backup must be deleted exactly its TTL after
it finished, not a real 24 h later. Retention then prunes an expired run's point from the
repository and the ProtectedVM. The end-to-end test runs the operator and a real backup
with a TTL of a few seconds, and restores its point by time after the run expired.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.backup_helpers import (
    create_backup,
    data_vm,
    disk_hashes,
    open_repo,
    wait_done,
)
from tests.controller.conftest import OperatorProcess
from tests.controller.restore_helpers import destroy_vm
from tests.vsphere.helpers import sha256_file

from vmguard.api import DEFAULT_BACKUP_TTL, format_time
from vmguard.api.kinds import BACKUP, PROTECTEDVM, RESTORE
from vmguard.controller.backup import expiry
from vmguard.controller.kube import points
from vmguard.controller.kube.handlers import Presence
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.policy_spec import backup_ttl
from vmguard.controller.kube.timing import Timing
from vmguard.controller.repository.catalog import expired_runs, plan_catalog
from vmguard.store.clock import ManualClock
from vmguard_lab.procs import eventually

UUID = "4211aaaa-bbbb-cccc-dddd-eeeeffff0042"
POLICY = "gold"
T0 = dt.datetime(2026, 3, 1, 2, 0, tzinfo=dt.UTC)


@pytest.mark.unit
def test_the_ttl_is_the_backups_else_its_policys_else_a_day() -> None:
    assert backup_ttl({"ttlSecondsAfterFinished": 0}, {"ttlSecondsAfterFinished": 60}) == 0
    assert backup_ttl({}, {"ttlSecondsAfterFinished": 60}) == 60
    assert backup_ttl({}, None) == DEFAULT_BACKUP_TTL == 86400
    assert expiry.expires({"phase": "Failed"}, {}) and expiry.expires({"phase": "Completed"}, {})
    assert not expiry.expires({"phase": "Transferring"}, {})
    assert not expiry.expires({"phase": "Completed"}, {"vmguard.io/synced": "true"})


@pytest.mark.unit
def test_catalog_sync_brings_back_a_deleted_backup_but_not_an_expired_one() -> None:
    pvm = {
        "metadata": {"namespace": "ns"},
        "status": {
            "vm": {"instanceUuid": UUID},
            "vcenter": "lab",
            "points": [
                {"archiveId": "expired", "repository": "repo", "time": "2026-01-02T00:00:00Z"},
                {
                    "archiveId": "deleted",
                    "repository": "repo",
                    "time": "2026-01-01T00:00:00Z",
                    "backup": "by-hand",
                },
            ],
        },
    }
    assert expired_runs([pvm]) == {"expired"}
    plan = plan_catalog("repo", ["expired", "deleted"], [], expired=expired_runs([pvm]))
    assert plan.create == ("deleted",)  # today's rule for a VMGuardBackup a person deleted
    # The expired run's point stands in for it in a policy's history and retention
    # (the deleted one comes back as an object).
    ins = points.stand_ins([pvm], [])
    assert [(b["metadata"]["name"], b["status"]["archiveId"]) for b in ins] == [
        ("point-expired", "expired")
    ]
    assert points.is_stand_in(ins[0]) and ins[0]["status"]["phase"] == "Completed"
    named = [{"metadata": {"name": "x"}, "status": {"archiveId": "expired"}}]
    assert points.stand_ins([pvm], named) == []


class RecordingAPI(KubeAPI):
    """The real API; it notes the clock's time of every VMGuardBackup it deletes."""

    def __init__(self, api_client: Any, clock: ManualClock) -> None:
        super().__init__(api_client)
        self.clock = clock
        self.deleted: dict[str, dt.datetime] = {}
        self.gets: list[str] = []
        """``plural/name`` of every object read, in order."""

    async def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets.append(f"{plural}/{name}")
        return await super().get_object(plural, namespace, name)

    async def delete_object(
        self, plural: str, namespace: str, name: str, uid: str | None = None
    ) -> bool:
        if plural == BACKUP.plural:
            self.deleted[name] = self.clock.now()
        return await super().delete_object(plural, namespace, name, uid)


class Never:
    """kopf's ``stopped`` for a daemon nobody stops."""

    def __bool__(self) -> bool:
        return False

    async def wait(self) -> None:
        await asyncio.Event().wait()


def _finished(kube_api: Any, ns: str, name: str, phase: str, **spec: Any) -> dict[str, Any]:
    objects.create(
        kube_api,
        ns,
        BACKUP.plural,
        BACKUP.kind,
        name,
        {
            "vm": {"instanceUuid": UUID},
            "vcenterRef": {"name": "lab"},
            "repositoryRef": {"name": "repo"},
            **spec,
        },
    )
    status: dict[str, Any] = {
        "phase": phase,
        "vm": {"instanceUuid": UUID, "name": "web-01"},
        "vcenter": "lab",
        "repository": "repo",
        "startTime": format_time(T0 - dt.timedelta(minutes=5)),
        "completionTime": format_time(T0),
    }
    if phase == "Completed":
        status |= {
            "archiveId": f"archive-of-{name}",
            "modeUsed": "full",
            "snapshot": {"createTime": format_time(T0 - dt.timedelta(minutes=4))},
            "totals": {"bytesUploaded": 1234},
        }
    return objects.patch_status(kube_api, ns, BACKUP.plural, name, status)


@pytest.mark.lab
def test_a_finished_run_is_deleted_exactly_its_ttl_after_it_finished_and_its_point_stays(
    kube_api: Any, namespace: str
) -> None:
    clock = ManualClock(T0 + dt.timedelta(seconds=1))
    api = RecordingAPI(kube_api, clock)
    timing = Timing(clock=clock)
    # Completed before ProtectedVMs existed (no point yet), the default TTL; and a
    # Failed one with a TTL of its own.
    done = _finished(kube_api, namespace, "done", "Completed")
    failed = _finished(kube_api, namespace, "failed", "Failed", ttlSecondsAfterFinished=60)

    async def run() -> None:
        await expiry.run(api, timing, failed, Never())
        await expiry.run(api, timing, done, Never())

    asyncio.run(run())
    assert api.deleted == {
        "failed": T0 + dt.timedelta(seconds=60),
        "done": T0 + dt.timedelta(seconds=DEFAULT_BACKUP_TTL),
    }
    assert objects.items(kube_api, namespace, BACKUP.plural) == []
    (pvm,) = objects.items(kube_api, namespace, PROTECTEDVM.plural)
    assert pvm["metadata"]["name"] == points.protected_vm_name("lab", UUID)
    # The point, folded in at expiry, no longer names its run: catalog sync leaves it be.
    assert pvm["status"]["points"] == [
        {
            "archiveId": "archive-of-done",
            "repository": "repo",
            "time": format_time(T0 - dt.timedelta(minutes=4)),
            "mode": "full",
            "bytes": 1234,
        }
    ]


@pytest.mark.lab
def test_a_finished_run_waiting_for_its_ttl_reads_nothing_until_it_is_due(
    kube_api: Any, namespace: str
) -> None:
    """Last night's runs wait a day each: the loop reads the object kopf's watch keeps
    (here: the body it was handed) and the policy's TTL from kopf's index (here: a
    lookup), and GETs the backup once, when it is due — not itself and its policy at
    the start and at every hourly look (10,000 requests for 5,000 runs at each
    operator start, docs/scale.md)."""
    clock = ManualClock(T0 + dt.timedelta(seconds=1))
    api = RecordingAPI(kube_api, clock)
    own = _finished(kube_api, namespace, "own", "Completed", ttlSecondsAfterFinished=86400)
    asyncio.run(expiry.run(api, Timing(clock=clock), own, Never()))
    assert api.deleted == {"own": T0 + dt.timedelta(seconds=86400)}
    # (Expiring it reads and writes its ProtectedVM: the point's record, not the wait.)
    assert [g for g in api.gets if not g.startswith("protectedvms/")] == [f"{BACKUP.plural}/own"]
    # No TTL of its own: its policy's, from the lookup kopf's index serves.
    clock = ManualClock(T0 + dt.timedelta(seconds=1))
    api = RecordingAPI(kube_api, clock)
    by_policy = _finished(kube_api, namespace, "by-policy", "Failed", policyRef={"name": POLICY})
    asked: list[tuple[str, str]] = []

    def policy_spec(ns: str, name: str) -> dict[str, Any]:
        asked.append((ns, name))
        return {"ttlSecondsAfterFinished": 7200}

    asyncio.run(expiry.run(api, Timing(clock=clock), by_policy, Never(), policy_spec))
    assert api.deleted == {"by-policy": T0 + dt.timedelta(seconds=7200)}
    assert api.gets == [f"{BACKUP.plural}/by-policy"]  # Failed: it has no point
    assert set(asked) == {(namespace, POLICY)}


class StopWhen:
    """kopf's ``stopped``, true once ``done()`` holds."""

    def __init__(self, done: Callable[[], bool]) -> None:
        self.done = done

    def __bool__(self) -> bool:
        return self.done()

    async def wait(self) -> None:
        await asyncio.Event().wait()


@pytest.mark.lab
def test_one_loop_expires_every_finished_run_and_acts_only_while_the_replica_does(
    kube_api: Any, namespace: str
) -> None:
    """One loop over the finished runs' records (kopf's index), not a daemon per run
    (≈ 20 KB each: 100 MB for one night's 5,000, docs/scale.md): each run is deleted
    exactly when due and read once, then; while kopf does not let the replica act
    (peering), ten days pass and nothing is read or deleted."""
    clock = ManualClock(T0 + dt.timedelta(seconds=1))
    api = RecordingAPI(kube_api, clock)
    timing = Timing(clock=clock)
    ttls = {"run-1h": 3600, "run-3h": 3 * 3600, "run-5h": 5 * 3600, "run-30m": 1800}
    index = {
        name: expiry.record(
            _finished(kube_api, namespace, name, "Completed", ttlSecondsAfterFinished=ttl)
        )
        for name, ttl in ttls.items()
    }
    index["failed"] = expiry.record(
        _finished(kube_api, namespace, "failed", "Failed", ttlSecondsAfterFinished=60)
    )
    assert set(index["failed"]) == {"metadata", "spec", "status"}
    gone: list[str] = []

    def expired(ns: str) -> None:
        assert ns == namespace
        gone.append("x")

    def runs() -> list[dict[str, Any]]:  # kopf drops a deleted run from its index
        return [r for name, r in index.items() if name not in api.deleted]

    presence = Presence(always=False)

    async def acting() -> expiry.Counts:
        with presence.entered():
            return await expiry.loop(
                api, timing, runs, StopWhen(lambda: len(api.deleted) == len(index)),
                acting=presence, expired=expired,
            )  # fmt: skip

    counts = asyncio.run(acting())
    assert api.deleted == {
        name: T0 + dt.timedelta(seconds=ttl) for name, ttl in (ttls | {"failed": 60}).items()
    }
    assert len(gone) == 5
    # One GET of each run, when it was due, and nothing else but its ProtectedVM's record.
    backup_gets = [g for g in api.gets if not g.startswith("protectedvms/")]
    assert sorted(backup_gets) == sorted(f"{BACKUP.plural}/{n}" for n in index)
    assert counts.turns <= 10, counts  # a turn per due time and the hourly looks

    # Not acting (a peer acts): ten days go by, nothing is read, nothing deleted.
    index = {"later": expiry.record(_finished(kube_api, namespace, "later", "Failed"))}
    api = RecordingAPI(kube_api, clock)
    until = clock.now() + dt.timedelta(days=10)
    paused = Presence(always=False)
    asyncio.run(
        expiry.loop(api, timing, runs, StopWhen(lambda: clock.now() >= until), acting=paused)
    )
    assert (api.deleted, api.gets) == ({}, [])
    assert [b["metadata"]["name"] for b in objects.items(kube_api, namespace, BACKUP.plural)] == [
        "later"
    ]


@pytest.mark.unit
def test_a_turn_looks_again_only_at_runs_kopf_replaced() -> None:
    """2,000 runs waiting for their TTL; kopf's index changes one record at a
    time (as at the start, 5,000 times): each turn looks afresh at the one replaced,
    not at all 2,000 (a turn computed every due time again: O(runs) per change, the
    start's CPU doubled at 5,000 runs, docs/scale.md). Nothing is due: no request."""
    clock = ManualClock(T0 + dt.timedelta(seconds=1))
    timing = Timing(clock=clock)
    index: dict[str, dict[str, Any]] = {}
    for i in range(2000):
        body = {
            "metadata": {"namespace": "ns", "name": f"run-{i}", "uid": f"u{i}"},
            "spec": {"policyRef": {"name": POLICY}},
            "status": {"phase": "Failed", "completionTime": format_time(T0)},
        }
        index[f"u{i}"] = expiry.record(body)
    wake = asyncio.Event()
    calls = [0]

    def runs() -> list[dict[str, Any]]:
        """Read at each turn's start; from the second on, kopf has replaced one record."""
        calls[0] += 1
        if calls[0] > 1:
            uid = f"u{calls[0] - 2}"
            index[uid] = dict(index[uid])
            wake.set()
        return list(index.values())

    async def go() -> expiry.Counts:
        return await expiry.loop(
            None,  # type: ignore[arg-type]  # nothing is due: no request is sent
            timing,
            runs,
            StopWhen(lambda: calls[0] > 50),  # the 51st turn looks at nothing
            # A month: each turn's wait moves this clock an hour (RECHECK).
            lambda ns, name: {"ttlSecondsAfterFinished": 30 * 86400},
            wake=wake,
        )

    counts = asyncio.run(go())
    assert counts.turns == 51
    assert counts.looks == 2000 + 49  # all at the first turn, then the one replaced


OFFSITE = {
    "ttlSecondsAfterFinished": 0,
    "copies": [{"repositoryRef": {"name": "offsite"}, "delay": "1h"}],
}
"""A policy keeping no finished run, with a copy target one hour behind."""


@pytest.mark.lab
def test_a_run_is_kept_past_its_ttl_until_its_copies_are_made_or_given_up(
    kube_api: Any, namespace: str
) -> None:
    """With a TTL of 0, a run used to expire as it completed, before the copy controller
    could queue its copy: an expired run's point is never copied (no object owns a copy
    Job). Now the run waits for each copy its policy asks for, at most a week past its
    TTL and the targets' delay."""
    cap = T0 + dt.timedelta(hours=1) + dt.timedelta(seconds=expiry.COPY_HOLD)
    cases: dict[str, tuple[list[dict[str, Any]], dt.datetime]] = {
        "made": ([{"repository": "offsite", "state": "Completed", "archiveId": "c"}], T0),
        "gave-up": ([{"repository": "offsite", "state": "Failed", "attempts": 3}], T0),
        "queued": ([{"repository": "offsite", "state": "Pending"}], cap),
        "failed-once": ([{"repository": "offsite", "state": "Failed", "attempts": 1}], cap),
        "not-yet": ([], cap),
    }
    deleted: dict[str, dt.datetime] = {}
    for name, (entries, _) in cases.items():
        clock = ManualClock(T0)
        api = RecordingAPI(kube_api, clock)
        body = _finished(kube_api, namespace, name, "Completed", policyRef={"name": POLICY})
        if entries:
            body = objects.patch_status(
                kube_api, namespace, BACKUP.plural, name, {"copies": entries}
            )
        asyncio.run(expiry.run(api, Timing(clock=clock), body, Never(), lambda ns, p: OFFSITE))
        deleted |= api.deleted
    assert deleted == {name: at for name, (_, at) in cases.items()}

    # A copy made while the run waits: it expires at the next look (hourly), not at the cap.
    clock = ManualClock(T0)
    api = RecordingAPI(kube_api, clock)
    body = _finished(kube_api, namespace, "copied-later", "Completed", policyRef={"name": POLICY})
    looks: list[dt.datetime] = []

    def policy_spec(ns: str, name: str) -> dict[str, Any]:
        looks.append(clock.now())
        if len(looks) == 3:  # the copy controller records the copy; the watch brings it
            # into the live body, which the loop reads at its next look (an hour on)
            done = [{"repository": "offsite", "state": "Completed", "archiveId": "c"}]
            fresh = objects.patch_status(kube_api, ns, BACKUP.plural, body["metadata"]["name"],
                                         {"copies": done})  # fmt: skip
            body["status"] = fresh["status"]
        return OFFSITE

    asyncio.run(expiry.run(api, Timing(clock=clock), body, Never(), policy_spec))
    assert api.deleted == {"copied-later": T0 + dt.timedelta(hours=3)} and len(looks) == 5


@pytest.mark.lab
def test_retention_prunes_an_expired_runs_point_from_the_repository_and_the_protected_vm(
    kube_api: Any, namespace: str, s3_bucket: dict[str, Any]
) -> None:
    """Retention's pass (controller/policy/retention.py), called directly: the points of
    expired runs are candidates like VMGuardBackups; the pruned one's archive is retired
    and its point taken out of the ProtectedVM."""
    from tests.store.helpers import backup, disk_image

    from vmguard.controller.policy.retention import Retention
    from vmguard.store import Repository
    from vmguard.store.backend import S3Backend

    b = s3_bucket
    backend = S3Backend(
        b["endpoint"], b["bucket"], access_key=b["access_key"], secret_key=b["secret_key"],
        secure=False,
    )  # fmt: skip
    repo = Repository.init(backend, chunk_size=256 * 1024)
    old = backup(repo, UUID, {"d": disk_image(1, 2, 256 * 1024)})
    new = backup(repo, UUID, {"d": disk_image(2, 2, 256 * 1024)})
    objects.create_repository(kube_api, namespace, "repo", s3_bucket)
    objects.create_policy(kube_api, namespace, POLICY, selector={"names": ["x"]}, paused=True)
    policy = objects.get(kube_api, namespace, "vmprotectionpolicies", POLICY)
    policy["spec"]["retention"] = {"keepLast": 1}
    api = KubeAPI(kube_api)
    key = points.ProtectedVMKey(namespace, "lab", UUID)

    async def setup() -> None:
        for archive, day in [(old.archive_id, 1), (new.archive_id, 2)]:
            point = {"archiveId": archive, "repository": "repo", "policy": POLICY}
            point["time"] = f"2026-01-0{day}T00:00:00Z"
            await points.add_point(api, key, point, vm={"name": "web-01"})  # type: ignore[arg-type]

    asyncio.run(setup())
    said: list[tuple[str, str, bool]] = []
    held = objects.items(kube_api, namespace, PROTECTEDVM.plural)
    backups = points.stand_ins(held, [])
    now = dt.datetime.now(dt.UTC)
    pruned = asyncio.run(Retention().apply(api, policy, backups, lambda *e: said.append(e), now))
    assert pruned == {f"point-{old.archive_id.lower()}"}
    assert {ref.archive_id for ref in repo.list_archives()} == {new.archive_id}
    status = objects.get(kube_api, namespace, PROTECTEDVM.plural, key.name)["status"]
    assert [p["archiveId"] for p in status["points"]] == [new.archive_id]
    assert status["pointCount"] == 1 and status["lastGoodPoint"]["archiveId"] == new.archive_id
    assert said[-1][0] == "Pruned"


@pytest.mark.unit
def test_a_restore_takes_the_named_point_or_the_newest_at_or_before_a_time() -> None:
    status = {
        "points": [
            {"archiveId": "c", "repository": "r", "time": "2026-01-03T00:00:00Z"},
            {"archiveId": "b", "repository": "r", "time": "2026-01-02T00:00:00Z"},
            {"archiveId": "a", "repository": "r", "time": "2026-01-01T00:00:00Z"},
        ]
    }
    day = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)

    def chosen(archive: str | None, at: dt.datetime | None) -> str | None:
        point = points.choose_point(status, archive, at)
        return None if point is None else point["archiveId"]

    assert chosen("a", None) == "a" and chosen("x", None) is None
    assert chosen(None, day) == "b"  # at the point's own time: that point
    assert chosen(None, day + dt.timedelta(hours=23)) == "b"
    assert chosen(None, day + dt.timedelta(days=5)) == "c"
    assert chosen(None, day - dt.timedelta(days=2)) is None


@pytest.mark.lab
@pytest.mark.operator_controllers("backups,repositories,restores")
def test_a_backup_run_expires_and_its_point_restores_bit_exact(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    """A real backup with a TTL of seconds expires; its archive and its point stay, and
    a VMGuardRestore that names the point by time (the run is gone) restores it
    bit-exact. A point that does not exist is a condition with a reason."""
    start_operator()
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        expected = disk_hashes(vsim, vm.moref)
        create_backup(kube_api, namespace, "brief", {"moref": vm.moref}, ttlSecondsAfterFinished=2)
        done = wait_done(kube_api, namespace, "brief")["status"]
        assert done["phase"] == "Completed", done

        def gone() -> bool:
            return not any(
                b["metadata"]["name"] == "brief"
                for b in objects.items(kube_api, namespace, BACKUP.plural)
            )

        eventually(gone, 60, "the backup run to expire")
    assert [a.archive_id for a in open_repo(s3_bucket).list_archives()] == [done["archiveId"]]
    name = points.protected_vm_name(lab_vcenter, vm.instance_uuid)
    status = objects.get(kube_api, namespace, PROTECTEDVM.plural, name)["status"]
    assert [(p["archiveId"], "backup" in p) for p in status["points"]] == [
        (done["archiveId"], False)
    ]

    target = {"newVM": {"name": f"pit-{vm.name}", "datastore": "LocalDS_0", "folder": "/DC0/vm"}}
    later = format_time(dt.datetime.now(dt.UTC))
    for restore, source in [
        ("by-time", {"protectedVM": name, "at": later}),
        ("no-such-point", {"protectedVM": name, "archiveId": "not-an-archive"}),
    ]:
        spec = {"source": source, "target": target}
        objects.create(kube_api, namespace, RESTORE.plural, RESTORE.kind, restore, spec)

    def waits() -> dict[str, Any] | None:
        obj = objects.get(kube_api, namespace, RESTORE.plural, "no-such-point")
        return obj if objects.condition(obj, "SourceReady").get("reason") else None

    said = objects.condition(eventually(waits, 60, "the missing point's condition"), "SourceReady")
    assert (said["status"], said["reason"]) == ("False", "PointNotFound"), said
    assert "not-an-archive" in said["message"]
    restored = objects.wait_phase(
        kube_api, namespace, RESTORE.plural, "by-time", {"Completed", "Failed"}, 240
    )["status"]
    assert restored["phase"] == "Completed", restored
    assert restored["archiveId"] == done["archiveId"]
    moref = restored["result"]["vm"]["moref"]
    try:
        got = {
            str(d["sourceKey"]): sha256_file(vsim.disk(moref, d["key"]).path)
            for d in restored["result"]["disks"]
        }
    finally:
        destroy_vm(vc, moref)
    assert got == expected
