"""``VMGuardBackup``: one backup of one VM at one point in time.

Policies create VMGuardBackups on schedule (named deterministically, labelled with VM and
policy); people create them for an ad-hoc backup. The spec is the request and never
changes after creation (``self == oldSelf``): a different request is a different
backup. Everything the operator and the proxy Job learn on the way — phase, which mode
was used and why, per-disk bytes, snapshot, Job, archive id — is in status, so
``kubectl get vmguardbackups -w`` shows a backup move, and the catalog sync can rebuild the
object from the archive in the bucket.

Phases (:class:`vmguard.api.BackupPhase`, from which the enum is generated): Pending →
Snapshotting → Transferring → Finalizing → Completed | Failed. An archive holds every
disk of the VM or is not committed, so there is no partial outcome
(docs/resource-model.md).
"""

from __future__ import annotations

from vmguard.api import (
    MAX_BACKUP_TTL,
    BackupPhase,
    CopyState,
    VerificationPhase,
    VerificationResult,
)
from vmguard.api.kinds import BACKUP
from vmguard.crds import fields as f
from vmguard.crds.definition import Kind, column, ready_column, ready_reason_column
from vmguard.crds.schema import (
    array,
    boolean,
    enum,
    immutable,
    integer,
    number,
    obj,
    rule,
    string,
    timestamp,
)

PHASES = [phase.value for phase in BackupPhase]
MODES_USED = ["full", "incremental", "fullScan"]
MAX_DISKS = f.MAX_DISKS

spec = obj(
    "What to back up. Immutable: create a new VMGuardBackup for a new backup.",
    {
        "vm": f.vm_identity(
            "The VM. Backups the operator creates carry all three ids; for an ad-hoc "
            "backup one is enough (a name must then be unique in the vCenter), and the "
            "operator records the resolved ids in status.vm.",
            required=True,
        ),
        "policyRef": f.local_ref(
            "The policy this backup is made under: its retention, transport, quiesce and "
            "hooks apply. Without one, give vcenterRef and repositoryRef; the backup is then "
            "kept until deleted.",
            "VMProtectionPolicy",
            label=True,
        ),
        "vcenterRef": f.object_ref("The VM's vCenter (default: the policy's).", "VCenter"),
        "repositoryRef": f.object_ref(
            "Where to store the backup (default: the policy's).", "VMGuardRepository"
        ),
        "mode": enum(
            "auto: incremental from the VM's last archive when the CBT chain allows, else a "
            "full scan; full: read every allocated block, ignoring CBT.",
            ["auto", "full"],
            default="auto",
        ),
        "ttlSecondsAfterFinished": integer(
            "Delete this VMGuardBackup so long after it finished (Completed or Failed), like "
            "a Job. Its archive and its restore point (in the VM's ProtectedVM) stay. "
            "Default: the policy's spec.ttlSecondsAfterFinished, else 86400 (24 h).",
            minimum=0,
            maximum=MAX_BACKUP_TTL,
        ),
    },
    required=["vm"],
    rules=[
        immutable("VMGuardBackup spec"),
        rule(
            "has(self.policyRef) || (has(self.vcenterRef) && has(self.repositoryRef))",
            "give policyRef, or both vcenterRef and repositoryRef",
        ),
    ],
)

disk = obj(
    "One virtual disk of the backed-up VM.",
    {
        "key": integer("Device key of the disk in the VM, e.g. 2000.", minimum=0),
        "label": string("Device label, e.g. 'Hard disk 1'.", max_length=255),
        "uuid": string("Disk UUID (backing.uuid).", max_length=64),
        "backing": string(
            "Datastore path of the disk file the snapshot read, e.g. '[ds1] vm/vm.vmdk'.",
            max_length=2048,
        ),
        "datastore": string("Datastore name.", max_length=255),
        "capacityBytes": integer(minimum=0, int64=True),
        "mode": string("How this disk was read.", max_length=16, enum=MODES_USED),
        "changeId": string(
            "CBT change id recorded at the snapshot; the next incremental starts from it.",
            max_length=128,
        ),
        "bytesRead": integer("Bytes read from vSphere.", minimum=0, int64=True),
        "bytesChanged": integer("Bytes CBT reported as changed.", minimum=0, int64=True),
        "bytesUploaded": integer(
            "Bytes written to the repository (compressed, new chunks only).",
            minimum=0,
            int64=True,
        ),
        "chunksNew": integer("Chunks the repository did not have.", minimum=0, int64=True),
        "chunksReused": integer("Chunks already in the repository.", minimum=0, int64=True),
    },
    required=["key"],
)

