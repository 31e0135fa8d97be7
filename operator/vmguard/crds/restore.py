"""``VMGuardRestore``: bring a VMGuardBackup back as a new VM, over the VM, as disks, or as files.

Exactly one target is set (CEL). Restores that overwrite — ``inPlace`` and disks with
``overwrite`` — need an explicit ``confirm: true``, because a typo there destroys the
data the backup was meant to protect. The spec never changes after creation: a
restore that already wrote half a disk cannot be redirected.
"""

from __future__ import annotations

from vmguard.api import RestorePhase
from vmguard.api.kinds import RESTORE
from vmguard.crds import fields as f
from vmguard.crds.definition import Kind, column, ready_column, ready_reason_column
from vmguard.crds.schema import (
    Schema,
    array,
    boolean,
    enum,
    exactly_one,
    immutable,
    integer,
    obj,
    rule,
    string,
    timestamp,
)

PHASES = [phase.value for phase in RestorePhase]

_confirm = boolean("Must be true: this overwrites data on the VM.")
_confirm_rule = rule("self.confirm == true", "set confirm: true to overwrite the VM's disks")


def _disk_selector(description: str) -> Schema:
    return obj(
        description,
        {
            "key": integer("Device key of the disk in the backup, e.g. 2000.", minimum=0),
            "label": string("Device label, e.g. 'Hard disk 2'.", min_length=1, max_length=255),
        },
        rules=[exactly_one(["key", "label"], "disk")],
    )


network_mapping = obj(
    "Connect NICs that were on network `from` to network `to`.",
    {
        "from": f.inventory_name("Network name in the backup."),
        "to": f.inventory_name("Network (or distributed port group) to use instead."),
    },
    required=["from", "to"],
)

new_vm = obj(
    "Create a new VM from the backup. Placement fields default to the original VM's.",
    {
        "name": f.vm_name("Name of the new VM (any unicode, slashes included)."),
        "folder": f.inventory_path("VM folder, e.g. /DC0/vm/restored."),
        "resourcePool": f.inventory_name("Resource pool (name or inventory path)."),
        "host": f.inventory_name("ESXi host (name or inventory path)."),
        "datastore": f.inventory_name("Datastore for the VM's files and disks."),
        "networkMap": array(
            "Network remapping; unmapped NICs keep their network.",
            network_mapping,
            min_items=1,
            max_items=64,
            list_type="map",
            map_keys=["from"],
        ),
        "isolatedNetwork": f.inventory_name(
            "Connect every NIC to this network (or distributed port group) instead, "
            "whatever it was on: a sandbox copy (the boot test's temporary VMs use it). "
            "Not with networkMap."
        ),
        "powerOn": boolean("Power the VM on once restored.", default=False),
    },
    required=["name"],
    rules=[
        rule(
            "!(has(self.isolatedNetwork) && has(self.networkMap))",
            "newVM: isolatedNetwork or networkMap, not both",
        )
    ],
)

disk_target = obj(
    "One disk of the backup and where it goes.",
    {
        "source": _disk_selector("Which disk of the backup."),
        "attachTo": obj(
            "Attach the restored disk as a new disk to this VM.",
            {
                "vm": f.vm_identity("The VM to attach to.", required=True),
                "datastore": f.inventory_name("Datastore for the new disk file."),
            },
            required=["vm"],
        ),
        "overwrite": obj(
            "Write the disk back over the same disk of the original VM (powered off).",
            {"confirm": _confirm},
            required=["confirm"],
            rules=[_confirm_rule],
        ),
    },
    required=["source"],
    rules=[exactly_one(["attachTo", "overwrite"], "disks[]")],
)

files = obj(
    "Copy files out of the backup's file systems without restoring a disk.",
    {
        "disk": _disk_selector("Only this disk (default: every disk)."),
        "partition": integer(
            "Only this partition of the disk, numbered from 1 as in the partition table "
            "(default: every file system found).",
            minimum=1,
            maximum=128,
        ),
        "paths": array(
            "Paths or globs from the root of each file system, with / as separator and "
            "no drive letter (the backup knows partitions, not the guest's mounts or "
            "drive letters), e.g. /etc/nginx/** or /Users/*/Documents.",
            string(
                min_length=1,
                max_length=4096,
                rules=[rule("self.startsWith('/')", "paths start at a file system's root: /")],
            ),
            min_items=1,
            max_items=256,
        ),
        "to": obj(
            "Where the files go (exactly one).",
            {
                "s3": obj(
                    "Objects under a prefix, in the source repository's S3 service.",
                    {
                        "bucket": f.bucket("Bucket (default: the repository's)."),
                        "prefix": f.key_prefix(
                            "Key prefix for the restored files; the operator refuses one "
                            "inside the repository's own prefix."
                        ),
                    },
                    required=["prefix"],
                ),
                "pvc": obj(
                    "A PersistentVolumeClaim in this namespace.",
                    {
                        "claimName": f.object_name("Name of the PVC.", label=False),
                        "path": string(
                            "Directory inside the volume (default: its root).",
                            max_length=4096,
                            rules=[
                                rule(
                                    "!self.split('/').exists(s, s == '..')",
                                    "path must stay inside the volume (no ..)",
                                )
                            ],
                        ),
                    },
                    required=["claimName"],
                ),
            },
            rules=[exactly_one(["s3", "pvc"], "files.to")],
        ),
    },
    required=["paths", "to"],
    rules=[
        rule(
            "!has(self.partition) || has(self.disk)",
            "files.partition needs files.disk: partitions are numbered per disk",
            field_path=".partition",
        )
    ],
)

