"""kstatus conditions: of the kinds that end (VMGuardBackup, VMGuardRestore), from phase and
error; of the kinds that stand (VCenter, VMGuardRepository, VMProtectionPolicy), from ``Ready``.

kstatus (sigs.k8s.io/cli-utils, what Flux and ``kubectl wait`` read) calls an object
InProgress while ``Reconciling=True``, Failed when ``Stalled=True`` (checked after
Reconciling), then by ``Ready`` (True: Current; False or Unknown: InProgress), Current
otherwise. These tests walk each kind through its states with the pure functions the
controllers apply on every status patch, and read the result the way kstatus does
(:func:`kstatus`, its documented generic rules restated; tests/gitops/test_health.py
runs the real kstatus over objects the lab tests produced).
"""

from __future__ import annotations

from typing import Any

import pytest

from vmguard.api import BackupPhase, RestorePhase
from vmguard.controller.backup.reconcile import backup_conditions
from vmguard.controller.kube.conditions import (
    get_condition,
    lifecycle_conditions,
    set_condition,
    standing_conditions,
)
from vmguard.controller.policy import judgement as policies
from vmguard.controller.restore.reconcile import restore_conditions, with_lifecycle

pytestmark = pytest.mark.unit

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
FAILURE = {"reason": "VMNotFound", "message": "no VM named ghost", "retryable": False}


def kstatus(conditions: list[Any]) -> str:
    """kstatus's generic reading of an object's conditions (generation matched)."""
    if get_condition(conditions, "Reconciling").get("status") == "True":
        return "InProgress"
    if get_condition(conditions, "Stalled").get("status") == "True":
        return "Failed"
    ready = get_condition(conditions, "Ready").get("status")
    return "InProgress" if ready in ("False", "Unknown") else "Current"


