"""The operator reports CRDs other than the ones it was built with (controller/kube/crdcheck.py).

The lab test changes the schema hash of one installed CRD, as an upgrade that skipped
the CRDs leaves it, starts a real operator against the lab's apiserver, and finds the
report in all three places: its log, ``vmguard_crd_outdated`` on /metrics, and a
Warning Event about the CRD. The unit test covers the three ways a CRD can differ.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from tests.controller.conftest import OperatorProcess
from tests.controller.scrape import scrape, value

from vmguard.api import ANNOTATION_SCHEMA_HASH
from vmguard.controller.kube.crdcheck import EVENT_NAMESPACE, OUTDATED_REASON, compare
from vmguard.crds import KINDS
from vmguard_lab.procs import eventually


@pytest.mark.unit
def test_missing_unannotated_and_other_crds_are_outdated() -> None:
    first, second, third, *rest = KINDS
    installed: dict[str, Any] = {
        second.name: {"metadata": {"annotations": {}}},
        third.name: {"metadata": {"annotations": {ANNOTATION_SCHEMA_HASH: "0" * 16}}},
    }
    for kind in rest:
        installed[kind.name] = {
            "metadata": {"annotations": {ANNOTATION_SCHEMA_HASH: kind.schema_hash()}}
        }
    states = {s.name: s for s in compare(installed)}
    assert [n for n, s in states.items() if s.outdated] == [first.name, second.name, third.name]
    assert "is not installed" in states[first.name].message()
    assert "has no vmguard.io/schema-hash" in states[second.name].message()
    assert f"has schema {'0' * 16}, this operator expects {third.schema_hash()}" in (
        states[third.name].message()
    )
    for state in states.values():
        if state.outdated:
            assert "kubectl apply --server-side -f crds/" in state.message()


@pytest.fixture
def stale_crd(kube_api: Any, vmguard_crds: None) -> Iterator[tuple[str, str]]:
    """One installed CRD annotated with a hash this operator does not expect, as an
    earlier release left it; put back after the test. Yields (CRD name, its hash)."""
    kind = KINDS[-1]
    stale = secrets.token_hex(8)
    extensions = client.ApiextensionsV1Api(kube_api)

    def annotate(schema_hash: str) -> None:
        patch = {"metadata": {"annotations": {ANNOTATION_SCHEMA_HASH: schema_hash}}}
        extensions.patch_custom_resource_definition(kind.name, patch)

    annotate(stale)
    try:
        yield kind.name, stale
    finally:
        annotate(kind.schema_hash())


@pytest.mark.lab
@pytest.mark.operator_controllers("vcenters")
def test_an_outdated_crd_is_logged_gauged_and_posted_at_start(
    kube_api: Any, stale_crd: tuple[str, str], start_operator: Callable[..., OperatorProcess]
) -> None:
    name, stale = stale_crd
    operator = start_operator()
    samples = eventually(
        lambda: (
            s
            if value(s := scrape(operator.metrics_port), "vmguard_crd_outdated", crd=name)
            else None
        ),
        timeout=60,
        what=f"vmguard_crd_outdated{{crd={name!r}}} 1",
    )
    assert value(samples, "vmguard_crd_outdated", crd=name) == 1
    others = [kind.name for kind in KINDS if kind.name != name]
    assert [value(samples, "vmguard_crd_outdated", crd=n) for n in others] == [0] * len(others)
    # The log line and the Event follow the gauge.
    eventually(
        lambda: f"CRD {name} has schema {stale}, this operator expects" in operator.text(),
        timeout=30,
        what="the warning in the operator's log",
    )
    core = client.CoreV1Api(kube_api)
    selector = f"involvedObject.kind=CustomResourceDefinition,involvedObject.name={name}"

    def posted() -> list[Any]:
        found = core.list_namespaced_event(EVENT_NAMESPACE, field_selector=selector).items
        return [e for e in found if e.reason == OUTDATED_REASON and stale in e.message]

    events = eventually(posted, timeout=30, what=f"a {OUTDATED_REASON} event about {name}")
    try:
        (event,) = events
        assert event.type == "Warning"
        assert "kubectl apply --server-side -f crds/" in event.message
    finally:
        for e in events:
            core.delete_namespaced_event(e.metadata.name, EVENT_NAMESPACE)
