"""Repository engine: chunks, indexes and archives in an object store.

The format is specified in ``docs/repository-format.md``; this package implements it.
It knows nothing of Kubernetes, vSphere or NBD (an import-linter contract keeps it so),
so backups can be listed, verified and restored from the CLI when the cluster is gone.

Layers, bottom to top: ``backend`` (bytes by name) → ``envelope``/``chunk``/``index``/
``archive``/``config`` (formats) → ``repository`` and ``writer`` (reading, and writing
one backup under a lease; ``carry`` decides what a backup may rely on and how long it is
locked) → ``verify``, ``lockcheck``, ``prune``, ``gc`` (maintenance), ``copy`` (archives to
another repository, through the target's writer).
"""

from vmguard.store.archive import (
    ArchiveManifest,
    CbtState,
    DiskRecord,
    TransferStats,
    VmIdentity,
)
from vmguard.store.chunk import HOLE, ChunkId
from vmguard.store.config import GcPolicy, ObjectLockPolicy, RepositoryConfig
from vmguard.store.crypto import MasterKey, ScryptParams
from vmguard.store.index import FixedIndex
from vmguard.store.repository import ArchiveRef, Repository
from vmguard.store.writer import BackupWriter, PutResult

__all__ = [
    "HOLE",
    "ArchiveManifest",
    "ArchiveRef",
    "BackupWriter",
    "CbtState",
    "ChunkId",
    "DiskRecord",
    "FixedIndex",
    "GcPolicy",
    "MasterKey",
    "ObjectLockPolicy",
    "PutResult",
    "Repository",
    "RepositoryConfig",
    "ScryptParams",
    "TransferStats",
    "VmIdentity",
]
