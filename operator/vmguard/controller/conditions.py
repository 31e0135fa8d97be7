"""Standard ``status.conditions`` (the shape of ``metav1.Condition``), as pure functions.

A condition's ``lastTransitionTime`` changes only when its ``status`` does, so watchers
can tell "still failing" from "failing again". Reasons are CamelCase; messages are for
people and never contain a secret value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from vmguard.api import format_time


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
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``type_`` set (True/False/Unknown for None)."""
    value = "Unknown" if status is None else ("True" if status else "False")
    out = [dict(c) for c in conditions or () if c.get("type") != type_]
    previous = next((c for c in conditions or () if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != value
    cond: dict[str, Any] = {
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
