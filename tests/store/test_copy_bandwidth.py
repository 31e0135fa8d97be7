"""A copy's bandwidth limit (store/backend/limiter.py, issue 17's copy targets'
``bandwidthLimitMiBps``): counted in bytes against a clock that moves only when the
token bucket waits — no timing.

Over every prefix of the copy, the chunk bytes written to the target are at most
``burst + rate * elapsed`` on that clock, and the clock moved by what the bytes cost;
leases, indexes and the manifest never wait; the copy restores bit-exact."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import FAST_KDF_N, backup, disk_image, restore
from vmguard.store import MasterKey, Repository, ScryptParams, names
from vmguard.store.backend import MemoryBackend
from vmguard.store.backend.limiter import LimitedBackend, TokenBucket
from vmguard.store.clock import ManualClock
from vmguard.store.copy import copy_archive

pytestmark = pytest.mark.unit
RATE = 2 * CHUNK  # bytes per second of the manual clock


class Recording:
    """The target's store, noting (clock, name, bytes) of every write that reaches it."""

    def __init__(self, inner: MemoryBackend, clock: ManualClock) -> None:
        self._inner, self._clock = inner, clock
        self.writes: list[tuple[float, str, int]] = []
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes, **kw: Any) -> None:
        with self._lock:
            self.writes.append((self._clock.monotonic(), name, len(data)))
        self._inner.put(name, data, **kw)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


@pytest.mark.parametrize("workers", [1, 4])
def test_a_limited_copy_writes_no_more_chunk_bytes_than_the_bucket_allows(workers: int) -> None:
    clock = ManualClock()
    source = Repository.init(
        MemoryBackend(), master_key=MasterKey(b"source key, long enough"), chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
    )  # fmt: skip
    image = disk_image(3, 24, CHUNK)
    archive = backup(source, "vm-1", {"d0": image}).archive_id
    store = MemoryBackend()
    Repository.init(
        store, master_key=MasterKey(b"target key, long enough"), chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
    )  # fmt: skip
    recording = Recording(store, clock)
    bucket = TokenBucket(RATE, monotonic=clock.monotonic, sleep=clock.advance)
    limited = LimitedBackend(recording, bucket, names.CHUNKS)  # type: ignore[arg-type]
    target = Repository.open(limited, MasterKey(b"target key, long enough"))
    start = clock.monotonic()

    result = copy_archive(source, target, archive, workers=workers)

    chunks = [(t - start, n) for t, name, n in recording.writes if name.startswith(names.CHUNKS)]
    assert result.chunks_uploaded == len(chunks) > 4
    total = sum(n for _, n in chunks)
    assert total > 2 * bucket.burst  # enough to have to wait
    sent = 0
    for elapsed, n in chunks:
        sent += n
        assert sent <= bucket.burst + RATE * elapsed + 1e-6, (sent, elapsed)
    # The clock moved only by the bucket's waits: at least what the bytes beyond the
    # burst cost at the rate (threads may wait side by side: more, never less).
    assert clock.monotonic() - start >= (total - bucket.burst) / RATE - 1e-6
    # Nothing but chunks waited: the writes before the first wait, and the index and
    # manifest after the last chunk, went out at the clock they found.
    others = [t - start for t, name, _ in recording.writes if not name.startswith(names.CHUNKS)]
    assert others and others[0] == 0.0
    assert restore(target, target.load_archive(result.target_archive), "d0") == image


def test_the_bucket_refuses_a_limit_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        TokenBucket(0)
