"""The lease and GC-lock rules of format §7 against the lab's MinIO through a real fault proxy.

The memory-backend tests (test_commit_races.py, test_gc_lock.py) interleave a GC at an
exact store call; these show the same rules hold when the fault is a real network's:
a refresh slowed by toxiproxy's latency, a manifest PUT whose response never arrives
while MinIO stores it, and a server whose create-if-absent cannot be trusted.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.store.conftest import CHUNK
from tests.store.faults import FaultyS3
from tests.store.helpers import disk_image, restore, write_disk
from tests.store.interleave import FaultyBackend
from vmguard.errors import BackendUnavailableError, ConfigError, LeaseLostError
from vmguard.store import GcPolicy, Repository, VmIdentity, names
from vmguard.store.backend import Backend, S3Backend
from vmguard.store.gc import collect_garbage
from vmguard_lab.procs import eventually

pytestmark = pytest.mark.lab
VM = VmIdentity(id="vm")


class FastClock:
    """Real wall time (MinIO checks request signatures against it) and a monotonic clock
    that runs ``rate`` times fast and can jump: the writer's view of its lease, so that
    a real network delay of seconds is minutes of lease time."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._start = time.monotonic()
        self._jumped = 0.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return 1000.0 + (time.monotonic() - self._start) * self.rate + self._jumped

    def jump(self, seconds: float) -> None:
        self._jumped += seconds


def _exists(backend: Backend, name: str) -> bool:
    try:
        backend.stat(name)
    except Exception:
        return False
    return True


def test_a_refresh_slowed_past_the_ttl_by_the_network_loses_the_lease(
    faulty_s3: FaultyS3,
) -> None:
    """Hole 1 on MinIO: the refresh starts at ~540 s of a 600 s ttl; 1.5 s of latency (below
    the client's 2 s timeout) at 60x is 90 s more, so it lands after the ttl."""
    clock = FastClock(rate=60)
    repo = Repository.init(
        faulty_s3.backend(), chunk_size=CHUNK, gc=GcPolicy(lease_ttl_seconds=600), clock=clock
    )
    with repo.begin_backup(VM, auto_refresh=False) as writer:
        write_disk(writer, "d", disk_image(1, 2, CHUNK))
        writer.lease.refresh()  # a counted refresh starts now
        clock.jump(540)
        with faulty_s3.latency(1500), pytest.raises(LeaseLostError, match="landed"):
            writer.lease.refresh()
        with pytest.raises(LeaseLostError):
            writer.commit()
    assert repo.list_archives() == []


def test_a_manifest_put_answered_after_the_client_gave_up_keeps_the_lease(
    faulty_s3: FaultyS3,
) -> None:
    """Hole 2 on MinIO: the manifest is stored, the client times out; the lease stays."""
    proxy = faulty_s3.proxy
    client = FaultyBackend(faulty_s3.backend())
    stalls: list[Any] = []
    # The stall starts as the manifest PUT goes out (not earlier: the writer's reads
    # before it, of corrupt/ and the config, must pass) and holds its response.
    client.on(
        "put",
        names.ARCHIVES,
        before=lambda: stalls.append(proxy.add_toxic("timeout", "downstream", timeout=0)),
    )
    repo = Repository.init(client, chunk_size=CHUNK)
    server = faulty_s3.direct()
    image = disk_image(2, 3, CHUNK)
    with pytest.raises(BackendUnavailableError):  # noqa: SIM117 - the outer with is the subject
        with repo.begin_backup(VM, auto_refresh=False) as writer:
            write_disk(writer, "d", image)
            lease, archive_id = writer.lease.name, writer.archive_id
            try:
                writer.commit()
            finally:
                for stall in stalls:
                    proxy.remove_toxic(stall.name)
    assert len(stalls) == 1
    # The stall ended before the writer gave up: a delete would have reached MinIO. The
    # manifest is there (the server applied it) and so is the lease, which now runs out
    # its time instead of telling GC the backup is over.
    manifest_name = names.manifest_name(archive_id)
    assert eventually(lambda: _exists(server, manifest_name), 30)
    assert _exists(server, lease), "the writer deleted its lease after an ambiguous commit"
    committed = Repository.open(server).load_archive(archive_id)
    assert restore(Repository.open(server), committed, "d") == image


def _no_conditional_writes(bucket: dict[str, Any]) -> S3Backend:
    return S3Backend(
        bucket["endpoint"],
        bucket["bucket"],
        access_key=bucket["access_key"],
        secret_key=bucket["secret_key"],
        secure=False,
        prefix="repo",
        conditional_writes=False,  # as if the server ignored If-None-Match
    )


def test_gc_refuses_an_s3_store_without_create_if_absent_and_runs_where_it_was_probed(
    s3_bucket: dict[str, Any],
) -> None:
    """Hole 3 on MinIO: GC reads capabilities.atomic_create, which the backend probes."""
    repo = Repository.init(_no_conditional_writes(s3_bucket), chunk_size=CHUNK)
    with pytest.raises(ConfigError, match="create-if-absent"):
        collect_garbage(repo, auto_refresh=False)
    assert list(repo.backend.list("gc/locks/")) == []
    # The same bucket through a backend that has not probed yet: MinIO honours
    # If-None-Match, so GC runs and takes the first lock generation.
    probing = S3Backend(
        s3_bucket["endpoint"],
        s3_bucket["bucket"],
        access_key=s3_bucket["access_key"],
        secret_key=s3_bucket["secret_key"],
        secure=False,
        prefix="repo",
    )
    assert probing.capabilities.atomic_create
    collect_garbage(Repository.open(probing), auto_refresh=False)
    assert [i.name for i in probing.list("gc/locks/")] == ["gc/locks/00000000000000000001"]
