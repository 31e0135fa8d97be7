"""Verification of completed backups: the verifications' lane of the admission queue, and
the run of one verification (docs/verification.md, "In the cluster").

A policy with ``spec.verification`` has each of its backups verified once it completed:

1. **Requested** in the patch that completes the backup (:func:`request`):
   ``status.verification`` says ``Pending`` with the checks to run. A backup is
   completed once, so it is requested once.
2. **Admitted** by its vCenter's admission loop (:class:`VerifyLane`, records from the
   ``verify_queue`` index, :func:`queued_of`). Verifications are a background kind
   (:data:`vmguard.controller.kube.admission.BACKGROUND`): every waiting backup and
   restore is placed before them, they hold no NFC disk, host or datastore (a
   verification reads the repository only), and their VM key is their own, so they
   never hold a backup back; only the policy's ``verification.concurrency`` bounds them.
   While it waits, ``verification.queuePosition``, ``reason`` and ``message`` say why.
3. **Run** (:func:`step`, from the verification's task, ``handlers.verify_backup``): a
   proxy Job ``vmguard proxy verify`` (:func:`~.builders.build_verify_job`) checks the archive and
   patches its result and findings into ``status.verification``; when the Job has ended,
   the result goes onto the point in the VM's ProtectedVM
   (:func:`vmguard.controller.kube.points.update_point`) and then the backup says
   ``Completed`` with the ``Verified`` condition. A Job that failed without a report, or
   vanished, is ``Error``: no verdict, the point is not marked bad.

Invariants: the Job is created before ``jobName`` is written and is named after the
backup, so a restart adopts it rather than starting a second; the point is written
before the backup says Completed, and writing it again changes nothing, so a restart in
between loses nothing. Nothing here touches disk data: the proxy does.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from vmguard.api import (
    VERIFICATION_BAD,
    BackupPhase,
    PointBoot,
    PointVerification,
    RestorePoint,
    VerificationFinding,
    VerificationPhase,
    VerificationResult,
    format_time,
    parse_time,
)
from vmguard.api.kinds import BACKUP
from vmguard.config import ProxySettings
from vmguard.controller.backup import boottest, builders, steps
from vmguard.controller.kube import podsecurity, points
from vmguard.controller.kube.admission import Waiting, WorkKind
from vmguard.controller.kube.bodies import backup_status
from vmguard.controller.kube.conditions import set_condition
from vmguard.controller.kube.jobs import JobAPI, job_state
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.proxyjob import build_proxy_rbac
from vmguard.controller.kube.proxypods import job_created, running_poll
from vmguard.controller.kube.timing import Timing
from vmguard.controller.kube.verifications import (
    BOOT,
    EACH_BACKUP,
    FSCK,
    JOB_CHECKS,
    YARA,
    again,
    every,
    in_flight,
    request,
    running,
    verification_of,
    wanted,
)
from vmguard.controller.kube.workqueue import Queued, object_fields
from vmguard.errors import ConfigError, RetryableError

log = logging.getLogger(__name__)

INDEX = "verify_queue"
"""The kopf index of the verifications' records (the function's name in :mod:`.handlers`)."""
PLURAL = BACKUP.plural
CONDITION = "Verified"
POLL = 2.0
"""Seconds between looks at a running verification Job."""
POINT_FINDINGS = 5
"""Findings the point in the ProtectedVM keeps (the backup keeps the proxy's 20)."""


def queued_of(body: Mapping[str, Any]) -> Queued | None:
    """The record of a verification in the queue, or None when there is none (not
    requested, ended, the backup deleted while it waits)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    v = verification_of(status)
    if status.get("phase") != BackupPhase.COMPLETED or not in_flight(status):
        return None
    moref = (status.get("vm") or {}).get("moref")
    if not moref or not status.get("vcenter") or not status.get("archiveId"):
        return None
    waiting = v.get("phase") == VerificationPhase.PENDING
    if meta.get("deletionTimestamp") and waiting:
        return None
    asked = parse_time(v.get("requestTime"))
    # Queued.shown reads an Admitted condition: a verification's are in its own block.
    shown = {"type": "Admitted", "reason": v.get("reason", ""), "message": v.get("message", "")}
    return Queued(
        **object_fields(meta),
        vcenter=str(status["vcenter"]),
        policy=str(((body.get("spec") or {}).get("policyRef") or {}).get("name") or ""),
        # Its own VM key: a verification never makes the VM's backup wait (VMBusy), and
        # one VM's verifications run one at a time.
        vm=f"{moref} verify",
        host="",
        disks=(),
        created=asked,
        scheduled=None,
        started=asked,
        waiting=waiting,
        conditions=(shown,),
        position=v.get("queuePosition"),
        kind=WorkKind.VERIFY,
        nfc=False,
    )


@dataclass(frozen=True)
class VerifyLane:
    """The verifications' :class:`~vmguard.controller.kube.workqueue.Lane`. Its patches
    write ``status.verification`` only (a merge patch), never the backup's conditions."""

    deadline: float = 24 * 3600.0
    """A verification that waited this long ends as ``Error`` (DeadlineExceeded)."""
    kind: WorkKind = WorkKind.VERIFY
    plural: str = PLURAL
    index: str = INDEX
    controller: str = "backups"

    def start_status(self, q: Queued, now: dt.datetime) -> dict[str, Any]:
        return {
            "verification": {
                "phase": VerificationPhase.VERIFYING,
                "startTime": format_time(now),
                "queuePosition": None,
                "reason": "Verifying",
                "message": "started within the limits",
            }
        }

    def waiting_status(self, q: Queued, w: Waiting, now: dt.datetime) -> dict[str, Any]:
        return {
            "verification": {
                "queuePosition": w.position,
                "reason": w.reason,
                "message": w.message,
            }
        }

    def expired_status(self, q: Queued, now: dt.datetime) -> dict[str, Any]:
        limit = "∞" if math.isinf(self.deadline) else f"{self.deadline:.0f}s"
        return {
            "verification": {
                "phase": VerificationPhase.COMPLETED,
                "result": VerificationResult.ERROR,
                "time": format_time(now),
                "queuePosition": None,
                "reason": "DeadlineExceeded",
                "message": f"the verification did not start within {limit}",
            }
        }


_BADNESS = {
    VerificationResult.PASSED: 0,
    VerificationResult.ERROR: 1,
    VerificationResult.FAILED: 2,
    VerificationResult.INFECTED: 3,
}


def overall_result(v: Mapping[str, Any]) -> str:
    """The verification's result: the worst of the Job's checks and the boot test's (a
    verdict that the point is bad beats no verdict; pure)."""
    checks = set(v.get("checks") or [])
    results = []
    if JOB_CHECKS & checks or not checks:
        results.append(str(v.get("result") or VerificationResult.ERROR))
    if BOOT in checks:
        results.append(str((v.get("boot") or {}).get("result") or VerificationResult.ERROR))
    return max(results, key=lambda r: _BADNESS.get(VerificationResult(r), 1))


def all_findings(v: Mapping[str, Any]) -> list[VerificationFinding]:
    """The Job's findings, then the boot test's when it did not pass (pure)."""
    findings: list[VerificationFinding] = list(v.get("findings") or [])
    boot = v.get("boot") or {}
    if BOOT in (v.get("checks") or []) and boot.get("result") != VerificationResult.PASSED:
        message = str(boot.get("message") or "the boot test did not end")
        if boot.get("exitCode") is not None:
            message = f"exit code {boot['exitCode']}: {message}"
        findings.insert(0, {"check": BOOT, "message": message[:1024]})
    return findings


def point_verification(v: Mapping[str, Any], at: str) -> PointVerification:
    """What the point in the ProtectedVM records of a verification (pure)."""
    out: PointVerification = {
        "result": overall_result(v),
        "time": at,
        "checks": list(v.get("checks") or []),
    }
    findings = all_findings(v)[:POINT_FINDINGS]
    if findings:
        out["findings"] = findings
    boot = v.get("boot") or {}
    if BOOT in out["checks"]:
        entry: PointBoot = {"result": str(boot.get("result") or VerificationResult.ERROR)}
        if boot.get("exitCode") is not None:
            entry["exitCode"] = int(boot["exitCode"])
        if boot.get("recoveryTimeSeconds") is not None:
            entry["recoveryTimeSeconds"] = float(boot["recoveryTimeSeconds"])
        out["boot"] = entry
    return out


def verified_condition(
    conditions: Any, result: str, message: str, generation: int | None, at: str
) -> list[Any]:
    """The backup's ``Verified`` condition for ``result`` (Error: Unknown, no verdict)."""
    if result == VerificationResult.PASSED:
        ok: bool | None = True
    elif result in VERIFICATION_BAD:
        ok = False
    else:
        ok = None
    return set_condition(conditions, CONDITION, ok, result, message, generation, at)


def _summary(v: Mapping[str, Any]) -> str:
    result = overall_result(v)
    findings = all_findings(v)
    boot = v.get("boot") or {}
    if v.get("message") and result == VerificationResult.ERROR and v.get("result"):
        return str(v["message"])[:1024]
    if not findings and boot.get("result") == VerificationResult.PASSED:
        took = boot.get("recoveryTimeSeconds")
        recovery = f", recovery time {took} s" if took is not None else ""
        return f"{', '.join(v.get('checks') or [])}: {result.lower()}{recovery}"
    if not findings:
        return f"{', '.join(v.get('checks') or [])}: {result.lower()}"
    first = findings[0]
    where = "/".join(str(first.get(k)) for k in ("volume", "path") if first.get(k))
    what = f"rule {first['rule']}" if first.get("rule") else str(first.get("message", ""))
    more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
    return f"{result}: {where + ': ' if where else ''}{what}{more}"[:1024]


class Verifier(Protocol):
    """What a verification run needs (the backups' context has it): the APIs, the proxy
    settings, the clock and the namespaces whose proxy RBAC is in place."""

    api: KubeAPI
    jobs: JobAPI
    proxy: ProxySettings
    timing: Timing
    rbac_done: set[str]


async def step(ctx: Verifier, obj: dict[str, Any]) -> float | None:
    """One step of a running verification: create its Job, look at it, or record its
    result. Seconds until the next step, or None when it has ended."""
    status = backup_status(obj)
    v = verification_of(status)
    meta = obj["metadata"]
    ns, name = meta["namespace"], meta["name"]
    where = status.get("jobNamespace") or ns
    checks = list(v.get("checks") or [])
    boot = BOOT in checks
    if not JOB_CHECKS.intersection(checks):  # a boot test alone: no Job
        return await _boot_then_finish(ctx, obj, dict(v))
    if not v.get("jobName"):
        if boot and v.get("result"):  # the Job's checks refused before any Job (_start)
            return await _boot_then_finish(ctx, obj, dict(v))
        return await _start(ctx, obj, where)
    job = await ctx.jobs.read_job(where, str(v["jobName"]))
    if job is not None and job_state(job).active:
        created = job_created(job)
        if v.get("result") or created is None:  # reported: its Job ends any moment
            return ctx.timing.interval(POLL)
        # Its checks run (minutes for a large disk): the reads back off, and the
        # proxy's result in status wakes the task at once (handlers.vmbackup_phase).
        return running_poll(ctx.timing, created, ctx.timing.interval(POLL))
    if v.get("result"):  # the proxy reported (its Job may be gone by its TTL since)
        return (
            await _boot_then_finish(ctx, obj, dict(v)) if boot else await finish(ctx, obj, dict(v))
        )
    if job is None:
        message = "its Job is gone"
    else:
        state = job_state(job)
        message = state.message or state.reason or "the verification Job ended without a result"
        log.warning("%s/%s: verification Job %s: %s", ns, name, v["jobName"], message)
    ended = {"result": VerificationResult.ERROR, "message": message}
    if boot:  # kept, so the boot test's steps read the same outcome (the Job may go by TTL)
        await ctx.api.patch_status(PLURAL, ns, name, {"verification": ended})
        return 0.0
    return await finish(ctx, obj, {**v, **ended})


async def _boot_then_finish(ctx: Verifier, obj: dict[str, Any], v: dict[str, Any]) -> float | None:
    """The boot test's next stage, or, once it completed, the verification's end."""
    delay = await boottest.step(ctx, obj)
    if delay is not None:
        return delay
    fresh = await ctx.api.get_object(PLURAL, obj["metadata"]["namespace"], obj["metadata"]["name"])
    if fresh is None:
        return None
    return await finish(ctx, fresh, dict(verification_of(backup_status(fresh))))


async def _start(ctx: Verifier, obj: dict[str, Any], where: str) -> float | None:
    meta = obj["metadata"]
    status = backup_status(obj)
    v = verification_of(status)
    checks = list(v.get("checks") or [])
    try:
        refs = await steps.resolve_refs(ctx.api, meta["namespace"], obj.get("spec") or {})
    except steps.MissingRef as exc:
        return await finish(
            ctx, obj, {**v, "result": VerificationResult.ERROR, "message": str(exc)}
        )
    rules = None
    if YARA in checks:
        rules = (
            ((refs.policy_spec.get("verification") or {}).get("yara") or {})
            .get("configMapRef", {})
            .get("name")
        )
        if not rules or where != meta["namespace"]:
            message = (
                "the policy names no YARA rules ConfigMap"
                if not rules
                else f"the Job runs in namespace {where}: the rules ConfigMap cannot be mounted"
            )
            return await finish(
                ctx, obj, {**v, "result": VerificationResult.ERROR, "message": message}
            )
    # File systems are checked through FUSE, in a privileged pod: only where the namespace
    # allows one. Elsewhere the check is refused before any Job (alone) or reported by
    # the Job beside the scan's result, which needs no privilege.
    fsck = FSCK in checks
    fsck_refused = ""
    if fsck:
        refusal = podsecurity.fsck_refused(where, await ctx.api.namespace_labels(where))
        if refusal is not None:
            fsck, fsck_refused = False, refusal[1]
            if rules is None:
                entry = {"check": FSCK, "message": f"error: not run: {fsck_refused}"[:1024]}
                refused = {
                    "result": VerificationResult.ERROR,
                    "message": fsck_refused,
                    "findings": [entry],
                }
                if BOOT in checks:  # needs no privilege: it runs, and its result joins
                    ns, name = meta["namespace"], meta["name"]
                    await ctx.api.patch_status(PLURAL, ns, name, {"verification": refused})
                    return 0.0
                return await finish(ctx, obj, {**v, **refused})
    if where not in ctx.rbac_done:
        await ctx.jobs.ensure_rbac(build_proxy_rbac(where, ctx.proxy.service_account))
        ctx.rbac_done.add(where)
    job = builders.build_verify_job(
        obj,
        ctx.proxy,
        repository=refs.repository["spec"],
        fsck=fsck,
        rules_config_map=rules,
        namespace=where,
        run=int(v.get("run") or 1),
        fsck_refused=fsck_refused,
    )
    created = await ctx.jobs.create_job(job)
    log.info(
        "%s/%s: verification Job %s %s",
        meta["namespace"],
        meta["name"],
        job["metadata"]["name"],
        "created" if created else "adopted",
    )
    await ctx.api.patch_status(
        PLURAL,
        meta["namespace"],
        meta["name"],
        {"verification": {"jobName": job["metadata"]["name"]}},
    )
    return ctx.timing.interval(POLL)


async def finish(ctx: Verifier, obj: dict[str, Any], v: dict[str, Any]) -> float | None:
    """Record the outcome ``v``: on the point first, then on the backup (Completed)."""
    meta = obj["metadata"]
    status = backup_status(obj)
    at = format_time(ctx.timing.now())
    archive = str(status.get("archiveId") or "")
    entry = point_verification(v, at)

    def mutate(point: RestorePoint) -> RestorePoint:
        point["verification"] = entry
        return point

    try:
        await points.update_point(ctx.api, points.backup_key(obj), archive, mutate)
    except points.PointNotFound as exc:  # the cluster's view lacks the point; the run stands
        log.warning(
            "%s/%s: verification not recorded on its point: %s",
            meta["namespace"],
            meta["name"],
            exc,
        )
    except ConfigError as exc:
        log.warning("%s/%s: %s", meta["namespace"], meta["name"], exc)
    except RetryableError as exc:
        log.warning("%s/%s: recording the verification: %s", meta["namespace"], meta["name"], exc)
        return ctx.timing.interval(POLL)
    started = parse_time(v.get("startTime"))
    done: dict[str, Any] = {
        "phase": VerificationPhase.COMPLETED,
        "result": entry["result"],
        "time": at,
        "queuePosition": None,
        "reason": entry["result"],
        "message": _summary(v),
    }
    if BOOT in (v.get("checks") or []):  # the boot test's finding joins the Job's
        done["findings"] = all_findings(v)[:20]
    if started and not v.get("durationSeconds"):
        done["durationSeconds"] = round((ctx.timing.now() - started).total_seconds(), 1)
    conditions = verified_condition(
        status.get("conditions"), entry["result"], done["message"], meta.get("generation"), at
    )
    # Logged first: the patch takes the backup out of the task's index, and its
    # supervisor may cancel the task right after.
    log.info("%s/%s: verified: %s", meta["namespace"], meta["name"], done["message"])
    await ctx.api.patch_status(
        PLURAL, meta["namespace"], meta["name"], {"verification": done, "conditions": conditions}
    )
    return None


__all__ = [
    "CONDITION",
    "EACH_BACKUP",
    "INDEX",
    "Verifier",
    "VerifyLane",
    "again",
    "every",
    "finish",
    "in_flight",
    "point_verification",
    "queued_of",
    "request",
    "running",
    "step",
    "verified_condition",
    "wanted",
]