def states(conditions: list[Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


@pytest.mark.parametrize(
    "phase", [BackupPhase.PENDING, BackupPhase.SNAPSHOTTING, BackupPhase.TRANSFERRING]
)
def test_a_backup_at_work_is_reconciling_with_the_phase_as_reason(phase: str) -> None:
    conds = backup_conditions([], phase, None, 3)
    assert states(conds) == {"Ready": ("False", phase), "Reconciling": ("True", phase)}
    assert all(c["observedGeneration"] == 3 and c["message"] for c in conds)
    assert kstatus(conds) == "InProgress"


def test_reconciling_says_what_ready_says_while_waiting() -> None:
    waiting = set_condition([], "Ready", False, "RepositoryNotReady", "waiting for repo r", at=T0)
    conds = backup_conditions(waiting, BackupPhase.PENDING, None, 1)
    assert get_condition(conds, "Ready")["reason"] == "RepositoryNotReady"
    reconciling = get_condition(conds, "Reconciling")
    assert (reconciling["reason"], reconciling["message"]) == ("Pending", "waiting for repo r")


def test_a_failing_backup_still_finalizing_is_not_stalled_yet() -> None:
    """The snapshot is still being removed: work is under way, the failure is not final."""
    conds = backup_conditions([], BackupPhase.FINALIZING, FAILURE, 1)
    assert "Stalled" not in states(conds)
    assert kstatus(conds) == "InProgress"


def test_a_failed_backup_is_stalled_with_the_failure_and_no_longer_reconciling() -> None:
    at_work = backup_conditions([], BackupPhase.TRANSFERRING, None, 2)
    ready = set_condition(at_work, "Ready", False, "VMNotFound", "no VM named ghost")
    conds = backup_conditions(ready, BackupPhase.FAILED, FAILURE, 2)
    assert states(conds) == {
        "Ready": ("False", "VMNotFound"),
        "Reconciling": ("False", "Failed"),
        "Stalled": ("True", "VMNotFound"),
    }
    assert get_condition(conds, "Stalled")["message"] == "no VM named ghost"
    assert kstatus(conds) == "Failed"


def test_a_failed_backup_without_an_error_is_still_stalled() -> None:
    conds = backup_conditions([], BackupPhase.FAILED, None, 1)
    assert states(conds)["Stalled"] == ("True", "Failed")
    assert states(conds)["Ready"] == ("False", "Failed")
    assert kstatus(conds) == "Failed"


def test_a_completed_backup_is_ready_and_neither_reconciling_nor_stalled() -> None:
    at_work = backup_conditions([], BackupPhase.FINALIZING, None, 1)
    done = set_condition(at_work, "Ready", True, "Completed", "archive a1")
    conds = backup_conditions(done, BackupPhase.COMPLETED, None, 1)
    assert states(conds) == {"Ready": ("True", "Completed"), "Reconciling": ("False", "Completed")}
    assert kstatus(conds) == "Current"


def test_stalled_goes_away_when_the_phase_is_no_longer_failed() -> None:
    """Not a transition the controllers make; the function still keeps the rule."""
    failed = backup_conditions([], BackupPhase.FAILED, FAILURE, 1)
    again = backup_conditions(failed, BackupPhase.PENDING, None, 2)
    assert "Stalled" not in states(again)
    assert kstatus(again) == "InProgress"


def test_transition_times_change_only_with_the_status() -> None:
    first = lifecycle_conditions([], "Pending", terminal=False, failure=None, at=T0)
    later = lifecycle_conditions(first, "Transferring", terminal=False, failure=None, at=T1)
    assert get_condition(later, "Reconciling")["lastTransitionTime"] == T0
    assert get_condition(later, "Reconciling")["reason"] == "Transferring"
    ended = lifecycle_conditions(later, "Failed", terminal=True, failure=FAILURE, at=T1)
    assert get_condition(ended, "Reconciling")["lastTransitionTime"] == T1


@pytest.mark.parametrize("phase", list(BackupPhase))
def test_applying_twice_changes_nothing(phase: str) -> None:
    error = FAILURE if phase == BackupPhase.FAILED else None
    once = backup_conditions([], phase, error, 4)
    assert backup_conditions(once, phase, error, 4) == once


@pytest.mark.parametrize(
    ("phase", "error", "expected"),
    [
        (RestorePhase.PENDING, None, "InProgress"),
        (RestorePhase.RESTORING, None, "InProgress"),
        (RestorePhase.FINALIZING, None, "InProgress"),
        (RestorePhase.COMPLETED, None, "Current"),
        (RestorePhase.FAILED, {"reason": "SourceFailed", "message": "m"}, "Failed"),
    ],
)
def test_restore_phases_read_by_kstatus(phase: str, error: Any, expected: str) -> None:
    conds = restore_conditions([], phase, error, 1)
    assert kstatus(conds) == expected
    if error:
        assert states(conds)["Stalled"] == ("True", "SourceFailed")


def _restore(status: dict[str, Any], generation: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": "r", "generation": generation}, "status": status}


def test_every_restore_patch_carries_observed_generation() -> None:
    patch = with_lifecycle(_restore({"phase": "Pending"}), {"phase": RestorePhase.RESTORING})
    assert patch["observedGeneration"] == 2
    assert states(patch["conditions"])["Reconciling"] == ("True", "Restoring")


def test_a_restore_failed_by_an_older_operator_is_brought_up_to_date() -> None:
    old = _restore({"phase": "Failed", "error": {"reason": "ProxyFailed", "message": "m"}})
    patch = with_lifecycle(old, {})
    assert patch["observedGeneration"] == 2
    assert states(patch["conditions"])["Stalled"] == ("True", "ProxyFailed")
    # ... once: an up-to-date object gets no patch.
    assert with_lifecycle(_restore({**old["status"], **patch}), {}) == {}


# -- the kinds that stand ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ready", "expected", "abnormal"),
    [
        (None, "InProgress", {"Reconciling": ("True", "Checking")}),
        ("Unknown", "InProgress", {"Reconciling": ("True", "InvalidConfiguration")}),
        ("False", "Failed", {"Stalled": ("True", "InvalidConfiguration")}),
        ("True", "Current", {}),
    ],
)
def test_standing_kinds_read_their_ready(
    ready: str | None, expected: str, abnormal: dict[str, tuple[str, str]]
) -> None:
    conds: list[Any] = []
    if ready is not None:
        value = None if ready == "Unknown" else ready == "True"
        conds = set_condition([], "Ready", value, "InvalidConfiguration", "no Secret x", 3)
    out = standing_conditions(conds, 3)
    assert kstatus(out) == expected
    shown = {k: v for k, v in states(out).items() if k in ("Reconciling", "Stalled")}
    assert shown == abnormal
    assert standing_conditions(out, 3) == out, "idempotent"


def test_a_standing_kind_that_recovers_is_no_longer_stalled() -> None:
    broken = set_condition([], "Ready", False, "Unreachable", "connection refused", 1, at=T0)
    stalled = standing_conditions(broken, 1, at=T0)
    assert get_condition(stalled, "Stalled")["message"] == "connection refused"
    fixed = set_condition(stalled, "Ready", True, "Swept", "inventory swept", 1, at=T1)
    assert states(standing_conditions(fixed, 1, at=T1)) == {"Ready": ("True", "Swept")}


def test_a_policy_that_cannot_act_is_stalled_with_its_reason() -> None:
    """A bare Ready=False reads "in progress" to kstatus: flux --wait would hang on it."""
    lost = policies.assess_spec(
        {
            "vcenterRef": {"name": "lab"},
            "repositoryRef": {"name": "nope"},
            "schedule": {"cron": "0 1 * * *"},
        },
        vcenter_exists=True,
        repository_exists=False,
    )
    conds = policies.conditions(None, lost, False, [], 2, None)
    assert states(conds)["Stalled"] == ("True", "RepositoryNotFound")
    assert kstatus(conds) == "Failed"
    fine = policies.assess_spec(
        {
            "vcenterRef": {"name": "lab"},
            "repositoryRef": {"name": "r"},
            "schedule": {"cron": "0 1 * * *"},
        },
        vcenter_exists=True,
        repository_exists=True,
    )
    again = policies.conditions(conds, fine, True, [], 2, None)
    assert "Stalled" not in states(again) and kstatus(again) == "Current"


def test_a_vcenter_never_swept_reads_in_progress_until_its_first_sweep() -> None:
    from vmguard.controller.vcenter.sweeper import first_sweep_status

    new = {"metadata": {"name": "lab", "generation": 1}, "spec": {}}
    status = first_sweep_status(new)
    assert status is not None and status["observedGeneration"] == 1
    ready = get_condition(status["conditions"], "Ready")
    assert (ready["status"], ready["reason"]) == ("Unknown", "Sweeping")
    assert kstatus(status["conditions"]) == "InProgress"
    # Once a sweep decided Ready (either way), a restarted operator does not undo it.
    for decided in (True, False):
        conditions = standing_conditions(set_condition([], "Ready", decided, "R", "m", 1), 1)
        assert first_sweep_status({**new, "status": {"conditions": conditions}}) is None
