"""A backend on an S3 bucket (MinIO, AWS S3, or any S3-compatible store), via the minio SDK.

Objects live under an optional key prefix of one bucket. Invariants and choices:

- ``put`` is a single PutObject (multipart above 5 MiB, which S3 also commits
  atomically), so readers never see partial objects.
- ``put_if_absent`` sends ``If-None-Match: *`` (S3 conditional writes; MinIO and AWS
  both honour it). Servers that ignore the header are detected once, by a probe
  object, and then the backend falls back to stat-then-put and reports
  ``capabilities.atomic_create = False``: two writers racing on one name may then
  both "win". ``capabilities`` runs that probe the first time it is asked, so what it
  reports is what the server does; credentials that may not delete (a copy Job's for its
  target) leave the probe in place, a few bytes outside every prefix the repository
  reads. The repository relies on create-if-absent to avoid
  overwriting a repository config and to take the GC lock; GC refuses to run on a
  store without it unless told it is the only GC (``docs/repository-format.md`` §7.3).
- Object Lock: when the bucket has Object Lock enabled, ``put`` accepts a retention,
  ``stat`` reports it, and ``delete`` removes every version of the key (a plain
  DELETE in a versioned bucket only adds a delete marker and frees nothing). A
  version under retention makes ``delete`` raise ObjectLockedError.
- Errors are translated: missing key → ObjectNotFoundError; network failures, 5xx,
  throttling → BackendUnavailableError (retryable); denied for retention →
  ObjectLockedError; a request refused because this host's clock is too far from the
  server's (RequestTimeTooSkewed) → ConfigError (permanent: a retry cannot fix a clock);
  anything else → a permanent error. Messages name the bucket and
  key, never the credentials.
- The SDK's own HTTP retries are off: :class:`RetryingBackend` owns retry policy.
"""

from __future__ import annotations

import io
import logging
import re
import secrets
import traceback
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import genheaders
from minio.retention import Retention as MinioRetention

from vmguard.errors import (
    BackendUnavailableError,
    BucketNotFoundError,
    ConfigError,
    CredentialsRefusedError,
    ObjectLockedError,
    ObjectNotFoundError,
    RepositoryError,
)
from vmguard.store.backend.base import (
    Capabilities,
    ObjectInfo,
    Retention,
    check_name,
    check_prefix,
    check_range,
)

_RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "OperationAborted",
        "ConditionalRequestConflict",
        "XMinioServerNotInitialized",
        "XMinioStorageFull",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchVersion", "ResourceNotFound"})
_LOCK_WORDS = re.compile(r"WORM|retention|object lock|locked|legal hold", re.IGNORECASE)
_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_SDK_ERRORS = (S3Error, ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, OSError)

log = logging.getLogger(__name__)


