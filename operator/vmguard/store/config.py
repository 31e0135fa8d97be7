"""The repository config object (format §2): parse, validate, serialise.

Invariants:

- Parsing refuses anything a version-1 reader cannot read (other format or version,
  unknown features, out-of-range chunk size) with a RepositoryError saying why.
- Unknown JSON members are kept in ``extra`` and written back unchanged, so rewriting
  the config (key rotation) never drops what a newer writer added.
- The config holds no secret: the data key in it is wrapped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from vmguard.errors import ConfigError, RepositoryError
from vmguard.store.backend import LockMode
from vmguard.store.crypto import WrappedKey

FORMAT_NAME = "vmguard-repository"
FORMAT_VERSION = 1
KNOWN_FEATURES: frozenset[str] = frozenset()
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024

_KNOWN_MEMBERS = {
    "format",
    "version",
    "id",
    "created",
    "chunk_size",
    "chunk_id",
    "compression",
    "encryption",
    "object_lock",
    "gc",
    "features",
}


@dataclass(frozen=True)
class ObjectLockPolicy:
    mode: LockMode
    days: int

    def __post_init__(self) -> None:
        if self.mode not in ("GOVERNANCE", "COMPLIANCE"):
            raise ConfigError(f"object lock mode must be GOVERNANCE or COMPLIANCE: {self.mode}")
        if not 1 <= self.days <= 36500:
            raise ConfigError(f"object lock days out of range: {self.days}")


@dataclass(frozen=True)
class GcPolicy:
    lease_ttl_seconds: int = 600
    grace_seconds: int = 3600

    def __post_init__(self) -> None:
        if self.lease_ttl_seconds < 10 or self.grace_seconds < 0:
            raise ConfigError("gc lease ttl must be >= 10 s and grace >= 0")


@dataclass(frozen=True)
class EncryptionConfig:
    key_check: str
    wrapped_keys: tuple[WrappedKey, ...]
    algorithm: Literal["aes-256-gcm"] = "aes-256-gcm"


@dataclass(frozen=True)
class RepositoryConfig:
    id: str
    created: str
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compression_level: int = 3
    encryption: EncryptionConfig | None = None
    object_lock: ObjectLockPolicy | None = None
    gc: GcPolicy = field(default_factory=GcPolicy)
    features: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        size = self.chunk_size
        if size < MIN_CHUNK_SIZE or size > MAX_CHUNK_SIZE or size & (size - 1):
            raise RepositoryError(f"chunk size {size} is not a power of two in 64 KiB..64 MiB")

    @property
    def chunk_id_algorithm(self) -> str:
        return "blake3-keyed" if self.encryption else "blake3"

    def immutable_parameters(self) -> dict[str, Any]:
        """What ``key_check`` authenticates (format §4.3)."""
        return {
            "id": self.id,
            "version": FORMAT_VERSION,
            "chunk_size": self.chunk_size,
            "chunk_id": self.chunk_id_algorithm,
            "algorithm": self.encryption.algorithm if self.encryption else None,
        }

    def with_encryption(self, encryption: EncryptionConfig) -> RepositoryConfig:
        return replace(self, encryption=encryption)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "id": self.id,
                "created": self.created,
                "chunk_size": self.chunk_size,
                "chunk_id": self.chunk_id_algorithm,
                "compression": {"algorithm": "zstd", "level": self.compression_level},
                "encryption": None,
                "object_lock": None,
                "gc": {
                    "lease_ttl_seconds": self.gc.lease_ttl_seconds,
                    "grace_seconds": self.gc.grace_seconds,
                },
                "features": list(self.features),
            }
        )
        if self.encryption:
            doc["encryption"] = {
                "algorithm": self.encryption.algorithm,
                "key_check": self.encryption.key_check,
                "wrapped_keys": [k.to_json() for k in self.encryption.wrapped_keys],
            }
        if self.object_lock:
            doc["object_lock"] = {"mode": self.object_lock.mode, "days": self.object_lock.days}
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> RepositoryConfig:
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RepositoryError(f"config is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise RepositoryError("config object is not a vmguard repository config")
        if doc.get("version") != FORMAT_VERSION:
            raise RepositoryError(
                f"repository format version {doc.get('version')} is not supported "
                f"(this vmguard reads version {FORMAT_VERSION})"
            )
        unknown = set(doc.get("features", [])) - KNOWN_FEATURES
        if unknown:
            raise RepositoryError(f"repository uses unknown features: {sorted(unknown)}")
        try:
            return cls._from_doc(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise RepositoryError(f"config is malformed: {exc!r}") from None

    @classmethod
    def _from_doc(cls, doc: dict[str, Any]) -> RepositoryConfig:
        compression = doc.get("compression") or {}
        if compression.get("algorithm", "zstd") != "zstd":
            raise RepositoryError(f"unknown compression {compression.get('algorithm')!r}")
        encryption = None
        if doc.get("encryption") is not None:
            enc = doc["encryption"]
            if enc.get("algorithm") != "aes-256-gcm":
                raise RepositoryError(f"unknown encryption {enc.get('algorithm')!r}")
            keys = tuple(WrappedKey.from_json(k) for k in enc["wrapped_keys"])
            if not keys:
                raise RepositoryError("config: encrypted repository has no wrapped key")
            encryption = EncryptionConfig(key_check=str(enc["key_check"]), wrapped_keys=keys)
        expected_id = "blake3-keyed" if encryption else "blake3"
        if doc.get("chunk_id") != expected_id:
            raise RepositoryError(f"config: chunk_id must be {expected_id!r}")
        lock = None
        if doc.get("object_lock") is not None:
            mode = cast(LockMode, doc["object_lock"]["mode"])
            lock = ObjectLockPolicy(mode, int(doc["object_lock"]["days"]))
        gc_doc = doc.get("gc") or {}
        gc = GcPolicy(
            int(gc_doc.get("lease_ttl_seconds", 600)), int(gc_doc.get("grace_seconds", 3600))
        )
        return cls(
            id=str(doc["id"]),
            created=str(doc.get("created", "")),
            chunk_size=int(doc["chunk_size"]),
            compression_level=int(compression.get("level", 3)),
            encryption=encryption,
            object_lock=lock,
            gc=gc,
            features=tuple(doc.get("features", [])),
            extra={k: v for k, v in doc.items() if k not in _KNOWN_MEMBERS},
        )
