"""The lab's MinIO: a real S3 server, including object lock (immutability)."""

from __future__ import annotations

import datetime as dt
import io
import secrets
from typing import Any

import pytest
from minio.commonconfig import GOVERNANCE
from minio.error import S3Error
from minio.retention import Retention

pytestmark = pytest.mark.lab


def test_put_and_get(minio_client: Any, s3_bucket: dict[str, Any]) -> None:
    data = secrets.token_bytes(100_000)
    minio_client.put_object(s3_bucket["bucket"], "a/b", io.BytesIO(data), len(data))
    resp = minio_client.get_object(s3_bucket["bucket"], "a/b")
    try:
        assert resp.read() == data
    finally:
        resp.close()
        resp.release_conn()


def test_locked_object_refuses_deletion(minio_client: Any, s3_lock_bucket: dict[str, Any]) -> None:
    bucket = s3_lock_bucket["bucket"]
    until = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)
    result = minio_client.put_object(
        bucket,
        "locked",
        io.BytesIO(b"keep me"),
        7,
        retention=Retention(GOVERNANCE, until),
    )
    with pytest.raises(S3Error) as err:
        minio_client.remove_object(bucket, "locked", version_id=result.version_id)
    # MinIO answers InvalidRequest "Object is WORM protected ..."; AWS answers AccessDenied.
    assert err.value.code in ("AccessDenied", "InvalidRequest")
    assert "WORM" in err.value.message or err.value.code == "AccessDenied"
    # Still there, still readable.
    resp = minio_client.get_object(bucket, "locked", version_id=result.version_id)
    try:
        assert resp.read() == b"keep me"
    finally:
        resp.close()
        resp.release_conn()
