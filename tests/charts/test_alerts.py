"""The chart's alert rules under promtool: the rule file is valid, and every alert has
a `promtool test rules` file (tests/charts/alerts/<alert>.yaml) over synthetic series
with at least one evaluation where it must fire and one where it must stay silent; every
alert carries `severity`, `summary`, `description` and a `runbook_url` whose section
exists in docs/runbooks.md, and `for:` unless it is listed below as unable to flap."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.charts.conftest import CHART

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
    "VmguardRestoreFailed": "counts failures over the last hour: each fires for that hour",
    "VmguardProxyFailing": "counts failures over the last hour: each fires for that hour",
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
