"""A multi-disk VM's restore, as the proxy and the CLI run it, without vSphere around it.

    PYTHONPATH=operator python bench/vm_restore.py backup REPO KEY_FILE URI --disks 4
    PYTHONPATH=operator python bench/vm_restore.py restore REPO KEY_FILE ARCHIVE URI...

``backup`` stores the disk at ``URI`` as every one of ``--disks`` disks of one archive
(untimed setup for ``bench/mover.py``; the disks deduplicate in the store, but each is
restored from its own index, so a restore does the full work per disk) and prints the
archive id. ``restore`` writes disk *n* of the archive into the *n*-th NBD target through
:func:`vmguard.vm.restore.write_disks` — the proxy's and ``vmguard vm restore``'s
parallel disks, at most ``--disks-at-once`` (default: the product's) at a time — each
disk by :func:`~vmguard.engine.restore.restore_disk` into an
:class:`~vmguard.transport.nbd.NbdSink`, as :func:`~vmguard.vm.restore.write_disk` does
once the locator has served the disk. S3 credentials from ``VMGUARD_S3_ACCESS_KEY`` and
``VMGUARD_S3_SECRET_KEY``.
"""

from __future__ import annotations

import argparse
import functools
import os

from vmguard.engine.backup import DiskInput, back_up
from vmguard.engine.restore import RestoreStats, restore_disk
from vmguard.store import MasterKey, Repository, VmIdentity
from vmguard.store.location import open_repository
from vmguard.transport.nbd import NbdSink, NbdSource
from vmguard.vm.restore import DISKS_AT_ONCE, write_disks


def _backup(repo: Repository, uri: str, disks: int) -> str:
    sources = [NbdSource(uri) for _ in range(disks)]
    try:
        inputs = [DiskInput(str(2000 + n), s) for n, s in enumerate(sources)]
        return back_up(repo, VmIdentity(id="bench-vm", name="bench-vm"), inputs).archive_id
    finally:
        for source in sources:
            source.close()


def _restore_one(repo: Repository, archive: str, key: str, uri: str) -> RestoreStats:
    manifest = repo.load_archive(archive)
    sink = NbdSink(uri)
    try:
        return restore_disk(repo, manifest, key, sink)
    finally:
        sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backup")
    b.add_argument("repo")
    b.add_argument("key_file")
    b.add_argument("uri")
    b.add_argument("--disks", type=int, default=4)
    r = sub.add_parser("restore")
    r.add_argument("repo")
    r.add_argument("key_file")
    r.add_argument("archive")
    r.add_argument("uris", nargs="+")
    r.add_argument("--disks-at-once", type=int, default=DISKS_AT_ONCE)
    args = parser.parse_args()
    repo = open_repository(args.repo, MasterKey.from_file(args.key_file), os.environ)
    if args.cmd == "backup":
        print(_backup(repo, args.uri, args.disks))
        return
    manifest = repo.load_archive(args.archive)
    keys = [d.key for d in manifest.disks]
    writes = [
        functools.partial(_restore_one, repo, args.archive, key, uri)
        for key, uri in zip(keys, args.uris, strict=True)
    ]
    stats = write_disks(writes, args.disks_at_once)
    print(sum(s.bytes_written for s in stats))


if __name__ == "__main__":
    main()
