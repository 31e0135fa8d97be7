"""The copy Job builder (controller/policy/copyjob.py) and the copy controller's pure
parts (controller/policy/copying.py): no cluster."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from vmguard.config import ProxySettings
from vmguard.controller.policy import copying
from vmguard.controller.policy.copyjob import build_copy_job, copy_job_name

pytestmark = pytest.mark.unit

SETTINGS = ProxySettings(
    image="vmguard-proxy:1.2.3",
    command=("vmguard",),
    locator="vddk",
    service_account="vmguard-proxy",
    image_pull_policy="IfNotPresent",
)


def _repo(bucket: str, secret: str, key: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "s3": {"endpoint": "s3.example:9000", "bucket": bucket},
        "credentialsSecretRef": {"name": secret},
    }
    if key:
        spec["encryption"] = {"keySecretRef": {"name": key}}
    return spec


def _backup(name: str, completed: str, vm: str = "uuid-1") -> dict[str, Any]:
    return {
        "apiVersion": "vmguard.io/v1alpha1",
        "kind": "VMGuardBackup",
        "metadata": {
            "name": name,
            "namespace": "ops",
            "uid": f"uid-{name}",
            "labels": {"vmguard.io/policy": "gold", "vmguard.io/vm": vm},
        },
        "spec": {"policyRef": {"name": "gold"}},
        "status": {"phase": "Completed", "archiveId": f"a-{name}", "completionTime": completed},
    }


def test_the_copy_job_names_both_repositories_by_reference_only() -> None:
    job = build_copy_job(
        _backup("web-1", "2026-01-01T00:00:00Z"),
        SETTINGS,
        archive_id="a-web-1",
        source=_repo("primary", "primary-s3", "primary-key"),
        target_name="offsite",
        target=_repo("copies", "offsite-s3", "offsite-key"),
        attempt=2,
    )
    assert job["metadata"]["name"] == copy_job_name("web-1", "offsite", 2) == "vmc-web-1-offsite-2"
    assert job["metadata"]["ownerReferences"][0]["name"] == "web-1"
    assert job["metadata"]["labels"]["vmguard.io/copy-target"] == "offsite"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["proxy", "copy", "--archive", "a-web-1"]
    env = {e["name"]: e for e in container["env"]}
    assert env["VMGUARD_REPO"]["value"] == "s3://s3.example:9000/primary"
    assert env["VMGUARD_COPY_REPO"]["value"] == "s3://s3.example:9000/copies"
    refs = {n: e["valueFrom"]["secretKeyRef"]["name"] for n, e in env.items() if "valueFrom" in e}
    assert refs == {
        "VMGUARD_S3_ACCESS_KEY": "primary-s3",
        "VMGUARD_S3_SECRET_KEY": "primary-s3",
        "VMGUARD_COPY_S3_ACCESS_KEY": "offsite-s3",
        "VMGUARD_COPY_S3_SECRET_KEY": "offsite-s3",
    }
    keys = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert keys == {"repository-key": "primary-key", "copy-target-key": "offsite-key"}
    assert env["VMGUARD_KEY_FILE"]["value"] != env["VMGUARD_COPY_KEY_FILE"]["value"]
    # A copy touches no device: the pod is restricted.
    assert container["securityContext"]["privileged"] is False


def test_a_policys_points_are_its_completed_backups_oldest_first() -> None:
    policy = {"metadata": {"name": "gold", "namespace": "ops"}, "spec": {}}
    backups = [
        _backup("b2", "2026-01-01T02:00:00Z"),
        _backup("b1", "2026-01-01T01:00:00Z"),
        _backup("other", "2026-01-01T03:00:00Z", vm="uuid-2"),
        {**_backup("failed", "2026-01-01T00:00:00Z"), "status": {"phase": "Failed"}},
    ]
    points = copying.points(policy, backups)
    assert [p.name for p in points] == ["b1", "b2", "other"]
    assert points[0].completed == dt.datetime(2026, 1, 1, 1, tzinfo=dt.UTC)
    # One VM's copies to a target go one at a time: tests/controller/test_copy_admission.py


def test_retention_holds_a_point_until_each_copy_is_made_or_given_up() -> None:
    from vmguard.controller.policy.targets import CopyTarget

    policy = {"metadata": {"name": "gold", "namespace": "ops"}, "spec": {}}
    made, waiting, gave_up, pruned = (
        _backup(n, "2026-01-01T01:00:00Z") for n in ("made", "waiting", "gave-up", "pruned")
    )
    made["status"]["copies"] = [{"repository": "offsite", "state": "Completed"}]
    waiting["status"]["copies"] = [{"repository": "offsite", "state": "Failed", "attempts": 1}]
    gave_up["status"]["copies"] = [
        {"repository": "offsite", "state": "Failed", "attempts": copying.ATTEMPTS}
    ]
    pruned["status"]["copies"] = [{"repository": "offsite", "state": "Pruned"}]
    offsite = CopyTarget("offsite", {"keepLast": 1}, 0.0)
    backups = [made, waiting, gave_up, pruned]
    assert copying.awaiting_copy(policy, [offsite], backups) == {"waiting"}
    # A second target not reached yet holds every point.
    vault = CopyTarget("vault", {"keepLast": 1}, 0.0)
    assert copying.awaiting_copy(policy, [offsite, vault], backups) == {
        "made",
        "waiting",
        "gave-up",
        "pruned",
    }


def test_a_targets_retention_dates_copies_by_their_source_point_per_vm() -> None:
    from vmguard.store.prune import RetentionPolicy

    day = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    copies = [
        copying.CopiedPoint(f"c{h}", "vm-a", f"s{h}", day + dt.timedelta(hours=h))
        for h in (1, 2, 3)
    ] + [copying.CopiedPoint("other", "vm-b", "s9", day - dt.timedelta(days=3))]
    pruned = copying.plan_copy_retention(copies, RetentionPolicy(keep_daily=7), dt.UTC)
    # One per day per VM: the newest of the 5th for vm-a; vm-b's only copy stays.
    assert [c.archive_id for c in pruned] == ["c1", "c2"]


def test_the_copy_lag_metric_and_condition_say_what_the_statuses_say() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from vmguard.controller.policy.targets import CopyTarget
    from vmguard.metrics import Metrics

    policy = {"metadata": {"name": "gold", "namespace": "ops"}, "spec": {}}
    old, new = _backup("old", "2026-01-01T01:00:00Z"), _backup("new", "2026-01-01T02:00:00Z")
    old["status"]["copies"] = [
        {"repository": "offsite", "state": "Completed"},
        {"repository": "vault", "state": "Pruned"},
    ]
    new["status"]["copies"] = [
        {"repository": "offsite", "state": "Failed", "attempts": copying.ATTEMPTS},
        {"repository": "vault", "state": "Completed"},
    ]
    targets = [
        CopyTarget("offsite", {"keepLast": 1}, 0.0),
        CopyTarget("vault", {"keepLast": 1}, 0.0),
    ]
    lagging = copying.oldest_uncopied(policy, targets, [new, old])
    assert {t: p.name if p else None for t, p in lagging.items()} == {
        "offsite": "new",
        "vault": None,
    }
    now = dt.datetime(2026, 1, 1, 4, tzinfo=dt.UTC)
    allowed = {"offsite": 3600.0, "vault": 3600.0}
    m = Metrics(clock=lambda: now.timestamp())
    m.observe_policy(
        "ops",
        "vc1",
        "gold",
        repository="primary",
        rpo_seconds=3600,
        vms=None,
        copies={
            t: (p.completed.timestamp() if p else None, allowed[t]) for t, p in lagging.items()
        },
    )
    exposed = {
        (s.name, s.labels["repository"]): s.value
        for f in text_string_to_metric_families(m.exposition())
        for s in f.samples
        if s.name.startswith("vmguard_policy_copy_")
    }
    assert exposed == {
        ("vmguard_policy_copy_lag_seconds", "offsite"): 7200.0,  # "new" completed at 02:00
        ("vmguard_policy_copy_allowance_seconds", "offsite"): 3600.0,
        ("vmguard_policy_copy_lag_seconds", "vault"): 0.0,
        ("vmguard_policy_copy_allowance_seconds", "vault"): 3600.0,
    }
    (cond,) = copying.lag_condition([], lagging, allowed, now, 1)
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "CopiesCurrent",
        "False",
        "CopyLagging",
    )
    assert "copies to offsite" in cond["message"] and "new" in cond["message"]
    assert "vault" not in cond["message"]
    (ok,) = copying.lag_condition([], {"vault": None}, allowed, now, 1)
    assert (ok["status"], ok["reason"]) == ("True", "Current")
    assert copying.lag_condition([cond], {}, allowed, now, 2) == []


def test_a_copy_target_may_give_the_jobs_credentials_of_their_own() -> None:
    own = {"name": "offsite-copier", "accessKeyIDKey": "id", "secretAccessKeyKey": "secret"}
    job = build_copy_job(
        _backup("web-1", "2026-01-01T00:00:00Z"),
        SETTINGS,
        archive_id="a-web-1",
        source=_repo("primary", "primary-s3", None),
        target_name="offsite",
        target=_repo("copies", "offsite-s3", None),
        attempt=1,
        target_credentials=own,
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["VMGUARD_COPY_S3_ACCESS_KEY"] == {"name": "offsite-copier", "key": "id"}
    assert refs["VMGUARD_COPY_S3_SECRET_KEY"] == {"name": "offsite-copier", "key": "secret"}
    assert refs["VMGUARD_S3_SECRET_KEY"]["name"] == "primary-s3"


def test_a_targets_bandwidth_limit_reaches_its_copy_jobs_in_bytes_per_second() -> None:
    from vmguard.controller.policy.targets import judge
    from vmguard.errors import VmguardError
    from vmguard.proxy.copy import bandwidth_from

    primary = _repo("primary", "primary-s3", "primary-key")
    spec = {
        "repositoryRef": {"name": "primary"},
        "copies": [
            {"repositoryRef": {"name": "offsite"}, "retention": {"keepLast": 1},
             "bandwidthLimitMiBps": 25},
            {"repositoryRef": {"name": "vault"}, "retention": {"keepLast": 1}},
        ],
    }  # fmt: skip
    repos = {"offsite": _repo("copies", "s3", None), "vault": _repo("vault", "s3", None)}
    offsite, vault = judge(spec, primary, repos).targets
    assert (offsite.bandwidth, vault.bandwidth) == (25 << 20, None)
    jobs = [
        build_copy_job(
            _backup("web-1", "2026-01-01T00:00:00Z"),
            SETTINGS,
            archive_id="a-web-1",
            source=primary,
            target_name=t.repository,
            target=repos[t.repository],
            attempt=1,
            bandwidth=t.bandwidth,
        )
        for t in (offsite, vault)
    ]
    containers = [j["spec"]["template"]["spec"]["containers"][0] for j in jobs]
    envs = [{e["name"]: e.get("value") for e in c["env"]} for c in containers]
    assert envs[0]["VMGUARD_COPY_BANDWIDTH"] == str(25 << 20)
    assert "VMGUARD_COPY_BANDWIDTH" not in envs[1]
    assert bandwidth_from(envs[0]) == 25 << 20 and bandwidth_from(envs[1]) is None
    for bad in ("0", "-5", "25Mi"):
        with pytest.raises(VmguardError, match="positive number of bytes per second"):
            bandwidth_from({"VMGUARD_COPY_BANDWIDTH": bad})


def test_a_bandwidth_limited_copy_job_gets_the_time_its_disks_take_at_that_rate() -> None:
    backup = _backup("big", "2026-01-01T00:00:00Z")
    backup["status"]["totals"] = {"capacityBytes": 2 << 40}  # 2 TiB
    assert copying.copy_deadline(backup, None) == copying.COPY_DEADLINE == 4 * 3600
    # 2 TiB at 50 MiB/s is 41,943 s; twice that.
    assert copying.copy_deadline(backup, 50 << 20) == 2 * (2 << 40) // (50 << 20) == 83886
    assert copying.copy_deadline(_backup("small", "2026-01-01T00:00:00Z"), 50 << 20) == 4 * 3600


def test_a_daily_or_weekly_target_copies_each_vms_first_point_of_the_day_or_week() -> None:
    """``points: Daily``: per VM, the first completed point of each day in the policy's
    time zone is copied, held by retention until it is, and counted when it lags; the
    others are none of these. ``Weekly``: the first of each week from Monday."""
    from vmguard.controller.policy.targets import CopyTarget

    policy = {
        "metadata": {"name": "gold", "namespace": "ops"},
        "spec": {"schedule": {"timeZone": "Europe/Berlin"}},
    }
    backups = [
        # Berlin is UTC+1 in January: 23:30Z on the 4th is already the 5th there.
        _backup("a-sun", "2026-01-04T12:00:00Z"),
        _backup("a-mon-1", "2026-01-04T23:30:00Z"),
        _backup("a-mon-2", "2026-01-05T08:00:00Z"),
        _backup("a-tue", "2026-01-06T08:00:00Z"),
        _backup("b-mon", "2026-01-05T09:00:00Z", vm="uuid-2"),
        _backup("b-mon-2", "2026-01-05T10:00:00Z", vm="uuid-2"),
    ]
    daily = CopyTarget("offsite", {"keepDaily": 7}, 0.0, points="Daily")
    weekly = CopyTarget("vault", {"keepWeekly": 4}, 0.0, points="Weekly")
    from vmguard.controller.policy.targets import judge

    spec = {
        "repositoryRef": {"name": "primary"},
        "copies": [
            {"repositoryRef": {"name": "offsite"}, "retention": {"keepDaily": 7},
             "points": "Daily"},
            {"repositoryRef": {"name": "vault"}, "retention": {"keepWeekly": 4}},
        ],
    }  # fmt: skip
    repos = {"offsite": _repo("copies", "s3", None), "vault": _repo("vault", "s3", None)}
    judged = judge(spec, _repo("primary", "s3", None), repos).targets
    assert [t.points for t in judged] == ["Daily", "All"]  # the spec's, All by default
    every = copying.points(policy, backups)
    assert copying.chosen(policy, daily, every) == {"a-sun", "a-mon-1", "a-tue", "b-mon"}
    assert copying.chosen(policy, weekly, every) == {"a-sun", "a-mon-1", "b-mon"}
    every_point = CopyTarget("all", {"keepLast": 3}, 0.0)
    assert copying.chosen(policy, every_point, every) == {b["metadata"]["name"] for b in backups}

    # Retention holds only the chosen points not copied yet; the lag is theirs alone.
    for b in backups:
        if b["metadata"]["name"] in ("a-sun", "a-mon-1"):
            b["status"]["copies"] = [{"repository": "offsite", "state": "Completed"}]
    assert copying.awaiting_copy(policy, [daily], backups) == {"a-tue", "b-mon"}
    lagging = copying.oldest_uncopied(policy, [daily], backups)
    assert lagging["offsite"] is not None and lagging["offsite"].name == "b-mon"
    for b in backups:
        if b["metadata"]["name"] in ("a-tue", "b-mon"):
            b["status"]["copies"] = [{"repository": "offsite", "state": "Completed"}]
    assert copying.awaiting_copy(policy, [daily], backups) == set()
    assert copying.oldest_uncopied(policy, [daily], backups) == {"offsite": None}
