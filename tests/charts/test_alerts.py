"""The chart's alert rules under promtool: the rule file is valid, and every alert has
a `promtool test rules` file (tests/charts/alerts/<alert>.yaml) over synthetic series
with at least one evaluation where it must fire and one where it must stay silent; every
alert carries `severity`, `summary`, `description` and a `runbook_url` whose section
exists in docs/runbooks.md, and `for:` unless it is listed below as unable to flap.

The last test is an estate: 5,000 VMs whose repository stops answering, their metrics
made by vmguard.metrics itself and fed to promtool as the scrapes would have returned
them; it pages once for the repository and once per affected policy, and for nothing
else."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.charts.conftest import CHART

from vmguard.metrics import Metrics, PolicyVM

pytestmark = pytest.mark.unit

RULES = CHART / "files" / "alerts.yaml"
CASES = Path(__file__).parent / "alerts"
RUNBOOKS = Path(__file__).parents[2] / "docs" / "runbooks.md"
RUNBOOK_URL = "https://vmguard.io/docs/runbooks#"
# Alerts without `for:`, each because its value changes only when something ends (a
# backup finishes) or only grows (a snapshot's age), so it cannot flap.
NO_FOR = {
    "VmguardStaleSnapshot": "a snapshot's age only grows until it is removed",
    "VmguardUnusualChangeRate": "changes only when a backup of the VM completes",
    "VmguardCompressibilityDrop": "changes only when a backup of the VM completes",
    "VmguardRepositoryDamaged": "changes only when a verify of the repository finishes",
    "VmguardMalwareFound": "changes only when a verification of a point ends",
    "VmguardVerificationFailed": "changes only when a verification of a point ends",
    "VmguardRestoreFailed": "counts failures over the last hour: each fires for that hour",
    "VmguardProxyFailing": "counts failures over the last hour: each fires for that hour",
    "VmguardCRDOutdated": "set once at the operator's start: changes only when it restarts",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # Debian's prometheus package; `vmguard-lab up` and `make deps` make sure it is there.
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: apt-get install prometheus (lab/debian-packages.txt)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


def anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the markdown's headings (lower case, spaces to dashes)."""
    heads = re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in heads}


def test_the_rule_file_is_valid() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


@pytest.mark.parametrize("alert", alerts())
def test_alert_has_severity_annotations_runbook_and_for(alert: str) -> None:
    rule = next(r for r in rules() if r.get("alert") == alert)
    assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}
    notes = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert notes.get(key), f"{alert} has no {key}"
    url = notes["runbook_url"]
    assert url.startswith(RUNBOOK_URL), url
    anchor = url.removeprefix(RUNBOOK_URL)
    assert anchor == alert.lower(), "one runbook section per alert, named after it"
    assert anchor in anchors(RUNBOOKS.read_text()), f"docs/runbooks.md has no #{anchor}"
    assert ("for" in rule) != (alert in NO_FOR), f"{alert}: `for:` or a reason in NO_FOR"


def test_every_alert_has_a_test_file_and_nothing_else_does() -> None:
    assert sorted(p.stem for p in CASES.glob("*.yaml")) == sorted(alerts())
    assert set(alerts()) >= {
        "VmguardBackupFailed",
        "VmguardBackupMissing",
        "VmguardUnprotectedVMs",
        "VmguardStaleSnapshot",
        "VmguardRepositoryUnreachable",
        "VmguardUnusualChangeRate",
        "VmguardCompressibilityDrop",
        "VmguardOperatorDown",
        "VmguardOperatorAbsent",
        "VmguardRepositoryDamaged",
        "VmguardRestoreFailed",
        "VmguardProxyFailing",
        "VmguardMalwareFound",
        "VmguardVerificationMissing",
        "VmguardVerificationFailed",
        "VmguardVerificationError",
    }


