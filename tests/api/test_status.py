"""The typed statuses (vmguard.api.status) say what the CRDs' status schemas say.

The controllers build their status patches as these TypedDicts; the apiserver checks
them against the CRD. This walks both, key by key and through nested objects and
arrays, so a field added to (or dropped from) one and not the other fails here rather
than as a rejected patch or a key nobody writes.
"""

from __future__ import annotations

import types
import typing
from typing import Any, is_typeddict

import pytest

from vmguard.api import BackupStatus, Condition, ProtectedVMStatus, RestoreStatus
from vmguard.crds import backup, protectedvm, restore

pytestmark = pytest.mark.unit


def _typed_dict(annotation: Any) -> tuple[Any, bool]:
    """(the TypedDict inside ``annotation`` or None, whether it is a list of them)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _typed_dict(inner[0]) if len(inner) == 1 else (None, False)
    if origin in (typing.NotRequired, typing.Required):
        return _typed_dict(typing.get_args(annotation)[0])
    if origin is list:
        item, _ = _typed_dict(typing.get_args(annotation)[0])
        return item, True
    return (annotation, False) if is_typeddict(annotation) else (None, False)


def mismatches(td: Any, schema: dict[str, Any], where: str) -> list[str]:
    props = schema.get("properties") or {}
    hints = typing.get_type_hints(td)
    out = [f"{where}.{k}: in the CRD, not in {td.__name__}" for k in props if k not in hints]
    out += [f"{where}.{k}: in {td.__name__}, not in the CRD" for k in hints if k not in props]
    for key, annotation in hints.items():
        if key not in props:
            continue
        inner, is_list = _typed_dict(annotation)
        sub = props[key]
        if is_list:
            assert sub["type"] == "array", f"{where}.{key} is a list in {td.__name__}"
            sub = sub["items"]
        if inner is not None:
            assert sub["type"] == "object", f"{where}.{key} is an object in {td.__name__}"
            out += mismatches(inner, sub, f"{where}.{key}")
        else:
            assert sub["type"] != "object" or not sub.get("properties"), (
                f"{where}.{key} is an object in the CRD: give it a TypedDict"
            )
    return out


@pytest.mark.parametrize(
    ("td", "schema"),
    [
        (BackupStatus, backup.status),
        (RestoreStatus, restore.status),
        (ProtectedVMStatus, protectedvm.status),
    ],
    ids=["VMGuardBackup", "VMGuardRestore", "ProtectedVM"],
)
def test_typed_status_matches_the_crd(td: Any, schema: dict[str, Any]) -> None:
    assert mismatches(td, schema, "status") == []


def test_condition_required_keys_match_the_crd() -> None:
    item = backup.status["properties"]["conditions"]["items"]
    assert set(Condition.__required_keys__) == set(item["required"])


def test_the_walk_sees_a_missing_nested_key() -> None:
    """The check itself can fail: a schema with one more disk field is caught."""
    schema = {
        **backup.status,
        "properties": {
            **backup.status["properties"],
            "totals": {
                **backup.status["properties"]["totals"],
                "properties": {
                    **backup.status["properties"]["totals"]["properties"],
                    "bytesSkipped": {"type": "integer"},
                },
            },
        },
    }
    assert mismatches(BackupStatus, schema, "status") == [
        "status.totals.bytesSkipped: in the CRD, not in BackupTotals"
    ]
