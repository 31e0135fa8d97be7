"""What a verification found: one :class:`CheckResult` per check and volume.

The shape is the contract between the check runner, the CLI (``vmguard verify -o json``)
and the operator's verification Jobs: ``{check, disk, volume, result, duration,
findings}`` plus counters. Invariants:

- ``result`` is one of :class:`Outcome`; a point is *clean* only when no result is
  ``failed`` or ``error`` (``skipped`` volumes, which hold nothing a check can read, do
  not count against it, and say why in their findings).
- A finding is a plain dict: ``message`` always; ``path`` and ``rule`` for a malware
  match. Findings never hold file contents or secrets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    """The check ran and found damage (fsck) or a rule matched (yara)."""
    ERROR = "error"
    """The check could not reach a verdict (tool missing, timeout, unreadable data)."""
    SKIPPED = "skipped"
    """Nothing to check on this volume (no file system recognised, a container)."""


class Check(StrEnum):
    FSCK = "fsck"
    YARA = "yara"


@dataclass
class CheckResult:
    check: Check
    disk: str
    volume: str
    result: Outcome
    duration: float
    findings: list[dict[str, Any]] = field(default_factory=list)
    fs: str | None = None
    tool: str | None = None
    """The program (fsck) or engine (yara) that decided."""
    bytes_fetched: int = 0
    """Plaintext bytes of chunks fetched from the repository for this check."""
    overlay_bytes: int = 0
    """Bytes the check wrote into its copy-on-write overlay (journal replay)."""
    files_scanned: int = 0
    bytes_scanned: int = 0

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["check"] = str(self.check)
        doc["result"] = str(self.result)
        doc["duration"] = round(self.duration, 3)
        return doc


@dataclass
class PointVerification:
    """Every check of one archive."""

    archive_id: str
    vm: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(r.result in (Outcome.FAILED, Outcome.ERROR) for r in self.results)

    @property
    def matches(self) -> list[dict[str, Any]]:
        return [
            {"disk": r.disk, "volume": r.volume, **f}
            for r in self.results
            if r.check == Check.YARA
            for f in r.findings
            if "rule" in f
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive": self.archive_id,
            "vm": self.vm,
            "clean": self.clean,
            "results": [r.to_dict() for r in self.results],
        }
