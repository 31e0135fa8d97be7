"""The kinds of vmguard's API and the names kubectl knows them by, each spelled once.

A kind's plural, singular and short names are what ``kubectl get`` resolves, across
every API group installed in a cluster. They must not collide with the CRDs our users
run beside us: Velero (``backuprepositories``, ``backups``, ``restores``...), KubeVirt
(``vmrestore``, ``vmbackup``, ``vmsnapshot``...), Kasten K10 (``restorepoints``,
``policies``, ``profiles``...) and cert-manager (``certificates``, ``issuers``...). The
kinds that did collide were renamed in v1alpha1 (docs/resource-model.md, "Names");
:data:`LEGACY` keeps their old names for the one-time migration of existing objects
(``controller/kube/migration.py``), and ``tests/crds/test_names.py`` holds the list of
the neighbours' names.

The CRD definitions (:mod:`vmguard.crds`) and every caller of the Kubernetes API take
kind and plural from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class KindNames:
    """What names a kind: ``kind`` in manifests, ``plural`` in URLs and RBAC rules,
    ``singular`` and ``short_names`` for kubectl."""

    kind: str
    plural: str
    short_names: tuple[str, ...]

    @property
    def singular(self) -> str:
        return self.kind.lower()


VCENTER: Final = KindNames("VCenter", "vcenters", ("vc",))
POLICY: Final = KindNames("VMProtectionPolicy", "vmprotectionpolicies", ("vmpp",))
BACKUP: Final = KindNames("VMGuardBackup", "vmguardbackups", ("vgb",))
"""One backup of one VM at one point in time (was ``VMBackup``)."""
RESTORE: Final = KindNames("VMGuardRestore", "vmguardrestores", ("vgr",))
"""One restore from one backup (was ``VMRestore``)."""
REPOSITORY: Final = KindNames("VMGuardRepository", "vmguardrepositories", ("vgrepo",))
"""Where backups are stored (was ``BackupRepository``)."""

PROTECTEDVM: Final = KindNames("ProtectedVM", "protectedvms", ("pvm",))
"""One VM that has restore points: their compact list, newest first (written by the
operator only; docs/resource-model.md, "ProtectedVM")."""

KINDS: Final = (VCENTER, POLICY, BACKUP, RESTORE, REPOSITORY, PROTECTEDVM)

LEGACY: Final = {
    BACKUP: KindNames("VMBackup", "vmbackups", ("vmb",)),
    RESTORE: KindNames("VMRestore", "vmrestores", ("vmr",)),
    REPOSITORY: KindNames("BackupRepository", "backuprepositories", ("brepo",)),
}
"""The names a renamed kind had before: its objects are migrated once, at start."""
