"""Argo CD's Lua health checks (the chart's ``files/health``), kstatus (what Flux and
``kubectl wait`` read) and the chart's Flux ``healthCheckExprs`` judge vmguard's objects
as :data:`EXPECTED` says, and agree.

The objects are the lab tests' own (tests/captures.py): every kind in every state the
session's controller tests brought it to, written by the real operator — no lab run of
our own. These tests run after all others (marker ``after_captures``) and fail, naming
the tests to run with them, when a state in :data:`REQUIRED` was not captured: run them
with ``pytest`` plus the producers listed there (or the whole suite). They live apart
from tests/charts so that the chart's own tests can be run alone.

``vmguard-health`` (lab/health, built and cached by the lab) runs sigs.k8s.io/cli-utils'
``status.Compute``, the Lua scripts under gopher-lua as Argo CD runs them, and the CEL
expressions with Flux's rules.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests import captures

from vmguard.api import (
    API_VERSION,
    BACKUP_TERMINAL,
    GROUP,
    RESTORE_TERMINAL,
    BackupPhase,
    RestorePhase,
    kinds,
)
from vmguard.api.kinds import KINDS

pytestmark = [pytest.mark.lab, pytest.mark.after_captures]

SCRIPTS = Path(__file__).resolve().parents[2] / "charts" / "vmguard" / "files" / "health"
FLUX_EXPRS = SCRIPTS / "flux-healthcheckexprs.yaml"

AT_WORK = ("InProgress", "Progressing")
DONE = ("Current", "Healthy")
BROKEN = ("Failed", "Degraded")
# kstatus reads an object without status (or without Ready) as Current: it cannot tell
# "not seen by its controller yet" from "has no status". Argo CD's convention, which our
# scripts follow, is Progressing. The one row where the two differ (docs/gitops.md).
UNSEEN = ("Current", "Progressing")

BACKUP, RESTORE = kinds.BACKUP.kind, kinds.RESTORE.kind
VCENTER, REPOSITORY = kinds.VCENTER.kind, kinds.REPOSITORY.kind
POLICY, PROTECTEDVM = kinds.POLICY.kind, kinds.PROTECTEDVM.kind
STANDING = (VCENTER, REPOSITORY, POLICY, PROTECTEDVM)

EXPECTED: dict[tuple[str, str], tuple[str, str]] = {
    **{(BACKUP, p): AT_WORK for p in BackupPhase if p not in BACKUP_TERMINAL},
    (BACKUP, BackupPhase.COMPLETED): DONE,
    (BACKUP, BackupPhase.FAILED): BROKEN,
    **{(RESTORE, p): AT_WORK for p in RestorePhase if p not in RESTORE_TERMINAL},
    (RESTORE, RestorePhase.COMPLETED): DONE,
    (RESTORE, RestorePhase.FAILED): BROKEN,
    **{(k, "Ready=True"): DONE for k in STANDING},
    # ProtectedVM: Ready=False when no good point is left (NoGoodPoint: every point's
    # verification Failed or found malware; controller/kube/points.py).
    **{(k, "Ready=False"): BROKEN for k in (VCENTER, REPOSITORY, POLICY, PROTECTEDVM)},
    # Ready=Unknown only where a first check can take a while: a VCenter's first sweep
    # and a repository's first opening (the operator says so before it starts them).
    # A policy is judged in one pass from the apiserver alone (True or False at once);
    # every write of a ProtectedVM decides its Ready from its points.
    **{(k, "Ready=Unknown"): AT_WORK for k in (VCENTER, REPOSITORY)},
    (POLICY, captures.PAUSED): ("Current", "Suspended"),
    **{(k.kind, captures.NOT_JUDGED): UNSEEN for k in KINDS},
}
"""(kind, state) -> (kstatus, Argo CD health) for every state the operator brings an
object to (the states it never writes are left out, each with why)."""

FLUX_UNSEEN = {"InProgress", "Unknown"}
"""What the Flux expressions make of an object kstatus reads Current for lack of a status:
not ready (Unknown when it has no status at all: the expressions cannot be evaluated)."""

AGREE = {"Current": {"Healthy", "Suspended"}, "InProgress": {"Progressing"}, "Failed": {"Degraded"}}

_B, _R = "tests/controller/test_backups.py", "tests/controller/test_restores.py"
_F = "tests/controller/test_backup_faults.py"
_FIRST = (
    "tests/controller/test_first_judgement.py"
    "::test_objects_read_in_progress_until_their_first_check_answers"
)
_PVM_KILLED = (
    "tests/controller/test_protected_vms.py"
    "::test_an_operator_killed_after_recording_a_point_does_not_add_it_twice"
)
_R_KILLED = f"{_R}::test_operator_killed_while_restoring_makes_one_vm"
REQUIRED: dict[tuple[str, str], str] = {
    (BACKUP, BackupPhase.PENDING): f"{_B}::test_missing_repository_waits_with_a_condition",
    (BACKUP, BackupPhase.SNAPSHOTTING): (
        f"{_F}::test_operator_killed_after_taking_the_snapshot_reuses_it"
    ),
    (BACKUP, BackupPhase.TRANSFERRING): (
        f"{_F}::test_operator_killed_while_transferring_adopts_the_job"
    ),
    (BACKUP, BackupPhase.FINALIZING): (
        f"{_F}::test_operator_killed_in_finalizing_removes_the_snapshot_after_restart"
    ),
    (BACKUP, BackupPhase.COMPLETED): (
        f"{_F}::test_operator_killed_after_taking_the_snapshot_reuses_it"
    ),
    (BACKUP, BackupPhase.FAILED): (
        f"{_B}::test_unknown_vm_fails_with_a_reason_and_the_operator_stays_up"
    ),
    (RESTORE, RestorePhase.PENDING): (
        f"{_R}::test_bad_sources_and_a_taken_name_are_conditions_not_jobs"
    ),
    (RESTORE, RestorePhase.RESTORING): _R_KILLED,
    (RESTORE, RestorePhase.FINALIZING): _R_KILLED,
    (RESTORE, RestorePhase.COMPLETED): _R_KILLED,
    (RESTORE, RestorePhase.FAILED): (
        f"{_R}::test_bad_sources_and_a_taken_name_are_conditions_not_jobs"
    ),
    (kinds.VCENTER.kind, "Ready=True"): (
        f"{_B}::test_unknown_vm_fails_with_a_reason_and_the_operator_stays_up"
    ),
    (kinds.VCENTER.kind, "Ready=False"): (
        "tests/controller/test_vcenter_controller.py::test_wrong_password_is_a_condition_not_a_crash"
    ),
    (kinds.REPOSITORY.kind, "Ready=True"): (
        f"{_B}::test_unknown_vm_fails_with_a_reason_and_the_operator_stays_up"
    ),
    (kinds.REPOSITORY.kind, "Ready=False"): (
        "tests/controller/test_repository_creation.py"
        "::test_a_config_that_differs_from_its_spec_names_the_field"
    ),
    (kinds.POLICY.kind, "Ready=True"): (
        "tests/controller/test_policies.py"
        "::test_new_vm_unprotected_then_backed_up_by_the_default_policy"
    ),
    (kinds.POLICY.kind, "Ready=False"): (
        "tests/controller/test_policies.py::test_paused_and_broken_policies_create_nothing"
    ),
    (kinds.POLICY.kind, captures.PAUSED): (
        "tests/controller/test_policies.py::test_paused_and_broken_policies_create_nothing"
    ),
    (PROTECTEDVM, "Ready=True"): _PVM_KILLED,
    (PROTECTEDVM, "Ready=False"): (
        "tests/controller/test_boot_test.py"
        "::test_a_boot_test_runs_the_point_isolated_and_removes_its_vm[script-fails]"
    ),
    (VCENTER, "Ready=Unknown"): _FIRST,
    (REPOSITORY, "Ready=Unknown"): _FIRST,
    **{(k, captures.NOT_JUDGED): _FIRST for k in (VCENTER, REPOSITORY, POLICY, BACKUP, RESTORE)},
    (PROTECTEDVM, captures.NOT_JUDGED): _PVM_KILLED,
}
"""The states that must have been captured, each with a lab test that reaches it."""


@pytest.fixture(scope="session")
def health() -> Path:
    from vmguard_lab import build
    from vmguard_lab.paths import LabPaths

    return build.ensure_built(LabPaths.default(), only=("health",))["vmguard-health"]


def judge(health: Path, *args: str, files: list[Path]) -> dict[Path, dict[str, Any]]:
    """``vmguard-health ARGS -o json FILES``: each file's one object's verdict."""
    done = subprocess.run(
        [str(health), *args, "-o", "json", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == len(files), f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return dict(zip(files, lines, strict=True))


def test_every_kind_has_a_health_script_and_the_table_knows_every_state() -> None:
    expected = {f"{GROUP}_{k.kind}.lua" for k in KINDS}
    assert {p.name for p in SCRIPTS.glob("*.lua")} == expected
    exprs = yaml.safe_load(FLUX_EXPRS.read_text())["healthCheckExprs"]
    assert sorted(e["kind"] for e in exprs) == sorted(k.kind for k in KINDS)
    assert {e["apiVersion"] for e in exprs} == {API_VERSION}
    assert set(REQUIRED) == set(EXPECTED)


def test_the_lab_tests_captured_every_required_state(captured_objects: Path) -> None:
    found = captures.captured(captured_objects)
    missing = {key: test for key, test in REQUIRED.items() if key not in found}
    assert not missing, (
        "no object was captured in these states; run this file together with:\n"
        + "\n".join(f"  {k}/{s}: {test}" for (k, s), test in sorted(missing.items()))
    )
    unknown = set(found) - set(EXPECTED)
    assert not unknown, f"captured states the table does not know: {sorted(unknown)}"


def test_kstatus_and_argo_cd_read_every_captured_object_as_expected(
    captured_objects: Path, health: Path
) -> None:
    found = captures.captured(captured_objects)
    files = [path for key in sorted(found) if key in EXPECTED for path in found[key]]
    assert files, "nothing was captured (see test_the_lab_tests_captured_every_required_state)"
    kstatus = judge(health, "kstatus", files=files)
    lua = judge(health, "lua", "-scripts", str(SCRIPTS), files=files)
    flux = judge(health, "flux", "-exprs", str(FLUX_EXPRS), files=files)
    wrong = []
    for path in files:
        key = (path.parent.parent.name, path.parent.name)
        got = (kstatus[path]["status"], lua[path]["status"])
        flux_expected = FLUX_UNSEEN if EXPECTED[key] == UNSEEN else {EXPECTED[key][0]}
        if (
            got != EXPECTED[key]
            or flux[path]["status"] not in flux_expected
            or kstatus[path].get("error")
            or lua[path].get("error")
            or flux[path].get("error")
        ):
            wrong.append(
                f"{key} {path.name}: {got} (flux {flux[path]['status']}), expected "
                f"{EXPECTED[key]} (flux {flux_expected}); "
                f"kstatus {kstatus[path]}; lua {lua[path]}; flux {flux[path]}"
            )
        elif EXPECTED[key] != UNSEEN:
            assert got[1] in AGREE[got[0]], (key, got)
        # Never in progress once failed: the acceptance line, stated on its own.
        if key == (BACKUP, BackupPhase.FAILED):
            assert got == ("Failed", "Degraded"), (path, got)
    assert not wrong, "\n".join(wrong)


def test_a_spec_change_not_yet_observed_is_in_progress_for_both(
    captured_objects: Path, health: Path, tmp_path: Path
) -> None:
    """Each kind's settled object (Completed, or Ready=True), one generation ahead of
    its status — what both tools see between an edit and the operator's next patch."""
    found = captures.captured(captured_objects)
    settled = {BACKUP: BackupPhase.COMPLETED, RESTORE: RestorePhase.COMPLETED}
    files = []
    for k in KINDS:
        source = found.get((k.kind, settled.get(k.kind, "Ready=True")))
        assert source, f"no settled {k.kind} captured (test_the_lab_tests_captured_...)"
        obj = json.loads(source[0].read_text())
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        obj["metadata"]["generation"] += 1
        files.append(tmp_path / f"{k.kind}.json")
        files[-1].write_text(json.dumps(obj))
    kstatus = judge(health, "kstatus", files=files)
    lua = judge(health, "lua", "-scripts", str(SCRIPTS), files=files)
    flux = judge(health, "flux", "-exprs", str(FLUX_EXPRS), files=files)
    got = {p.stem: (kstatus[p]["status"], lua[p]["status"], flux[p]["status"]) for p in files}
    assert got == {k.kind: (*AT_WORK, "InProgress") for k in KINDS}
