"""The names of vmguard's Kubernetes API: group, version, labels, annotations, finalizer.

Every key vmguard writes on a Kubernetes object lives under the API group
(``vmguard.io/...``) and is spelled here once; the controllers, the Job builders, the
proxy and the CLI import it. Label keys are API: a label selector in someone's
dashboard or alert breaks when one changes, so a key is renamed only with a new
version of the API.

Not here: the labels of an archive manifest (``vmguard.io/namespace``,
``vmguard.io/vmbackup``, ``vmguard.io/policy`` in :mod:`vmguard.store.lineage`). They
read like these but belong to the repository format (docs/repository-format.md), which
outlives every version of this API and must not change when it does.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

GROUP: Final = "vmguard.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
"""``apiVersion`` of every vmguard object."""

CATEGORY: Final = "vmguard"
"""``kubectl get vmguard`` lists every kind."""

FINALIZER: Final = f"{GROUP}/finalizer"
"""kopf's finalizer on the objects the operator handles."""

ANNOTATION_PREFIX: Final = GROUP
"""Prefix of kopf's own annotations (handler progress, last-handled configuration)."""

# Labels of VMGuardBackup objects: whose backup it is, so lists are label-selected.
LABEL_POLICY: Final = "vmguard.io/policy"
"""The VMProtectionPolicy a backup is made under (also on its proxy Job)."""
LABEL_VCENTER: Final = "vmguard.io/vcenter"
LABEL_VM: Final = "vmguard.io/vm"
"""The VM: its instance UUID in lower case on a VMGuardBackup, its moref on a proxy Job."""
LABEL_TRIGGER: Final = "vmguard.io/trigger"
"""Why a policy created the backup: a :class:`Trigger` value."""
LABEL_RUN: Final = "vmguard.io/run"
"""The scheduled minute of a policy's run, ``20250107T0200Z``."""
LABEL_REPOSITORY: Final = "vmguard.io/repository"
"""The VMGuardRepository a synced VMGuardBackup's archive is in."""
LABEL_SYNCED: Final = "vmguard.io/synced"
"""``"true"`` on a VMGuardBackup recreated from its archive by catalog sync."""
SYNCED: Final = "true"


def is_synced(labels: Mapping[str, str] | None) -> bool:
    """Whether an object's labels mark it as recreated by catalog sync (:data:`LABEL_SYNCED`)."""
    return (labels or {}).get(LABEL_SYNCED) == SYNCED


# Annotations of VMGuardBackup objects: free text never goes in a label.
ANNOTATION_VM_NAME: Final = "vmguard.io/vm-name"
ANNOTATION_ARCHIVE_ID: Final = "vmguard.io/archive-id"
"""The archive a synced VMGuardBackup stands for."""
ANNOTATION_SYNCED_FROM: Final = "vmguard.io/synced-from"
"""``<namespace>/<name>`` of the VMGuardBackup that made a synced one's archive."""

# Annotations of vmguard's CustomResourceDefinitions.
ANNOTATION_SCHEMA_HASH: Final = "vmguard.io/schema-hash"
"""A hash of the CRD's definition, written when it is generated (:mod:`vmguard.crds`):
the operator compares the installed CRD's with its own to report CRDs it does not expect."""

# The boot test (docs/verification.md, "Boot test").
LABEL_BOOT_TEST: Final = "vmguard.io/boot-test"
"""On the VMGuardRestore that restores a boot test's temporary VM: the VMGuardBackup's
name (the restore is also owned by it)."""
RESTORE_VM_MARKER: Final = "vmguard.restore.uid"
"""extraConfig key on a VM a VMGuardRestore created; the value is the restore's UID."""
BOOT_VM_PREFIX: Final = "vmguard-boot."
"""Name prefix of a boot test's temporary VM: ``vmguard-boot.<namespace>.<backup>.<run>``
(a namespace has no dot, so the prefix up to the second dot names the namespace)."""

# Labels of the proxy Jobs (and their pods): the object a Job works for.
LABEL_VMBACKUP: Final = "vmguard.io/vmbackup"
LABEL_VMBACKUP_UID: Final = "vmguard.io/vmbackup-uid"
LABEL_ATTEMPT: Final = "vmguard.io/attempt"
LABEL_VMRESTORE: Final = "vmguard.io/vmrestore"
LABEL_OWNER_NAMESPACE: Final = "vmguard.io/owner-namespace"
"""On a proxy Job that runs in another namespace than the object it works for (a
cross-namespace reference, docs/tenancy.md): that object's namespace. No ownerReference
can cross namespaces, so these two labels are how such a Job is found and removed."""
LABEL_OWNER_UID: Final = "vmguard.io/owner-uid"
"""On the same Jobs: the UID of the VMGuardBackup or VMGuardRestore they work for."""
LABEL_COPY_TARGET: Final = "vmguard.io/copy-target"
"""A copy Job's target VMGuardRepository (issue 17)."""

# Labels the platform team sets on a namespace.
LABEL_PRIVILEGED_PROXIES: Final = "vmguard.io/privileged-proxies"
"""``"true"``: proxy Jobs in this namespace may run privileged, for hot-add (docs/install.md);
without it every proxy meets the Pod Security ``restricted`` profile."""


class Trigger(StrEnum):
    """Values of :data:`LABEL_TRIGGER`."""

    SCHEDULE = "schedule"
    """The policy's schedule reached a run."""
    FAILSAFE = "failsafe"
    """The VM had no completed backup and was backed up at once."""


DEFAULT_BACKUP_TTL: Final = 86400
"""``ttlSecondsAfterFinished`` of a VMGuardBackup whose spec and policy give none: 24 h."""
MAX_BACKUP_TTL: Final = 2**31 - 1
"""The largest ``ttlSecondsAfterFinished`` (int32, as a Job's)."""
