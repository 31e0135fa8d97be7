"""Where a verification may check file systems (controller/kube/podsecurity.py: pure, no
lab), and the policy's ``VerificationReady`` that says so before any backup.

File systems are checked through FUSE, which needs a privileged pod: the same consent as
a hot-add proxy (the namespace labelled ``vmguard.io/privileged-proxies=true``, its Pod
Security level admitting privileged pods). Elsewhere the check is refused with a reason
naming Pod Security or the missing label.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from vmguard.api import LABEL_PRIVILEGED_PROXIES
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.podsecurity import PSS_ENFORCE, fsck_refused
from vmguard.controller.policy.judgement import verification_ready

pytestmark = pytest.mark.unit

ALLOWED = {LABEL_PRIVILEGED_PROXIES: "true"}


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_a_namespace_enforcing_baseline_or_restricted_refuses_fsck_naming_pod_security(
    level: str,
) -> None:
    refusal = fsck_refused("backup", {**ALLOWED, PSS_ENFORCE: level})
    assert refusal is not None
    reason, message = refusal
    assert reason == "PodSecurity"
    assert "Pod Security admission refuses privileged pods in namespace backup" in message
    assert f"'{level}'" in message and "FUSE" in message
    assert "spec.verification.fsck: false" in message


def test_fsck_needs_the_platforms_consent_and_has_it_where_hot_add_has() -> None:
    refusal = fsck_refused("backup", {})
    assert refusal is not None and refusal[0] == "PrivilegedProxiesNotAllowed"
    assert LABEL_PRIVILEGED_PROXIES in refusal[1]
    assert fsck_refused("backup", ALLOWED) is None
    assert fsck_refused("backup", {**ALLOWED, PSS_ENFORCE: "privileged"}) is None


def _ready(verification: dict[str, Any], labels: dict[str, str]) -> tuple[bool, str, str]:
    # Without YARA rules the judgement reads nothing from the API: no client is needed.
    no_api = cast(KubeAPI, None)
    return asyncio.run(verification_ready(no_api, "t", verification, "UTC", ("jobs", labels)))


def test_the_policys_verification_ready_says_when_file_systems_may_not_be_checked() -> None:
    ok, reason, message = _ready({}, {PSS_ENFORCE: "restricted"})  # fsck is the default
    assert (ok, reason) == (False, "PodSecurity"), message
    assert "namespace jobs" in message and message.endswith("verifications end as Error")
    assert _ready({}, ALLOWED)[:2] == (True, "Valid")
    # A policy that does not check file systems needs no privilege.
    assert _ready({"fsck": False}, {PSS_ENFORCE: "restricted"})[:2] == (True, "Valid")


def test_every_problem_of_a_verification_is_named_not_only_the_first() -> None:
    """A boot test without an isolated network, a bad schedule and file-system checks
    Pod Security refuses: the condition's reason is the first problem's, and its message
    names all three (before, a user learnt of the next only after fixing the first)."""
    verification = {"boot": {"timeout": "5m"}, "every": "not a cron line"}
    ok, reason, message = _ready(verification, {PSS_ENFORCE: "restricted"})
    assert (ok, reason) == (False, "BootWithoutIsolatedNetwork")
    assert "names no isolatedNetwork" in message
    assert "verification.every:" in message
    assert "Pod Security admission refuses privileged pods in namespace jobs" in message