def _retention_header_date(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


class S3Backend:
    """Objects in one bucket under an optional prefix."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str,
        secret_key: str,
        prefix: str = "",
        secure: bool = True,
        region: str | None = None,
        ca_file: str | None = None,
        timeout: float = 60.0,
        conditional_writes: bool | None = None,
    ) -> None:
        prefix = prefix.strip("/")
        if prefix and (not _PREFIX_RE.fullmatch(prefix) or ".." in prefix.split("/")):
            raise ConfigError(f"invalid S3 key prefix: {prefix!r}")
        self._bucket = bucket
        self._prefix = prefix + "/" if prefix else ""
        self._endpoint = endpoint
        self._secure = secure
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(10.0, timeout), read=timeout),
            maxsize=32,
            cert_reqs="CERT_REQUIRED" if secure else "CERT_NONE",
            ca_certs=ca_file or certifi.where(),
            retries=urllib3.Retry(total=0, connect=None, read=False, redirect=0),
        )
        self._http = http
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self._conditional_writes = conditional_writes
        self._probing = False
        self._object_lock: bool | None = None

    # -- helpers -------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self._prefix + check_name(name)

    def _translate(self, exc: BaseException, name: str) -> Exception:
        # The SDK's finished frames keep the error in their locals, a reference cycle,
        # and each frame links back (f_back) to its callers': a backup's put_chunk holds
        # a 4 MiB chunk there. Every new chunk meets one such error (the 404 of its
        # existence check), so the cyclic GC, not the pipeline depth, decided how many
        # chunks stayed alive. Clearing those frames lets the error and the chunk go as
        # soon as the caller has handled it (frames still running are left alone).
        traceback.clear_frames(exc.__traceback__)
        where = f"s3://{self._bucket}/{self._prefix}{name}"
        if isinstance(exc, S3Error):
            code = exc.code or ""
            status = exc.response.status if exc.response is not None else 0
            if code in _NOT_FOUND_CODES:
                return ObjectNotFoundError(name)
            if code == "NoSuchBucket":
                return BucketNotFoundError(f"bucket {self._bucket!r} does not exist")
            if code == "RequestTimeTooSkewed":
                # A clock does not heal by retrying: say what is wrong, once, for good.
                return ConfigError(
                    f"{where}: S3 refused the request because this host's clock differs "
                    "from the server's by more than it allows (RequestTimeTooSkewed); "
                    "fix the clock (NTP) on this host"
                )
            if code in _RETRYABLE_CODES or status >= 500:
                return BackendUnavailableError(f"{where}: S3 {code or status}: {exc.message}")
            if code in ("AccessDenied", "InvalidRequest") and _LOCK_WORDS.search(exc.message or ""):
                return ObjectLockedError(name, exc.message or code)
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                return CredentialsRefusedError(f"{where}: S3 refused the credentials ({code})")
            return RepositoryError(f"{where}: S3 {code or status}: {exc.message}")
        if isinstance(exc, ServerError):
            return BackendUnavailableError(f"{where}: HTTP {exc.status_code}")
        return BackendUnavailableError(f"{where}: {type(exc).__name__}: {exc}")

    def _minio_retention(self, retention: Retention | None) -> MinioRetention | None:
        if retention is None:
            return None
        if not self.capabilities.object_lock:
            raise ConfigError(f"bucket {self._bucket!r} does not have object lock enabled")
        return MinioRetention(retention.mode, retention.until)

    # -- protocol ------------------------------------------------------------------------

    @property
    def location(self) -> str:
        scheme = "https" if self._secure else "http"
        return f"s3+{scheme}://{self._endpoint}/{self._bucket}/{self._prefix}"

    @property
    def capabilities(self) -> Capabilities:
        if self._object_lock is None:
            try:
                config = self._client.get_object_lock_config(self._bucket)
                self._object_lock = config is not None
            except S3Error as exc:
                if exc.code not in ("ObjectLockConfigurationNotFoundError", "NoSuchBucket"):
                    raise self._translate(exc, "") from exc
                self._object_lock = False
            except _SDK_ERRORS as exc:
                raise self._translate(exc, "") from exc
        if self._conditional_writes is None and not self._probing:
            self._conditional_writes = self._probe_conditional_writes()
        atomic = self._conditional_writes is not False
        return Capabilities(atomic_create=atomic, object_lock=self._object_lock)

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        key = self._key(name)
        lock = self._minio_retention(retention)
        try:
            self._client.put_object(self._bucket, key, io.BytesIO(data), len(data), retention=lock)
        except _SDK_ERRORS as exc:
            raise self._translate(exc, name) from exc

    def put_if_absent(self, name: str, data: bytes, *, retention: Retention | None = None) -> bool:
        if self._conditional_writes is None:
            self._conditional_writes = self._probe_conditional_writes()
        if not self._conditional_writes:
            try:
                self.stat(name)
                return False
            except ObjectNotFoundError:
                self.put(name, data, retention=retention)
                return True
        return self._conditional_put(name, data, retention)

    def _conditional_put(self, name: str, data: bytes, retention: Retention | None) -> bool:
        key = self._key(name)
        headers: dict[str, Any] = genheaders(
            None, None, None, self._minio_retention(retention), False
        )
        headers["Content-Type"] = "application/octet-stream"
        headers["If-None-Match"] = "*"
        try:
            self._client._put_object(self._bucket, key, data, headers)
        except S3Error as exc:
            if exc.code == "PreconditionFailed" or (
                exc.response is not None and exc.response.status == 412
            ):
                return False
            raise self._translate(exc, name) from exc
        except _SDK_ERRORS as exc:
            raise self._translate(exc, name) from exc
        return True

    def _probe_conditional_writes(self) -> bool:
        """Find out once whether the server honours If-None-Match on PUT."""
        probe = f"vmguard-probe-{secrets.token_hex(8)}"
        self._probing = True  # delete() asks for the capabilities: do not probe again
        try:
            first = self._conditional_put(probe, b"1", None)
            second = self._conditional_put(probe, b"2", None)
        finally:
            try:
                self.delete(probe)
            except CredentialsRefusedError as exc:
                # Credentials without a delete right (a copy Job's for its target,
                # docs/copies.md) may probe but not clean up: the probe's byte stays,
                # outside every prefix the repository reads.
                log.warning("could not delete the probe %s (%s): left in place", probe, exc)
            finally:
                self._probing = False
        return first and not second

    def _get(self, name: str, offset: int = 0, length: int = 0) -> bytes:
        key = self._key(name)
        try:
            response = self._client.get_object(self._bucket, key, offset=offset, length=length)
        except S3Error as exc:
            if exc.code == "InvalidRange":
                return b""
            raise self._translate(exc, name) from exc
        except _SDK_ERRORS as exc:
            raise self._translate(exc, name) from exc
        try:
            return bytes(response.read())
        except _SDK_ERRORS as exc:
            raise self._translate(exc, name) from exc
        finally:
            response.close()
            response.release_conn()

    def get(self, name: str) -> bytes:
        return self._get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        return self._get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        try:
            obj = self._client.stat_object(self._bucket, key)
        except _SDK_ERRORS as exc:
            raise self._translate(exc, name) from exc
        headers = obj.metadata or {}
        until = _retention_header_date(headers.get("x-amz-object-lock-retain-until-date"))
        modified = obj.last_modified or datetime.now(UTC)
        return ObjectInfo(name, obj.size or 0, modified.astimezone(UTC), until)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        try:
            for obj in self._client.list_objects(
                self._bucket, prefix=self._prefix + prefix, recursive=True
            ):
                name = (obj.object_name or "")[len(self._prefix) :]
                modified = (obj.last_modified or datetime.now(UTC)).astimezone(UTC)
                yield ObjectInfo(name, obj.size or 0, modified)
        except _SDK_ERRORS as exc:
            raise self._translate(exc, prefix) from exc

    def list_page(self, prefix: str, start_after: str, limit: int) -> Sequence[ObjectInfo]:
        # The SDK fetches pages of 1000 lazily: taking at most that many sends one request.
        check_prefix(prefix)
        page: list[ObjectInfo] = []
        try:
            for obj in self._client.list_objects(
                self._bucket,
                prefix=self._prefix + prefix,
                recursive=True,
                start_after=self._prefix + start_after,
            ):
                name = (obj.object_name or "")[len(self._prefix) :]
                modified = (obj.last_modified or datetime.now(UTC)).astimezone(UTC)
                page.append(ObjectInfo(name, obj.size or 0, modified))
                if len(page) >= limit:
                    break
        except _SDK_ERRORS as exc:
            raise self._translate(exc, prefix) from exc
        return page

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            if not self.capabilities.object_lock:
                self._client.remove_object(self._bucket, key)
                return
            versions = [
                obj.version_id
                for obj in self._client.list_objects(self._bucket, prefix=key, include_version=True)
                if obj.object_name == key
            ]
            locked: list[str] = []
            for version in versions:
                try:
                    self._client.remove_object(self._bucket, key, version_id=version)
                except S3Error as exc:
                    error = self._translate(exc, name)
                    if not isinstance(error, ObjectLockedError):
                        raise error from exc
                    locked.append(str(error))
            if locked:
                raise ObjectLockedError(name, locked[0])
        except _SDK_ERRORS as exc:
            raise self._translate(exc, name) from exc

    def copy(self, source: str, target: str) -> None:
        try:
            self._client.copy_object(
                self._bucket, self._key(target), CopySource(self._bucket, self._key(source))
            )
        except _SDK_ERRORS as exc:
            raise self._translate(exc, source) from exc

    def set_retention(self, name: str, retention: Retention) -> None:
        lock = self._minio_retention(retention)
        assert lock is not None
        try:
            self._client.set_object_retention(self._bucket, self._key(name), lock)
        except _SDK_ERRORS as exc:
            raise self._translate(exc, name) from exc

    def close(self) -> None:
        self._http.clear()
