"""Where data lives, as the command line names it: master keys, block sources and targets.

Repository URLs are parsed in one place, :mod:`vmguard.store.location` (the file-restore
nbdkit plugin needs them below this layer); S3 credentials come only from the
environment there. The master key comes from ``--key-file`` or ``VMGUARD_KEY``. No
message here prints a secret.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmguard.store import MasterKey
from vmguard.transport.extents import BlockSink, BlockSource


def master_key(key_file: str | None) -> MasterKey | None:
    """The master key from ``--key-file``, else from ``VMGUARD_KEY``, else None."""
    if key_file:
        return MasterKey.from_file(key_file)
    return MasterKey.from_env()


def new_key_file(path: str) -> MasterKey:
    """Read the key in ``path``, or create the file with a fresh key (mode 0600)."""
    target = Path(path)
    if target.exists():
        return MasterKey.from_file(target)
    key = MasterKey.generate()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.secret)
    return key


def is_nbd_uri(text: str) -> bool:
    return text.startswith(("nbd://", "nbd+unix://", "nbds://", "nbds+unix://"))


def open_source(text: str) -> BlockSource:
    """A block source: an ``nbd://``/``nbd+unix://`` URI, or a file or block device."""
    if is_nbd_uri(text):
        from vmguard.transport.nbd import NbdSource

        return NbdSource(text)
    from vmguard.transport.file import FileSource

    return FileSource(text)


def open_sink(text: str, size: int, *, overwrite: bool) -> tuple[BlockSink, bool]:
    """A block sink for a restore of ``size`` bytes, and whether its holes need zeroing.

    A new (or, with ``overwrite``, re-created) file is sparse and reads as zeros, so
    holes need no writes. An NBD export or a block device may hold old data: its holes
    are zeroed.
    """
    if is_nbd_uri(text):
        from vmguard.transport.nbd import NbdSink

        return NbdSink(text), True
    from vmguard.transport.file import FileSink

    path = Path(text)
    if path.is_block_device():
        return FileSink(path), True
    return FileSink.create(path, size, overwrite=overwrite), False
