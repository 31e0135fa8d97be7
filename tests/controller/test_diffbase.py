"""kopf's diff-base storage as the operator configures it (``main.DiffBaseExceptBackups``):
a VMGuardBackup's essence is not built (kopf built one at every event of every backup,
a deep copy of the whole body, for no handler: docs/scale.md); every other kind's is
kopf's own."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from vmguard.api import ANNOTATION_PREFIX, GROUP, VERSION
from vmguard.api.kinds import BACKUP, POLICY
from vmguard.controller.main import DiffBaseExceptBackups


def _body(kind: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "labels": {"a": "b"}},
        "spec": {"vm": {"name": "vm-1"}, "policyRef": {"name": "p"}},
        "status": {"phase": "Completed", "conditions": [{"type": "Ready"}] * 20},
    }


@pytest.fixture
def storage() -> DiffBaseExceptBackups:
    return DiffBaseExceptBackups(prefix=ANNOTATION_PREFIX, key="last-handled-configuration")


def test_a_backups_essence_is_not_built(
    storage: DiffBaseExceptBackups, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies: list[Any] = []
    real = copy.deepcopy

    def counting(obj: Any, memo: Any = None) -> Any:
        copies.append(obj)
        return real(obj, memo)

    monkeypatch.setattr(copy, "deepcopy", counting)
    essence = storage.build(body=kopf.Body(_body(BACKUP.kind)))
    assert (dict(essence), len(copies)) == ({}, 0)


def test_every_other_kinds_essence_is_kopfs(storage: DiffBaseExceptBackups) -> None:
    essence = storage.build(body=kopf.Body(_body(POLICY.kind)))
    assert dict(essence) == {
        "spec": {"vm": {"name": "vm-1"}, "policyRef": {"name": "p"}},
        "metadata": {"labels": {"a": "b"}},
    }
