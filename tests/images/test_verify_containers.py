"""A verification Job that checks file systems, run as a real container from the built
proxy image (the lab node agent's container mode: podman + runc, as a kubelet with a CRI
runtime runs a pod; docs/verification.md, "Where file systems are checked").

The namespace is labelled for privileged proxies, so the operator gives the Job a
privileged pod running as root, which the node agent runs as ``podman --privileged``:
FUSE works there. A clean ext4 point passes; one with a damaged ext4 superblock fails
naming the volume and e2fsck's message — so the checker really ran on the volume through
nbdkit's Python plugin and nbdfuse inside the image. What podman ran the pods with is
checked. (The operator runs as a process; its proxies' pods carry the container mode's
annotation.)
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.controller import objects
from tests.controller.backup_helpers import data_vm
from tests.controller.conftest import (  # noqa: F401 - fixtures
    OperatorProcess,
    lab_repository,
    lab_vcenter,
    start_operator,
)
from tests.controller.test_verification import SPEC
from tests.controller.test_verify_pod_security import NOBODY, SEED, _back_up, _ready
from tests.images.test_install_restricted import _ran_with
from vmguard.api import LABEL_PRIVILEGED_PROXIES
from vmguard.controller.kube.podsecurity import PSS_ENFORCE
from vmguard_lab.containers import ANNOTATION, CONTAINER
from vmguard_lab.imaging import damage

pytestmark = [pytest.mark.lab, pytest.mark.operator_controllers("backups,policies,repositories")]


@pytest.fixture
def namespace(kube_api: Any, vmguard_crds: None) -> str:
    """A namespace for privileged proxies, whose Pod Security level admits them."""
    name = f"t-fsck-ctr-{secrets.token_hex(3)}"
    labels = {LABEL_PRIVILEGED_PROXIES: "true", PSS_ENFORCE: "privileged"}
    client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": name, "labels": labels}})
    return name


def test_a_privileged_verification_container_checks_file_systems_through_fuse(
    built_images: dict[str, dict[str, Any]],
    lab: Any,
    kube_api: Any,
    namespace: str,
    lab_vcenter: str,  # noqa: F811
    lab_repository: str,  # noqa: F811
    start_operator: Callable[..., OperatorProcess],  # noqa: F811
    vc: Any,
    vsim: Any,
    image_factory: Any,
    tmp_path: Path,
) -> None:
    ns = namespace
    start_operator(
        extra_env={
            "VMGUARD_PROXY_IMAGE": built_images["proxy-lab"]["ref"],
            "VMGUARD_PROXY_COMMAND": json.dumps(["vmguard"]),
            "VMGUARD_PROXY_POD_ANNOTATIONS": json.dumps({ANNOTATION: CONTAINER}),
        }
    )
    objects.create_policy(kube_api, ns, "fsck", selector=NOBODY, verification={"fsck": True})
    assert _ready(kube_api, ns, "fsck", "True")["reason"] == "Valid"
    with data_vm(vc, vsim, image_factory, tmp_path, spec=SPEC) as vm:
        clean = _back_up(kube_api, ns, "clean", vm.moref, "fsck")["status"]["verification"]
        image = image_factory.build(SPEC.next_point(1), SEED, tmp_path / "damaged.img")
        damage.damage_ext4_superblock(image.path, image.partition(2).offset)
        vsim.put_image(vm.moref, vm.disks[0].key, str(image.path))
        broken = _back_up(kube_api, ns, "broken", vm.moref, "fsck")["status"]["verification"]
    assert (clean["result"], clean["findings"]) == ("Passed", []), clean
    assert broken["result"] == "Failed", broken
    assert [(f["volume"], f["check"]) for f in broken["findings"]] == [("p2", "fsck")], broken
    assert "e2fsck exited 8" in broken["findings"][0]["message"], broken
    # Every pod ran as a container of the built image: the backups' restricted, the
    # verifications' privileged as root.
    ran = _ran_with(lab, ns)
    pods = {p.metadata.name: p for p in client.CoreV1Api(kube_api).list_namespaced_pod(ns).items}
    assert set(ran) == set(pods), (sorted(ran), sorted(pods))
    verifying = {n for n, p in pods.items() if p.metadata.labels["job-name"].startswith("vmv-")}
    assert len(verifying) == 2, sorted(pods)
    for pod_name, report in sorted(ran.items()):
        shown = {k: report.get(k) for k in ("ImageName", "User", "Privileged", "ReadonlyRootfs")}
        print(pod_name, json.dumps(shown))
        assert report["ImageName"].endswith(built_images["proxy-lab"]["ref"].split("/")[-1])
        if pod_name in verifying:
            assert (report["Privileged"], report["User"]) == (True, "0"), pod_name
        else:
            assert (report["Privileged"], report["User"]) == (False, "65532:65532"), pod_name
