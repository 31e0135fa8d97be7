"""``vmguard status``'s pure parts: coverage from objects, RPO states, names, the table."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any

import pytest

from vmguard.cli.coverage import (
    BREACHED,
    GONE,
    NEVER,
    OK,
    UNKNOWN,
    UNPROTECTED,
    build_coverage,
    point_records,
    policy_rpo,
    rpo_state,
    summary_line,
    unescape_name,
)
from vmguard.cli.status import columns, display_width, printable, render_table

pytestmark = pytest.mark.unit

NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.UTC)
UUID = {k: f"4211{k * 4}-0000-0000-0000-00000000000{k}" for k in "abcdef"}


def ts(hours_ago: float) -> str:
    return (NOW - dt.timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def policy(name: str, cron: str = "0 1 * * *", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"vcenterRef": {"name": "lab"}, "schedule": {"cron": cron}, **spec},
    }


def backup(
    name: str, k: str, vm: str, pol: str, phase: str, created_h: float, done_h: float | None
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "vcenter": "lab"}
    if done_h is not None:
        status["completionTime"] = ts(done_h)
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "creationTimestamp": ts(created_h),
            "labels": {"vmguard.io/policy": pol, "vmguard.io/vm": UUID[k]},
            "annotations": {"vmguard.io/vm-name": vm},
        },
        "spec": {"vm": {"instanceUuid": UUID[k], "name": vm}, "policyRef": {"name": pol}},
        "status": status,
    }


def item(k: str, name: str, pol: str | None = None, default: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"n": name, "u": UUID[k], "m": f"vm-{ord(k)}", "s": "on"}
    out["f"] = "/DC0/vm/Production"
    if pol:
        out["p"] = pol
    if default:
        out["d"] = True
    return out


def vcenter(items: list[dict[str, Any]], total: int | None = None) -> dict[str, Any]:
    total = len(items) if total is None else total
    return {
        "metadata": {"name": "lab", "namespace": "ns"},
        "status": {
            "reachable": True,
            "lastSweepTime": ts(0.1),
            "vms": {"discovered": total, "unprotected": sum(1 for i in items if "p" not in i)},
            "vmList": {
                "total": total,
                "listed": len(items),
                "truncated": total > len(items),
                "items": items,
            },
        },
    }


# daily at 01:00 → default RPO 48h; "hourly" has an explicit rpo of 2h.
POLICIES = [policy("daily"), policy("hourly", cron="0 * * * *", rpo="2h"), policy("fail-safe")]
ESTATE = vcenter(
    [
        item("a", "web-1", "daily"),
        item("b", "db-1", "hourly"),
        item("c", "new-vm", "daily"),
        item("d", "lonely%2f1"),
        item("e", "caught", "fail-safe", default=True),
    ]
)
BACKUPS = [
    backup("a1", "a", "web-1", "daily", "Completed", 30, 29),
    backup("a2", "a", "web-1", "daily", "Failed", 5, 4),  # a failure is not "good"
    backup("b1", "b", "db-1", "daily", "Completed", 80, 79),
    backup("b2", "b", "db-1", "hourly", "Completed", 3, 2.5),  # 2.5h > 2h
    backup("c1", "c", "new-vm", "daily", "Transferring", 0.2, None),
    backup("f1", "f", "retired", "daily", "Completed", 100, 99),  # no longer in vCenter
]


def test_every_listed_vm_gets_its_policy_last_good_backup_and_rpo_state() -> None:
    cov = build_coverage([ESTATE], POLICIES, BACKUPS, NOW)
    rows = {r.vm: r for r in cov.rows}
    assert set(rows) == {"web-1", "db-1", "new-vm", "lonely/1", "caught", "retired"}
    assert (rows["web-1"].policy, rows["web-1"].rpo_state) == ("daily", OK)
    assert rows["web-1"].last_backup_name == "a1"
    assert rows["web-1"].last_backup == NOW - dt.timedelta(hours=29)
    # the newest good backup counts, whatever policy it was made under
    assert (rows["db-1"].policy, rows["db-1"].rpo_state) == ("hourly", BREACHED)
    assert rows["db-1"].last_backup_name == "b2"
    assert (rows["new-vm"].rpo_state, rows["new-vm"].last_backup) == (NEVER, None)
    assert (rows["lonely/1"].policy, rows["lonely/1"].rpo_state) == (None, UNPROTECTED)
    assert rows["lonely/1"].name == "lonely%2f1"
    assert rows["caught"].by_default and rows["caught"].rpo_state == NEVER
    assert (rows["retired"].rpo_state, rows["retired"].listed) == (GONE, False)
    # problems first: unprotected, breached, never (by name), ok, gone
    assert [r.vm for r in cov.rows] == ["lonely/1", "db-1", "caught", "new-vm", "web-1", "retired"]
    assert cov.notes == []
    assert summary_line(cov) == (
        "6 VMs: 1 ok, 1 breached, 2 never backed up, 1 unprotected, 1 gone from vCenter; "
        "1 protected only by a default policy"
    )
    doc = cov.doc()
    assert doc["summary"] == {
        "vms": 6,
        "unprotected": 1,
        "breached": 1,
        "never": 2,
        "unknown": 0,
        "ok": 1,
        "gone": 1,
        "byDefault": 1,
    }
    [lonely] = [v for v in doc["vms"] if v["vm"] == "lonely/1"]
    assert lonely["inventoryName"] == "lonely%2f1" and lonely["policy"] is None


def test_deleted_policy_truncated_and_missing_lists() -> None:
    # a policy deleted since the sweep: no RPO to judge by
    cov = build_coverage([vcenter([item("a", "web-1", "gone")])], [], [], NOW)
    [row] = cov.rows
    assert (row.policy, row.policy_deleted, row.rpo_state) == ("gone", True, UNKNOWN)
    # a truncated list: VMs outside it are shown from their backups, not called gone
    truncated = vcenter([item("d", "lonely")], total=3)
    backups = [backup("a1", "a", "web-1", "daily", "Completed", 3, 2)]
    cov = build_coverage([truncated], POLICIES, backups, NOW)
    rows = {r.vm: r for r in cov.rows}
    assert (rows["web-1"].rpo_state, rows["web-1"].listed) == (OK, False)
    assert cov.notes == [
        "vCenter ns/lab: 2 of 3 VMs not in its list (status.vmList is capped); "
        "only those with backups are shown"
    ]
    # never swept
    cov = build_coverage([{"metadata": {"name": "lab", "namespace": "ns"}}], POLICIES, backups, NOW)
    assert [r.rpo_state for r in cov.rows] == [OK]
    assert "no VM list yet" in cov.notes[0]


def test_rpo_of_a_policy_and_states() -> None:
    assert policy_rpo({"rpo": "90m"}) == dt.timedelta(minutes=90)
    assert policy_rpo({"schedule": {"cron": "0 1 * * *"}}) == dt.timedelta(hours=48)
    assert policy_rpo({"schedule": {"cron": "not cron"}}) is None
    hourly = policy("hourly", rpo="2h")
    assert rpo_state(hourly, True, NOW - dt.timedelta(hours=1), NOW)[0] == OK
    assert rpo_state(hourly, True, NOW - dt.timedelta(hours=3), NOW)[0] == BREACHED
    assert rpo_state(hourly, True, None, NOW)[0] == NEVER
    assert rpo_state(None, False, NOW, NOW)[0] == UNPROTECTED
    broken = policy("broken", cron="not cron")
    assert rpo_state(broken, True, NOW, NOW) == (UNKNOWN, None)


def test_vsphere_escapes_are_undone_once() -> None:
    assert unescape_name("web%2ffrontend") == "web/frontend"
    assert unescape_name("a%5Cb%2F%25") == "a\\b/%"
    assert unescape_name("100%252f") == "100%2f"  # a literal "%2f" in the name
    assert unescape_name("数据库 %41") == "数据库 %41"


def test_columns_align_by_display_width() -> None:
    assert display_width("数据库") == 6 and display_width("🙂") == 2
    assert display_width("e\u0301") == 1  # e + combining acute accent
    assert printable("a\tb\x1b[2J") == "a?b?[2J"
    lines = columns([["VM", "POLICY"], ["数据库-01", "gold"], ["web", "gold"], ["🙂", "gold"]])
    # every POLICY cell starts in the same terminal column
    starts = {display_width(line[: line.index("gold")]) for line in lines[1:]}
    assert starts == {display_width(lines[0][: lines[0].index("POLICY")])}


def test_table_wide_and_namespaces() -> None:
    cov = build_coverage([ESTATE], POLICIES, BACKUPS, NOW)
    lines = render_table(cov, NOW, wide=False, namespaces=False).splitlines()
    head = ["VM", "VCENTER", "POLICY", "LAST-GOOD-BACKUP", "AGE", "RPO", "VERIFIED"]
    assert lines[0].split() == head
    assert lines[1].split() == ["lonely/1", "lab", "UNPROTECTED", "-", "-", "unprotected", "-"]
    assert lines[3].split() == ["caught", "lab", "fail-safe", "(default)", "-", "-", "never", "-"]
    assert lines[5].split() == ["web-1", "lab", "daily", ts(29), "1d", "ok", "-"]
    assert lines[7].startswith("6 VMs: 1 ok")
    wide = render_table(cov, NOW, wide=True, namespaces=True).splitlines()
    assert wide[0].split()[0] == "NAMESPACE" and wide[0].split()[-1] == "VERIFIED-BACKUP"
    assert wide[5].split()[-7:] == [
        "on",
        "/DC0/vm/Production",
        "2d",
        UUID["a"],
        "vm-97",
        "a1",
        "-",
    ]


def test_the_newest_verification_of_a_vms_points_is_shown() -> None:
    """From a VMGuardBackup's status.verification or, once the run expired, from the
    ProtectedVM's points[].verification: whichever ended last, whatever its result."""
    verified = backup("a1", "a", "web-1", "daily", "Completed", 30, 29)
    verified["status"]["verification"] = {"phase": "Completed", "time": ts(28), "result": "Passed"}
    running = backup("b2", "b", "db-1", "hourly", "Completed", 3, 2.5)
    running["status"]["verification"] = {"phase": "Running", "time": ts(1), "result": ""}
    protected_db = {
        "metadata": {"name": "db-1", "namespace": "ns"},
        "status": {
            "vm": {"instanceUuid": UUID["b"], "name": "db-1"},
            "vcenter": "lab",
            "policy": "hourly",
            "lastGoodPoint": {"archiveId": "arch-b1", "time": ts(79)},
            "points": [
                {
                    "archiveId": "arch-b0",
                    "time": ts(100),
                    "verification": {"result": "Passed", "time": ts(99)},
                },
                {
                    "archiveId": "arch-b1",
                    "time": ts(79),
                    "backup": "b1",
                    "verification": {"result": "Infected", "time": ts(50)},
                },
                {"archiveId": "arch-b2", "time": ts(2.5)},
            ],
        },
    }
    records = [
        verified,
        backup("a2", "a", "web-1", "daily", "Failed", 5, 4),
        running,
        *point_records([protected_db]),
    ]

    cov = build_coverage([ESTATE], POLICIES, records, NOW)

    rows = {r.vm: r for r in cov.rows}
    web, db = rows["web-1"], rows["db-1"]
    assert (web.verification, web.verified, web.verified_name) == (
        "Passed",
        NOW - dt.timedelta(hours=28),
        "a1",
    )
    # a verification still running is not one that ended; the newest that ended wins
    assert (db.verification, db.verified_name) == ("Infected", "b1")
    # the point's verification adds no good backup of its own
    assert db.last_backup_name == "b2"
    assert rows["new-vm"].verified is None
    table = render_table(cov, NOW, wide=False, namespaces=False).splitlines()
    [web_line] = [line for line in table if line.startswith("web-1")]
    assert web_line.split()[-3:] == ["Passed", "(1d", "ago)"]
    [db_line] = [line for line in table if line.startswith("db-1")]
    assert db_line.split()[-3:] == ["Infected", "(2d", "ago)"]
    [doc] = [v for v in cov.doc()["vms"] if v["vm"] == "db-1"]
    assert doc["lastVerification"] == {"result": "Infected", "time": ts(50), "backup": "b1"}


def test_a_vm_with_no_good_point_left_shows_its_failed_verification() -> None:
    """Every point Infected: the ProtectedVM has no lastGoodPoint (Ready=False), and that
    is exactly when the newest verification must show."""
    protected = {
        "metadata": {"name": "web-1", "namespace": "ns"},
        "status": {
            "vm": {"instanceUuid": UUID["a"], "name": "web-1"},
            "vcenter": "lab",
            "policy": "daily",
            "lastGoodPoint": None,
            "points": [
                {
                    "archiveId": "arch-a1",
                    "time": ts(29),
                    "backup": "a1",
                    "verification": {"result": "Infected", "time": ts(28)},
                },
            ],
        },
    }

    cov = build_coverage([ESTATE], POLICIES, point_records([protected]), NOW)

    web = next(r for r in cov.rows if r.vm == "web-1")
    assert (web.verification, web.verified_name) == ("Infected", "a1")
    assert web.last_backup is None  # no good point: never backed up well


def test_kubectl_plugin_name_runs_vmguard() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts["kubectl-vmguard"] == scripts["vmguard"] == "vmguard.cli.main:main"