@pytest.mark.parametrize("alert", alerts())
def test_alert_fires_when_it_should_and_stays_silent_otherwise(alert: str) -> None:
    case = CASES / f"{alert}.yaml"
    spec: dict[str, Any] = yaml.safe_load(case.read_text())
    checks = [c for test in spec["tests"] for c in test["alert_rule_test"]]
    assert {c["alertname"] for c in checks} == {alert}, "a file tests its own alert only"
    assert any(c["exp_alerts"] for c in checks), "no evaluation where it must fire"
    assert any(not c["exp_alerts"] for c in checks), "no evaluation where it must stay silent"
    done = promtool("test", "rules", str(case))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# ---- one repository outage under 5,000 VMs ------------------------------------------

OUTAGE_POLICIES = (  # (policy, vCenter, repository, VMs)
    ("gold", "vc1", "s3-main", 2000),
    ("silver", "vc1", "s3-main", 1500),
    ("bronze", "vc2", "s3-main", 1500),
    ("dr-only", "vc2", "s3-dr", 50),
)
SCRAPE = {"job": "vmguard", "instance": "10.0.0.7:8080"}
STEP_MINUTES = 10  # one exposition every 10 minutes, held for the 10 one-minute samples


def _at(minute: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=minute)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


Page = list[tuple[str, dict[str, str], float]]


def outage_pages(until_minute: int) -> list[Page]:
    """The samples a scrape of the operator returns, every STEP_MINUTES on promtool's time
    axis (0 = the Unix epoch), built through vmguard.metrics' own calls: 5,000 VMs on
    s3-main (and 50 on s3-dr), all backed up and verified at 0 with an RPO of an hour and
    a verification allowance of an hour (``every: "*/30 * * * *"``); s3-main stops
    answering at 10m, every backup to it fails at 12m and every verification of its
    points ends in Error at 15m; s3-dr's VMs are backed up and verified every 10
    minutes."""
    now = [0.0]
    m = Metrics(clock=lambda: now[0])
    uuids = {p: [f"{p}-{i:04d}" for i in range(n)] for p, _, _, n in OUTAGE_POLICIES}
    pages = []
    for minute in range(0, until_minute + 1, STEP_MINUTES):
        now[0] = minute * 60.0
        for vc in ("vc1", "vc2"):
            m.observe_sweep("prod", vc, {"reachable": True, "lastSweepTime": _at(minute)})
        m.observe_repository("prod", "s3-main", {"reachable": minute < 10})
        m.observe_repository("prod", "s3-dr", {"reachable": True})
        for policy, vcenter, repository, _ in OUTAGE_POLICIES:
            healthy = repository == "s3-dr"
            last = now[0] if healthy else 0.0
            vms = [
                PolicyVM(
                    {"instanceUuid": u, "moref": f"vm-{u}", "name": u},
                    last,
                    last,
                    first_success=0.0,
                    last_verification=(last, "Passed"),
                    last_passed=last,
                )
                for u in uuids[policy]
            ]
            m.observe_policy(
                "prod",
                vcenter,
                policy,
                repository=repository,
                rpo_seconds=3600,
                vms=vms,
                verification_allowance_seconds=3600,
            )
            if not healthy and minute == 20:  # the failures of 12m, seen by now
                for u in uuids[policy]:
                    m.observe_backup(
                        {
                            "metadata": {"namespace": "prod", "uid": f"b-{u}"},
                            "spec": {"vm": {"instanceUuid": u}, "policyRef": {"name": policy}},
                            "status": {
                                "phase": "Failed",
                                "vcenter": vcenter,
                                "completionTime": _at(12),
                                "error": {"reason": "RepositoryUnreachable", "message": "..."},
                            },
                        }
                    )
                    m.observe_verification(  # the points verified at 15m: no verdict
                        {
                            "metadata": {"namespace": "prod", "uid": f"v-{u}"},
                            "spec": {"vm": {"instanceUuid": u}, "policyRef": {"name": policy}},
                            "status": {
                                "vcenter": vcenter,
                                "verification": {
                                    "phase": "Completed",
                                    "result": "Error",
                                    "time": _at(15),
                                },
                            },
                        }
                    )
        # What a scrape serialises (collected directly: parsing 10,000 lines a page back
        # would take longer than the rest of the test).
        pages.append(
            [(x.name, x.labels, x.value) for family in m.registry.collect() for x in family.samples]
        )
    return pages


