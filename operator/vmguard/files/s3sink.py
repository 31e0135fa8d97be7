"""A :class:`~vmguard.files.restore.FileSink` that uploads restored files as S3 objects.

Used by a VMGuardRestore in ``files`` mode with ``to.s3``: every restored file becomes one
object ``PREFIX/VOLUME/path`` (``PREFIX/DISK/VOLUME/path`` when the restore reads every
disk). S3 has no directories, so directories leave no object; a symlink becomes an empty
object whose metadata names its target. Metadata on every object: ``mtime-ns`` (the
archived modification time, nanoseconds since the epoch), ``mode`` (octal, where the
file system keeps one) and, for symlinks, ``symlink-target`` (percent-encoded UTF-8,
as S3 metadata is ASCII).

Invariants: a file is uploaded only once it was read whole — it is spooled first (in
memory up to :data:`SPOOL_BYTES`, then in a temporary file), so a chunk that fails to
read leaves no object behind; an upload failure is this file's error (a
:class:`~vmguard.errors.BackendUnavailableError` naming the key), and the other files go
on. Credentials are the caller's and never appear in an error.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from vmguard.errors import BackendUnavailableError
from vmguard.files.fs import Stat

SPOOL_BYTES = 16 << 20
PART_BYTES = 64 << 20


class S3PrefixSink:
    """Uploads under ``prefix`` in ``bucket`` through a ``minio.Minio`` client."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.objects = 0

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    @staticmethod
    def _metadata(stat: Stat) -> dict[str, str]:
        meta = {"x-amz-meta-mtime-ns": str(stat.mtime_ns)}
        if stat.mode is not None:
            meta["x-amz-meta-mode"] = oct(stat.mode & 0o7777)
        return meta

    def _put(self, path: str, data: Any, length: int, metadata: dict[str, str]) -> None:
        key = self.key(path)
        try:
            self.client.put_object(
                self.bucket,
                key,
                data,
                length,
                metadata=metadata,
                part_size=PART_BYTES if length > PART_BYTES else 0,
            )
        except Exception as exc:  # minio's S3Error, urllib3's errors, a key S3 refuses
            raise BackendUnavailableError(
                f"uploading s3://{self.bucket}/{key}: {type(exc).__name__}: {exc}"
            ) from None
        self.objects += 1

    def directory(self, path: str, stat: Stat) -> None:
        """S3 has no directories; the objects under them carry the paths."""

    def file(self, path: str, chunks: Iterable[bytes], stat: Stat) -> int:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            written = 0
            for data in chunks:
                spool.write(data)
                written += len(data)
            spool.seek(0)
            self._put(path, spool, written, self._metadata(stat))
        return written

    def symlink(self, path: str, target: str, stat: Stat) -> None:
        meta = self._metadata(stat)
        meta["x-amz-meta-symlink-target"] = quote(target, safe="/")
        self._put(path, io.BytesIO(b""), 0, meta)

    def finish(self) -> None:
        """Nothing waits: objects are complete when uploaded."""