status = obj(
    "Progress and outcome of the backup.",
    {
        "observedGeneration": f.observed_generation(),
        "conditions": f.conditions(),
        "phase": enum("Where the backup is; see the kind's description.", PHASES),
        "vm": f.vm_identity("The VM as resolved at snapshot time.", required=False),
        "vcenter": string("Name of the VCenter used.", max_length=63),
        "repository": string("Name of the VMGuardRepository used.", max_length=63),
        "vcenterNamespace": string(
            "Namespace of the VCenter used, when not this one.", max_length=63
        ),
        "repositoryNamespace": string(
            "Namespace of the VMGuardRepository used, when not this one.", max_length=63
        ),
        "jobNamespace": string(
            "Namespace the proxy Jobs run in, when not this one (the credentials' namespace).",
            max_length=63,
        ),
        "placement": f.placement(
            "Where the VM runs, as resolved; the admission limits count by it."
        ),
        "queuePosition": f.queue_position(),
        "modeRequested": enum(
            "What the operator asked the proxy to read: full (no parent) or incremental "
            "(from parentArchiveId; the CBT chain may still make it a full scan).",
            ["full", "incremental"],
        ),
        "parentArchiveId": string(
            "The archive this backup continues from (the VM's newest when it started).",
            max_length=128,
        ),
        "modeUsed": enum("What was read: full, incremental (CBT) or fullScan.", MODES_USED),
        "modeReason": string(
            "Why this mode, e.g. 'first backup of this VM', 'CBT change id unknown "
            "(disk resized)', 'fullEvery 7 reached'.",
            max_length=1024,
        ),
        "quiesced": boolean("Whether the snapshot was quiesced."),
        "snapshot": obj(
            "The vSphere snapshot this backup took; it is removed in every outcome.",
            {
                "moref": string("Snapshot id, e.g. snapshot-77.", max_length=64),
                "name": string("Snapshot name (derived from this object's UID).", max_length=255),
                "createTime": timestamp("When vSphere took it."),
                "removed": boolean("Whether it has been removed and consolidated."),
            },
        ),
        "jobName": string("The proxy Job moving the data.", max_length=63),
        "attempts": integer("Transfer attempts made.", minimum=0),
        "proxyStartSince": timestamp(
            "While the proxy cannot start (image pull, scheduling, crash loop): when its "
            "first Job of this streak was created; each retry takes a fresh snapshot, and "
            "the backup fails once this is VMGUARD_PROXY_START_TIMEOUT old."
        ),
        "progress": f.progress("transfer"),
        "disks": array("Per disk.", disk, max_items=MAX_DISKS, list_type="map", map_keys=["key"]),
        "totals": obj(
            "Sums over all disks.",
            {
                "capacityBytes": integer(minimum=0, int64=True),
                "bytesRead": integer(minimum=0, int64=True),
                "bytesChanged": integer(minimum=0, int64=True),
                "bytesUploaded": integer(minimum=0, int64=True),
                "chunksNew": integer(minimum=0, int64=True),
                "chunksReused": integer(minimum=0, int64=True),
                "compressibility": number(
                    "Stored ÷ plaintext size of the changed data (the archive's "
                    "compressibility; near 1 means incompressible, e.g. encrypted). "
                    "Absent when nothing changed.",
                    minimum=0,
                ),
            },
        ),
        "archiveId": string(
            "Id of the archive in the repository; set once its manifest is committed.",
            max_length=128,
        ),
        "startTime": timestamp("When the operator started working on the backup."),
        "completionTime": timestamp("When it reached Completed or Failed."),
        "durationSeconds": number("completionTime - startTime.", minimum=0),
        "error": f.failure(),
        "copies": array(
            "The backup's copies in the policy's copy targets (spec.copies of its policy).",
            obj(
                "One copy target's copy of this backup's archive.",
                {
                    "repository": string("The copy target (a VMGuardRepository).", max_length=253),
                    "state": enum("Where the copy is.", [s.value for s in CopyState]),
                    "time": timestamp("When the state was last set (Completed: when it ended)."),
                    "bytes": integer("Bytes the copy uploaded to the target.", minimum=0),
                    "archiveId": string("The copy's archive id in the target.", max_length=128),
                    "attempts": integer("Copy Jobs started for it.", minimum=0),
                    "message": string("Why it failed or waits.", max_length=4096),
                },
                required=["repository", "state"],
            ),
            max_items=16,
            list_type="map",
            map_keys=["repository"],
        ),
        "copyQueue": obj(
            "The backup's copy waiting in its vCenter's admission queue (its entry in "
            "copies says Pending): copies are a background kind, placed after every "
            "waiting backup and restore (docs/admission.md).",
            {
                "repository": string("The copy target it is for.", max_length=253),
                "queuePosition": f.queue_position(),
                "reason": string("Why it waits (ConcurrencyLimit, VMBusy).", max_length=128),
                "message": string("What holds it.", max_length=1024),
            },
        ),
        "verification": obj(
            "The verification run of the completed backup, when its policy asks for one "
            "(spec.verification of the policy; docs/verification.md). Its result is also "
            "recorded on the point in the VM's ProtectedVM.",
            {
                "phase": enum(
                    "Pending (waiting in the vCenter's admission queue), Verifying (its "
                    "proxy Job runs), Completed.",
                    [p.value for p in VerificationPhase],
                ),
                "run": integer(
                    "Which verification of this backup (1: the first; a policy verifying "
                    "on a schedule verifies its newest point again).",
                    minimum=1,
                ),
                "requestTime": timestamp("When the verification was asked for."),
                "startTime": timestamp("When the admission queue started it."),
                "time": timestamp("When it completed."),
                "jobName": string("The verification's proxy Job.", max_length=63),
                "queuePosition": f.queue_position(),
                "reason": string("Why it waits, or how it ended.", max_length=64),
                "message": string("Why it waits, or how it ended, in words.", max_length=4096),
                "checks": array(
                    "The checks it runs: fsck, yara.", string(max_length=16), max_items=8
                ),
                "result": enum(
                    "Passed; Failed (a file system is damaged); Infected (a YARA rule "
                    "matched); Error (no verdict).",
                    [r.value for r in VerificationResult],
                ),
                "findings": f.verification_findings(f.MAX_FINDINGS),
                "durationSeconds": number("How long the checks took.", minimum=0),
                "boot": obj(
                    "The boot test (the policy's verification.boot): the point restored "
                    "as a temporary VM in the isolated network, booted, checked, destroyed.",
                    {
                        "phase": enum(
                            "Restoring (the temporary VM is being restored), Booting "
                            "(powered on: heartbeat, then the script), Cleaning (the VM is "
                            "being destroyed), Completed.",
                            ["Restoring", "Booting", "Cleaning", "Completed"],
                        ),
                        "restoreName": string(
                            "The VMGuardRestore that restores the temporary VM.", max_length=253
                        ),
                        "vm": f.vm_identity("The temporary VM.", required=False),
                        "startTime": timestamp("When the boot test started (its restore)."),
                        "poweredOnTime": timestamp("When the temporary VM was powered on."),
                        "heartbeatTime": timestamp("When its VMware Tools heartbeat answered."),
                        "result": enum(
                            "Passed (heartbeat, and the script exited 0); Failed (no "
                            "heartbeat in time, or the script failed); Error (no verdict).",
                            [r.value for r in VerificationResult],
                        ),
                        "exitCode": integer("The check script's exit code."),
                        "output": string("What the boot test says of the script.", max_length=4096),
                        "message": string("How the boot test ended, in words.", max_length=4096),
                        "durationSeconds": number("How long the boot test took.", minimum=0),
                        "recoveryTimeSeconds": number(
                            "From the start of the restore to the script's success (or the "
                            "heartbeat, without a script): the measured recovery time.",
                            minimum=0,
                        ),
                    },
                ),
            },
        ),
    },
)

KIND = Kind(
    names=BACKUP,
    description="One backup of one VM at one point in time.",
    spec=spec,
    status=status,
    columns=[
        column("VM", ".spec.vm.name", "VM name."),
        column("Policy", ".spec.policyRef.name", "Policy the backup is made under."),
        column("Phase", ".status.phase", "Where the backup is."),
        ready_column(),
        ready_reason_column(),
        column("Mode", ".status.modeUsed", "full, incremental or fullScan."),
        column("Progress%", ".status.progress.percent", "Percent transferred.", type_="integer"),
        column(
            "Uploaded",
            ".status.totals.bytesUploaded",
            "Bytes written to the repository.",
            type_="integer",
            priority=1,
        ),
        column("Duration", ".status.durationSeconds", "Seconds.", type_="number", priority=1),
        column("Archive", ".status.archiveId", "Archive id.", priority=1),
        column("Verified", ".status.verification.result", "The verification's result.", priority=1),
    ],
)
