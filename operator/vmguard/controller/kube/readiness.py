"""kopf's wait for its indexes, linear in the number of objects (docs/scale.md).

kopf runs no handler before every index is filled from its first LIST. For that, each
object of a kind with an index handler (VMGuardBackups: the admission queue's index)
gets a toggle in one ``ToggleSet``, dropped once the object is indexed, and every
object's worker waits on that set's condition until all toggles are gone. kopf (1.45)
wakes every waiting worker whenever a toggle is added or dropped, although the set's
state ("all indexed") only changes once: with 5,000 backups (last night's runs) that is
≈ 10,000 wake-ups of up to 5,000 workers each, and an operator start that had run no
handler after several minutes of CPU.

:func:`install` makes ``ToggleSet.make_toggle``, ``drop_toggle`` and ``drop_toggles``
wake the waiters only when the set's state changes. A waiter waits for a state; the
state can change only by a toggle added, dropped or flipped (a flip notifies from the
toggle itself, as before), so a waiter is woken whenever what it waits for may have
come. Nothing else of kopf changes.

It replaces three methods of a kopf class that is not part of kopf's public API:
:data:`KOPF_VERSIONS` lists the versions this was read against, and :func:`install`
leaves kopf alone (and says so in the log) on any other. Installed once, by
``main.run``, before the operator starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf
from kopf._cogs.aiokits import aiotoggles

KOPF_VERSIONS = ("1.45.",)
"""kopf releases whose ``aiotoggles.ToggleSet`` this module was read against."""

log = logging.getLogger(__name__)


async def _make_toggle(
    self: aiotoggles.ToggleSet, __val: bool = False, *, name: str | None = None
) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggles(self: aiotoggles.ToggleSet, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


def install(version: str | None = None) -> bool:
    """Make kopf's toggle sets wake their waiters on state changes only; True when
    installed (now or before), False when this kopf release is not one it knows."""
    version = version if version is not None else str(getattr(kopf, "__version__", ""))
    if not version.startswith(KOPF_VERSIONS):
        log.warning(
            "kopf %s: its index readiness is left as it is (quadratic in the objects at "
            "start; read against %s)",
            version or "of unknown version",
            ", ".join(KOPF_VERSIONS),
        )
        return False
    cls: Any = aiotoggles.ToggleSet
    cls.make_toggle = _make_toggle
    cls.drop_toggle = _drop_toggle
    cls.drop_toggles = _drop_toggles
    return True
