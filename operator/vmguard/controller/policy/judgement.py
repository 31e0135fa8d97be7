"""The VMProtectionPolicy controller's judgement: is a policy fit to act, and its status.

What admission (CEL) cannot check is checked here and reported as conditions, never
raised out of a handler (the operator does not crash-loop on bad input):

- ``Ready`` — the policy acts: creates scheduled and fail-safe backups. False, and
  nothing is created, when the VCenter or VMGuardRepository it names does not exist
  (``VCenterNotFound``, ``RepositoryNotFound``), when the cron line cannot run
  (``InvalidCron``, ``UpwardRange``, ``NeverOccurs``), or the time zone is unknown
  (``UnknownTimeZone``). True with reason ``Scheduled`` otherwise (also when paused).
  ``Stalled`` (with a False Ready's reason) and ``Reconciling`` follow it
  (:func:`..kube.conditions.standing_conditions`), so kstatus reads such a policy as Failed.
- ``ScheduleValid`` — the same schedule reasons, plus ``JitterExceedsInterval``: a
  jitter longer than the shortest gap between runs. That one does not stop the
  policy: the jitter is capped at the gap, so each VM still starts before the next run.
- ``Paused`` — True (``Paused``) when ``spec.paused``: no backups are created, the
  VMs still count as protected so the default policy does not take them over.
- ``DryRun`` — True (``DryRun``) when ``spec.dryRun``: nothing is created; ``plan
  {nextRunTime, vms}`` says what the next scheduled run would back up (null otherwise).
- ``CopiesValid`` — only with ``spec.copies``: False, naming the first reason of
  :mod:`.targets` (``CopyRepositoryNotFound``, ``CopyTargetOverlaps``,
  ``ChunkSizeMismatch``) when a copy target is refused (it receives nothing; the
  policy's own backups go on), True (``Valid``) otherwise.
- ``VerificationReady`` — only with ``spec.verification``: False with a schedule reason
  (``verification.every``'s cron line cannot run, as for ``ScheduleValid``),
  ``RulesNotFound``
  (no such ConfigMap), ``NoRules`` (no key ending in .yar/.yara) or ``RulesInvalid``
  (YARA-X's first compile error, naming the ConfigMap key, the line and the rule:
  :mod:`vmguard.verify.rules`, the code the verification Job runs), True (``Valid``)
  otherwise; ``BootWithoutIsolatedNetwork`` (a boot test with no isolated network: none
  runs) or ``BootScriptNotFound`` (the check script's ConfigMap or key is missing);
  ``PodSecurity`` or ``PrivilegedProxiesNotAllowed`` when it checks file systems
  (``fsck``, the default) and the Jobs' namespace may not run the privileged pod that
  mounts them with FUSE (:mod:`..kube.podsecurity`). Backups go on either way; a
  verification with bad rules, or whose file systems may not be checked, ends as Error.
- ``Consistent`` — False with ``SeveralDefaults`` when the vCenter has more than one
  default policy (the one whose name sorts first acts as the default, the others
  protect nothing), or ``PriorityTie`` when another policy of the same priority
  selects some of the same VMs (the name that sorts first wins; both are told).

Status (written only by this controller, except ``matchedVMs`` and ``failsafe`` which
the vCenter sweep writes): ``nextScheduleTime``, ``lastScheduleTime``, ``lastRun {time, backups,
completed, failed, running}`` from the backups labelled with that run,
``lastSuccessfulTime``, ``vmsOutsideRPO`` (VMs of the policy, as of the last sweep,
without a completed backup within ``spec.rpo``, or twice the longest gap between runs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from vmguard.api import Condition, format_time, parse_duration
from vmguard.api.kinds import REPOSITORY, VCENTER
from vmguard.controller.kube.conditions import set_condition, standing_conditions
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.podsecurity import fsck_refused
from vmguard.controller.kube.refs import (
    ReferencesSplit,
    RefusedReference,
    get_referenced,
    job_namespace,
)
from vmguard.controller.kube.schedule import Schedule, parse
from vmguard.controller.kube.sweeps import SweepView
from vmguard.controller.policy import targets
from vmguard.controller.policy.builders import run_label
from vmguard.controller.policy.history import BackupHistory
from vmguard.errors import ConfigError, ScheduleError
from vmguard.verify.rules import RulesError, compile_sources

LISTED = 10  # VM names in a condition message
VERIFICATION_CONDITION = "VerificationReady"


@dataclass
class Assessment:
    """What a policy can do now; ``problems`` stop it, ``warnings`` do not."""

    schedule: Schedule | None = None
    jitter: float = 0.0
    rpo: dt.timedelta | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)
    schedule_problem: tuple[str, str] | None = None
    copies: targets.TargetJudgement | None = None
    """The copy targets (None: the policy names none)."""
    verification: tuple[bool, str, str] | None = None
    """``VerificationReady`` (ok, reason, message); None: the policy verifies nothing."""

    @property
    def ready(self) -> bool:
        return not self.problems


def assess_spec(
    spec: Mapping[str, Any], vcenter_exists: bool, repository_exists: bool
) -> Assessment:
    """Pure: the schedule and the references, given whether the referenced objects exist."""
    out = Assessment()
    vcenter = (spec.get("vcenterRef") or {}).get("name", "")
    repository = (spec.get("repositoryRef") or {}).get("name", "")
    if not vcenter_exists:
        out.problems.append(("VCenterNotFound", f"VCenter {vcenter!r} does not exist"))
    if not repository_exists:
        out.problems.append(
            ("RepositoryNotFound", f"VMGuardRepository {repository!r} does not exist")
        )
    sched = spec.get("schedule") or {}
    try:
        out.schedule = parse(sched.get("cron", ""), sched.get("timeZone") or "UTC")
    except ScheduleError as exc:
        out.schedule_problem = (exc.reason, str(exc))
        out.problems.append(out.schedule_problem)
        return out
    try:
        jitter = parse_duration(sched.get("jitter"), 0.0)
        rpo = parse_duration(spec.get("rpo"), 0.0)
    except ConfigError as exc:  # the CRD's pattern makes this unreachable; be safe
        out.problems.append(("InvalidDuration", str(exc)))
        return out
    shortest = out.schedule.gaps()[0].total_seconds()
    warning = out.schedule.jitter_problem(jitter)
    if warning:
        out.schedule_problem = ("JitterExceedsInterval", warning)
    out.jitter = min(jitter, shortest)
    out.rpo = dt.timedelta(seconds=rpo) if rpo else out.schedule.default_rpo()
    return out


async def assess(api: KubeAPI, policy: Mapping[str, Any]) -> Assessment:
    namespace = policy["metadata"]["namespace"]
    spec = policy.get("spec") or {}
    found, refused = {}, []
    for kind, ref in ((VCENTER, "vcenterRef"), (REPOSITORY, "repositoryRef")):
        try:  # across namespaces only where admitted (docs/tenancy.md)
            found[ref] = await get_referenced(api, kind, namespace, spec.get(ref))
        except RefusedReference as exc:
            found[ref] = {}
            refused.append((exc.reason, str(exc)))
    out = assess_spec(spec, found["vcenterRef"] is not None, found["repositoryRef"] is not None)
    out.problems[:0] = refused
    if spec.get("copies"):
        copies_found: dict[str, dict[str, Any] | None] = {}
        primary = found["repositoryRef"]
        ids = {(spec.get("repositoryRef") or {}).get("name", ""): _repository_id(primary)}
        for entry in spec["copies"]:
            name = (entry.get("repositoryRef") or {}).get("name", "")
            obj = await api.get_object(REPOSITORY.plural, namespace, name) if name else None
            copies_found[name] = obj.get("spec") or {} if obj is not None else None
            ids[name] = _repository_id(obj)
        out.copies = targets.judge(
            spec, primary.get("spec") if primary else None, copies_found, ids
        )
    if spec.get("verification"):
        zone = (spec.get("schedule") or {}).get("timeZone") or "UTC"
        labels = None
        if spec["verification"].get("fsck", True):
            try:  # the verification Jobs run where the proxy Jobs run
                objs = (found["vcenterRef"] or None, found["repositoryRef"] or None)
                where = job_namespace(namespace, *objs)
                labels = (where, await api.namespace_labels(where))
            except ReferencesSplit:  # Ready says so; no Job runs
                pass
        out.verification = await verification_ready(
            api, namespace, spec["verification"], zone, labels
        )
    return out


def _repository_id(obj: Mapping[str, Any] | None) -> str | None:
    """The repository id its controller found at a VMGuardRepository's place, if any."""
    return ((obj or {}).get("status") or {}).get("repositoryId") or None


