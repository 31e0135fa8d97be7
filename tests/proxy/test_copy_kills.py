"""The copy Job's process (``vmguard proxy copy --archive ID``, with the Job's
environment: the source under the ordinary variables, the target under
``VMGUARD_COPY_*``) SIGKILLed at seeded points spread over its phases — after its lease
is written, after some chunks, after an index, just after the manifest — then run again
(issue 17, acceptance 2). Every re-run completes, a re-run of a completed copy copies
nothing, no chunk is uploaded twice (the Object Lock target is versioned: each PUT of a
name would leave a version), every copy restores bit-exact and deep verify of the target
is clean.

Every test run kills :data:`KILLS` times (a fixed seed); ``pytest --soak`` (``make
soak``) :data:`SOAK_KILLS` times.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tests.store.helpers import restore
from tests.store.test_copy_s3 import SOURCE_KEY, TARGET_KEY, _backend, _chain, _init

from vmguard.proxy import contract
from vmguard.store import MasterKey, ObjectLockPolicy, Repository, names
from vmguard.store.copy import COPIED_FROM_LABEL, select_archives
from vmguard.store.verify import verify

pytestmark = pytest.mark.lab
KILLS = 10
SOAK_KILLS = 30
PHASES = (
    (names.LEASES, 1),
    (names.LEASES, 1),
    (names.CHUNKS, 1),
    (names.CHUNKS, 3),
    (names.INDEXES, 1),
)
"""(objects of a kind, how many more than at the start): where a run is killed. A point
comes too late when an earlier killed run did that part already (its chunks are
stored): the run then completes, and the next archive is taken."""


def job_env(source: dict[str, Any], target: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The environment a copy Job's container gets (controller/policy/copyjob.py)."""
    (tmp_path / "src.key").write_bytes(SOURCE_KEY)
    (tmp_path / "dst.key").write_bytes(TARGET_KEY)
    to = contract.copy_target_name
    return {
        **os.environ,
        contract.REPO_ENV: f"s3+http://{source['endpoint']}/{source['bucket']}/src",
        contract.S3_ACCESS_ENV: source["access_key"],
        contract.S3_SECRET_ENV: source["secret_key"],
        contract.KEY_FILE_ENV: str(tmp_path / "src.key"),
        to(contract.REPO_ENV): f"s3+http://{target['endpoint']}/{target['bucket']}/copy",
        to(contract.S3_ACCESS_ENV): target["access_key"],
        to(contract.S3_SECRET_ENV): target["secret_key"],
        to(contract.KEY_FILE_ENV): str(tmp_path / "dst.key"),
    }


def test_a_killed_copy_job_resumes_and_uploads_no_chunk_twice(
    s3_bucket: dict[str, Any],
    s3_lock_bucket2: dict[str, Any],
    minio2_client: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    wanted = SOAK_KILLS if request.config.getoption("soak") else KILLS
    source = _init(_backend({**s3_bucket, "secure": False}, "src"), SOURCE_KEY)
    _init(
        _backend({**s3_lock_bucket2, "secure": False}, "copy"),
        TARGET_KEY,
        object_lock=ObjectLockPolicy("GOVERNANCE", 1),
    )
    images = {}
    for n, vm in enumerate(("vm-a", "vm-b", "vm-c")):
        images |= _chain(source, vm, 41 + 10 * n, 12)
    order = select_archives(source)
    env = job_env(s3_bucket, s3_lock_bucket2, tmp_path)
    bucket = s3_lock_bucket2["bucket"]

    def count(kind: str) -> int:
        listing = minio2_client.list_objects(bucket, prefix=f"copy/{kind}", recursive=True)
        return sum(1 for _ in listing)

    def run(archive: str, kind: str | None = None, more: int = 0) -> tuple[bool, str]:
        """(killed, stdout) of one run, killed once ``more`` objects of ``kind`` appeared."""
        start = count(kind) if kind else 0
        argv = [sys.executable, "-m", "vmguard.cli", *contract.copy_args(archive)]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while kind and proc.poll() is None and count(kind) < start + more:
            pass  # the target's listing is the clock: no sleep
        killed = kind is not None and proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
        if not killed:
            assert proc.returncode == 0, err.decode()[-2000:]
        return killed, out.decode()

    rng = random.Random(7)
    kills = 0
    tries = -(-wanted // len(order)) + 1
    copied: dict[str, str] = {}
    for archive in order:
        for _ in range(tries if kills < wanted else 0):
            killed, out = run(archive, *rng.choice(PHASES))
            if not killed:
                break
            kills += 1
        else:
            killed, out = run(archive)
        summary = json.loads(out)["copied"]
        copied[archive] = summary["target"]
    assert kills >= wanted
    # A completed copy run again copies nothing.
    again = json.loads(run(order[-1])[1])["copied"]
    assert again["skipped"] and again["target"] == copied[order[-1]]

    target = Repository.open(
        _backend({**s3_lock_bucket2, "secure": False}, "copy"), MasterKey(TARGET_KEY)
    )
    assert {r.archive_id for r in target.list_archives()} == set(copied.values())
    for archive, copy_id in copied.items():
        manifest = target.load_archive(copy_id)
        assert manifest.labels[COPIED_FROM_LABEL] == archive
        assert restore(target, manifest, "d0") == images[archive]
    versions = Counter(
        v.object_name
        for v in minio2_client.list_objects(
            bucket, prefix=f"copy/{names.CHUNKS}", recursive=True, include_version=True
        )
    )
    assert versions and max(versions.values()) == 1
    assert verify(target, deep=True).ok
