"""Injection points for a program that embeds vmguard: :class:`Hooks`, handed to
:func:`vmguard.cli.main` and passed explicitly from there to where they are called.

Production passes none (:data:`NO_HOOKS`), and then every point is a no-op. Nothing here
reads the environment or a file, and nothing is registered globally: a hook exists only
because the caller of ``main`` gave it. The lab's entry module (``python -m
vmguard_lab.run``, docs/lab.md) builds them from its own command line, so fault tests
can park the operator at a point or slow a proxy down without a switch in the product.

Points:

- ``backup_step(point)``: awaited by the VMGuardBackup controller at the named points of a
  backup in :data:`BACKUP_STEPS` — ``snapshotted`` (our snapshot is taken, not yet
  recorded in status), ``finalizing`` (on entering Finalizing, before the snapshot
  is removed), ``protectedVMCreated`` (the backup created its VM's ProtectedVM, which
  has no status yet: the point is written next) and ``pointRecorded`` (the restore
  point is in the VM's ProtectedVM, the backup not yet Completed). It may wait as long
  as it likes: the backup waits with it.
- ``restore_step(point)``: awaited by the VMGuardRestore controller at the named points
  of a restore in :data:`RESTORE_STEPS` — ``finalizing`` (the restore reads Finalizing,
  the VM is not powered on yet). The restore waits with it.
- ``transfer_progress(done, total)``: called by the backup proxy with bytes done and
  bytes total before each progress report. It may block; the transfer waits for it,
  and the reported rate includes the wait.

A hook's exception propagates into the step that called it (a hook is the embedder's
code, not the product's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

BACKUP_STEPS = ("snapshotted", "finalizing", "protectedVMCreated", "pointRecorded")
"""The points at which :attr:`Hooks.backup_step` is awaited."""

RESTORE_STEPS = ("finalizing",)
"""The points at which :attr:`Hooks.restore_step` is awaited."""


async def _no_step(point: str) -> None:
    return None


def _no_progress(done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    """The callables an embedder injects; each defaults to a no-op."""

    backup_step: Callable[[str], Awaitable[None]] = _no_step
    restore_step: Callable[[str], Awaitable[None]] = _no_step
    transfer_progress: Callable[[int, int], None] = _no_progress


NO_HOOKS = Hooks()
"""What production runs with: every point a no-op."""
