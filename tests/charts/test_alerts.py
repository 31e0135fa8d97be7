"""The chart's alert rules under promtool: the rule file is valid, and every alert has
a `promtool test rules` file (tests/charts/alerts/<alert>.yaml) over synthetic series
with at least one evaluation where it must fire and one where it must stay silent."""

from __future__ import annotations

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


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # Debian's prometheus package; `vmguard-lab up` and `make deps` make sure it is there.
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: apt-get install prometheus (lab/debian-packages.txt)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def alerts() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_rule_file_is_valid() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


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
