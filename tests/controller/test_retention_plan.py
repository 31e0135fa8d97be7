"""Pure parts of retention (controller/policy/retention.py) and of the repository controller
(controller/repository/watch.py): what is pruned, which condition says what, and how errors
become reasons. No lab."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from vmguard.controller.policy.retention import Retention, candidate, plan
from vmguard.controller.repository import watch
from vmguard.errors import (
    AuthenticationError,
    BackendUnavailableError,
    BucketNotFoundError,
    ConfigError,
    CredentialsRefusedError,
    RepositoryError,
    RepositoryNotFoundError,
    ScheduleError,
)
from vmguard.store.verify import ChunkProblem, VerifyReport

pytestmark = pytest.mark.unit
UTC = dt.UTC


def _policy(**retention: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {
            "repositoryRef": {"name": "repo"},
            "schedule": {"cron": "0 1 * * *", "timeZone": "Europe/Berlin"},
            "retention": retention,
        },
    }


def _backup(
    name: str, when: str, vm: str = "VM-1", phase: str = "Completed", **status: Any
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "labels": {"vmguard.io/vm": vm},
            "creationTimestamp": when,
        },
        "spec": {"policyRef": {"name": "p"}},
        "status": {
            "phase": phase,
            "archiveId": f"a-{name}",
            "snapshot": {"createTime": when},
            "repository": "repo",
            **status,
        },
    }


def test_keep_last_prunes_the_oldest_per_vm_and_ignores_unfinished_backups() -> None:
    backups = [
        _backup("b1", "2025-01-01T01:00:00Z"),
        _backup("b2", "2025-01-02T01:00:00Z"),
        _backup("b3", "2025-01-03T01:00:00Z"),
        _backup("b4", "2025-01-04T01:00:00Z"),
        _backup("f5", "2025-01-05T01:00:00Z", phase="Failed"),
        _backup("r6", "2025-01-06T01:00:00Z", phase="Transferring"),
        _backup("o1", "2025-01-01T01:00:00Z", vm="vm-2"),
    ]
    chosen = plan(_policy(keepLast=3), backups)
    assert [c.name for c in chosen.prune] == ["b1"]
    assert set(chosen.keep) == {"b2", "b3", "b4", "o1"}  # vm-2's only backup stays
    assert chosen.prune[0].vm == "vm-1" and chosen.prune[0].archive_id == "a-b1"


def test_daily_periods_are_days_of_the_schedule_time_zone() -> None:
    # In UTC "late" would be the newest of January 1st and kept, "early" pruned; in
    # Berlin "late" falls on January 2nd, behind "next".
    backups = [
        _backup("late", "2025-01-01T23:30:00Z"),  # Jan 2, 00:30 CET
        _backup("next", "2025-01-02T20:00:00Z"),  # Jan 2, 21:00 CET
        _backup("early", "2025-01-01T22:30:00Z"),  # Jan 1, 23:30 CET
    ]
    chosen = plan(_policy(keepDaily=2), backups)
    assert sorted(chosen.keep) == ["early", "next"]
    assert [c.name for c in chosen.prune] == ["late"]


def test_an_archive_a_kept_backup_also_names_is_never_retired() -> None:
    twin = _backup("b0", "2025-01-01T00:00:00Z")
    newer = _backup("b9", "2025-01-09T00:00:00Z", archiveId="a-b0")  # a synced duplicate
    chosen = plan(_policy(keepLast=1), [twin, newer])
    assert [c.name for c in chosen.prune] == ["b0"] and chosen.shared == {"a-b0"}


def test_a_policy_that_keeps_nothing_or_has_no_zone_prunes_nothing() -> None:
    with pytest.raises(ConfigError):
        plan(_policy(), [_backup("b1", "2025-01-01T01:00:00Z")])
    bad_zone = _policy(keepLast=1)
    bad_zone["spec"]["schedule"]["timeZone"] = "Mars/Olympus"
    with pytest.raises(ScheduleError):
        plan(bad_zone, [_backup("b1", "2025-01-01T01:00:00Z")])


def test_candidates_need_an_archive_and_this_policy() -> None:
    policy = _policy(keepLast=1)
    assert candidate(_backup("b", "2025-01-01T00:00:00Z", archiveId=""), policy) is None
    other = _backup("b", "2025-01-01T00:00:00Z")
    other["spec"]["policyRef"]["name"] = "q"
    assert candidate(other, policy) is None
    undated = _backup("b", "")
    undated["status"].pop("snapshot")
    undated["metadata"]["creationTimestamp"] = "2025-01-03T00:00:00Z"
    c = candidate(undated, policy)
    assert c is not None and c.time == dt.datetime(2025, 1, 3, tzinfo=UTC)


def test_retention_condition_says_applied_blocked_or_failed() -> None:
    r = Retention(kept=3, last_prune=(dt.datetime(2025, 1, 1, tzinfo=UTC), 2))
    cond = r.condition(None, 4)[0]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Retention", "True", "Applied")
    assert "last pruned 2" in cond["message"]
    assert r.status() == {"blocked": 0, "lastPruneTime": "2025-01-01T00:00:00Z", "lastPruned": 2}
    r.blocked_until = {"b1": dt.datetime(2030, 1, 1, tzinfo=UTC)}
    cond = r.condition(None, 4)[0]
    assert (cond["status"], cond["reason"]) == ("False", "RetentionBlocked")
    assert "b1" in cond["message"] and "2030-01-01" in cond["message"]
    r.problem = ("RetentionFailed", "repository repo: unreachable")
    assert r.condition(None, 4)[0]["reason"] == "RetentionFailed"


@pytest.mark.parametrize(
    ("error", "reachable", "reason"),
    [
        (CredentialsRefusedError("refused"), False, "CredentialsRefused"),
        (BucketNotFoundError("no bucket"), False, "BucketNotFound"),
        (BackendUnavailableError("timeout"), False, "Unreachable"),
        (RepositoryNotFoundError("no repository"), True, "NotInitialized"),
        (AuthenticationError("the master key does not open it"), True, "WrongKey"),
        (ConfigError("not encrypted, but a master key was given"), True, "WrongKey"),
        (ConfigError("Secret ns/s does not exist"), None, "InvalidConfiguration"),
        (RepositoryError("manifest unreadable"), True, "RepositoryError"),
    ],
)
def test_errors_become_condition_reasons(
    error: Exception, reachable: bool | None, reason: str
) -> None:
    verdict = watch.classify(error)
    assert (verdict.reachable, verdict.reason) == (reachable, reason)


def test_damage_message_names_chunks_and_archives_within_bounds() -> None:
    report = VerifyReport(deep=True, archives=3, chunks=40)
    report.chunk_problems = [
        ChunkProblem(f"{n:064x}", "corrupt", "tag mismatch", (f"arch-{n}", "arch-x"))
        for n in range(15)
    ]
    text = watch.damage_message(report)
    assert text.startswith("deep verify found 15 error(s) affecting 16 archive(s)")
    assert f"{0:064x}" in text and f"{9:064x}" in text and f"{10:064x}" not in text
    assert "5 more" in text
    status = watch.verify_status(report, dt.datetime(2025, 1, 1, tzinfo=UTC))
    assert status == {
        "time": "2025-01-01T00:00:00Z",
        "depth": "full",
        "chunksChecked": 40,
        "errors": 15,
    }


def test_gc_and_verify_schedules() -> None:
    assert watch.schedule_of({}, "gc") is None
    sched = watch.schedule_of({"gc": {"schedule": "@daily", "timeZone": "UTC"}}, "gc")
    assert sched is not None
    at = sched.next_after(dt.datetime(2025, 1, 1, 12, tzinfo=UTC))
    assert at == dt.datetime(2025, 1, 2, tzinfo=UTC)
    with pytest.raises(ScheduleError):
        watch.schedule_of({"verify": {"schedule": "0 0 31 2 *"}}, "verify")
