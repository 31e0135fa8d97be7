"""Prometheus metrics of the operator (prefix ``vmguard_``), served on ``/metrics``.

One :class:`Metrics` object per operator process holds its own ``CollectorRegistry``
(nothing is registered in prometheus-client's global one); ``vmguard operator`` makes
it, serves it with :meth:`Metrics.serve` and hands it to the handlers through kopf's
memo. Controllers call the small ``observe_*`` methods with what they already have (a
VCenter's status, a policy's VMs and their history, a VMGuardBackup or VMGuardRestore object, a
repository's status) and the ``forget_*`` ones when an object goes away, so no series
outlives what it describes.

Label sets (documented in ``docs/observability.md``, which lists every family):

- per vCenter: ``namespace, vcenter``; per repository: ``namespace, repository``;
- per policy: ``namespace, vcenter, policy``;
- per VM: ``namespace, vcenter, policy, vm_uuid`` (the instance UUID — or the moref when
  the UUID is unknown — which stays put when the VM is renamed). The VM's name and moref
  are on ``vmguard_vm_info`` only, joined on those four labels; a VM seen under a new
  name or policy drops its old series.

The per-VM budget (docs/observability.md, "The metrics budget"): :data:`VM_FAMILIES` are
the only families with a series per VM — three that alerts need and the ``_info``
series; everything else is per policy, vCenter or repository. ``tests/test_metrics_budget.py``
counts the series of N VMs through this module and fails past :data:`VM_SERIES_BUDGET`.

Invariants:

- Counters and the duration histogram count backups and restores whose
  ``completionTime`` is at or after this process started, each object (by UID) once. A
  restarted operator that resyncs ten thousand finished backups must not make
  ``increase()`` see ten thousand new ones; what is needed across restarts is in the
  gauges instead, rebuilt from the objects (each policy's scheduler hands its VMs' last
  success and last outcome to :meth:`Metrics.observe_policy` on every pass). VMGuardBackups
  recreated by catalog sync (``vmguard.io/synced``) are never counted, only gauged.
- Per-VM "last" values come from the VM's most recently *finished* backup, whatever
  order the objects are observed in.
- Deadlines, ages, the RPO counts and the counts of VMs without a verified point
  within the policy's allowance are computed when Prometheus scrapes, from timestamps,
  so they are right even when nothing was observed for a while.
- ``vmguard_build_info{version}`` is 1 from construction on and never removed: the
  alerts read its absence as "the operator is gone".
- Callers run on kopf's event loop, scrapes on the HTTP server's thread: the per-VM,
  per-policy and snapshot tables are guarded by one lock.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from vmguard import __version__
from vmguard.api import (
    BACKUP_TERMINAL,
    LABEL_SYNCED,
    PROXY_FAILURE_REASONS,
    RESTORE_TERMINAL,
    SYNCED,
    BackupPhase,
    RestorePhase,
    VerificationResult,
    parse_time,
)

PREFIX = "vmguard_"
VCENTER_LABELS = ("namespace", "vcenter")
REPOSITORY_LABELS = ("namespace", "repository")
POLICY_LABELS = ("namespace", "vcenter", "policy")
VM_LABELS = ("namespace", "vcenter", "policy", "vm_uuid")
VM_INFO_LABELS = (*VM_LABELS, "vm", "moref")
SNAPSHOT_LABELS = ("namespace", "vcenter", "vm", "snapshot")
# Backups take seconds (a tiny incremental) to a day (a first full of a large VM).
DURATION_BUCKETS = (30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)

VM_FAMILIES = (
    "vm_info",
    "vm_backup_deadline_timestamp_seconds",
    "vm_last_backup_change_ratio",
    "vm_last_backup_compressibility",
)
"""Every family with a series per VM (without the prefix): the ``_info`` series that
carries the VM's name and moref, and the three the alerts judge a VM by."""
VM_SERIES_BUDGET = len(VM_FAMILIES)
"""Series per VM, at most: a new per-VM family needs a new budget, argued in the docs."""


def epoch_seconds(text: str | None) -> float | None:
    """A time from a status (``2025-01-01T04:00:00Z``) → Unix seconds; None if unreadable."""
    at = parse_time(text)
    return at.timestamp() if at is not None else None


def vm_ident(vm: Mapping[str, Any]) -> str:
    """The key of a VM: its instance UUID, else its moref, else its name."""
    return str(vm.get("instanceUuid") or vm.get("moref") or vm.get("name") or "")