async def verification_ready(
    api: KubeAPI,
    namespace: str,
    verification: Mapping[str, Any],
    zone: str = "UTC",
    job_namespace: tuple[str, Mapping[str, str]] | None = None,
) -> tuple[bool, str, str]:
    """``VerificationReady`` of a policy's ``spec.verification``: its ``every`` cron line
    can run, its YARA rules ConfigMap exists, holds rule files, and they compile (else
    the reason, and the message naming the file, line and rule); and, with
    ``job_namespace`` (the verification Jobs' namespace and its labels), the file-system
    checks asked for may run there (else ``PodSecurity`` or
    ``PrivilegedProxiesNotAllowed``: :func:`~vmguard.controller.kube.podsecurity.
    fsck_refused`)."""
    checks = (["fsck"] if verification.get("fsck", True) else []) + (
        ["yara"] if verification.get("yara") else []
    )
    # Every problem is named (the first one's reason is the condition's): fixing one
    # must not be the way a user learns of the next.
    problems: list[tuple[str, str]] = []
    boot = verification.get("boot")
    if boot is not None:
        refused = await boot_problem(api, namespace, boot)
        if refused is not None:
            problems.append(refused)
        else:
            checks.append(f"boot in {boot['isolatedNetwork']}")
    line = str(verification.get("every") or "EachBackup")
    when = "each backup is verified"
    if line != "EachBackup":
        try:
            parse(line, zone)
            when = f"each VM's newest point is verified at {line!r}"
        except ScheduleError as exc:
            problems.append((exc.reason, f"verification.every: {exc}"))
    name = ((verification.get("yara") or {}).get("configMapRef") or {}).get("name")
    refusal = fsck_refused(*job_namespace) if job_namespace and "fsck" in checks else None
    scanning = False  # YARA rules that compile: the scan runs whatever fsck may do
    sources: tuple[tuple[str, str], ...] = ()
    if name:
        data = await api.config_map_data(namespace, name)
        if data is None:
            problems.append(("RulesNotFound", f"the YARA rules ConfigMap {name} does not exist"))
        else:
            sources = tuple(
                sorted(
                    (f"configmap/{name}/{k}", v)
                    for k, v in data.items()
                    if k.endswith(YARA_SUFFIXES)
                )
            )
            problem = await asyncio.to_thread(rules_problem, sources) if sources else None
            if not sources:
                problems.append(("NoRules", f"ConfigMap {name} has no key ending in .yar or .yara"))
            elif problem is not None:
                problems.append(
                    ("RulesInvalid", problem + ": verifications with them end as Error")
                )
            else:
                scanning = True
    if refusal is not None:
        consequence = (
            "the YARA scan runs, and a point it finds no match in is Error"
            if scanning
            else "verifications end as Error"
        )
        problems.append((refusal[0], f"{refusal[1]}: {consequence}"))
    if problems:
        return False, problems[0][0], "; ".join(message for _, message in problems)
    rules = f" ({len(sources)} rule files)" if name else ""
    return True, "Valid", f"{when}: {', '.join(checks)}{rules}"


