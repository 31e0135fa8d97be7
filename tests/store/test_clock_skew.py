"""A writer whose clock is off: libfaketime moves the child's clock, never MinIO's.

The store's safety rules (format §7.3) judge every age by the server's clock, because
the writers' clocks may be wrong. Tests of that need a writer that really is wrong: a
child process under libfaketime. This test shows the tool does what those tests assume:
the child's wall clock (and everything it stamps) is ten minutes behind, while the
timestamps MinIO gives the objects the child writes are the real time.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.store.conftest import CHUNK
from tests.store.faults import start_skewed_python
from tests.store.helpers import FAST_KDF_N
from vmguard.store import MasterKey, Repository, ScryptParams, names
from vmguard.store.backend import S3Backend

pytestmark = pytest.mark.lab

KEY = "skewed writer's master key"
OFFSET = -600  # ten minutes slow: inside the 15 minutes S3 request signing tolerates

# A backup writer in a process of its own: it takes its lease, reports its clock and the
# lease's name, and holds the lease until its stdin closes (then aborts the backup).
WRITER = """
import json, os, sys
from datetime import UTC, datetime
from vmguard.store import MasterKey, Repository, VmIdentity
from vmguard.store.backend import S3Backend

e = os.environ
backend = S3Backend(
    e["SKEW_S3_ENDPOINT"], e["SKEW_S3_BUCKET"], access_key=e["SKEW_S3_ACCESS_KEY"],
    secret_key=e["SKEW_S3_SECRET_KEY"], secure=False, prefix="repo", timeout=10,
)
repo = Repository.open(backend, MasterKey(e["SKEW_MASTER_KEY"].encode()))
with repo.begin_backup(VmIdentity(id="skewed-writer"), auto_refresh=False) as writer:
    now = datetime.now(UTC).isoformat()
    print(json.dumps({"now": now, "lease": writer.lease.name}), flush=True)
    sys.stdin.read()
"""


def test_a_skewed_writer_stamps_its_own_time_and_minio_stamps_the_real_one(
    s3_bucket: dict[str, Any],
) -> None:
    backend = S3Backend(
        s3_bucket["endpoint"],
        s3_bucket["bucket"],
        access_key=s3_bucket["access_key"],
        secret_key=s3_bucket["secret_key"],
        secure=False,
        prefix="repo",
    )
    Repository.init(
        backend,
        master_key=MasterKey(KEY.encode()),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
    )
    env = dict(
        os.environ,
        SKEW_S3_ENDPOINT=s3_bucket["endpoint"],
        SKEW_S3_BUCKET=s3_bucket["bucket"],
        SKEW_S3_ACCESS_KEY=s3_bucket["access_key"],
        SKEW_S3_SECRET_KEY=s3_bucket["secret_key"],
        SKEW_MASTER_KEY=KEY,
    )
    before = datetime.now(UTC)
    child = start_skewed_python(WRITER, OFFSET, env)
    try:
        line = child.stdout.readline() if child.stdout else ""
        after = datetime.now(UTC)
        assert line, f"the writer printed nothing: {child.stderr.read() if child.stderr else ''}"
        seen = json.loads(line)
        lease = backend.stat(seen["lease"])
        body = json.loads(backend.get(seen["lease"]))
    finally:
        _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    skew, slack = timedelta(seconds=OFFSET), timedelta(seconds=2)
    # The child's clock is ten minutes slow, and so is what it wrote into its lease.
    child_now = datetime.fromisoformat(seen["now"])
    assert before + skew - slack <= child_now <= after + skew + slack
    started = names.parse_time(body["started"])
    assert before + skew - slack <= started <= child_now + slack
    # MinIO stamped the lease object with the real time: the server's clock did not move.
    assert before - slack <= lease.modified <= after + slack
    # The writer aborted when its stdin closed, and took its lease with it.
    assert list(backend.list(names.LEASES)) == []


# A writer whose clock is further off than S3 request signing tolerates (15 minutes):
# it reports what the store raised when it opened the repository.
FAR_WRITER = """
import json, os
from vmguard.store import MasterKey, Repository
from vmguard.store.backend import S3Backend

e = os.environ
backend = S3Backend(
    e["SKEW_S3_ENDPOINT"], e["SKEW_S3_BUCKET"], access_key=e["SKEW_S3_ACCESS_KEY"],
    secret_key=e["SKEW_S3_SECRET_KEY"], secure=False, prefix="repo", timeout=10,
    conditional_writes=True,
)
try:
    Repository.open(backend, MasterKey(e["SKEW_MASTER_KEY"].encode()))
except Exception as exc:
    retryable = getattr(exc, "retryable", None)
    print(json.dumps({"error": type(exc).__name__, "retryable": retryable, "message": str(exc)}))
else:
    print(json.dumps({"error": None}))
"""


def test_a_writer_twenty_minutes_off_gets_a_permanent_error_naming_its_clock(
    s3_bucket: dict[str, Any],
) -> None:
    """MinIO refuses requests signed more than 15 minutes off (RequestTimeTooSkewed);
    retrying cannot fix a clock, so the error is permanent and says what is wrong."""
    backend = S3Backend(
        s3_bucket["endpoint"],
        s3_bucket["bucket"],
        access_key=s3_bucket["access_key"],
        secret_key=s3_bucket["secret_key"],
        secure=False,
        prefix="repo",
    )
    Repository.init(
        backend,
        master_key=MasterKey(KEY.encode()),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
    )
    env = dict(
        os.environ,
        SKEW_S3_ENDPOINT=s3_bucket["endpoint"],
        SKEW_S3_BUCKET=s3_bucket["bucket"],
        SKEW_S3_ACCESS_KEY=s3_bucket["access_key"],
        SKEW_S3_SECRET_KEY=s3_bucket["secret_key"],
        SKEW_MASTER_KEY=KEY,
    )
    child = start_skewed_python(FAR_WRITER, -1200, env)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    seen = json.loads(out)
    assert seen["error"] is not None, "MinIO accepted a request signed 20 minutes off"
    assert seen["retryable"] is False, seen
    assert "clock" in seen["message"], seen
    assert s3_bucket["secret_key"] not in seen["message"]
