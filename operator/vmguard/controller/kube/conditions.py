"""Standard ``status.conditions`` (the shape of ``metav1.Condition``), as pure functions.

A condition's ``lastTransitionTime`` changes only when its ``status`` does, so watchers
can tell "still failing" from "failing again". Reasons are CamelCase; messages are for
people and never contain a secret value.

The kinds that end (VMGuardBackup, VMGuardRestore: phases ending ``Completed`` or ``Failed``) also
carry kstatus's two abnormal-true conditions (sigs.k8s.io/cli-utils, what Flux and
``kubectl wait`` read), set by :func:`lifecycle_conditions` from the phase alone:

- work under way: ``Reconciling=True`` (reason = the phase), no ``Stalled``;
- Completed: ``Ready=True``, ``Reconciling=False``, no ``Stalled``;
- Failed: ``Stalled=True`` with the failure's reason and message, ``Reconciling=False``.

kstatus checks ``Reconciling`` before ``Stalled``, so a failed object must never keep
``Reconciling=True``: then it would read "in progress" forever.

The kinds that stand (VCenter, VMGuardRepository, VMProtectionPolicy: never "done", judged
again on every pass) get the same two conditions from their ``Ready`` alone, by
:func:`standing_conditions`: kstatus reads a bare ``Ready=False`` as "in progress", so a
vCenter that refuses its password would keep ``flux --wait`` waiting until its timeout.

- ``Ready`` not decided yet (absent or Unknown): ``Reconciling=True``, no ``Stalled``;
- ``Ready=True``: neither;
- ``Ready=False``: ``Stalled=True`` with ``Ready``'s reason and message, no
  ``Reconciling``. The operator keeps trying (the next sweep or turn may clear it);
  Stalled says that trying has not fixed it, and that someone should look.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping
from typing import Any, cast

from vmguard.api import Condition, ConditionStatus, Failure, format_time


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


def remove_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> list[Condition]:
    """Return ``conditions`` without ``type_``."""
    return [cast(Condition, dict(c)) for c in conditions or () if c.get("type") != type_]


def lifecycle_conditions(
    conditions: Iterable[Mapping[str, Any]] | None,
    phase: str,
    *,
    terminal: bool,
    failure: Mapping[str, Any] | None,
    generation: int | None = None,
    at: str | None = None,
) -> list[Condition]:
    """``conditions`` with ``Reconciling``/``Stalled`` (and a ``Ready`` if none yet) for
    ``phase``. ``terminal``: the phase is Completed or Failed; ``failure``: the
    ``status.error`` of a Failed object (``None`` for any other phase).

    Pure and idempotent: applied to its own result it returns the same list, so a
    controller may apply it on every status patch.
    """
    out = [cast(Condition, dict(c)) for c in conditions or ()]
    ready = get_condition(out, "Ready")
    if not terminal:
        if not ready:
            out = set_condition(
                out, "Ready", False, phase, f"{phase}: work under way", generation, at
            )
            ready = get_condition(out, "Ready")
        message = ready.get("message") or phase
        out = set_condition(out, "Reconciling", True, phase, message, generation, at)
        return remove_condition(out, "Stalled")
    if failure is None:
        if ready.get("status") != "True":
            out = set_condition(out, "Ready", True, phase, phase, generation, at)
        out = set_condition(
            out, "Reconciling", False, phase, f"{phase}: nothing left to do", generation, at
        )
        return remove_condition(out, "Stalled")
    reason = str(failure.get("reason") or "Failed")
    message = str(failure.get("message") or f"{phase} ({reason})")
    if ready.get("status") != "False":
        out = set_condition(out, "Ready", False, reason, message, generation, at)
    out = set_condition(
        out, "Reconciling", False, phase, f"{phase}: nothing more is tried", generation, at
    )
    return set_condition(out, "Stalled", True, reason, message, generation, at)


def standing_conditions(
    conditions: Iterable[Mapping[str, Any]] | None,
    generation: int | None = None,
    at: str | None = None,
) -> list[Condition]:
    """``conditions`` with ``Reconciling``/``Stalled`` derived from ``Ready`` (see the
    module docstring). Pure and idempotent, like :func:`lifecycle_conditions`."""
    ready = get_condition(conditions, "Ready")
    if ready.get("status") == "True":
        return remove_condition(remove_condition(conditions, "Stalled"), "Reconciling")
    if ready.get("status") == "False":
        reason, message = str(ready.get("reason")), str(ready.get("message"))
        out = set_condition(conditions, "Stalled", True, reason, message, generation, at)
        return remove_condition(out, "Reconciling")
    message = str(ready.get("message") or "not checked yet")
    reason = str(ready.get("reason") or "Checking")
    out = set_condition(conditions, "Reconciling", True, reason, message, generation, at)
    return remove_condition(out, "Stalled")


def outcome_conditions(
    conditions: Iterable[Mapping[str, Any]] | None,
    phase: str,
    *,
    terminal: Collection[str],
    failed: str,
    error: Failure | None,
    what: str,
    generation: int | None,
) -> list[Condition]:
    """:func:`lifecycle_conditions` for a kind that ends (VMGuardBackup, VMGuardRestore):
    ``terminal`` its ending phases, ``failed`` the one that failed (its ``error``, or
    "<what> failed" when it has none)."""
    failure = (
        (error or {"reason": "Failed", "message": f"{what} failed"}) if phase == failed else None
    )
    return lifecycle_conditions(
        conditions, phase, terminal=phase in terminal, failure=failure, generation=generation
    )


def get_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> dict[str, Any]:
    return dict(next((c for c in conditions or () if c.get("type") == type_), {}))
