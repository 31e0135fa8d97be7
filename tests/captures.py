"""vmguard objects as the lab tests saw them, kept for tests/gitops/test_health.py.

The health checks (kstatus, Argo CD's Lua) are tested on objects the operator really
wrote, not on hand-made ones, and without lab runs of their own: every read of a vmguard
object through ``tests/controller/objects.py`` (``get``, ``items``, ``wait_phase``) and
every object left in a controller test's namespace when the test ends is offered to
:func:`capture`. It files the object under its kind and *state* (:func:`state_of`: the
phase of the kinds that end, ``Ready`` of the kinds that stand), keeping at most
:data:`PER_STATE` of each, in the session's directory (``captured-objects`` under
pytest's basetemp), one JSON file each.

Invariants: an object whose status a test wrote itself (:func:`fabricated`, or a status
without ``observedGeneration``, which every status the operator writes has) is never
captured, nor an object of a kind renamed away or a copy of one (the migration
test's), nor one being deleted (kstatus calls every such object Terminating, whatever
its status). Capturing never fails a test: it is bookkeeping, and a full disk shows up
in the health test as a missing state.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vmguard.api import GROUP
from vmguard.api.kinds import BACKUP, KINDS, RESTORE
from vmguard.controller.kube.migration import ANNOTATION_MIGRATED_FROM

PER_STATE = 3
NOT_JUDGED = "NotJudged"
"""The state of an object the operator has not judged yet: no phase, or no ``Ready``."""

PAUSED = "Paused"


CURRENT_KINDS = frozenset(k.kind for k in KINDS)
LIFECYCLE_KINDS = frozenset({BACKUP.kind, RESTORE.kind})
"""The kinds that end (a ``status.phase``); the others stand (judged by ``Ready``)."""


class Captures:
    """One session's captures (a test of this module makes its own)."""

    def __init__(self) -> None:
        self.directory: Path | None = None
        self.tag = ""
        self.counts: Counter[tuple[str, str]] = Counter()
        self.seen: set[tuple[str, str]] = set()
        self.fabricated: set[tuple[str, str, str]] = set()

    def start(self, directory: Path, tag: str = "") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.tag = f"{tag}_" if tag else ""

    def fabricate(self, kind_or_plural: str, namespace: str, name: str) -> None:
        self.fabricated.add((_kind(kind_or_plural), namespace, name))

    def capture(self, objs: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> None:
        if self.directory is None:
            return
        for obj in [objs] if isinstance(objs, Mapping) else objs:
            self._capture_one(obj, self.directory)

    def _capture_one(self, obj: Mapping[str, Any], directory: Path) -> None:
        meta, kind = obj.get("metadata") or {}, str(obj.get("kind"))
        if not str(obj.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return
        if meta.get("deletionTimestamp"):
            return
        if (kind, meta.get("namespace"), meta.get("name")) in self.fabricated:
            return
        copied = ANNOTATION_MIGRATED_FROM in (meta.get("annotations") or {})
        if kind not in CURRENT_KINDS or copied:
            return  # an old kind's object, or a copy of one: its status is not ours to judge
        status = obj.get("status") or {}
        if status and "observedGeneration" not in status:
            return  # every status the operator writes says which generation it saw
        state = state_of(obj)
        seen = (meta.get("uid", ""), f"{kind}/{state}")
        if seen in self.seen or self.counts[(kind, state)] >= PER_STATE:
            return
        self.seen.add(seen)
        self.counts[(kind, state)] += 1
        name = f"{self.tag}{meta.get('namespace')}_{meta.get('name')}.json"
        target = directory / kind / state / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(obj, indent=1, default=str))
        except OSError:
            pass


SESSION = Captures()
"""The test session's captures (started by the ``captured_objects`` fixture)."""


def start(directory: Path, tag: str = "") -> None:
    """Capture into ``directory`` from now on (the session fixture in tests/conftest.py);
    ``tag`` (a distributed run's worker) keeps the workers' files apart."""
    SESSION.start(directory, tag)


def capture(objs: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> None:
    SESSION.capture(objs)


def fabricated(kind_or_plural: str, namespace: str, name: str) -> None:
    """Never capture this object: its status was written by a test, not the operator."""
    SESSION.fabricate(kind_or_plural, namespace, name)


def state_of(obj: Mapping[str, Any]) -> str:
    status = obj.get("status") or {}
    if obj.get("kind") in LIFECYCLE_KINDS:
        return str(status.get("phase") or NOT_JUDGED)
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or ()}
    ready = conditions.get("Ready")
    if ready is None:
        return NOT_JUDGED
    if ready == "True" and conditions.get("Paused") == "True":
        return PAUSED
    return f"Ready={ready}"


def captured(directory: Path) -> dict[tuple[str, str], list[Path]]:
    """(kind, state) -> the captured objects' files."""
    out: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(directory.glob("*/*/*.json")):
        out.setdefault((path.parent.parent.name, path.parent.name), []).append(path)
    return out


def _kind(kind_or_plural: str) -> str:
    for k in KINDS:
        if kind_or_plural in (k.kind, k.plural):
            return k.kind
    raise ValueError(f"not a vmguard kind or plural: {kind_or_plural!r}")
