"""A completed backup's verification request (``VMGuardBackup.status.verification``):
when a policy asks for one, and the patch that asks (docs/verification.md).

Shared by the two kinds that ask: the VMGuardBackup controller asks when a backup
completes under a policy whose ``spec.verification.every`` is ``EachBackup``
(:func:`request`); the policy's scheduler asks again for each VM's newest point at the
times of an ``every`` cron line (:func:`again`). Pure: no I/O.

Invariants: a request names the checks the policy asks for (``fsck``, ``yara``,
``boot``) and is
``Pending``; a new run of a backup verified before gets the next ``run`` number (its
Job's name carries it, so a restarted operator adopts the right Job) and clears the last
run's outcome, never while a run is in flight.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, cast

from vmguard.api import BackupVerification, VerificationPhase, format_time

FSCK, YARA, BOOT = "fsck", "yara", "boot"
JOB_CHECKS = frozenset({FSCK, YARA})
"""The checks the verification Job runs; ``boot`` the operator runs (a temporary VM)."""


EACH_BACKUP = "EachBackup"


def every(policy_spec: Mapping[str, Any]) -> str | None:
    """``spec.verification.every``: ``EachBackup``, a cron line, or None (no verification)."""
    v = policy_spec.get("verification")
    return str(v.get("every") or EACH_BACKUP) if v else None


def wanted(policy_spec: Mapping[str, Any]) -> list[str]:
    """The checks a policy's ``spec.verification`` asks for (empty: none)."""
    v = policy_spec.get("verification")
    if not v:
        return []
    checks = [FSCK] if v.get("fsck", True) else []
    if (v.get("yara") or {}).get("configMapRef"):
        checks.append(YARA)
    if v.get("boot"):
        checks.append(BOOT)
    return checks


def request(policy_spec: Mapping[str, Any], now: dt.datetime) -> BackupVerification | None:
    """``status.verification`` of a backup that completes under ``policy_spec``: Pending
    with the checks to run, or None when the policy verifies nothing, or on a schedule
    (pure)."""
    if every(policy_spec) != EACH_BACKUP:
        return None
    return again(policy_spec, now, None)


def again(
    policy_spec: Mapping[str, Any], now: dt.datetime, previous: Mapping[str, Any] | None
) -> BackupVerification | None:
    """``status.verification`` asking for a (new) run after ``previous`` (the block the
    backup holds, None: none): Pending, the next run number, the last run's outcome
    cleared (a merge patch removes keys set to None). None when the policy verifies
    nothing (pure)."""
    checks = wanted(policy_spec)
    if not checks:
        return None
    out: dict[str, Any] = {
        "phase": VerificationPhase.PENDING,
        "run": int((previous or {}).get("run") or 0) + 1,
        "requestTime": format_time(now),
        "checks": checks,
        "reason": "Queued",
        "message": "waiting for admission",
    }
    if previous:
        for key in (
            "startTime",
            "time",
            "jobName",
            "result",
            "findings",
            "durationSeconds",
            "boot",
        ):
            out[key] = None
    return cast(BackupVerification, out)


def verification_of(status: Mapping[str, Any]) -> Mapping[str, Any]:
    return status.get("verification") or {}


def running(status: Mapping[str, Any]) -> bool:
    """Admitted and not ended: the verification task's work (``backup.handlers.verify_backup``)."""
    return verification_of(status).get("phase") == VerificationPhase.VERIFYING


def in_flight(status: Mapping[str, Any]) -> bool:
    """Requested and not ended (the backup's TTL waits for it)."""
    return verification_of(status).get("phase") in (
        VerificationPhase.PENDING,
        VerificationPhase.VERIFYING,
    )


def boot_in_use(backup_status: Mapping[str, Any], restore: str) -> bool:
    """Whether the backup's running verification still uses the boot test whose temporary
    VM the VMGuardRestore ``restore`` made (the orphan sweep keeps that VM). A run that
    created its restore but has not recorded it yet counts as using it."""
    v = verification_of(backup_status)
    boot = v.get("boot") or {}
    return (
        v.get("phase") == VerificationPhase.VERIFYING
        and boot.get("restoreName") in (None, restore)
        and boot.get("phase") != "Completed"
    )


__all__ = [
    "BOOT",
    "EACH_BACKUP",
    "FSCK",
    "JOB_CHECKS",
    "YARA",
    "again",
    "boot_in_use",
    "every",
    "in_flight",
    "request",
    "running",
    "verification_of",
    "wanted",
]
