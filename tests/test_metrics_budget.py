"""The metrics budget (docs/observability.md, "The metrics budget"): at 5,000 VMs the
operator's /metrics must not be a series per VM and per fact.

An estate of N VMs is built through vmguard.metrics' own ``observe_*`` calls — every VM
in a policy with a completed backup (change ratio, compressibility) that was verified,
a tenth of them with a failed one after it, a repository verify, restores, the queue —
and its series are counted as a scrape returns them (``_created`` included: Prometheus stores them
too). Doubling the VMs may add at most ``VM_SERIES_BUDGET`` series per VM, only in the
per-VM families ``VM_FAMILIES``; nothing per policy, vCenter or repository may grow
with the VMs.
"""

from __future__ import annotations

from collections import Counter

import pytest

from vmguard.metrics import PREFIX, VM_FAMILIES, VM_SERIES_BUDGET, Metrics, PolicyVM

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
POLICIES, VCENTERS, REPOSITORIES, NAMESPACES = 50, 5, 5, 5
FAILURE_REASONS = ("RepositoryUnreachable", "SnapshotFailed", "ImagePullBackOff")


def _at(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def estate(vms: int) -> Metrics:
    """The operator's metrics for ``vms`` VMs spread over the policies."""
    m = Metrics(clock=lambda: NOW - 7200)  # started two hours ago
    for v in range(VCENTERS):
        ns = f"ns{v % NAMESPACES}"
        status = {"reachable": True, "vms": {"discovered": vms, "protected": vms}}
        m.observe_sweep(ns, f"vc{v}", status)
        m.observe_snapshots(ns, f"vc{v}", [(f"vm-{v}", "vmguard-1", NOW - 600)])
    for r in range(REPOSITORIES):
        verify = {"time": _at(NOW - 3600), "errors": 0}
        m.observe_repository(
            f"ns{r % NAMESPACES}",
            f"repo{r}",
            {"reachable": True, "storedBytes": 1, "archives": vms, "lastVerify": verify},
        )
        m.count_repository_check(f"ns{r % NAMESPACES}", f"repo{r}", "Ready")
    members: dict[int, list[PolicyVM]] = {p: [] for p in range(POLICIES)}
    for i in range(vms):
        members[i % POLICIES].append(
            PolicyVM({"instanceUuid": f"u-{i}", "moref": f"vm-{i}", "name": f"vm-{i:05d}"})
        )
    for p, listed in members.items():
        ns, vc = f"ns{p % NAMESPACES}", f"vc{p % VCENTERS}"
        m.observe_policy(
            ns,
            vc,
            f"policy{p}",
            repository=f"repo{p % REPOSITORIES}",
            rpo_seconds=86400,
            verification_allowance_seconds=2 * 86400,
            vms=listed,
            in_progress={"Pending": 3, "Transferring": 1},
        )
        for n, item in enumerate(listed):
            uuid = item.vm["instanceUuid"]
            done = {
                "metadata": {"namespace": ns, "uid": f"ok-{uuid}"},
                "spec": {"vm": item.vm, "policyRef": {"name": f"policy{p}"}},
                "status": {
                    "phase": "Completed",
                    "vcenter": vc,
                    "completionTime": _at(NOW - 3600),
                    "durationSeconds": 120,
                    "totals": {
                        "capacityBytes": 100,
                        "bytesRead": 10,
                        "bytesChanged": 5,
                        "bytesUploaded": 2,
                        "compressibility": 0.4,
                    },
                },
            }
            m.observe_backup(done)
            # Every point verified; one in seven found infected (verifications are
            # counted and gauged per policy, never per VM).
            result = "Infected" if n % 7 == 0 else "Passed"
            verified = {"phase": "Completed", "result": result, "time": _at(NOW - 1800)}
            m.observe_verification({**done, "status": {**done["status"], "verification": verified}})
            if n % 10 == 0:
                failed = {
                    "metadata": {"namespace": ns, "uid": f"failed-{uuid}"},
                    "spec": done["spec"],
                    "status": {
                        "phase": "Failed",
                        "vcenter": vc,
                        "completionTime": _at(NOW - 60),
                        "error": {"reason": FAILURE_REASONS[n % len(FAILURE_REASONS)]},
                    },
                }
                m.observe_backup(failed)
    for ns in range(NAMESPACES):
        for outcome, reason in (("Completed", None), ("Failed", "TargetExists")):
            status = {"phase": outcome, "completionTime": _at(NOW - 60)}
            if reason:
                status["error"] = {"reason": reason}
            m.observe_restore({"metadata": {"namespace": f"ns{ns}", "uid": f"r-{ns}-{outcome}"},
                               "status": status})  # fmt: skip
    return m


def series_by_family(m: Metrics) -> Counter[str]:
    """Series a scrape returns, by family (without the prefix)."""
    out: Counter[str] = Counter()
    for family in m.registry.collect():
        out[family.name.removeprefix(PREFIX)] += len(family.samples)
    return out


def test_a_vm_costs_at_most_the_budget_and_only_in_the_per_vm_families() -> None:
    small, large = series_by_family(estate(2500)), series_by_family(estate(5000))
    grown = {name: large[name] - small[name] for name in large if large[name] != small[name]}
    assert set(grown) <= set(VM_FAMILIES), f"families that grow with the VMs: {sorted(grown)}"
    per_vm = sum(grown.values()) / 2500
    assert per_vm <= VM_SERIES_BUDGET, f"{per_vm} series per VM, budget {VM_SERIES_BUDGET}"
    # The table docs/observability.md quotes (pytest -s shows it).
    total = sum(large.values())
    print(f"\nseries at 5,000 VMs: {total} ({per_vm:g} per VM + {total - 5000 * per_vm:g})")
    for name, count in sorted(large.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"| `{PREFIX}{name}` | {count} |")


def test_the_budget_test_sees_a_family_that_would_grow_with_the_vms() -> None:
    """A per-VM gauge added outside VM_FAMILIES is what the test above must catch."""
    from prometheus_client import Gauge

    def with_extra(vms: int) -> Counter[str]:
        m = estate(vms)
        extra = Gauge(PREFIX + "vm_extra", "per VM, unbudgeted", ["vm"], registry=m.registry)
        for i in range(vms):
            extra.labels(f"vm-{i}").set(1)
        return series_by_family(m)

    small, large = with_extra(100), with_extra(200)
    grown = {name for name in large if large[name] != small[name]}
    assert "vm_extra" in grown and not grown <= set(VM_FAMILIES)
