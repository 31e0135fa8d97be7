"""``ProtectedVM``: one VM's restore points, as one compact object.

The repository is the record of what was backed up (docs/repository-format.md, §6 and
catalog sync); a ProtectedVM is its view in the cluster, one per VM and namespace that
has a point (docs/resource-model.md, "Restore points at scale: the decision"). Only the
operator writes it: there is nothing to set in ``spec``, and tenants may read it but not
change it (the chart's aggregated roles). Its ``status.points`` holds one entry per
restore point, newest first, keyed by ``archiveId``: where the point is
(``repository``), when (the snapshot's time), how it was read (``mode``), what it added to
the repository (``bytes``), its copies in other repositories and its last verification.
The list is bounded (:data:`MAX_POINTS`, far below the apiserver's object size limit):
5,000 VMs with 30 points each are 5,000 objects, not 150,000.

Conditions: ``Ready`` (the VM has a good point; kstatus reads the kind as one that
stands, like a VCenter), ``Protected`` (the same fact, named for what it means), and, as
they are written (``WithinRPO``, ``Verified``, ``CopiesCurrent``) by the controllers that
know them.
"""

from __future__ import annotations

from vmguard.api import CopyState, VerificationResult
from vmguard.api.kinds import PROTECTEDVM
from vmguard.crds import fields as f
from vmguard.crds.definition import Kind, column, ready_column
from vmguard.crds.schema import array, integer, number, obj, string, timestamp

MAX_POINTS = 1000
"""``status.points`` maxItems: more than any retention keeps of one VM (a year of dailies,
two of hourlies), and at ≈ 300 bytes a point far below the object size limit."""
MAX_COPIES = 16
MAX_CHECKS = 32
MODES = ["full", "incremental", "fullScan"]
COPY_STATES = [s.value for s in CopyState]
"""The states of a VMGuardBackup's ``status.copies[]``, which points[].copies[] mirrors."""
# "Damaged" was reserved before verification was built; kept so no stored object turns
# invalid. The others are vmguard.api.VerificationResult.
VERIFICATION_RESULTS = [*(r.value for r in VerificationResult), "Damaged"]
RPO_STATES = ["Within", "Outside", "Unknown"]

ARCHIVE_ID = string("Id of the archive in its repository.", max_length=128)

point = obj(
    "One restore point: an archive of the VM in a repository.",
    {
        "archiveId": ARCHIVE_ID,
        "repository": string("The VMGuardRepository that holds the archive.", max_length=63),
        "repositoryNamespace": string(
            "Its namespace, when not the ProtectedVM's (a shared repository).", max_length=63
        ),
        "time": timestamp("The point in time: when the snapshot was taken."),
        "mode": string("How the disks were read.", max_length=16, enum=MODES),
        "bytes": integer(
            "Bytes this point added to its repository (compressed, new chunks only).",
            minimum=0,
            int64=True,
        ),
        "backup": string(
            "The VMGuardBackup (one run) that made the point; cleared when that run expires.",
            max_length=253,
        ),
        "policy": string("The VMProtectionPolicy the point was made under.", max_length=63),
        "copies": array(
            "Copies of the archive in other repositories (3-2-1).",
            obj(
                None,
                {
                    "repository": string("The VMGuardRepository of the copy.", max_length=63),
                    "state": string("Where the copy is.", max_length=16, enum=COPY_STATES),
                    "time": timestamp("When the copy reached its state."),
                    "bytes": integer("Bytes the copy wrote.", minimum=0, int64=True),
                    "archiveId": string("The copy's archive id in its repository.", max_length=128),
                    "attempts": integer("Copy Jobs started for it.", minimum=0),
                },
                required=["repository"],
            ),
            max_items=MAX_COPIES,
            list_type="map",
            map_keys=["repository"],
        ),
        "verification": obj(
            "The point's last verification.",
            {
                "result": string("The outcome.", max_length=16, enum=VERIFICATION_RESULTS),
                "time": timestamp("When it was verified."),
                "checks": array(
                    "The checks that ran: fsck, yara.",
                    string(max_length=63),
                    max_items=MAX_CHECKS,
                ),
                "findings": f.verification_findings(f.MAX_POINT_FINDINGS),
                "boot": obj(
                    "The boot test's outcome.",
                    {
                        "result": string("The outcome.", max_length=16, enum=VERIFICATION_RESULTS),
                        "exitCode": integer("The check script's exit code."),
                        "recoveryTimeSeconds": number("The measured recovery time.", minimum=0),
                    },
                ),
            },
        ),
    },
    required=["archiveId", "repository", "time"],
)

spec = obj(
    "Nothing to set: the operator creates and writes ProtectedVMs (everything is in status).",
    {},
)

status = obj(
    "The VM, its policy and its restore points.",
    {
        "observedGeneration": f.observed_generation(),
        "conditions": f.conditions(),
        "vm": f.vm_identity("The VM (as its newest point recorded it).", required=False),
        "vcenter": string("Name of the VM's VCenter.", max_length=63),
        "policy": string("The policy of the VM's newest point.", max_length=63),
        "lastGoodPoint": obj(
            "The newest point that no verification found bad.",
            {"archiveId": ARCHIVE_ID, "time": timestamp("The point in time.")},
        ),
        "rpo": obj(
            "The VM's recovery point objective, as its policy sets it.",
            {
                "objectiveSeconds": integer("The objective.", minimum=0, int64=True),
                "due": timestamp("When the VM falls outside it without a new point."),
                "state": string("Within, Outside or Unknown.", max_length=16, enum=RPO_STATES),
            },
        ),
        "pointCount": integer("How many points status.points holds.", minimum=0),
        "points": array(
            "The restore points, newest first.",
            point,
            max_items=MAX_POINTS,
            list_type="map",
            map_keys=["archiveId"],
        ),
    },
)

KIND = Kind(
    names=PROTECTEDVM,
    description="One protected VM and its restore points, newest first.",
    spec=spec,
    status=status,
    columns=[
        column("VM", ".status.vm.name", "VM name."),
        column("Policy", ".status.policy", "Policy of the newest point."),
        column(
            "Last-Good-Point",
            ".status.lastGoodPoint.time",
            "When the newest good point was taken.",
            type_="date",
        ),
        column("Points", ".status.pointCount", "Restore points held.", type_="integer"),
        ready_column(),
        column("Repository", ".status.points[0].repository", "Newest point's.", priority=1),
    ],
)
