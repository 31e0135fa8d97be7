"""tests/captures.py files objects by kind and state, bounded, and leaves out what a test
wrote itself or is being deleted (the health test's inputs must be the operator's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import captures
from vmguard.api import API_VERSION
from vmguard.api.kinds import BACKUP, POLICY, VCENTER

pytestmark = pytest.mark.unit


def obj(kind: str, name: str, status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", **meta},
    }
    if status is not None:
        body["status"] = status
    return body


def ready(value: str, **more: str) -> dict[str, Any]:
    conds = [{"type": "Ready", "status": value}]
    conds += [{"type": t, "status": v} for t, v in more.items()]
    return {"conditions": conds}


def test_states_by_kind() -> None:
    b, p, v = BACKUP.kind, POLICY.kind, VCENTER.kind
    assert captures.state_of(obj(b, "a", {"phase": "Transferring"})) == "Transferring"
    assert captures.state_of(obj(b, "a")) == captures.NOT_JUDGED
    assert captures.state_of(obj(v, "a", {"reachable": False})) == captures.NOT_JUDGED
    assert captures.state_of(obj(v, "a", ready("False"))) == "Ready=False"
    assert captures.state_of(obj(p, "a", ready("True", Paused="True"))) == captures.PAUSED
    assert captures.state_of(obj(p, "a", ready("False", Paused="True"))) == "Ready=False"


def test_bounded_per_state_and_never_what_a_test_wrote(tmp_path: Path) -> None:
    c = captures.Captures()
    b = BACKUP.kind
    c.capture(obj(b, "early", {"phase": "Pending"}))  # not started: nothing kept
    c.start(tmp_path)
    c.fabricate(BACKUP.plural, "ns", "fake")
    c.capture(obj(b, "fake", {"phase": "Completed"}))
    c.capture(obj(b, "gone", {"phase": "Failed"}, deletionTimestamp="2026-01-01T00:00:00Z"))
    done = {"phase": "Completed", "observedGeneration": 1}  # as the operator writes it
    c.capture([obj(b, f"b{i}", done) for i in range(5)])
    c.capture(obj(b, "b0", done))  # the same object again
    c.capture(obj(b, "handmade", {"phase": "Completed"}))  # no observedGeneration: a test's
    c.capture(obj("VMBackup", "old", done))  # a kind renamed away
    c.capture(obj(b, "copy", done, annotations={"vmguard.io/migrated-from": "VMBackup/u"}))
    c.capture({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    with pytest.raises(ValueError, match="vmbackups"):
        c.fabricate("vmbackups", "ns", "x")  # an old plural would silently match nothing
    found = captures.captured(tmp_path)
    assert {k: [p.name for p in v] for k, v in found.items()} == {
        (b, "Completed"): [f"ns_b{i}.json" for i in range(captures.PER_STATE)]
    }