YARA_SUFFIXES = (".yar", ".yara")


async def boot_problem(
    api: KubeAPI, namespace: str, boot: Mapping[str, Any]
) -> tuple[str, str] | None:
    """Why a policy's ``verification.boot`` cannot run, or None. The CRD already refuses
    a boot test without ``isolatedNetwork``; one that got in all the same (an older CRD,
    an object stored before) is refused here: a boot test never falls back to the
    source network."""
    if not boot.get("isolatedNetwork"):
        return (
            "BootWithoutIsolatedNetwork",
            "verification.boot names no isolatedNetwork: a boot test runs only in an "
            "isolated network (it never falls back to the source network); no boot test runs",
        )
    script = boot.get("script") or {}
    if script:
        name = (script.get("configMapRef") or {}).get("name", "")
        data = await api.config_map_data(namespace, name)
        if data is None or script.get("key") not in data:
            return (
                "BootScriptNotFound",
                f"the boot test's check script: ConfigMap {name} has no key {script.get('key')!r}",
            )
    return None


@functools.lru_cache(maxsize=32)
def rules_problem(sources: tuple[tuple[str, str], ...]) -> str | None:
    """Why the rules do not compile (None: they do). Cached by content: the scheduler's
    passes do not compile the same rules again."""
    try:
        compile_sources(sources)
    except RulesError as exc:
        return str(exc)
    return None


