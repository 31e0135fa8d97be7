"""The proxy's transport, decided from the namespace's labels before any Job exists:
privileged (hot-add capable) only where the platform labelled the namespace for it and
Pod Security admits privileged pods; ``auto`` becomes NBD elsewhere, a demanded hot-add
is refused with a reason that names what refuses it."""

from __future__ import annotations

import pytest

from vmguard.api import LABEL_PRIVILEGED_PROXIES
from vmguard.controller.backup.transport import choose_transport, on_nodes
from vmguard.controller.kube.podsecurity import PSS_ENFORCE

pytestmark = pytest.mark.unit

ALLOWED = {LABEL_PRIVILEGED_PROXIES: "true"}


def test_nbd_is_nbd_anywhere() -> None:
    for labels in ({}, ALLOWED, {PSS_ENFORCE: "restricted"}):
        got = choose_transport("nbd", "ns", labels)
        assert (got.transport, got.refused) == ("nbd", "")


@pytest.mark.parametrize("requested", ["auto", "hotadd"])
def test_a_labelled_namespace_gets_what_the_policy_asks(requested: str) -> None:
    for labels in (ALLOWED, {**ALLOWED, PSS_ENFORCE: "privileged"}):
        got = choose_transport(requested, "backup", labels)
        assert (got.transport, got.refused) == (requested, "")
        assert LABEL_PRIVILEGED_PROXIES in got.reason


@pytest.mark.parametrize("level", ["restricted", "baseline"])
def test_pod_security_that_refuses_privileged_pods_wins_over_the_label(level: str) -> None:
    labels = {**ALLOWED, PSS_ENFORCE: level}
    auto = choose_transport("auto", "backup", labels)
    assert (auto.transport, auto.refused) == ("nbd", "")
    hot = choose_transport("hotadd", "backup", labels)
    assert hot.refused == "PodSecurity"
    assert "Pod Security" in hot.reason and repr(level) in hot.reason and "backup" in hot.reason


def test_without_the_label_auto_is_nbd_and_hotadd_is_refused_naming_the_label() -> None:
    auto = choose_transport("auto", "backup", {PSS_ENFORCE: "privileged"})
    assert (auto.transport, auto.refused) == ("nbd", "")
    assert f"{LABEL_PRIVILEGED_PROXIES}=true" in auto.reason
    hot = choose_transport("hotadd", "backup", {})
    assert hot.refused == "PrivilegedProxiesNotAllowed"
    assert f"{LABEL_PRIVILEGED_PROXIES}=true" in hot.reason


def test_a_privileged_proxy_only_on_nodes_that_can_hot_add_and_pinned_there() -> None:
    allowed = choose_transport("auto", "backup", ALLOWED)
    pinned = on_nodes(allowed, ["node-b"], {"node-a": "not a VM"})
    assert (pinned.transport, pinned.nodes, pinned.refused) == ("auto", ("node-b",), "")
    assert "node-b" in pinned.reason


def test_no_node_that_can_hot_add_makes_auto_nbd_and_fails_a_demanded_hotadd() -> None:
    why_not = {f"node-{i}": "the proxy is not a virtual machine (no BIOS UUID)" for i in range(5)}
    auto = on_nodes(choose_transport("auto", "backup", ALLOWED), [], why_not)
    assert (auto.transport, auto.nodes, auto.refused) == ("nbd", (), "")
    assert "node-0: the proxy is not a virtual machine" in auto.reason and "2 more" in auto.reason
    hot = on_nodes(choose_transport("hotadd", "backup", ALLOWED), [], {})
    assert (hot.transport, hot.refused) == ("hotadd", "NoHotAddNode")
    assert "no node" in hot.reason


def test_nbd_and_refused_choices_are_left_alone() -> None:
    nbd = choose_transport("nbd", "backup", ALLOWED)
    assert on_nodes(nbd, [], {}) == nbd
    refused = choose_transport("hotadd", "backup", {})
    assert on_nodes(refused, ["node-a"], {}) == refused