def promtool_series(pages: list[Page]) -> list[dict[str, str]]:
    """The pages as promtool input series, each page's value held for STEP_MINUTES
    samples at a 1m interval (``_`` where a page lacks the series)."""
    values: dict[str, list[str]] = {}
    for n, page in enumerate(pages):
        for name, labels, value in page:
            if name.endswith("_created"):
                continue  # prometheus-client's creation times: wall clock, not ours
            text = ",".join(f'{k}="{v}"' for k, v in sorted({**labels, **SCRAPE}.items()))
            values.setdefault(f"{name}{{{text}}}", ["_"] * len(pages))[n] = repr(float(value))
    series = [
        {"series": name, "values": " ".join(f"{v}x{STEP_MINUTES - 1}" for v in vals)}
        for name, vals in values.items()
    ]
    up = ",".join(f'{k}="{v}"' for k, v in sorted(SCRAPE.items()))
    series.append({"series": f"up{{{up}}}", "values": f"1x{STEP_MINUTES * len(pages)}"})
    return series


def firing(*alerts: dict[str, str]) -> list[dict[str, Any]]:
    return [{"labels": "{" + ",".join(f'{k}="{v}"' for k, v in a.items()) + "}", "value": 1}
            for a in alerts]  # fmt: skip


def test_one_repository_outage_under_5000_vms_pages_once_for_it_and_once_per_policy(
    tmp_path: Path,
) -> None:
    series = promtool_series(outage_pages(until_minute=90))
    vm_series = [s for s in series if s["series"].startswith("vmguard_vm_info{")]
    assert len(vm_series) == 5050, "5,000 VMs on s3-main and 50 on s3-dr, as the operator says"
    everything = 'count by (alertname, repository, policy) (ALERTS{alertstate="firing"})'
    outside = "vmguard:policy_vms_outside_rpo:count"
    spec = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    # 30m: s3-main down for 20 minutes, every backup to it failed, every
                    # verification of its points ended in Error; the RPOs have not run
                    # out. One alert: the repository's.
                    {
                        "expr": everything,
                        "eval_time": "30m",
                        "exp_samples": firing(
                            {"alertname": "VmguardRepositoryUnreachable", "repository": "s3-main"}
                        ),
                    },
                    # 90m: the RPOs ran out at 60m: one more alert per affected policy,
                    # its value counting the policy's VMs; nothing for s3-dr's policy.
                    # The verification allowances ran out at 60m too, and the Errors
                    # stand: both held back while the repository is down.
                    {
                        "expr": everything,
                        "eval_time": "90m",
                        "exp_samples": firing(
                            {"alertname": "VmguardBackupMissing", "policy": "bronze"},
                            {"alertname": "VmguardBackupMissing", "policy": "gold"},
                            {"alertname": "VmguardBackupMissing", "policy": "silver"},
                            {"alertname": "VmguardRepositoryUnreachable", "repository": "s3-main"},
                        ),
                    },
                    {
                        "expr": outside,
                        "eval_time": "90m",
                        "exp_samples": [
                            {
                                "labels": outside
                                + f'{{namespace="prod",policy="{p}",vcenter="{vc}"}}',
                                "value": n if repo == "s3-main" else 0,
                            }
                            for p, vc, repo, n in OUTAGE_POLICIES
                        ],
                    },
                ],
            }
        ],
    }
    case = tmp_path / "outage.yaml"
    case.write_text(yaml.safe_dump(spec))
    done = promtool("test", "rules", str(case))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "SUCCESS" in done.stdout