def conflicts(
    policy: Mapping[str, Any], policies: Iterable[Mapping[str, Any]], view: SweepView | None
) -> list[tuple[str, str]]:
    """(reason, message) for each way this policy clashes with others of its vCenter."""
    name = policy["metadata"]["name"]
    spec = policy.get("spec") or {}
    vcenter = (spec.get("vcenterRef") or {}).get("name", "")
    out = []
    if spec.get("default"):
        defaults = sorted(
            p["metadata"]["name"]
            for p in policies
            if (p.get("spec") or {}).get("default")
            and ((p.get("spec") or {}).get("vcenterRef") or {}).get("name") == vcenter
        )
        if len(defaults) > 1:
            acting = defaults[0]
            role = (
                "this one acts as the default"
                if acting == name
                else f"{acting} (first by name) acts as the default, this one protects nothing"
            )
            out.append(
                (
                    "SeveralDefaults",
                    f"vCenter {vcenter} has {len(defaults)} default policies "
                    f"({', '.join(defaults)}): {role}; keep one",
                )
            )
    if view is not None:
        won, lost = view.ties(name)
        for other, vms in sorted(won.items()):
            out.append(
                (
                    "PriorityTie",
                    f"{len(vms)} VM(s) protected by this policy are also selected by {other} "
                    f"at the same priority: {_names(vms)}; give one a higher priority",
                )
            )
        for winner, vms in sorted(lost.items()):
            out.append(
                (
                    "PriorityTie",
                    f"{len(vms)} VM(s) selected by this policy are protected by {winner} "
                    f"instead (same priority, its name sorts first): {_names(vms)}",
                )
            )
    return out


def _names(vms: list[str]) -> str:
    shown = ", ".join(vms[:LISTED])
    return shown + (f" and {len(vms) - LISTED} more" if len(vms) > LISTED else "")


