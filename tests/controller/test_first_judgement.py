"""Before the operator has judged an object: what kstatus, Argo CD and Flux read then
(docs/gitops.md).

Objects applied while no operator runs have no status at all. Once the operator sees a
VCenter or a VMGuardRepository it says at once that it is checking it (``Ready=Unknown``,
``Reconciling=True``: kstatus reads InProgress, not Current for lack of a status) and
keeps saying so while its first check waits on a peer that has not answered — here the
simulator and MinIO behind a toxiproxy that holds every byte sent to them until the test
lets them through; then the check ends and ``Ready`` is decided. The objects read here
are captured for tests/gitops/test_health.py (tests/captures.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.backup_helpers import create_backup, wait_done
from tests.controller.conftest import OperatorProcess
from tests.controller.restore_helpers import create_restore

from vmguard.api.kinds import BACKUP, POLICY, REPOSITORY, RESTORE, VCENTER
from vmguard_lab.procs import eventually

pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("vcenters,policies,repositories,backups,restores"),
]

HELD_MS = 300_000
"""How long the proxies hold what is sent to the simulator and MinIO: longer than the test
waits for (removing the toxic lets the held bytes through at once)."""


def _ready(kube_api: Any, ns: str, plural: str, name: str, status: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = objects.get(kube_api, ns, plural, name)
        return obj if objects.condition(obj, "Ready").get("status") == status else None

    found: dict[str, Any] = eventually(reached, timeout=60, what=f"{name}: Ready={status}")
    return found


def test_objects_read_in_progress_until_their_first_check_answers(
    kube_api: Any,
    lab_state: dict[str, Any],
    namespace: str,
    s3_bucket: dict[str, Any],
    toxiproxy: Any,
    minio_proxy: Any,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    sdk = lab_state["vsphere"]["sdk_url"].split("//", 1)[1].split("/", 1)[0]
    vcsim_proxy = toxiproxy.create_proxy(f"vcsim-{secrets.token_hex(4)}", sdk)
    try:
        held = [
            proxy.add_toxic("latency", "upstream", latency=HELD_MS)
            for proxy in (vcsim_proxy, minio_proxy)
        ]
        objects.create_vcenter(kube_api, lab_state, namespace, "lab", port=vcsim_proxy.port)
        bucket = {**s3_bucket, "endpoint": minio_proxy.endpoint}
        objects.create_repository(kube_api, namespace, "repo", bucket)
        gold = {"tags": [{"category": "backup-tier", "name": "gold"}]}
        objects.create_policy(kube_api, namespace, "gold", selector=gold)
        create_backup(kube_api, namespace, "ghost", {"name": "no such VM"})
        create_restore(kube_api, namespace, "early", "no-such-backup", {"newVM": {"name": "x"}})
        made = [
            (VCENTER.plural, "lab"),
            (REPOSITORY.plural, "repo"),
            (POLICY.plural, "gold"),
            (BACKUP.plural, "ghost"),
            (RESTORE.plural, "early"),
        ]
        # No operator yet: nothing has a status (kstatus: Current; Argo CD: Progressing).
        for plural, name in made:
            assert "status" not in objects.get(kube_api, namespace, plural, name), name

        start_operator()
        # Seen, and being checked, while the simulator and MinIO have not answered.
        for plural, name, reason in [
            (VCENTER.plural, "lab", "Sweeping"),
            (REPOSITORY.plural, "repo", "Checking"),
        ]:
            checking = _ready(kube_api, namespace, plural, name, "Unknown")
            assert objects.condition(checking, "Ready")["reason"] == reason
            reconciling = objects.condition(checking, "Reconciling")
            assert (reconciling["status"], reconciling["reason"]) == ("True", reason)
            assert not objects.condition(checking, "Stalled")
            assert checking["status"]["observedGeneration"] == checking["metadata"]["generation"]
        # The policy needs no peer: it is judged at once.
        assert _ready(kube_api, namespace, POLICY.plural, "gold", "True")

        for proxy, toxic in zip((vcsim_proxy, minio_proxy), held, strict=True):
            proxy.remove_toxic(toxic.name)
        swept = _ready(kube_api, namespace, VCENTER.plural, "lab", "True")
        assert swept["status"]["reachable"] is True
        assert not objects.condition(swept, "Reconciling")
        opened = _ready(kube_api, namespace, REPOSITORY.plural, "repo", "True")
        assert opened["status"]["archives"] == 0
        assert not objects.condition(opened, "Reconciling")
        # The backup and the restore applied before the operator are judged too.
        ghost = wait_done(kube_api, namespace, "ghost", timeout=60)["status"]
        assert (ghost["phase"], ghost["error"]["reason"]) == ("Failed", "VMNotFound")
        early = objects.wait_phase(kube_api, namespace, RESTORE.plural, "early", {"Pending"})
        assert objects.condition(early, "SourceReady")["reason"] == "SourceNotFound"
    finally:
        vcsim_proxy.delete()