@dataclass
class VMState:
    """What the per-VM families report for one VM."""

    labels: tuple[str, str, str, str]
    """``VM_LABELS``' values: namespace, vCenter, policy, vm_uuid."""
    name: str
    moref: str
    first_seen: float
    last_success: float | None = None
    first_success: float | None = None
    """Completion of the VM's oldest Completed backup still known (Unix seconds)."""
    last_finish: float | None = None
    last_failed: bool = False
    change_ratio: float | None = None
    compressibility: float | None = None
    verified: float | None = None
    """When the VM's newest verification ended (Unix seconds)."""
    verification: str | None = None
    """That verification's result (VerificationResult)."""
    passed: float | None = None
    """When the VM's newest verification that Passed ended (Unix seconds)."""

    def verify(self, at: float | None, result: str | None) -> None:
        """Take a verification that ended at ``at``: the VM's newest if it is newer, its
        newest that passed if it passed and is newer."""
        if at is None or not result:
            return
        if result == VerificationResult.PASSED and (self.passed is None or at > self.passed):
            self.passed = at
        if self.verified is None or at >= self.verified:
            self.verified, self.verification = at, result

    def succeeded(self, at: float) -> None:
        """A Completed backup of the VM at ``at``: its last and first success follow."""
        if self.last_success is None or at > self.last_success:
            self.last_success = at
        if self.first_success is None or at < self.first_success:
            self.first_success = at

    def verification_deadline(self, allowance_seconds: float) -> float | None:
        """When the VM runs out of a verified point: its newest passed verification (never
        passed: its oldest completed backup) plus the allowance; None for a VM never
        backed up, which has no point to verify (VmguardBackupMissing's case)."""
        since = self.passed if self.passed is not None else self.first_success
        return since + allowance_seconds if since is not None else None

    def deadline(self, rpo_seconds: float) -> float:
        """When the VM's RPO runs out: its last good backup (never backed up: its first
        sighting, one RPO of grace) plus the RPO."""
        since = self.last_success if self.last_success is not None else self.first_seen
        return since + rpo_seconds


@dataclass
class PolicyState:
    """One policy as its scheduler last reported it."""

    vcenter: str
    repository: str
    rpo_seconds: float | None
    in_progress: dict[str, int] = field(default_factory=dict)
    copies: dict[str, tuple[float | None, float]] = field(default_factory=dict)
    """Copy target -> (completion of the oldest point not copied there yet, or None;
    the lag the policy allows: its RPO plus the target's delay)."""
    verification_allowance: float | None = None
    """How long a VM may go without a passed verification (None: the policy verifies
    nothing; docs/verification.md, "The allowance")."""


@dataclass(frozen=True)
class PolicyVM:
    """One VM of a policy and what the policy's VMGuardBackups say of it."""

    vm: Mapping[str, Any]
    """``{instanceUuid, moref, name}`` as in a VMGuardBackup's ``spec.vm``."""
    last_success: float | None = None
    """Completion of its newest Completed backup (Unix seconds)."""
    last_finish: float | None = None
    """Completion of its newest finished (Completed or Failed) backup."""
    last_failed: bool = False
    """Whether that newest finished backup Failed."""
    last_verification: tuple[float, str] | None = None
    """(when it ended, its result) of the VM's newest verification the policy's backups
    (and points) record."""
    last_passed: float | None = None
    """When the VM's newest verification that Passed ended."""
    first_success: float | None = None
    """Completion of its oldest Completed backup the policy still holds."""


