"""The repository config object (format §2): parse, validate, serialise.

Invariants:

- Parsing refuses anything a version-1 reader cannot read (other format or version,
  unknown features, out-of-range chunk size) with a RepositoryError saying why, and
  never reads more than :data:`MAX_CONFIG_BYTES` or more than :data:`MAX_WRAPPED_KEYS`
  key entries: a foreign or hostile config costs bounded memory.
- Unknown JSON members are kept in ``extra`` and written back unchanged, so rewriting
  the config (key rotation) never drops what a newer writer added.
- The config holds no secret: the data key in it is wrapped.
- :meth:`RepositoryConfig.authenticated_parameters` is what the key check covers
  (format §4.3): with the ``authenticated-config`` feature every member this version
  knows except the wrapped keys, so ``object_lock``, ``gc`` and ``features`` cannot be
  edited without the key; without it (repositories of earlier releases) the legacy set.
  It is computed from the document *as stored*, not from normalised values.
- A stored GC grace below :data:`MIN_GRACE_SECONDS` (written by an earlier release) is
  read, never refused, and raised to the minimum for use: no new bound blocks reading.
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
AUTHENTICATED_CONFIG = "authenticated-config"
LEASE_COMMIT_V2 = "lease-commit-v2"
LOCK_HORIZON = "lock-horizon"
KNOWN_FEATURES: frozenset[str] = frozenset({AUTHENTICATED_CONFIG, LEASE_COMMIT_V2, LOCK_HORIZON})
"""Format extensions this release reads and writes (format §2, §10). A new repository
lists all of them; ``Repository.upgrade`` adds them to an older one."""
CURRENT_FEATURES: tuple[str, ...] = tuple(sorted(KNOWN_FEATURES))
MAX_CONFIG_BYTES = 1 << 20
MAX_WRAPPED_KEYS = 16
MIN_GRACE_SECONDS = 300
"""Format §7.5: ``margin + grace`` must exceed the longest manifest PUT (≈ 428 s) with a
margin of 300 s, so the lease grace must be above 128 s; 300 s leaves room."""
MAX_GRACE_SECONDS = 30 * 86400
MIN_LEASE_TTL_SECONDS = 60
MAX_LEASE_TTL_SECONDS = 86400
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
        if not MIN_LEASE_TTL_SECONDS <= self.lease_ttl_seconds <= MAX_LEASE_TTL_SECONDS:
            raise ConfigError(
                f"gc lease ttl {self.lease_ttl_seconds} s is outside"
                f" {MIN_LEASE_TTL_SECONDS}..{MAX_LEASE_TTL_SECONDS} s"
            )
        if not MIN_GRACE_SECONDS <= self.grace_seconds <= MAX_GRACE_SECONDS:
            raise ConfigError(
                f"gc grace {self.grace_seconds} s is outside {MIN_GRACE_SECONDS}.."
                f"{MAX_GRACE_SECONDS} s (format §7.5: a lease grace must outlast the"
                " longest manifest PUT beyond the writer's margin)"
            )

    @classmethod
    def stored(cls, lease_ttl_seconds: int, grace_seconds: int) -> GcPolicy:
        """The policy a stored config asks for, each value moved into its bounds.

        Never refuses: a config of an earlier release (grace 0 was accepted) must stay
        readable, and GC and writers then use the safe minimum, not the stored value.
        """
        return cls(
            min(max(lease_ttl_seconds, MIN_LEASE_TTL_SECONDS), MAX_LEASE_TTL_SECONDS),
            min(max(grace_seconds, MIN_GRACE_SECONDS), MAX_GRACE_SECONDS),
        )


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
    stored: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """The JSON document this config was parsed from (None for one built in memory):
    the key check is computed over what is stored, not over normalised values."""

    def __post_init__(self) -> None:
        size = self.chunk_size
        if size < MIN_CHUNK_SIZE or size > MAX_CHUNK_SIZE or size & (size - 1):
            raise RepositoryError(f"chunk size {size} is not a power of two in 64 KiB..64 MiB")

    @property
    def chunk_id_algorithm(self) -> str:
        return "blake3-keyed" if self.encryption else "blake3"

    @property
    def authenticated(self) -> bool:
        """Whether the key check covers every safety field (format §4.3)."""
        return AUTHENTICATED_CONFIG in self.features

    def authenticated_parameters(self) -> dict[str, Any]:
        """What ``key_check`` authenticates (format §4.3), from the stored document."""
        doc = self.stored if self.stored is not None else json.loads(self.to_json())
        if not self.authenticated:
            encryption = doc.get("encryption") or {}
            return {
                "id": doc.get("id"),
                "version": doc.get("version"),
                "chunk_size": doc.get("chunk_size"),
                "chunk_id": doc.get("chunk_id"),
                "algorithm": encryption.get("algorithm") if encryption else None,
            }
        view = {k: doc.get(k) for k in sorted(_KNOWN_MEMBERS)}
        if isinstance(view["encryption"], dict):
            view["encryption"] = {"algorithm": view["encryption"].get("algorithm")}
        return view

    def with_encryption(self, encryption: EncryptionConfig) -> RepositoryConfig:
        return replace(self, encryption=encryption, stored=None)

    def with_features(self, features: tuple[str, ...]) -> RepositoryConfig:
        return replace(self, features=features, stored=None)

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
        if len(raw) > MAX_CONFIG_BYTES:
            raise RepositoryError(
                f"config is larger than {MAX_CONFIG_BYTES} bytes: not a vmguard config"
            )
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise RepositoryError(f"config is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise RepositoryError("config object is not a vmguard repository config")
        if doc.get("version") != FORMAT_VERSION:
            raise RepositoryError(
                f"repository format version {doc.get('version')} is not supported "
                f"(this vmguard reads version {FORMAT_VERSION})"
            )
        features = doc.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise RepositoryError("config: features must be a list of names")
        unknown = set(features) - KNOWN_FEATURES
        if unknown:
            raise RepositoryError(
                f"repository uses unknown features: {sorted(unknown)} (written by a newer"
                " vmguard; this one knows " + ", ".join(sorted(KNOWN_FEATURES)) + ")"
            )
        try:
            return cls._from_doc(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
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
            if len(enc["wrapped_keys"]) > MAX_WRAPPED_KEYS:
                raise RepositoryError(
                    f"config: {len(enc['wrapped_keys'])} wrapped keys, at most"
                    f" {MAX_WRAPPED_KEYS} are read"
                )
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
        gc = GcPolicy.stored(
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
            stored=doc,
        )
