"""A VMGuardRestore in ``files`` mode, in the proxy: paths out of the archive into S3 or a PVC.

``paths`` are globs from a file system's root (``/etc/**``). With ``disk`` and
``partition`` they are looked up in that one volume (``pN``); with ``disk`` alone in
every readable volume of that disk; with neither, in every disk. Where files land:

- one disk given: ``VOLUME/path`` under the destination (as ``vmguard files get``);
- every disk: ``DISKKEY/VOLUME/path``, as two disks may both have a ``p1``.

The destination is the S3 prefix (:class:`~vmguard.files.s3sink.S3PrefixSink`, with the
repository's S3 service and credentials unless the target names another bucket) or the
directory ``path`` in the PVC mounted at
:data:`~vmguard.proxy.contract.RESTORE_TARGET_DIR`
(:class:`~vmguard.files.restore.DirectorySink`). Progress is patched as bytes of the
selected files are written. A pattern that matches nothing on every disk, and a file
that cannot be read, are errors: every other file is still restored, then the restore
fails naming the first few (reason ``FilesNotRestored``).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from typing import Any

import urllib3
from minio import Minio

from vmguard.config import ca_bundle_file
from vmguard.errors import FileRestoreError, PermanentError
from vmguard.files.fs import Stat
from vmguard.files.restore import DirectorySink, FileSink, RestoreProgress, restore_paths
from vmguard.files.s3sink import S3PrefixSink
from vmguard.proxy.contract import RESTORE_TARGET_DIR, S3_CA_BUNDLE_ENV
from vmguard.proxy.report import StatusReporter
from vmguard.store import ArchiveManifest, Repository
from vmguard.store.location import parse_location, repository_url, s3_credentials

ERRORS_LISTED = 5


class FilesNotRestored(PermanentError):
    """Some paths could not be restored; the rest were."""

    reason = "FilesNotRestored"


class _Under:
    """A sink seen through a sub-directory (``DISKKEY/``) of another."""

    def __init__(self, sink: FileSink, top: str) -> None:
        self.sink, self.top = sink, top

    def directory(self, path: str, stat: Stat) -> None:
        self.sink.directory(f"{self.top}/{path}", stat)

    def file(self, path: str, chunks: Iterable[bytes], stat: Stat) -> int:
        return self.sink.file(f"{self.top}/{path}", chunks, stat)

    def symlink(self, path: str, target: str, stat: Stat) -> None:
        self.sink.symlink(f"{self.top}/{path}", target, stat)

    def finish(self) -> None:
        self.sink.finish()


def patterns(paths: list[str], partition: int | None) -> list[str]:
    """CRD paths (``/etc/**``) as :func:`restore_paths` patterns (``VOLUME/path``)."""
    volume = f"p{partition}" if partition else "*"
    return [f"{volume}/{p.lstrip('/')}".rstrip("/") for p in paths]


def _s3_sink(to: dict[str, Any]) -> S3PrefixSink:
    location = parse_location(repository_url(None))
    access, secret = s3_credentials()
    http = None
    if os.environ.get(S3_CA_BUNDLE_ENV):  # the repository's private CA
        http = urllib3.PoolManager(ca_certs=ca_bundle_file(os.environ[S3_CA_BUNDLE_ENV]))
    client = Minio(
        location.endpoint,
        access_key=access,
        secret_key=secret,
        secure=location.secure,
        region=location.region,
        http_client=http,
    )
    return S3PrefixSink(client, to.get("bucket") or location.bucket, to["prefix"])


def _sink(to: dict[str, Any], root: str) -> FileSink:
    if "s3" in to:
        return _s3_sink(to["s3"])
    inner = posixpath.normpath("/" + (to["pvc"].get("path") or "").strip("/")).lstrip("/")
    return DirectorySink(os.path.join(root, inner) if inner else root)


def _disk_keys(manifest: ArchiveManifest, selector: dict[str, Any] | None) -> list[str]:
    if not selector:
        return [d.key for d in manifest.disks]
    for d in manifest.disks:
        if str(selector.get("key", "")) == d.key or selector.get("label") == d.label:
            return [d.key]
    raise PermanentError(f"archive {manifest.archive_id} has no disk {selector}")


def restore_files(
    repo: Repository,
    manifest: ArchiveManifest,
    files: dict[str, Any],
    result: dict[str, Any],
    reporter: StatusReporter,
    root: str = RESTORE_TARGET_DIR,
) -> dict[str, Any]:
    keys = _disk_keys(manifest, files.get("disk"))
    wanted = patterns(files["paths"], files.get("partition"))
    sink = _sink(files["to"], root)
    restored = written = base = 0
    errors: list[FileRestoreError] = []
    unmatched: dict[str, int] = {}
    for key in keys:

        def progress(state: RestoreProgress, base: int = base) -> None:
            reporter.progress(base + state.bytes_done, base + state.bytes_total, 0.0)

        target = sink if files.get("disk") else _Under(sink, key)
        report = restore_paths(repo, manifest, wanted, target, disk=key, progress=progress)
        restored += len(report.restored)
        written += report.bytes_restored
        base += report.bytes_restored
        for err in report.errors:
            if err.path in wanted and "no such file" in str(err.cause):
                unmatched[err.path] = unmatched.get(err.path, 0) + 1
            else:
                errors.append(err)
    errors += [
        FileRestoreError(p, PermanentError("no such file or directory on any disk"))
        for p, n in unmatched.items()
        if n == len(keys)
    ]
    out = {**result, "filesRestored": restored, "bytesRestored": written}
    reporter.patch({"result": out})
    if errors:
        listed = "; ".join(str(e) for e in errors[:ERRORS_LISTED])
        more = f" and {len(errors) - ERRORS_LISTED} more" if len(errors) > ERRORS_LISTED else ""
        raise FilesNotRestored(f"{len(errors)} path(s) not restored: {listed}{more}")
    return out
