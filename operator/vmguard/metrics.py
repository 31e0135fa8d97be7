"""Prometheus metrics of the operator (prefix ``vmguard_``), served on ``/metrics``.

One :class:`Metrics` object per operator process holds its own ``CollectorRegistry``
(nothing is registered in prometheus-client's global one); ``vmguard operator`` makes
it, serves it with :meth:`Metrics.serve` and hands it to the handlers through kopf's
memo. Controllers call the small ``observe_*`` methods with what they already have (a
VCenter's status, a VMGuardBackup object, a repository's status) and the ``forget_*`` ones
when an object goes away, so no series outlives what it describes.

Label sets (documented in ``docs/observability.md``, which lists every family):

- per vCenter: ``namespace, vcenter``; per repository: ``namespace, repository``;
- per policy: ``namespace, vcenter, policy`` (backup counters, bytes, durations);
- per VM: ``namespace, vcenter, policy, vm, vm_uuid`` (``vm`` is the VM's name, free
  text; ``vm_uuid`` its instance UUID — or its moref when the UUID is unknown — which
  stays put when the VM is renamed). A VM seen under a new name or policy drops its
  old series.

Invariants:

- Counters and the duration histogram count backups whose ``completionTime`` is at or
  after this process started, each VMGuardBackup (by UID) once. A restarted operator that
  resyncs ten thousand finished backups must not make ``increase()`` see ten thousand
  new ones; what is needed across restarts is in the per-VM gauges instead. VMGuardBackups
  recreated by catalog sync (``vmguard.io/synced``) are never counted, only gauged.
- Per-VM "last" values come from the VM's most recently *completed* backup, whatever
  order the objects are observed in.
- Ages and the RPO verdict are computed when Prometheus scrapes, from timestamps, so
  they are right even when nothing was observed for a while.
- ``vmguard_build_info{version}`` is 1 from construction on and never removed: the
  alerts read its absence as "the operator is gone".
- Callers run on kopf's event loop, scrapes on the HTTP server's thread: the per-VM
  and snapshot tables are guarded by one lock.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from vmguard import __version__
from vmguard.api import BACKUP_TERMINAL, LABEL_SYNCED, SYNCED, BackupPhase, parse_time

PREFIX = "vmguard_"
VCENTER_LABELS = ("namespace", "vcenter")
REPOSITORY_LABELS = ("namespace", "repository")
POLICY_LABELS = ("namespace", "vcenter", "policy")
VM_LABELS = ("namespace", "vcenter", "policy", "vm", "vm_uuid")
SNAPSHOT_LABELS = ("namespace", "vcenter", "vm", "snapshot")
# Backups take seconds (a tiny incremental) to a day (a first full of a large VM).
DURATION_BUCKETS = (30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)


def epoch_seconds(text: str | None) -> float | None:
    """A time from a status (``2025-01-01T04:00:00Z``) → Unix seconds; None if unreadable."""
    at = parse_time(text)
    return at.timestamp() if at is not None else None


@dataclass
class VMState:
    """What the per-VM families report for one VM."""

    labels: tuple[str, ...]
    first_seen: float
    rpo_seconds: float | None = None
    last_success: float | None = None
    last_finish: float | None = None
    last_failed: bool = False
    change_ratio: float | None = None
    compressibility: float | None = None


class _ScrapeTimeCollector(Collector):
    """Per-VM and per-snapshot families, computed from the tables at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        m = self.metrics
        now = m.clock()
        with m.lock:
            vms = list(m.vms.values())
            snapshots = dict(m.snapshots)

        def family(name: str, doc: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))

        last_success = family(
            "vm_last_successful_backup_timestamp_seconds",
            "Completion time of the VM's last Completed backup (Unix seconds).",
            VM_LABELS,
        )
        rpo = family("vm_rpo_seconds", "The RPO the VM's policy allows.", VM_LABELS)
        breached = family(
            "vm_rpo_breached",
            "1 when the VM's last good backup (or, never backed up, its discovery) is older "
            "than its RPO.",
            VM_LABELS,
        )
        failed = family(
            "vm_last_backup_failed",
            "1 when the VM's most recent finished backup Failed.",
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
        for vm in vms:
            labels = list(vm.labels)
            if vm.last_success is not None:
                last_success.add_metric(labels, vm.last_success)
            if vm.rpo_seconds is not None:
                rpo.add_metric(labels, vm.rpo_seconds)
                since = vm.last_success if vm.last_success is not None else vm.first_seen
                breached.add_metric(labels, 1.0 if now - since > vm.rpo_seconds else 0.0)
            if vm.last_finish is not None:
                failed.add_metric(labels, 1.0 if vm.last_failed else 0.0)
            if vm.change_ratio is not None:
                change.add_metric(labels, vm.change_ratio)
            if vm.compressibility is not None:
                compress.add_metric(labels, vm.compressibility)
        age = family(
            "snapshot_age_seconds",
            "Age of a vSphere snapshot vmguard created and has not removed yet.",
            SNAPSHOT_LABELS,
        )
        for labels_, created in sorted(snapshots.items()):
            age.add_metric(list(labels_), max(0.0, now - created))
        yield from (last_success, rpo, breached, failed, change, compress, age)


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
        self.proxy_jobs = gauge(
            "proxy_jobs_running",
            "Proxy Jobs running, by kind (backup, restore).",
            ("namespace", "kind"),
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

    # ---- VMs and backups -----------------------------------------------------------

    def _vm(self, namespace: str, vcenter: str, policy: str, vm: dict[str, Any]) -> VMState:
        """The VM's state, re-labelled if its name or policy changed (lock held)."""
        ident = str(vm.get("instanceUuid") or vm.get("moref") or vm.get("name") or "")
        labels = (namespace, vcenter, policy, str(vm.get("name") or ident), ident)
        key = (namespace, vcenter, ident)
        state = self.vms.get(key)
        if state is None:
            state = self.vms[key] = VMState(labels, first_seen=self.clock())
        state.labels = labels
        return state

    def observe_vm(
        self,
        namespace: str,
        vcenter: str,
        policy: str,
        vm: dict[str, Any],
        rpo_seconds: float,
    ) -> None:
        """A VM and the RPO of its effective policy (from the policy controller).

        ``vm`` is ``{instanceUuid, moref, name}`` as in a VMGuardBackup's ``spec.vm``. A VM
        never backed up counts as breached once ``rpo_seconds`` passed since it was
        first observed here.
        """
        with self.lock:
            self._vm(namespace, vcenter, policy, vm).rpo_seconds = float(rpo_seconds)

    def forget_vm(self, namespace: str, vcenter: str, vm: dict[str, Any]) -> None:
        ident = str(vm.get("instanceUuid") or vm.get("moref") or vm.get("name") or "")
        with self.lock:
            self.vms.pop((namespace, vcenter, ident), None)

    def observe_backup(self, backup: dict[str, Any]) -> None:
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

        uid = str(meta.get("uid") or "")
        # A VMGuardBackup recreated by catalog sync is an old backup under a new UID: counting
        # it would count a backup twice (or one this process never saw run); its time
        # still feeds the per-VM last-success gauges below.
        synced = (meta.get("labels") or {}).get(LABEL_SYNCED) == SYNCED
        if uid and not synced and uid not in self._counted and finished >= self.started:
            self._counted.add(uid)
            labels = (namespace, vcenter, policy)
            self.backups.labels(*labels, outcome).inc()
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
            state.last_success = finished
            capacity = int(totals.get("capacityBytes") or 0)
            changed = totals.get("bytesChanged")
            state.change_ratio = (
                int(changed) / capacity if capacity and changed is not None else None
            )
            compressibility = totals.get("compressibility")
            state.compressibility = float(compressibility) if compressibility is not None else None

    # ---- repositories, snapshots, proxy Jobs ---------------------------------------

    def observe_repository(self, namespace: str, repository: str, status: dict[str, Any]) -> None:
        """A VMGuardRepository's status (as its controller wrote it)."""
        labels = (namespace, repository)
        self.repository_reachable.labels(*labels).set(1 if status.get("reachable") else 0)
        for gauge, key in (
            (self.repository_stored, "storedBytes"),
            (self.repository_logical, "logicalBytes"),
            (self.repository_dedup, "dedupRatio"),
            (self.repository_archives, "archives"),
        ):
            if status.get(key) is not None:
                gauge.labels(*labels).set(float(status[key]))

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

    def observe_proxy_jobs(self, namespace: str, kind: str, running: int) -> None:
        """How many proxy Jobs of ``kind`` (``backup`` or ``restore``) run in ``namespace``."""
        self.proxy_jobs.labels(namespace, kind).set(running)


def _label_sets(metric: Gauge | Counter) -> list[tuple[str, ...]]:
    """The label values of every series ``metric`` has (prometheus_client keeps them in
    ``_metrics``; it offers no public listing)."""
    return [tuple(k) for k in metric._metrics]


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never observed: nothing to drop
        metric.remove(*labels)
