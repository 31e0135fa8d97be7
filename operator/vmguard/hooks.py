"""Injection points for a program that embeds vmguard: callables it installs before it
hands control to :func:`vmguard.cli.main`.

Production installs none, and then every point is a no-op. Nothing here reads the
environment or a file: a hook exists only because code running in the same process
installed it. The lab's entry module (``python -m vmguard_lab.run``, docs/lab.md) installs
them from its own command line, so fault tests can park the operator at a point or slow a
proxy down without a switch in the product.

Points:

- **backup step** (:func:`add_backup_step_hook`): awaited by the VMBackup controller at
  named points of a backup, :data:`BACKUP_STEPS` — ``snapshotted`` (our snapshot is
  taken, not yet recorded in status) and ``finalizing`` (on entering Finalizing, before
  the snapshot is removed). A hook may wait as long as it likes: the backup waits with it.
- **transfer progress** (:func:`add_transfer_progress_hook`): called by the backup proxy
  with (bytes done, bytes total) before each progress report. A hook may block; the
  transfer waits for it, and the reported rate includes the wait.

Invariants: hooks are installed before the operator or proxy starts and are never
removed; they run in the order installed; a hook's exception propagates into the step
that called it (a hook is the embedder's code, not the product's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

BACKUP_STEPS = ("snapshotted", "finalizing")
"""The points at which :func:`backup_step` is awaited."""

BackupStepHook = Callable[[str], Awaitable[None]]
TransferProgressHook = Callable[[int, int], None]

_backup_step_hooks: list[BackupStepHook] = []
_transfer_progress_hooks: list[TransferProgressHook] = []


def add_backup_step_hook(hook: BackupStepHook) -> None:
    """Install ``hook(point)``; awaited at each of :data:`BACKUP_STEPS`."""
    _backup_step_hooks.append(hook)


def add_transfer_progress_hook(hook: TransferProgressHook) -> None:
    """Install ``hook(done, total)``; called before the proxy reports progress."""
    _transfer_progress_hooks.append(hook)


async def backup_step(point: str) -> None:
    """The VMBackup controller reached ``point`` (one of :data:`BACKUP_STEPS`)."""
    for hook in _backup_step_hooks:
        await hook(point)


def transfer_progress(done: int, total: int) -> None:
    """The backup proxy is about to report ``done`` of ``total`` bytes."""
    for hook in _transfer_progress_hooks:
        hook(done, total)