target = obj(
    "Where the backup goes: exactly one of newVM, inPlace, disks, files.",
    {
        "newVM": new_vm,
        "inPlace": obj(
            "Overwrite the original VM's disks with the backup (the VM is powered off "
            "first, and powered on again if it was on).",
            {"confirm": _confirm},
            required=["confirm"],
            rules=[_confirm_rule],
        ),
        "disks": array(
            "Restore single disks.",
            disk_target,
            min_items=1,
            max_items=64,
        ),
        "files": files,
    },
    rules=[exactly_one(["newVM", "inPlace", "disks", "files"], "target")],
)

spec = obj(
    "What to restore and where. Immutable.",
    {
        "source": obj(
            "The restore point: a VMGuardBackup (while that run exists), or a point of a "
            "ProtectedVM named by its archive id or by a time (the newest point at or "
            "before it).",
            {
                "backupRef": f.local_ref(
                    "The VMGuardBackup to restore.", "VMGuardBackup", label=False
                ),
                "repositoryRef": f.local_ref(
                    "Read the backup from this repository: its own, or one of its policy's "
                    "copy targets holding a completed copy (status.copies of the backup). "
                    "Default: its own, and when that is unreachable or lost a copy that "
                    "holds the point (status.repository says which was read).",
                    "VMGuardRepository",
                    label=True,
                ),
                "protectedVM": f.object_name(
                    "The ProtectedVM whose point to restore (kubectl get protectedvms).",
                    label=True,
                ),
                "archiveId": string(
                    "The point's archive id (status.points[].archiveId).", max_length=128
                ),
                "at": timestamp(
                    "Restore the newest point taken at or before this time (RFC 3339)."
                ),
                "latestClean": boolean(
                    "Restore the newest point whose verification passed "
                    "(status.points[].verification.result Passed: no file system damaged, "
                    "no YARA rule matched)."
                ),
            },
            rules=[
                rule(
                    "has(self.backupRef) ? !has(self.protectedVM) && !has(self.archiveId) && "
                    "!has(self.at) && !has(self.latestClean) : has(self.protectedVM) && "
                    "(has(self.archiveId) ? 1 : 0) + (has(self.at) ? 1 : 0) + "
                    "(has(self.latestClean) && self.latestClean ? 1 : 0) == 1",
                    "source: give backupRef, or protectedVM with exactly one of archiveId, at "
                    "and latestClean: true",
                )
            ],
        ),
        "vcenterRef": f.object_ref(
            "vCenter to restore into (default: the backup's; the ProtectedVM's for a point).",
            "VCenter",
        ),
        "target": target,
    },
    required=["source", "target"],
    rules=[immutable("VMGuardRestore spec")],
)

status = obj(
    "Progress and outcome of the restore.",
    {
        "observedGeneration": f.observed_generation(),
        "conditions": f.conditions(),
        "phase": enum("Where the restore is.", PHASES),
        "archiveId": string(
            "The archive restored (from the VMGuardBackup, recorded when the restore starts).",
            max_length=128,
        ),
        "vcenter": string("Name of the VCenter restored into.", max_length=63),
        "repository": string("Name of the VMGuardRepository read.", max_length=63),
        "vcenterNamespace": string(
            "Namespace of the VCenter restored into, when not this one.", max_length=63
        ),
        "repositoryNamespace": string(
            "Namespace of the VMGuardRepository read, when not this one.", max_length=63
        ),
        "jobNamespace": string(
            "Namespace the restore Job runs in, when not this one (the credentials').",
            max_length=63,
        ),
        "powerOnAfter": boolean(
            "Whether Finalizing powers the VM on: newVM.powerOn, or an in-place target "
            "that was on before the restore powered it off."
        ),
        "jobName": string("The restore Job.", max_length=63),
        "placement": f.placement(
            "Where the restore writes (the target VM's host, the written disks per "
            "datastore); the admission limits count by it."
        ),
        "queuePosition": f.queue_position(),
        "progress": f.progress("restore"),
        "result": obj(
            "What the restore produced.",
            {
                "vm": f.vm_identity("The VM restored into or created.", required=False),
                "disks": array(
                    "Disks written.",
                    obj(
                        None,
                        {
                            "sourceKey": integer(
                                "Device key of the disk in the backup.", minimum=0
                            ),
                            "vm": string("Moref of the VM the disk belongs to.", max_length=64),
                            "key": integer("Device key of the disk written.", minimum=0),
                            "label": string(max_length=255),
                            "backing": string(max_length=2048),
                            "bytesWritten": integer(minimum=0, int64=True),
                        },
                    ),
                    max_items=256,
                ),
                "filesRestored": integer(minimum=0, int64=True),
                "bytesRestored": integer(minimum=0, int64=True),
                "location": string(
                    "Where restored files are (s3://bucket/prefix or pvc/claim:path).",
                    max_length=4096,
                ),
            },
        ),
        "startTime": timestamp("When the restore started."),
        "completionTime": timestamp("When it reached Completed or Failed."),
        "error": f.failure(),
    },
)

KIND = Kind(
    names=RESTORE,
    description="A restore of a VMGuardBackup: as a new VM, in place, as disks or as files.",
    spec=spec,
    status=status,
    columns=[
        column("Backup", ".spec.source.backupRef.name", "VMGuardBackup restored."),
        column("Protected-VM", ".spec.source.protectedVM", "ProtectedVM whose point is restored."),
        column("New-VM", ".spec.target.newVM.name", "Name of the VM to create."),
        column("Phase", ".status.phase", "Where the restore is."),
        ready_column(),
        ready_reason_column(),
        column("Progress%", ".status.progress.percent", "Percent written.", type_="integer"),
        column("Result-VM", ".status.result.vm.moref", "VM restored into.", priority=1),
    ],
)
