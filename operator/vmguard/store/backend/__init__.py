"""Storage backends: one protocol over S3, a local directory and memory, plus retries.

Import the protocol and the implementations from here; see ``base`` for the
invariants every backend keeps. The S3 backend is imported lazily so that code using
only local or memory backends does not need the minio SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmguard.store.backend.base import (
    Backend,
    Capabilities,
    LockMode,
    ObjectInfo,
    Retention,
    check_name,
)
from vmguard.store.backend.counting import CountingBackend, TransferCounts
from vmguard.store.backend.local import LocalBackend
from vmguard.store.backend.memory import MemoryBackend
from vmguard.store.backend.retry import RetryingBackend, RetryPolicy

if TYPE_CHECKING:
    from vmguard.store.backend.s3 import S3Backend

__all__ = [
    "Backend",
    "Capabilities",
    "CountingBackend",
    "LocalBackend",
    "LockMode",
    "MemoryBackend",
    "ObjectInfo",
    "Retention",
    "RetryPolicy",
    "RetryingBackend",
    "S3Backend",
    "TransferCounts",
    "check_name",
]


def __getattr__(name: str) -> Any:
    if name == "S3Backend":
        from vmguard.store.backend.s3 import S3Backend

        return S3Backend
    raise AttributeError(name)
