"""Standard ``status.conditions`` (the shape of ``metav1.Condition``), as pure functions.

A condition's ``lastTransitionTime`` changes only when its ``status`` does, so watchers
can tell "still failing" from "failing again". Reasons are CamelCase; messages are for
people and never contain a secret value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, cast

from vmguard.api import Condition, ConditionStatus, format_time


def now() -> str:
    return format_time(dt.datetime.now(dt.UTC))


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int | None = None,
    at: str | None = None,
) -> list[Condition]:
    """Return ``conditions`` with ``type_`` set (True/False/Unknown for None)."""
    value: ConditionStatus = "Unknown" if status is None else ("True" if status else "False")
    # Conditions read back from an object are trusted to have the CRD's shape.
    out = [cast(Condition, dict(c)) for c in conditions or () if c.get("type") != type_]
    previous = next((c for c in conditions or () if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != value
    cond: Condition = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": (at or now())
        if changed or previous is None
        else previous.get("lastTransitionTime") or (at or now()),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    return sorted(out, key=lambda c: c["type"])


def get_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> dict[str, Any]:
    return dict(next((c for c in conditions or () if c.get("type") == type_), {}))
