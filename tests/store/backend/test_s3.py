"""S3Backend behaviour beyond the conformance suite, against the lab's MinIO."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

from vmguard.errors import ConfigError, ObjectNotFoundError, RepositoryError
from vmguard.store.backend import S3Backend

pytestmark = pytest.mark.lab


def _s3(info: dict[str, Any], **overrides: Any) -> S3Backend:
    args: dict[str, Any] = {
        "access_key": info["access_key"],
        "secret_key": info["secret_key"],
        "secure": info["secure"],
    }
    args.update(overrides)
    bucket = args.pop("bucket", info["bucket"])
    return S3Backend(info["endpoint"], bucket, **args)


def test_prefixes_isolate_repositories_in_one_bucket(s3_bucket: dict[str, Any]) -> None:
    one = _s3(s3_bucket, prefix="tenants/one")
    two = _s3(s3_bucket, prefix="tenants/one-more")
    root = _s3(s3_bucket)
    one.put("config", b"1")
    two.put("config", b"2")
    assert [i.name for i in one.list()] == ["config"]
    assert [i.name for i in two.list()] == ["config"]
    assert two.get("config") == b"2"
    assert sorted(i.name for i in root.list()) == [
        "tenants/one-more/config",
        "tenants/one/config",
    ]
    with pytest.raises(ObjectNotFoundError):
        root.get("config")


def test_wrong_credentials_are_a_permanent_config_error(s3_bucket: dict[str, Any]) -> None:
    backend = _s3(s3_bucket, secret_key="definitely-not-the-secret")
    with pytest.raises(ConfigError) as caught:
        backend.get("config")
    assert "definitely-not-the-secret" not in str(caught.value)
    assert not caught.value.retryable


def test_a_missing_bucket_is_reported_as_such(s3_bucket: dict[str, Any]) -> None:
    backend = _s3(s3_bucket, bucket="no-such-bucket-here")
    with pytest.raises(RepositoryError, match="does not exist"):
        backend.get("config")


def test_unsafe_prefixes_are_refused(s3_bucket: dict[str, Any]) -> None:
    for prefix in ("a/../b", "a//b", "spaces here"):
        with pytest.raises(ConfigError):
            _s3(s3_bucket, prefix=prefix)


def test_conditional_writes_are_detected_on_minio(s3_bucket: dict[str, Any]) -> None:
    backend = _s3(s3_bucket)
    assert backend.put_if_absent("once", b"a") is True
    assert backend.capabilities.atomic_create is True
    assert [i.name for i in backend.list()] == ["once"]


class _Chunk:
    """Stands for the data a caller holds while it asks the backend (weakly referenceable)."""


def test_a_handled_missing_object_error_frees_the_callers_data_at_once(
    s3_bucket: dict[str, Any],
) -> None:
    # A backup stats every new chunk (404) while holding the chunk. The SDK's frames form
    # a reference cycle with the error and link back to the caller's frame; unless the
    # backend breaks it, the chunk lives until the cyclic GC runs, not until it is done.
    backend = _s3(s3_bucket)

    def exists(data: _Chunk) -> bool:
        try:
            backend.stat("chunks/ab/not-there")
        except ObjectNotFoundError:
            return False
        return True

    gc.disable()
    try:
        chunk = _Chunk()
        alive = weakref.ref(chunk)
        assert not exists(chunk)
        del chunk
        assert alive() is None
    finally:
        gc.enable()
