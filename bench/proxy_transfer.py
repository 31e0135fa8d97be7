"""One backup proxy's transfer, as its own process: what ``bench/mover.py`` times for the
path the product runs (one process moves every disk of a VM).

    python bench/proxy_transfer.py '<TransferRequest as JSON>'

It starts as the proxy Job's process does — the ``vmguard`` command line (the whole
parser) and the backup proxy's module, with everything they import (pyVmomi, the
Kubernetes client, the engine) — reads vCenter, the repository and the disk locator from
the Job's environment contract (``vmguard.proxy.environment``), logs in to vCenter and
runs :func:`vmguard.vm.backup.transfer` over every disk of the snapshot, committing one
archive. Left out, because they need a cluster: reading the VMGuardBackup and patching its
status (a few small requests). The snapshot is taken and removed by the caller, as the
operator does in production. Prints the archive id, mode and bytes read as JSON.
Not part of the test run.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from vmguard.proxy.environment import endpoint_from, job_locator, repository_from
from vmguard.vm.backup import TransferRequest, transfer
from vmguard.vsphere.session import VSphereSession


def main() -> None:
    # The proxy runs as `vmguard proxy backup`: the command line, then the proxy's module.
    for module in ("vmguard.cli.main", "vmguard.proxy.backup"):
        importlib.import_module(module)
    fields = json.loads(sys.argv[1])
    fields["backings"] = {int(k): v for k, v in fields.get("backings", {}).items()}
    request = TransferRequest(**fields)
    env = os.environ
    endpoint = endpoint_from(env)
    repo = repository_from(env)
    locator = job_locator(env, endpoint)
    session = VSphereSession(endpoint)
    try:
        result = transfer(session, repo, locator, request)
    finally:
        session.close()
    stats = result.manifest.stats
    print(
        json.dumps(
            {
                "archive_id": result.manifest.archive_id,
                "mode": result.mode,
                "disks": len(result.manifest.disks),
                "bytes_read": stats.bytes_read,
            }
        )
    )


if __name__ == "__main__":
    main()
