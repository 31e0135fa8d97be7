"""The verification Job's builder (controller/backup/builders.py: build_verify_job) and the
proxy's one-word verdict (proxy/verify.py): pure, no lab."""

from __future__ import annotations

from typing import Any

import pytest

from vmguard.config import ProxySettings
from vmguard.controller.backup.builders import build_verify_job, verify_job_name
from vmguard.controller.backup.verification import point_verification, verified_condition
from vmguard.proxy.contract import VERIFY_RULES_DIR
from vmguard.proxy.verify import findings, refused, verdict
from vmguard.verify.results import Check, CheckResult, Outcome, PointVerification

pytestmark = pytest.mark.unit

BACKUP: dict[str, Any] = {
    "apiVersion": "vmguard.io/v1alpha1",
    "kind": "VMGuardBackup",
    "metadata": {"name": "gold-web01-20261206t0100z", "namespace": "ns", "uid": "u-1"},
    "spec": {"policyRef": {"name": "gold"}},
    "status": {"archiveId": "vm-1-20261206T010000Z"},
}
SETTINGS = ProxySettings(
    image="vmguard-proxy:1.2.3",
    command=("vmguard",),
    locator="vddk",
    service_account="vmguard-proxy",
    image_pull_policy="IfNotPresent",
)
REPO = {
    "s3": {"endpoint": "minio:9000", "bucket": "b", "insecure": True},
    "credentialsSecretRef": {"name": "s3"},
}


def test_the_verify_job_runs_the_checks_on_the_backups_archive_with_the_rules_mounted() -> None:
    job = build_verify_job(BACKUP, SETTINGS, repository=REPO, fsck=True, rules_config_map="rules")
    assert job["metadata"]["name"] == verify_job_name(BACKUP["metadata"]["name"])
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == [
        "proxy",
        "verify",
        "--namespace",
        "ns",
        "--name",
        "gold-web01-20261206t0100z",
        "--fsck",
        "--yara",
        VERIFY_RULES_DIR,
    ]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == VERIFY_RULES_DIR)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"] == {"name": "rules"} and mount["readOnly"]
    # file systems are checked through FUSE: a privileged pod (where allowed; the caller
    # decides, vmguard.controller.kube.podsecurity)
    assert container["securityContext"]["privileged"] is True
    # No secret value: credentials by reference only.
    env = {e["name"]: e for e in container["env"]}
    assert all("value" not in e for n, e in env.items() if "SECRET" in n or "ACCESS" in n)
    fsck_only = build_verify_job(
        BACKUP, SETTINGS, repository=REPO, fsck=True, rules_config_map=None
    )
    args = fsck_only["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--yara" not in args and args[-1] == "--fsck"


def test_a_scan_alone_runs_restricted_and_a_refused_fsck_is_passed_on_to_the_proxy() -> None:
    """Where file systems may not be checked the Job scans in a restricted pod and tells
    the proxy why the file systems asked for are not checked (it reports that as Error)."""
    job = build_verify_job(
        BACKUP,
        SETTINGS,
        repository=REPO,
        fsck=False,
        rules_config_map="rules",
        fsck_refused="Pod Security admission refuses privileged pods in namespace ns",
    )
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "--fsck" not in container["args"]
    assert container["args"][-2:] == [
        "--fsck-refused",
        "Pod Security admission refuses privileged pods in namespace ns",
    ]
    security = container["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["readOnlyRootFilesystem"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_a_refused_fsck_is_no_verdict_but_a_match_still_says_infected() -> None:
    why = "file-system checks mount each volume with FUSE, which needs a privileged pod"
    clean = PointVerification("a", "web01")
    clean.results = [_result(Check.YARA, Outcome.PASSED)]
    result, found = refused(verdict(clean), findings(clean), why)
    assert result == "Error"
    assert found == [{"check": "fsck", "message": f"error: not run: {why}"}]
    infected = PointVerification("a", "web01")
    infected.results = [
        _result(
            Check.YARA,
            Outcome.FAILED,
            findings=[{"message": "matches eicar", "path": "/x", "rule": "eicar"}],
        )
    ]
    result, found = refused(verdict(infected), findings(infected), why)
    assert result == "Infected"
    assert [f.get("rule") for f in found] == ["eicar", None], found


def _result(check: Check, outcome: Outcome, **kw: Any) -> CheckResult:
    return CheckResult(check, "2000", "p1", outcome, 0.1, **kw)


def test_a_match_makes_the_point_infected_and_names_volume_path_and_rule() -> None:
    point = PointVerification("a", "web01")
    point.results = [
        _result(Check.FSCK, Outcome.PASSED),
        _result(
            Check.YARA,
            Outcome.FAILED,
            findings=[{"message": "matches eicar", "path": "/srv/x.bin", "rule": "eicar"}],
        ),
    ]
    assert verdict(point) == "Infected"
    assert findings(point) == [
        {
            "disk": "2000",
            "volume": "p1",
            "check": "yara",
            "path": "/srv/x.bin",
            "rule": "eicar",
            "message": "matches eicar",
        }
    ]
    recorded = point_verification(
        {"result": "Infected", "checks": ["fsck", "yara"], "findings": findings(point) * 9},
        "2026-12-06T02:00:00Z",
    )
    assert recorded["result"] == "Infected" and len(recorded["findings"]) == 5


def test_damage_fails_and_no_verdict_is_an_error_not_a_pass() -> None:
    damaged = PointVerification("a", "web01")
    damaged.results = [
        _result(Check.FSCK, Outcome.FAILED, findings=[{"message": "Bad magic number"}]),
        _result(Check.YARA, Outcome.PASSED),
    ]
    assert verdict(damaged) == "Failed"
    assert findings(damaged)[0]["message"] == "failed: Bad magic number"
    unknown = PointVerification("a", "web01")
    unknown.results = [_result(Check.FSCK, Outcome.ERROR, findings=[{"message": "no e2fsck"}])]
    assert verdict(unknown) == "Error"
    clean = PointVerification("a", "web01")
    clean.results = [_result(Check.FSCK, Outcome.PASSED), _result(Check.YARA, Outcome.SKIPPED)]
    assert verdict(clean) == "Passed" and findings(clean) == []


@pytest.mark.parametrize(
    ("result", "status"),
    [("Passed", "True"), ("Failed", "False"), ("Infected", "False"), ("Error", "Unknown")],
)
def test_the_verified_condition(result: str, status: str) -> None:
    [c] = verified_condition([], result, "m", 1, "2026-12-06T02:00:00Z")
    assert (c["type"], c["status"], c["reason"]) == ("Verified", status, result)