def conditions(
    previous: Iterable[Mapping[str, Any]] | None,
    assessment: Assessment,
    paused: bool,
    clashes: list[tuple[str, str]],
    generation: int | None,
    next_run: dt.datetime | None,
    dry_run: bool = False,
) -> list[Condition]:
    out = [cast(Condition, dict(c)) for c in previous or ()]
    if assessment.ready:
        when = f"next run at {format_time(next_run)}" if next_run else "no run in 50 years"
        holds = "paused" if paused else "dry run" if dry_run else ""
        message = (f"{holds}: creates no backups; " if holds else "") + when
        out = set_condition(out, "Ready", True, "Scheduled", message, generation)
    else:
        reason, message = assessment.problems[0]
        message = "; ".join(m for _, m in assessment.problems) + ": creating no backups"
        out = set_condition(out, "Ready", False, reason, message, generation)
    if assessment.schedule_problem:
        reason, message = assessment.schedule_problem
        out = set_condition(out, "ScheduleValid", False, reason, message, generation)
    else:
        out = set_condition(out, "ScheduleValid", True, "Valid", "the schedule runs", generation)
    out = set_condition(
        out,
        "Paused",
        paused,
        "Paused" if paused else "Active",
        "spec.paused is set: no new backups" if paused else "backups are created",
        generation,
    )
    out = set_condition(
        out,
        "DryRun",
        dry_run,
        "DryRun" if dry_run else "Live",
        "spec.dryRun is set: creates no backups, status.plan and status.failsafe say what "
        "it would back up"
        if dry_run
        else "backups are created",
        generation,
    )
    if assessment.copies is None:
        out = [c for c in out if c.get("type") != targets.CONDITION]
    elif assessment.copies.problems:
        problems = assessment.copies.problems
        message = "; ".join(m for _, m in problems) + ": nothing is copied there"
        out = set_condition(out, targets.CONDITION, False, problems[0][0], message, generation)
    else:
        names = ", ".join(t.repository for t in assessment.copies.targets)
        out = set_condition(
            out, targets.CONDITION, True, "Valid", f"backups are copied to {names}", generation
        )
    if assessment.verification is None:
        out = [c for c in out if c.get("type") != VERIFICATION_CONDITION]
    else:
        ok, reason, message = assessment.verification
        out = set_condition(out, VERIFICATION_CONDITION, ok, reason, message, generation)
    if clashes:
        out = set_condition(
            out,
            "Consistent",
            False,
            clashes[0][0],
            "; ".join(m for _, m in clashes),
            generation,
        )
    else:
        out = set_condition(
            out, "Consistent", True, "NoConflict", "no conflict with other policies", generation
        )
    return standing_conditions(out, generation)


def standing(
    policy: Mapping[str, Any],
    assessment: Assessment,
    now: dt.datetime,
    clashes: list[tuple[str, str]],
) -> dict[str, Any]:
    """Pure: what the judgement alone decides of the policy's status (no backup read):
    ``observedGeneration``, the conditions and ``nextScheduleTime``; the part of
    :func:`status` a pass writes before its vCenter's first sweep (``runs.py``)."""
    meta, spec = policy["metadata"], policy.get("spec") or {}
    previous = (policy.get("status") or {}).get("conditions")
    paused = bool(spec.get("paused"))
    dry_run = bool(spec.get("dryRun"))
    next_run = assessment.schedule.next_after(now) if assessment.schedule else None
    return {
        "observedGeneration": meta.get("generation"),
        "conditions": conditions(
            previous, assessment, paused, clashes, meta.get("generation"), next_run, dry_run
        ),
        # A policy that cannot act has no next run: null removes a stale one.
        "nextScheduleTime": format_time(next_run)
        if next_run and assessment.ready and not paused
        else None,
    }


def status(
    policy: Mapping[str, Any],
    assessment: Assessment,
    now: dt.datetime,
    last_schedule: dt.datetime | None,
    history: BackupHistory,
    vms: list[str] | None,
    clashes: list[tuple[str, str]],
    rpo_now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The policy's status (all but ``matchedVMs``), pure. ``now`` is on the schedule's
    line, ``rpo_now`` on the clock completions were stamped with (controller/kube/timing.py;
    both the same instant unless the lab speeds schedules up)."""
    spec = policy.get("spec") or {}
    paused, dry_run = bool(spec.get("paused")), bool(spec.get("dryRun"))
    next_run = assessment.schedule.next_after(now) if assessment.schedule else None
    out = standing(policy, assessment, now, clashes)
    if last_schedule is not None:
        out["lastScheduleTime"] = format_time(last_schedule)
        out["lastRun"] = {
            "time": format_time(last_schedule),
            **history.run_counts(run_label(last_schedule)),
        }
    # A dry run's plan; null removes it once the policy runs for real.
    out["plan"] = None
    if dry_run and assessment.ready and not paused and vms is not None:
        out["plan"] = {"nextRunTime": format_time(next_run) if next_run else None, "vms": len(vms)}
    success = history.last_success()
    if success is not None:
        out["lastSuccessfulTime"] = format_time(success)
    if vms is not None and assessment.rpo is not None:
        out["vmsOutsideRPO"] = history.outside_rpo(vms, rpo_now or now, assessment.rpo)
    return out
