"""``vmguard status``'s pure part: the coverage built from objects, and its rendering."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any

import pytest

from vmguard.commands.status import (
    BREACHED,
    NEVER,
    OK,
    UNKNOWN,
    build_coverage,
    policy_rpo,
    render_table,
    unprotected_names,
)

pytestmark = pytest.mark.unit

NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.UTC)
UUID_A = "4211aaaa-0000-0000-0000-00000000000a"
UUID_B = "4211bbbb-0000-0000-0000-00000000000b"
UUID_C = "4211cccc-0000-0000-0000-00000000000c"


def ts(hours_ago: float) -> str:
    return (NOW - dt.timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def policy(name: str, cron: str = "0 1 * * *", matched: int = 0, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"vcenterRef": {"name": "lab"}, "schedule": {"cron": cron}, **spec},
        "status": {"matchedVMs": matched},
    }


def backup(
    name: str, uuid: str, vm: str, pol: str, phase: str, created_h: float, done_h: float | None
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "vcenter": "lab"}
    if done_h is not None:
        status["completionTime"] = ts(done_h)
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "creationTimestamp": ts(created_h),
            "labels": {"vmguard.io/policy": pol, "vmguard.io/vm": uuid},
            "annotations": {"vmguard.io/vm-name": vm},
        },
        "spec": {"vm": {"instanceUuid": uuid, "name": vm}, "policyRef": {"name": pol}},
        "status": status,
    }


VCENTER = {
    "metadata": {"name": "lab", "namespace": "ns"},
    "status": {
        "lastSweepTime": ts(0.1),
        "vms": {"discovered": 30, "unprotected": 25},
        "conditions": [
            {
                "type": "Protected",
                "status": "False",
                "reason": "UnprotectedVMs",
                "message": "25 VM(s) have no policy and there is no default policy: "
                + ", ".join(f"vm/{i}" for i in range(20))
                + " and 5 more",
            }
        ],
    },
}


def test_rows_policy_last_good_backup_and_rpo_state() -> None:
    # daily at 01:00 → default RPO 48h; "hourly" has an explicit rpo of 2h.
    policies = [policy("daily", matched=3), policy("hourly", cron="0 * * * *", rpo="2h")]
    backups = [
        backup("a1", UUID_A, "web-1", "daily", "Completed", 30, 29),
        backup("a2", UUID_A, "web-1", "daily", "Failed", 5, 4),  # a failure is not "good"
        backup("b1", UUID_B, "db-1", "daily", "Completed", 80, 79),  # older than 48h
        backup("b2", UUID_B, "db-1", "hourly", "Completed", 3, 2.5),  # moved to hourly
        backup("c1", UUID_C, "new-vm", "daily", "Transferring", 0.2, None),
    ]
    cov = build_coverage([VCENTER], policies, backups, NOW)
    rows = {r.vm: r for r in cov.rows}
    assert set(rows) == {"web-1", "db-1", "new-vm"}
    assert (rows["web-1"].policy, rows["web-1"].rpo_state) == ("daily", OK)
    assert rows["web-1"].last_backup_name == "a1"
    assert rows["web-1"].last_backup == NOW - dt.timedelta(hours=29)
    # the effective policy is the newest backup's; its last good backup is 2.5h > 2h old
    assert (rows["db-1"].policy, rows["db-1"].rpo_state) == ("hourly", BREACHED)
    assert rows["db-1"].last_backup_name == "b2"
    assert (rows["new-vm"].policy, rows["new-vm"].rpo_state) == ("daily", NEVER)
    assert rows["new-vm"].vcenter == "lab"
    # daily matched 3 VMs and 2 rows have it as effective policy: one is never named
    assert any("ns/daily: 3 VM(s)" in n and "1 without any backup" in n for n in cov.notes)
    [unprot] = cov.unprotected
    assert unprot.count == 25 and unprot.names == [f"vm/{i}" for i in range(20)]


def test_deleted_policy_gives_unknown_rpo() -> None:
    backups = [backup("a1", UUID_A, "web-1", "gone", "Completed", 3, 2)]
    [row] = build_coverage([], [], backups, NOW).rows
    assert (row.policy, row.rpo_state) == ("gone (deleted)", UNKNOWN)


def test_rpo_of_a_policy() -> None:
    assert policy_rpo({"rpo": "90m"}) == dt.timedelta(minutes=90)
    assert policy_rpo({"schedule": {"cron": "0 1 * * *"}}) == dt.timedelta(hours=48)
    assert policy_rpo({"schedule": {"cron": "not cron"}}) is None


def test_unprotected_names_from_the_condition_message() -> None:
    assert unprotected_names("2 VM(s) have no policy and there is no default policy: a, b") == [
        "a",
        "b",
    ]
    assert unprotected_names("every VM has an effective policy") == []


def test_table_and_wide_columns() -> None:
    backups = [backup("a1", UUID_A, "web-1", "daily", "Completed", 30, 29)]
    cov = build_coverage([VCENTER], [policy("daily")], backups, NOW)
    text = render_table(cov, NOW, wide=False, namespaces=False)
    lines = text.splitlines()
    assert lines[0].split() == ["VM", "VCENTER", "POLICY", "LAST-GOOD-BACKUP", "AGE", "RPO"]
    assert lines[1].split() == ["web-1", "lab", "daily", ts(29), "1d", "ok"]
    assert (
        lines[2]
        == "UNPROTECTED in vCenter lab: 25: "
        + ", ".join(f"vm/{i}" for i in range(20))
        + " and 5 more"
    )
    wide = render_table(cov, NOW, wide=True, namespaces=True).splitlines()
    assert wide[0].split()[0] == "NAMESPACE" and wide[0].split()[-1] == "BACKUP"
    assert wide[1].split()[-4:] == ["48h", UUID_A, "-", "a1"]


def test_kubectl_plugin_name_runs_vmguard() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts["kubectl-vmguard"] == scripts["vmguard"] == "vmguard.cli:main"
