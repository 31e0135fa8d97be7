"""Every metric the chart's dashboard and rules name is one the operator exports.

The Grafana dashboard (charts/vmguard/files/dashboard.json) and the rule file
(files/alerts.yaml) are parsed with a real PromQL parser (promql-parser): an expression
Prometheus would reject fails here, and every selector's metric name is looked up in
what vmguard.metrics exports — a registry fed through its own ``observe_*`` calls until
every family it registers has samples (so a family added without a feed here fails
too) — or in the rule file's own records. Grafana's variables are replaced by values of
their kind before parsing; an unknown variable fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
import yaml
from tests.charts.conftest import CHART

from vmguard.metrics import Metrics, PolicyVM

pytestmark = pytest.mark.unit

DASHBOARD = CHART / "files" / "dashboard.json"
RULES = CHART / "files" / "alerts.yaml"
# Prometheus' own series the rules may read: the scrape's health (VmguardOperatorDown).
PROMETHEUS_SERIES = {"up"}
# Grafana's variables, each replaced by a value of its kind before parsing.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1d"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def fed_registry() -> Metrics:
    """A registry that went through every observe_* call, so each family has samples."""
    m = Metrics(clock=lambda: 1_800_000_000.0)
    m.observe_sweep(
        "prod",
        "vc1",
        {"reachable": True, "vms": {"discovered": 3, "protected": 2, "unprotected": 1}},
    )
    vm = {"instanceUuid": "u1", "moref": "vm-1", "name": "web-01"}
    m.observe_policy(
        "prod",
        "vc1",
        "gold",
        repository="r1",
        rpo_seconds=86400,
        vms=[PolicyVM(vm, last_success=1_799_990_000.0, first_success=1_799_990_000.0)],
        in_progress={"Pending": 1},
        copies={"offsite": (1_799_990_000.0, 3600.0)},
        verification_allowance_seconds=2 * 86400,
    )
    done = {
        "metadata": {"namespace": "prod", "uid": "b1"},
        "spec": {"vm": vm, "policyRef": {"name": "gold"}},
        "status": {
            "phase": "Completed",
            "vcenter": "vc1",
            "completionTime": "2027-01-15T08:00:00Z",
            "durationSeconds": 60,
            "totals": {"capacityBytes": 100, "bytesChanged": 5, "compressibility": 0.4},
        },
    }
    m.observe_backup(done)
    failed = {
        "metadata": {"namespace": "prod", "uid": "b2"},
        "spec": {"vm": {**vm, "instanceUuid": "u2"}, "policyRef": {"name": "gold"}},
        "status": {
            "phase": "Failed",
            "vcenter": "vc1",
            "completionTime": "2027-01-15T08:00:00Z",
            "error": {"reason": "ImagePullBackOff"},
        },
    }
    m.observe_backup(failed)
    verified = {
        **done,
        "status": {
            **done["status"],
            "verification": {"phase": "Completed", "result": "Infected", "run": 1,
                             "time": "2027-01-15T08:00:00Z"},
        },
    }  # fmt: skip
    m.observe_verification(verified)
    booted = {
        **done,
        "metadata": {**done["metadata"], "uid": "booted-1"},
        "status": {
            **done["status"],
            "verification": {"phase": "Completed", "result": "Passed", "run": 1,
                             "time": "2027-01-15T09:00:00Z",
                             "boot": {"result": "Passed", "recoveryTimeSeconds": 95.0}},
        },
    }  # fmt: skip
    m.observe_verification(booted)
    m.observe_restore(
        {
            "metadata": {"namespace": "prod", "uid": "r1"},
            "status": {
                "phase": "Failed",
                "completionTime": "2027-01-15T08:00:00Z",
                "error": {"reason": "TargetExists"},
            },
        }
    )
    m.observe_repository(
        "prod",
        "r1",
        {
            "reachable": True,
            "storedBytes": 1,
            "logicalBytes": 3,
            "dedupRatio": 3.0,
            "archives": 1,
            "lastVerify": {"time": "2027-01-15T08:00:00Z", "errors": 0},
        },
    )
    m.count_repository_check("prod", "r1", "Ready")
    m.observe_crd("vmguardbackups.vmguard.io", outdated=False)
    m.observe_snapshots("prod", "vc1", [("web-01", "vmguard-1", 1_799_999_000.0)])
    return m


def exported_names() -> set[str]:
    """Every series name a scrape of a fed registry has (``_total``, ``_bucket``, …)."""
    names: set[str] = set()
    for family in fed_registry().registry.collect():
        assert family.samples, f"{family.name}: no samples; feed it in fed_registry()"
        names |= {s.name for s in family.samples}
    return names


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def selected_names(expr: str) -> list[str]:
    """The metric names an expression selects, from its parsed AST."""
    names: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.append(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels") or []  # a collapsed row holds its panels


def grafana_to_promql(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with Grafana's ``$var`` / ``${var}`` replaced; an unknown one fails."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in variables, f"unknown Grafana variable ${name} in {expr!r}"
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every target and every query variable of the dashboard."""
    board = dashboard()
    variables = dict(GRAFANA_BUILTINS)
    queries: list[tuple[str, str]] = []
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            variables[var["name"]] = ".*"
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = LABEL_VALUES.match(query)
            assert match, f"variable {var['name']}: only label_values(selector, label)"
            queries.append((f"variable {var['name']}", match.group("selector")))
        elif var["type"] == "datasource":
            variables[var["name"]] = "prometheus"
    out = [(where, grafana_to_promql(q, variables)) for where, q in queries]
    for panel in panels(board):
        for target in panel.get("targets") or []:
            where = f"panel {panel['title']!r} target {target['refId']}"
            out.append((where, grafana_to_promql(target["expr"], variables)))
    return out


