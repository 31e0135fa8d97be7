"""Object names of the repository layout and the ids they contain (format §1.1).

Invariants:

- No user-supplied string (VM name, disk label, policy name) ever becomes part of an
  object name. A VM contributes only ``vm_tag(vm_id)``, a base32 hash; everything
  human-readable lives inside manifests. So any VM name — Unicode, slashes, ``..``,
  255 characters — is safe, and two VMs never share a directory by accident.
- Every name built here passes :func:`vmguard.store.backend.check_name`.
- Archive ids sort by backup start time within a VM and carry their VM's tag, so the
  manifest's name follows from the id alone.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import blake3

from vmguard.errors import ConfigError

CONFIG = "config"
CONFIG_COPIES = "configs/"
AUTHENTICATED_CONFIG_COPIES = "configs/authenticated-config/"
CHUNKS = "chunks/"
FOSSILS = "fossils/"
INDEXES = "indexes/"
ARCHIVES = "archives/"
TRASH = "trash/"
LEASES = "leases/"
CORRUPT = "corrupt/"
GC_LOCK = "gc/lock"
GC_CLOCK = "gc/clock"
GC_COLLECTIONS = "gc/collections/"

_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_B32 = "[a-z2-7]"
_ARCHIVE_RE = re.compile(rf"({_B32}{{16}})-(\d{{8}}T\d{{6}}Z)-{_B32}{{8}}")
_STAMPED_RE = re.compile(rf"(\d{{8}}T\d{{6}}Z)-{_B32}{{16}}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().lower().rstrip("=")


def _stamp(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return when.astimezone(UTC).strftime(_TIME_FORMAT)


def _parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


def vm_tag(vm_id: str) -> str:
    """16 base32 characters identifying a VM in object names."""
    if not vm_id:
        raise ConfigError("a VM id must not be empty")
    digest = blake3.blake3(b"vmguard vm-tag v1\0" + vm_id.encode("utf-8")).digest()
    return _b32(digest[:10])


def new_archive_id(vm_id: str, started: datetime) -> str:
    return f"{vm_tag(vm_id)}-{_stamp(started)}-{_b32(secrets.token_bytes(5))}"


@dataclass(frozen=True)
class ArchiveIdParts:
    vm_tag: str
    started: datetime


def parse_archive_id(archive_id: str) -> ArchiveIdParts:
    match = _ARCHIVE_RE.fullmatch(archive_id)
    if not match:
        raise ConfigError(f"not an archive id: {archive_id!r}")
    return ArchiveIdParts(match.group(1), _parse_stamp(match.group(2)))


def is_archive_id(text: str) -> bool:
    return _ARCHIVE_RE.fullmatch(text) is not None


def new_stamped_id(now: datetime) -> str:
    """An id for a lease or GC collection: time-sortable, globally unique."""
    return f"{_stamp(now)}-{_b32(secrets.token_bytes(10))}"


def stamped_id_time(stamped_id: str) -> datetime | None:
    match = _STAMPED_RE.fullmatch(stamped_id)
    return _parse_stamp(match.group(1)) if match else None


def config_copy_name(config: bytes, *, authenticated: bool) -> str:
    """The retained copy of a config (format §2.1): named by the BLAKE3 of its bytes,
    under ``authenticated-config/`` when the config uses that feature."""
    where = AUTHENTICATED_CONFIG_COPIES if authenticated else CONFIG_COPIES
    return f"{where}{blake3.blake3(config).hexdigest()}"


def chunk_name(chunk_id: bytes) -> str:
    hex_id = chunk_id.hex()
    return f"{CHUNKS}{hex_id[:2]}/{hex_id}"


def fossil_name(chunk_id: bytes) -> str:
    hex_id = chunk_id.hex()
    return f"{FOSSILS}{hex_id[:2]}/{hex_id}"


def chunk_id_from_name(name: str) -> bytes | None:
    """The id in a ``chunks/``, ``fossils/`` or ``corrupt/`` name, or None if there is none."""
    hex_id = name.rpartition("/")[2]
    return bytes.fromhex(hex_id) if _HEX64.fullmatch(hex_id) else None


def manifest_name(archive_id: str) -> str:
    parts = parse_archive_id(archive_id)
    return f"{ARCHIVES}{parts.vm_tag}/{archive_id}"


def archive_id_from_manifest_name(name: str) -> str | None:
    archive_id = name.rpartition("/")[2]
    return archive_id if name.startswith(ARCHIVES) and is_archive_id(archive_id) else None


def index_name(archive_id: str, disk_number: int) -> str:
    parse_archive_id(archive_id)
    return f"{INDEXES}{archive_id}/{disk_number}"


def index_binding(archive_id: str, disk_number: int) -> bytes:
    return f"{archive_id}/{disk_number}".encode()


def trash_manifest_name(archive_id: str) -> str:
    return f"{TRASH}{archive_id}/manifest"


def trash_leases_name(archive_id: str) -> str:
    return f"{TRASH}{archive_id}/leases"


def lease_name(lease_id: str) -> str:
    return f"{LEASES}{lease_id}"


def corrupt_name(chunk_id: bytes) -> str:
    return f"{CORRUPT}{chunk_id.hex()}"


def collection_fossils_name(collection_id: str) -> str:
    return f"{GC_COLLECTIONS}{collection_id}/fossils"


def collection_leases_name(collection_id: str) -> str:
    return f"{GC_COLLECTIONS}{collection_id}/leases"


def format_time(when: datetime) -> str:
    """RFC 3339 UTC with seconds, as used in every JSON object of the format.

    The format document fixes this rule for the repository on its own: it looks like
    the Kubernetes API's times (:mod:`vmguard.api.times`) but must not follow them.
    """
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
