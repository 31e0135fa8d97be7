"""The archive manifest: what one backup of one VM is (format §6).

A manifest names the VM, carries its configuration blob, lists every disk with its
index (by name and BLAKE3 hash), the CBT chain state to continue from, and the
transfer statistics. Writing it commits the archive. Invariants:

- Serialisation round-trips: ``from_json(m.to_json()) == m`` for every manifest
  (times are kept to the second, as the format stores them).
- Unknown JSON members survive a round trip in ``extra`` (forward compatibility).
- VM names and labels are free text here and only here; they never reach object names.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Literal, TypeVar

from vmguard.errors import CorruptObjectError
from vmguard.store.names import format_time, parse_time

MANIFEST_VERSION = 1
BackupMode = Literal["full", "incremental", "full-scan"]


T = TypeVar("T")


def _known(cls: type[T], doc: dict[str, Any]) -> T:
    """Build ``cls`` from the members it knows; a newer writer's extra members are ignored."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass(frozen=True)
class VmIdentity:
    id: str
    """Stable identity the VM's tag is computed from (e.g. vCenter UUID/instance UUID)."""
    name: str = ""
    instance_uuid: str = ""
    bios_uuid: str = ""
    moref: str = ""
    vcenter: str = ""


@dataclass(frozen=True)
class CbtState:
    """Where Changed Block Tracking left off for one disk (BRIEF §5)."""

    disk_uuid: str
    backing_file: str
    capacity: int
    change_id: str


@dataclass(frozen=True)
class TransferStats:
    logical_bytes: int = 0
    bytes_read: int = 0
    bytes_changed: int = 0
    bytes_stored: int = 0
    chunks_new: int = 0
    chunks_reused: int = 0
    chunks_hole: int = 0
    compressibility: float | None = None
    """Stored ÷ plaintext size of the changed data; None when nothing changed."""
    retention_requests: int = 0
    """Object Lock extensions the backup sent (format §9); 0 without Object Lock."""

    def __add__(self, other: TransferStats) -> TransferStats:
        def weighted() -> float | None:
            parts = [
                (s.compressibility, s.bytes_changed)
                for s in (self, other)
                if s.compressibility is not None and s.bytes_changed
            ]
            total = sum(weight for _, weight in parts)
            return sum(c * w for c, w in parts) / total if total else None

        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "compressibility"
        }
        return TransferStats(**summed, compressibility=weighted())

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TransferStats:
        return _known(cls, doc)


@dataclass(frozen=True)
class DiskRecord:
    key: str
    """The disk's stable key within the VM (vSphere device key, or a CLI name)."""
    label: str
    length: int
    index: str
    """Object name of the disk's fixed index."""
    index_hash: str
    """BLAKE3 (hex) of the index plaintext."""
    cbt: CbtState | None = None
    stats: TransferStats = field(default_factory=TransferStats)


@dataclass(frozen=True)
class ArchiveManifest:
    archive_id: str
    vm: VmIdentity
    disks: tuple[DiskRecord, ...]
    started: datetime
    finished: datetime
    parent: str | None = None
    mode: BackupMode = "full"
    mode_reason: str = ""
    config_format: str = ""
    config_blob: bytes = b""
    retain_until: datetime | None = None
    lock_horizon: datetime | None = None
    """Every chunk this archive references was locked until at least this time when it
    committed (format §9, feature ``lock-horizon``); None: unknown (no Object Lock, or
    written by an earlier release), so the next backup and lock-check look for
    themselves."""
    carried_checked: bool = False
    """The writer followed format §8's trust rule for the chunks it took from its
    parent; False (or absent: an earlier release) makes the next backup check every
    chunk of this archive instead of only the ones it added."""
    labels: dict[str, str] = field(default_factory=dict)
    stats: TransferStats = field(default_factory=TransferStats)
    extra: dict[str, Any] = field(default_factory=dict)

    def disk(self, key: str) -> DiskRecord:
        for record in self.disks:
            if record.key == key:
                return record
        raise KeyError(f"archive {self.archive_id} has no disk {key!r}")

    def to_json(self) -> bytes:
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            {
                "version": MANIFEST_VERSION,
                "archive_id": self.archive_id,
                "vm": asdict(self.vm),
                "config_format": self.config_format,
                "config_blob": base64.b64encode(self.config_blob).decode(),
                "parent": self.parent,
                "mode": self.mode,
                "mode_reason": self.mode_reason,
                "started": format_time(self.started),
                "finished": format_time(self.finished),
                "retain_until": format_time(self.retain_until) if self.retain_until else None,
                "lock_horizon": format_time(self.lock_horizon) if self.lock_horizon else None,
                "carried_checked": self.carried_checked,
                "labels": dict(self.labels),
                "disks": [
                    {
                        "key": d.key,
                        "label": d.label,
                        "length": d.length,
                        "index": d.index,
                        "index_hash": d.index_hash,
                        "cbt": asdict(d.cbt) if d.cbt else None,
                        "stats": asdict(d.stats),
                    }
                    for d in self.disks
                ],
                "stats": asdict(self.stats),
            }
        )
        return json.dumps(doc, ensure_ascii=False, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ArchiveManifest:
        try:
            doc = json.loads(raw)
            if doc.get("version") != MANIFEST_VERSION:
                raise CorruptObjectError(f"manifest version {doc.get('version')} unsupported")
            return cls._from_doc(doc)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CorruptObjectError(f"manifest is malformed: {e!r}") from None

    @classmethod
    def _from_doc(cls, doc: dict[str, Any]) -> ArchiveManifest:
        disks = tuple(
            DiskRecord(
                key=str(d["key"]),
                label=str(d.get("label", "")),
                length=int(d["length"]),
                index=str(d["index"]),
                index_hash=str(d["index_hash"]),
                cbt=_known(CbtState, d["cbt"]) if d.get("cbt") else None,
                stats=TransferStats.from_json(d.get("stats") or {}),
            )
            for d in doc["disks"]
        )
        known = {f.name for f in fields(cls)} | {"version"}
        return cls(
            archive_id=str(doc["archive_id"]),
            vm=_known(VmIdentity, doc["vm"]),
            disks=disks,
            started=parse_time(doc["started"]),
            finished=parse_time(doc["finished"]),
            parent=doc.get("parent"),
            mode=doc.get("mode", "full"),
            mode_reason=str(doc.get("mode_reason", "")),
            config_format=str(doc.get("config_format", "")),
            config_blob=base64.b64decode(doc.get("config_blob", ""), validate=True),
            retain_until=parse_time(doc["retain_until"]) if doc.get("retain_until") else None,
            lock_horizon=parse_time(doc["lock_horizon"]) if doc.get("lock_horizon") else None,
            carried_checked=doc.get("carried_checked") is True,
            labels={str(k): str(v) for k, v in (doc.get("labels") or {}).items()},
            stats=TransferStats.from_json(doc.get("stats") or {}),
            extra={k: v for k, v in doc.items() if k not in known},
        )