def test_the_registry_feed_reaches_every_family_the_budget_and_alerts_rely_on() -> None:
    names = exported_names()
    assert {
        "vmguard_vm_info",
        "vmguard_vm_backup_deadline_timestamp_seconds",
        "vmguard_policy_vms_outside_rpo",
        "vmguard_policy_next_backup_deadline_timestamp_seconds",
        "vmguard_proxy_failures_total",
        "vmguard_restore_failures_total",
        "vmguard_repository_verify_errors",
        "vmguard_build_info",
    } <= names


def test_every_dashboard_query_parses_and_names_only_exported_metrics() -> None:
    known = exported_names() | recorded_names()
    queries = dashboard_queries()
    assert len(queries) >= 20
    for where, expr in queries:
        try:
            names = selected_names(expr)
        except ValueError as exc:
            pytest.fail(f"{where}: not PromQL ({exc}): {expr}")
        assert names, f"{where}: selects no metric: {expr}"
        unknown = sorted(set(names) - known)
        assert not unknown, f"{where}: {unknown} are not exported by vmguard.metrics"


def test_every_rule_expression_parses_and_names_only_exported_metrics() -> None:
    known = exported_names() | recorded_names() | PROMETHEUS_SERIES
    for rule in rules():
        where = rule.get("alert") or rule["record"]
        try:
            names = selected_names(rule["expr"])
        except ValueError as exc:
            pytest.fail(f"{where}: not PromQL ({exc})")
        unknown = sorted(set(names) - known)
        assert not unknown, f"{where}: {unknown} are not exported by vmguard.metrics"


def test_the_checks_can_fail() -> None:
    """The parser rejects what Prometheus rejects, and the lookup misses a made-up name."""
    with pytest.raises(ValueError):
        selected_names("topk(5, (time() - x) > 0 * on(a) group_left(b) y)")
    assert selected_names("rate(vmguard_nonexistent_total[5m])") == ["vmguard_nonexistent_total"]
    assert "vmguard_nonexistent_total" not in exported_names()


def test_every_dashboard_panel_reads_the_chosen_data_source() -> None:
    for panel in panels(dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