class _ScrapeTimeCollector(Collector):
    """Per-VM, per-policy and per-snapshot families, computed from the tables at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        m = self.metrics
        now = m.clock()
        with m.lock:
            vms = list(m.vms.values())
            policies = dict(m.policies)  # replaced whole by observe_policy, never changed
            snapshots = dict(m.snapshots)

        def family(name: str, doc: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))

        info = family(
            "vm_info",
            "1 for every VM the operator judges; carries its name and moref (join on "
            "namespace, vcenter, policy, vm_uuid).",
            VM_INFO_LABELS,
        )
        deadline = family(
            "vm_backup_deadline_timestamp_seconds",
            "When the VM's RPO runs out: its last good backup (never backed up: its first "
            "sighting) plus its policy's RPO (Unix seconds).",
            VM_LABELS,
        )
        change = family(
            "vm_last_backup_change_ratio",
            "Bytes CBT reported changed ÷ disk capacity, in the VM's last completed backup.",
            VM_LABELS,
        )
        compress = family(
            "vm_last_backup_compressibility",
            "Stored ÷ plaintext size of the changed data in the VM's last completed backup "
            "(near 1: incompressible, e.g. encrypted).",
            VM_LABELS,
        )
        per_policy: dict[tuple[str, str, str], Tally[str]] = {}
        next_due: dict[tuple[str, str, str], float] = {}
        next_check: dict[tuple[str, str, str], float] = {}
        for vm in vms:
            labels = list(vm.labels)
            info.add_metric([*labels, vm.name, vm.moref], 1.0)
            namespace, vcenter, policy, _ = vm.labels
            tally = per_policy.setdefault((namespace, vcenter, policy), Tally())
            tally["vms"] += 1
            tally["failed"] += vm.last_failed
            if vm.verification:
                tally[f"verified:{vm.verification}"] += 1
            state = policies.get((namespace, policy))
            if state is not None and state.rpo_seconds is not None:
                due = vm.deadline(state.rpo_seconds)
                deadline.add_metric(labels, due)
                tally["outside"] += now > due
                if due >= now:
                    key = (namespace, vcenter, policy)
                    next_due[key] = min(due, next_due.get(key, due))
            if state is not None and state.verification_allowance is not None:
                check = vm.verification_deadline(state.verification_allowance)
                if check is not None:
                    tally["unverified"] += now > check
                    if check >= now:
                        key = (namespace, vcenter, policy)
                        next_check[key] = min(check, next_check.get(key, check))
            if vm.change_ratio is not None:
                change.add_metric(labels, vm.change_ratio)
            if vm.compressibility is not None:
                compress.add_metric(labels, vm.compressibility)
        yield from (info, deadline, change, compress)
        yield from self._policies(policies, per_policy, next_due, family)
        yield from self._verification(policies, per_policy, next_check, family)
        yield from self._copies(policies, now, family)
        age = family(
            "snapshot_age_seconds",
            "Age of a vSphere snapshot vmguard created and has not removed yet.",
            SNAPSHOT_LABELS,
        )
        for labels_, created in sorted(snapshots.items()):
            age.add_metric(list(labels_), max(0.0, now - created))
        yield age

    @staticmethod
    def _copies(
        policies: dict[tuple[str, str], PolicyState],
        now: float,
        family: Callable[[str, str, tuple[str, ...]], GaugeMetricFamily],
    ) -> Iterator[GaugeMetricFamily]:
        labels = (*POLICY_LABELS, "repository")
        lag = family(
            "policy_copy_lag_seconds",
            "How long the oldest completed backup of the policy not yet copied to the copy "
            "target has been waiting (0: every point is there).",
            labels,
        )
        allowance = family(
            "policy_copy_allowance_seconds",
            "The copy lag the policy allows: its RPO plus the copy target's delay.",
            labels,
        )
        for (namespace, name), state in sorted(policies.items()):
            for repository, (oldest, allowed) in sorted(state.copies.items()):
                key = [namespace, state.vcenter, name, repository]
                lag.add_metric(key, max(0.0, now - oldest) if oldest is not None else 0.0)
                allowance.add_metric(key, allowed)
        yield from (lag, allowance)

    @staticmethod
    def _verification(
        policies: dict[tuple[str, str], PolicyState],
        per_policy: dict[tuple[str, str, str], Tally[str]],
        next_check: dict[tuple[str, str, str], float],
        family: Callable[[str, str, tuple[str, ...]], GaugeMetricFamily],
    ) -> Iterator[GaugeMetricFamily]:
        """Per policy that verifies: its allowance, its VMs past it, and the earliest
        deadline still ahead (what the alerts judge it by while the operator is gone)."""
        allowance = family(
            "policy_verification_allowance_seconds",
            "How long a VM of the policy may go without a verification that passed: twice "
            "the longest gap of verification.every's cron line, or the RPO plus the "
            "schedule's longest gap when each backup is verified.",
            POLICY_LABELS,
        )
        unverified = family(
            "policy_vms_unverified",
            "VMs of the policy whose newest passed verification (never passed: their oldest "
            "completed backup) is older than the policy's verification allowance.",
            POLICY_LABELS,
        )
        upcoming = family(
            "policy_next_verification_deadline_timestamp_seconds",
            "The earliest time a VM of the policy still within its verification allowance "
            "runs out of it (Unix seconds).",
            POLICY_LABELS,
        )
        for (namespace, name), state in sorted(policies.items()):
            if state.verification_allowance is None:
                continue
            key = (namespace, state.vcenter, name)
            allowance.add_metric(list(key), state.verification_allowance)
            unverified.add_metric(list(key), per_policy.get(key, Tally())["unverified"])
            if key in next_check:
                upcoming.add_metric(list(key), next_check[key])
        yield from (allowance, unverified, upcoming)

    @staticmethod
    def _policies(
        policies: dict[tuple[str, str], PolicyState],
        per_policy: dict[tuple[str, str, str], Tally[str]],
        next_due: dict[tuple[str, str, str], float],
        family: Callable[[str, str, tuple[str, ...]], GaugeMetricFamily],
    ) -> Iterator[GaugeMetricFamily]:
        info = family(
            "policy_info",
            "1 for every policy; names the repository its backups go to.",
            (*POLICY_LABELS, "repository"),
        )
        rpo = family("policy_rpo_seconds", "The RPO the policy allows.", POLICY_LABELS)
        count = family("policy_vms", "VMs of the policy the operator judges.", POLICY_LABELS)
        outside = family(
            "policy_vms_outside_rpo",
            "VMs of the policy whose backup deadline (vmguard_vm_backup_deadline_timestamp_"
            "seconds) has passed.",
            POLICY_LABELS,
        )
        upcoming = family(
            "policy_next_backup_deadline_timestamp_seconds",
            "The earliest deadline among the policy's VMs still within their RPO: what the "
            "alerts judge the policy by while the operator is gone (Unix seconds).",
            POLICY_LABELS,
        )
        failed = family(
            "policy_vms_last_backup_failed",
            "VMs of the policy whose most recent finished backup Failed.",
            POLICY_LABELS,
        )
        verified = family(
            "policy_vms_last_verification",
            "VMs of the policy by the result of their newest verification (Passed, Failed, "
            "Infected, Error); VMs never verified are not counted.",
            (*POLICY_LABELS, "result"),
        )
        queued = family(
            "policy_backups_in_progress",
            "The policy's VMGuardBackups not finished yet, by phase (Pending: waiting to start).",
            (*POLICY_LABELS, "phase"),
        )
        keys = {(ns, p.vcenter, name) for (ns, name), p in policies.items()} | set(per_policy)
        for key in sorted(keys):
            namespace, vcenter, name = key
            tally = per_policy.get(key, Tally())
            state = policies.get((namespace, name))
            if state is not None and state.vcenter != vcenter:
                state = None  # VMs still labelled with the policy's former vCenter
            labels = list(key)
            count.add_metric(labels, tally["vms"])
            failed.add_metric(labels, tally["failed"])
            for result in VerificationResult:
                verified.add_metric([*labels, result.value], tally[f"verified:{result}"])
            if state is None:
                continue
            info.add_metric([*labels, state.repository], 1.0)
            if state.rpo_seconds is not None:
                rpo.add_metric(labels, state.rpo_seconds)
                outside.add_metric(labels, tally["outside"])
                if key in next_due:
                    upcoming.add_metric(labels, next_due[key])
            for phase in (p for p in BackupPhase if p not in BACKUP_TERMINAL):
                queued.add_metric([*labels, phase.value], state.in_progress.get(phase, 0))
        yield from (info, rpo, count, outside, upcoming, failed, verified, queued)


class Metrics:
    """The operator's metric families and the ``observe_*`` calls that feed them."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock
        self.started = clock()
        self.lock = threading.Lock()
        self.vms: dict[tuple[str, str, str], VMState] = {}
        self.policies: dict[tuple[str, str], PolicyState] = {}
        self.snapshots: dict[tuple[str, str, str, str], float] = {}
        self._counted: set[str] = set()
        r = self.registry

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=r)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=r)

        self.vms_discovered = gauge("vms_discovered", "VMs the last sweep found.", VCENTER_LABELS)
        self.vms_protected = gauge("vms_protected", "VMs with an effective policy.", VCENTER_LABELS)
        self.vms_protected_by_default = gauge(
            "vms_protected_by_default",
            "VMs whose effective policy is the default (fail-safe) one.",
            VCENTER_LABELS,
        )
        self.vms_unprotected = gauge(
            "vms_unprotected", "VMs no policy selects and no default catches.", VCENTER_LABELS
        )
        self.vms_consolidation_needed = gauge(
            "vms_consolidation_needed",
            "VMs for which vSphere reports consolidationNeeded (delta disks left behind).",
            VCENTER_LABELS,
        )
        self.vcenter_reachable = gauge(
            "vcenter_reachable", "1 when the last sweep reached the vCenter.", VCENTER_LABELS
        )
        self.vcenter_last_sweep = gauge(
            "vcenter_last_sweep_timestamp_seconds",
            "When the last successful sweep finished (Unix seconds).",
            VCENTER_LABELS,
        )
        self.vcenter_sweeps = counter(
            "vcenter_sweeps", "Sweeps, by result (ok, failed).", (*VCENTER_LABELS, "result")
        )
        self.backups = counter(
            "backups", "Finished backups, by outcome.", (*POLICY_LABELS, "outcome")
        )
        self.backup_failures = counter(
            "backup_failures",
            "Failed backups, by the reason in their status.error.",
            (*POLICY_LABELS, "reason"),
        )
        self.backup_duration = Histogram(
            PREFIX + "backup_duration_seconds",
            "Duration of finished backups.",
            POLICY_LABELS,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.bytes_read = counter(
            "backup_read_bytes", "Bytes read from vSphere by finished backups.", POLICY_LABELS
        )
        self.bytes_changed = counter(
            "backup_changed_bytes", "Bytes CBT reported changed in finished backups.", POLICY_LABELS
        )
        self.bytes_uploaded = counter(
            "backup_uploaded_bytes",
            "Bytes written to the repository (compressed, new chunks) by finished backups.",
            POLICY_LABELS,
        )
        self.verifications = counter(
            "verifications",
            "Verifications of backups that ended, by result (Passed, Failed, Infected, Error).",
            (*POLICY_LABELS, "result"),
        )
        self.boot_recovery = Histogram(
            PREFIX + "boot_test_recovery_seconds",
            "Recovery time measured by boot tests that passed: from the start of the "
            "temporary VM's restore to its check script's success (docs/verification.md).",
            POLICY_LABELS,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.restores = counter(
            "restores", "Finished restores, by outcome.", ("namespace", "outcome")
        )
        self.restore_failures = counter(
            "restore_failures",
            "Failed restores, by the reason in their status.error.",
            ("namespace", "reason"),
        )
        self.proxy_failures = counter(
            "proxy_failures",
            "Backups and restores failed because their proxy Job's pod could not run or "
            "died without a word, by kind (backup, restore) and reason.",
            ("namespace", "kind", "reason"),
        )
        self.repository_checks = counter(
            "repository_checks",
            "Checks of the repository (opened and compared with its spec), by the reason of "
            "the Ready condition they set: Ready, or why it is not.",
            (*REPOSITORY_LABELS, "reason"),
        )
        self.repository_reachable = gauge(
            "repository_reachable", "1 when the repository answered.", REPOSITORY_LABELS
        )
        self.repository_stored = gauge(
            "repository_stored_bytes", "Bytes the repository's objects take.", REPOSITORY_LABELS
        )
        self.repository_logical = gauge(
            "repository_logical_bytes",
            "Bytes of disk data the archives describe (before dedup and compression).",
            REPOSITORY_LABELS,
        )
        self.repository_dedup = gauge(
            "repository_dedup_ratio", "Logical ÷ stored bytes.", REPOSITORY_LABELS
        )
        self.repository_archives = gauge(
            "repository_archives", "Archives (backup points) in the repository.", REPOSITORY_LABELS
        )
        self.repository_verify_errors = gauge(
            "repository_verify_errors",
            "Damaged chunks and unreadable archives the last verify found (a deep verify "
            "reads every chunk).",
            REPOSITORY_LABELS,
        )
        self.repository_last_verify = gauge(
            "repository_last_verify_timestamp_seconds",
            "When the last verify that ran to its end finished (Unix seconds).",
            REPOSITORY_LABELS,
        )
        self.crd_outdated = gauge(
            "crd_outdated",
            "1 when the installed CRD is not the one this operator was built with (checked "
            "at start: vmguard.controller.kube.crdcheck), else 0.",
            ("crd",),
        )
        # Always 1 and always exported, from the first scrape on: the alerts tell "the
        # operator is gone" from "nothing to report" by its absence (docs/runbooks.md).
        self.build_info = gauge("build_info", "Always 1; the operator's version.", ("version",))
        self.build_info.labels(__version__).set(1)
        self.registry.register(_ScrapeTimeCollector(self))

    # ---- serving -------------------------------------------------------------------

    def serve(self, port: int, address: str = "0.0.0.0") -> Any:
        """Serve ``/metrics`` from a daemon thread; returns the server (``.shutdown()``)."""
        server, _ = start_http_server(port, addr=address, registry=self.registry)
        return server

    def exposition(self) -> str:
        """The text format, as a scrape returns it."""
        return generate_latest(self.registry).decode()

    def observe_crd(self, crd: str, outdated: bool) -> None:
        self.crd_outdated.labels(crd).set(1 if outdated else 0)

    # ---- vCenter sweeps ------------------------------------------------------------

    def observe_sweep(self, namespace: str, vcenter: str, status: dict[str, Any]) -> None:
        """A sweep's outcome: the ``status`` it wrote to the VCenter."""
        labels = (namespace, vcenter)
        reachable = bool(status.get("reachable"))
        self.vcenter_reachable.labels(*labels).set(1 if reachable else 0)
        self.vcenter_sweeps.labels(*labels, "ok" if reachable else "failed").inc()
        if not reachable:
            return  # keep the last known counts: the VMs did not go away
        vms = status.get("vms") or {}
        self.vms_discovered.labels(*labels).set(vms.get("discovered", 0))
        self.vms_protected.labels(*labels).set(vms.get("protected", 0))
        self.vms_protected_by_default.labels(*labels).set(vms.get("protectedByDefault", 0))
        self.vms_unprotected.labels(*labels).set(vms.get("unprotected", 0))
        self.vms_consolidation_needed.labels(*labels).set(vms.get("consolidationNeeded", 0))
        swept = epoch_seconds(status.get("lastSweepTime"))
        self.vcenter_last_sweep.labels(*labels).set(swept if swept is not None else self.clock())

    def forget_vcenter(self, namespace: str, vcenter: str) -> None:
        """The VCenter is gone, or this replica stopped acting for it (a peer of higher
        priority took over): drop every series of it, its VMs' and snapshots' included,
        so that a standby never reports stale counts or RPO breaches."""
        with self.lock:
            for key in [k for k in self.vms if k[:2] == (namespace, vcenter)]:
                del self.vms[key]
            for snap in [k for k in self.snapshots if k[:2] == (namespace, vcenter)]:
                del self.snapshots[snap]
        for g in (
            self.vms_discovered,
            self.vms_protected,
            self.vms_protected_by_default,
            self.vms_unprotected,
            self.vms_consolidation_needed,
            self.vcenter_reachable,
            self.vcenter_last_sweep,
        ):
            _remove(g, namespace, vcenter)
        for result in ("ok", "failed"):
            _remove(self.vcenter_sweeps, namespace, vcenter, result)

    # ---- policies, VMs and backups -------------------------------------------------

    def _vm(self, namespace: str, vcenter: str, policy: str, vm: Mapping[str, Any]) -> VMState:
        """The VM's state, re-labelled if its name or policy changed (lock held)."""
        ident = vm_ident(vm)
        key = (namespace, vcenter, ident)
        state = self.vms.get(key)
        if state is None:
            state = self.vms[key] = VMState(
                (namespace, vcenter, policy, ident), "", "", first_seen=self.clock()
            )
        state.labels = (namespace, vcenter, policy, ident)
        state.name = str(vm.get("name") or state.name or ident)
        state.moref = str(vm.get("moref") or state.moref)
        return state

    def observe_policy(
        self,
        namespace: str,
        vcenter: str,
        policy: str,
        *,
        repository: str,
        rpo_seconds: float | None,
        vms: Iterable[PolicyVM] | None,
        in_progress: Mapping[str, int] | None = None,
        copies: Mapping[str, tuple[float | None, float]] | None = None,
        verification_allowance_seconds: float | None = None,
    ) -> None:
        """A policy's scheduler pass: its repository and RPO, its VMs (from the latest
        sweep; None before the first) with what its VMGuardBackups say of each, and how many
        of its backups are in each unfinished phase; per copy target, the completion of
        the oldest point not copied there yet (None: none) and the lag allowed; how long
        a VM may go without a passed verification (None: the policy verifies nothing).

        The VMs listed become the policy's VMs: a VM of this policy not listed (deleted,
        or matched by another policy now) drops out. A VM's last success and outcome
        are merged with what :meth:`observe_backup` saw, the newest winning, so a
        restarted operator knows them before any backup finishes.
        """
        with self.lock:
            self.policies[(namespace, policy)] = PolicyState(
                vcenter,
                repository,
                rpo_seconds,
                dict(in_progress or {}),
                dict(copies or {}),
                verification_allowance_seconds,
            )
            if vms is None:
                return
            listed: set[str] = set()
            for item in vms:
                state = self._vm(namespace, vcenter, policy, item.vm)
                listed.add(vm_ident(item.vm))
                for success in (item.last_success, item.first_success):
                    if success is not None:
                        state.succeeded(success)
                if item.last_finish is not None and (
                    state.last_finish is None or item.last_finish > state.last_finish
                ):
                    state.last_finish, state.last_failed = item.last_finish, item.last_failed
                if item.last_verification is not None:
                    state.verify(*item.last_verification)
                if item.last_passed is not None and (
                    state.passed is None or item.last_passed > state.passed
                ):
                    state.passed = item.last_passed
            for key, state in list(self.vms.items()):
                ns, _, pol, ident = state.labels
                if ns == namespace and pol == policy and ident not in listed:
                    del self.vms[key]

    def forget_policy(self, namespace: str, policy: str) -> None:
        """The policy is gone, or this replica stopped acting for it: its series and its
        VMs' go."""
        with self.lock:
            self.policies.pop((namespace, policy), None)
            for key, state in list(self.vms.items()):
                if (state.labels[0], state.labels[2]) == (namespace, policy):
                    del self.vms[key]

    def forget_vm(self, namespace: str, vcenter: str, vm: Mapping[str, Any]) -> None:
        with self.lock:
            self.vms.pop((namespace, vcenter, vm_ident(vm)), None)

    def _counts(self, meta: Mapping[str, Any], finished: float) -> bool:
        """Whether a finished object is counted now: once per UID, finished since this
        process started, and not recreated by catalog sync (an old backup under a new
        UID: counting it would count a backup twice, or one this process never saw)."""
        uid = str(meta.get("uid") or "")
        synced = (meta.get("labels") or {}).get(LABEL_SYNCED) == SYNCED
        if not uid or synced or uid in self._counted or finished < self.started:
            return False
        self._counted.add(uid)
        return True

    def observe_backup(self, backup: Mapping[str, Any]) -> None:
        """A VMGuardBackup object (metadata, spec, status), typically on a phase change.

        Only finished backups (Completed, Failed) change anything.
        """
        meta, spec = backup.get("metadata") or {}, backup.get("spec") or {}
        status = backup.get("status") or {}
        outcome = status.get("phase")
        if outcome not in BACKUP_TERMINAL:
            return
        namespace = str(meta.get("namespace") or "")
        vcenter = str(status.get("vcenter") or (spec.get("vcenterRef") or {}).get("name") or "")
        policy = str((spec.get("policyRef") or {}).get("name") or "")
        vm = status.get("vm") or spec.get("vm") or {}
        finished = epoch_seconds(status.get("completionTime")) or self.clock()
        totals = status.get("totals") or {}

        if self._counts(meta, finished):
            labels = (namespace, vcenter, policy)
            self.backups.labels(*labels, outcome).inc()
            if outcome == BackupPhase.FAILED:
                reason = str((status.get("error") or {}).get("reason") or "Unknown")
                self.backup_failures.labels(*labels, reason).inc()
                if reason in PROXY_FAILURE_REASONS:
                    self.proxy_failures.labels(namespace, "backup", reason).inc()
            if status.get("durationSeconds") is not None:
                self.backup_duration.labels(*labels).observe(float(status["durationSeconds"]))
            self.bytes_read.labels(*labels).inc(int(totals.get("bytesRead") or 0))
            self.bytes_changed.labels(*labels).inc(int(totals.get("bytesChanged") or 0))
            self.bytes_uploaded.labels(*labels).inc(int(totals.get("bytesUploaded") or 0))

        with self.lock:
            state = self._vm(namespace, vcenter, policy, vm)
            if state.last_finish is not None and finished < state.last_finish:
                return  # an older backup observed late: the newer one stands
            state.last_finish = finished
            state.last_failed = outcome != BackupPhase.COMPLETED
            if outcome != BackupPhase.COMPLETED:
                return
            state.succeeded(finished)
            capacity = int(totals.get("capacityBytes") or 0)
            changed = totals.get("bytesChanged")
            state.change_ratio = (
                int(changed) / capacity if capacity and changed is not None else None
            )
            compressibility = totals.get("compressibility")
            state.compressibility = float(compressibility) if compressibility is not None else None

    def observe_verification(self, backup: Mapping[str, Any]) -> None:
        """A VMGuardBackup whose verification ended: counted once (by the backup's UID
        and the run), and the VM's newest verification if it is newer than what was seen."""
        meta, spec = backup.get("metadata") or {}, backup.get("spec") or {}
        status = backup.get("status") or {}
        v = status.get("verification") or {}
        result = str(v.get("result") or "")
        if v.get("phase") != "Completed" or not result:
            return
        namespace = str(meta.get("namespace") or "")
        vcenter = str(status.get("vcenter") or "")
        policy = str((spec.get("policyRef") or {}).get("name") or "")
        ended = epoch_seconds(v.get("time")) or self.clock()
        key = f"{meta.get('uid') or ''}/verification/{v.get('run') or 1}"
        if meta.get("uid") and ended >= self.started and key not in self._counted:
            self._counted.add(key)
            self.verifications.labels(namespace, vcenter, policy, result).inc()
            recovery = (v.get("boot") or {}).get("recoveryTimeSeconds")
            if recovery is not None:
                self.boot_recovery.labels(namespace, vcenter, policy).observe(float(recovery))
        with self.lock:
            self._vm(namespace, vcenter, policy, status.get("vm") or spec.get("vm") or {}).verify(
                ended, result
            )

    def observe_restore(self, restore: Mapping[str, Any]) -> None:
        """A VMGuardRestore object on a phase change: a finished one is counted, once."""
        meta, status = restore.get("metadata") or {}, restore.get("status") or {}
        outcome = status.get("phase")
        if outcome not in RESTORE_TERMINAL:
            return
        finished = epoch_seconds(status.get("completionTime")) or self.clock()
        if not self._counts(meta, finished):
            return
        namespace = str(meta.get("namespace") or "")
        self.restores.labels(namespace, outcome).inc()
        if outcome == RestorePhase.FAILED:
            reason = str((status.get("error") or {}).get("reason") or "Unknown")
            self.restore_failures.labels(namespace, reason).inc()
            if reason in PROXY_FAILURE_REASONS:
                self.proxy_failures.labels(namespace, "restore", reason).inc()

    # ---- repositories and snapshots ------------------------------------------------

    def observe_repository(
        self, namespace: str, repository: str, status: Mapping[str, Any]
    ) -> None:
        """A VMGuardRepository's status (as its controller wrote it; keys it lacks leave
        their gauges as they were)."""
        labels = (namespace, repository)
        if "reachable" in status:
            self.repository_reachable.labels(*labels).set(1 if status.get("reachable") else 0)
        for gauge, key in (
            (self.repository_stored, "storedBytes"),
            (self.repository_logical, "logicalBytes"),
            (self.repository_dedup, "dedupRatio"),
            (self.repository_archives, "archives"),
        ):
            if status.get(key) is not None:
                gauge.labels(*labels).set(float(status[key]))
        verified = status.get("lastVerify") or {}
        at = epoch_seconds(verified.get("time"))
        if at is not None:
            self.repository_last_verify.labels(*labels).set(at)
            self.repository_verify_errors.labels(*labels).set(int(verified.get("errors") or 0))

    def count_repository_check(self, namespace: str, repository: str, reason: str) -> None:
        """One check of a repository ended with Ready's ``reason``."""
        self.repository_checks.labels(namespace, repository, reason).inc()

    def forget_repository(self, namespace: str, repository: str) -> None:
        with self.lock:
            for labels in [
                k for k in _label_sets(self.repository_checks) if k[:2] == (namespace, repository)
            ]:
                _remove(self.repository_checks, *labels)
        for g in (
            self.repository_reachable,
            self.repository_stored,
            self.repository_logical,
            self.repository_dedup,
            self.repository_archives,
            self.repository_verify_errors,
            self.repository_last_verify,
        ):
            _remove(g, namespace, repository)

    def observe_snapshots(
        self, namespace: str, vcenter: str, snapshots: Iterable[tuple[str, str, float]]
    ) -> None:
        """Every snapshot of ours now present in the vCenter: ``(vm, snapshot name,
        creation time in Unix seconds)``; replaces what was reported before."""
        with self.lock:
            for key in [k for k in self.snapshots if k[:2] == (namespace, vcenter)]:
                del self.snapshots[key]
            for vm, name, created in snapshots:
                self.snapshots[(namespace, vcenter, vm, name)] = created


def _label_sets(metric: Gauge | Counter) -> list[tuple[str, ...]]:
    """The label values of every series ``metric`` has (prometheus_client keeps them in
    ``_metrics``; it offers no public listing)."""
    return [tuple(k) for k in metric._metrics]


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never observed: nothing to drop
        metric.remove(*labels)
