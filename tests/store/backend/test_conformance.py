"""One conformance suite for every Backend: memory, local directory, S3 (lab MinIO).

Each test states one invariant of ``vmguard.store.backend.base`` and checks it through
the public protocol only. The S3 parameters need the lab (fixtures ``s3_bucket`` and
``s3_lock_bucket`` give fresh buckets on the lab's MinIO server).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from vmguard.errors import ConfigError, ObjectLockedError, ObjectNotFoundError
from vmguard.store.backend import (
    Backend,
    LocalBackend,
    MemoryBackend,
    Retention,
    RetryingBackend,
    S3Backend,
)


def _s3(info: dict[str, Any], prefix: str = "repo/one") -> S3Backend:
    return S3Backend(
        info["endpoint"],
        info["bucket"],
        access_key=info["access_key"],
        secret_key=info["secret_key"],
        secure=info["secure"],
        prefix=prefix,
    )


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("local", marks=pytest.mark.unit),
        pytest.param("retrying-local", marks=pytest.mark.unit),
        pytest.param("s3", marks=pytest.mark.lab),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made: Backend
    if request.param == "memory":
        made = MemoryBackend()
    elif request.param == "local":
        made = LocalBackend(tmp_path / "repo")
    elif request.param == "retrying-local":
        made = RetryingBackend(LocalBackend(tmp_path / "repo"))
    else:
        made = _s3(request.getfixturevalue("s3_bucket"))
    yield made
    made.close()


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("s3", marks=pytest.mark.lab),
    ]
)
def locked_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    made: Backend
    if request.param == "memory":
        made = MemoryBackend(object_lock=True)
    else:
        made = _s3(request.getfixturevalue("s3_lock_bucket"))
    yield made
    made.close()


def _names(backend: Backend, prefix: str = "") -> list[str]:
    return [info.name for info in backend.list(prefix)]


@pytest.mark.parametrize("size", [0, 1, 4096, 6 * 1024 * 1024 + 3])
def test_put_then_get_returns_the_same_bytes(backend: Backend, size: int) -> None:
    data = bytes((i * 7 + size) % 251 for i in range(size))
    backend.put("objects/a", data)
    assert backend.get("objects/a") == data
    assert backend.stat("objects/a").size == size


def test_put_replaces_the_whole_object(backend: Backend) -> None:
    backend.put("x", b"a much longer first version")
    backend.put("x", b"short")
    assert backend.get("x") == b"short"


def test_missing_objects_raise_not_found(backend: Backend) -> None:
    for call in (
        lambda: backend.get("no/such"),
        lambda: backend.stat("no/such"),
        lambda: backend.get_range("no/such", 0, 1),
        lambda: backend.copy("no/such", "target"),
    ):
        with pytest.raises(ObjectNotFoundError):
            call()


def test_a_directory_like_prefix_is_not_an_object(backend: Backend) -> None:
    backend.put("dir/file", b"x")
    with pytest.raises(ObjectNotFoundError):
        backend.get("dir")
    with pytest.raises(ObjectNotFoundError):
        backend.stat("dir")


def test_get_range_returns_the_slice_clipped_at_the_end(backend: Backend) -> None:
    data = bytes(range(200))
    backend.put("r", data)
    assert backend.get_range("r", 10, 20) == data[10:30]
    assert backend.get_range("r", 190, 50) == data[190:]
    assert backend.get_range("r", 200, 5) == b""
    with pytest.raises(ConfigError):
        backend.get_range("r", -1, 5)
    with pytest.raises(ConfigError):
        backend.get_range("r", 0, 0)


def test_stat_reports_size_and_a_recent_utc_time(backend: Backend) -> None:
    before = datetime.now(UTC) - timedelta(minutes=2)
    backend.put("s", b"12345")
    info = backend.stat("s")
    assert (info.name, info.size) == ("s", 5)
    assert info.modified.tzinfo is not None
    assert before <= info.modified <= datetime.now(UTC) + timedelta(minutes=2)
    assert info.retain_until is None


def test_list_yields_prefix_matches_in_byte_order(backend: Backend) -> None:
    names = ["a-b", "a.b", "a/b", "a/c/d", "a0", "ab/x", "b", "chunks/ab/1", "chunks/ac/2"]
    for name in reversed(names):
        backend.put(name, name.encode())
    assert _names(backend) == sorted(names)
    assert _names(backend, "a") == sorted(n for n in names if n.startswith("a"))
    assert _names(backend, "a/") == ["a/b", "a/c/d"]
    assert _names(backend, "chunks/a") == ["chunks/ab/1", "chunks/ac/2"]
    assert _names(backend, "chunks/ab/") == ["chunks/ab/1"]
    assert _names(backend, "zzz") == []
    sizes = {info.name: info.size for info in backend.list()}
    assert sizes == {name: len(name) for name in names}


def test_list_page_starts_after_a_name_and_stops_at_the_limit(backend: Backend) -> None:
    names = [f"chunks/{i:02x}/{i:04x}" for i in range(0, 40, 3)] + ["chunksx", "other"]
    for name in names:
        backend.put(name, b"x" * len(name))
    in_chunks = [n for n in names if n.startswith("chunks/")]

    def page(start_after: str, limit: int) -> list[str]:
        return [i.name for i in backend.list_page("chunks/", start_after, limit)]

    assert page("", 100) == in_chunks
    assert page("chunks/0c/000c", 3) == in_chunks[5:8], "strictly after, at most the limit"
    assert page("chunks/0c/000", 2) == in_chunks[4:6], "a prefix of a name sorts before it"
    assert page("chunks/zz", 5) == []
    assert [i.size for i in backend.list_page("chunks/", "", 1)] == [len(in_chunks[0])]


def test_delete_removes_and_is_idempotent(backend: Backend) -> None:
    backend.put("d/1", b"x")
    backend.put("d/2", b"y")
    backend.delete("d/1")
    backend.delete("d/1")
    backend.delete("never/existed")
    with pytest.raises(ObjectNotFoundError):
        backend.get("d/1")
    assert _names(backend, "d/") == ["d/2"]


def test_put_if_absent_creates_once_and_never_overwrites(backend: Backend) -> None:
    assert backend.put_if_absent("config", b"first") is True
    assert backend.put_if_absent("config", b"second") is False
    assert backend.get("config") == b"first"


def test_put_if_absent_has_one_winner_under_contention(backend: Backend) -> None:
    # Every backend of this suite claims an atomic create; one that did not would fail here.
    assert backend.capabilities.atomic_create
    results: dict[int, bool] = {}
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        results[i] = backend.put_if_absent("lock", f"writer {i}".encode())

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8, "a contender raised instead of answering"
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1, f"writers {winners} all believe they created the object"
    # The object holds what the one winner wrote: no loser overwrote it after the fact.
    assert backend.get("lock") == f"writer {winners[0]}".encode()


def test_copy_duplicates_and_keeps_the_source(backend: Backend) -> None:
    backend.put("chunks/aa/src", b"payload")
    backend.copy("chunks/aa/src", "fossils/aa/src")
    assert backend.get("fossils/aa/src") == b"payload"
    assert backend.get("chunks/aa/src") == b"payload"


@pytest.mark.parametrize(
    "name", ["", "/abs", "../up", "a/../b", "a//b", ".hidden", "a/./b", "a b", "x/", "ü"]
)
def test_invalid_names_are_refused(backend: Backend, name: str) -> None:
    with pytest.raises(ConfigError):
        backend.put(name, b"x")
    with pytest.raises(ConfigError):
        backend.get(name)


def test_retention_without_object_lock_is_refused(backend: Backend) -> None:
    if backend.capabilities.object_lock:
        pytest.skip("backend has object lock")
    until = datetime.now(UTC) + timedelta(days=1)
    with pytest.raises(ConfigError):
        backend.put("l", b"x", retention=Retention("GOVERNANCE", until))


def test_locked_objects_cannot_be_deleted(locked_backend: Backend) -> None:
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    locked_backend.put("locked", b"keep me", retention=Retention("GOVERNANCE", until))
    with pytest.raises(ObjectLockedError):
        locked_backend.delete("locked")
    assert locked_backend.get("locked") == b"keep me"
    retained = locked_backend.stat("locked").retain_until
    assert retained is not None and abs((retained - until).total_seconds()) < 2


def test_unlocked_objects_in_a_lock_bucket_delete_fully(locked_backend: Backend) -> None:
    locked_backend.put("free", b"1")
    locked_backend.put("free", b"2")
    locked_backend.delete("free")
    with pytest.raises(ObjectNotFoundError):
        locked_backend.get("free")
    assert _names(locked_backend) == []


def test_overwriting_a_locked_object_does_not_unlock_it(locked_backend: Backend) -> None:
    until = datetime.now(UTC) + timedelta(days=1)
    locked_backend.put("v", b"old", retention=Retention("GOVERNANCE", until))
    locked_backend.put("v", b"new")
    assert locked_backend.get("v") == b"new"
    with pytest.raises(ObjectLockedError):
        locked_backend.delete("v")


def test_retention_can_be_extended(locked_backend: Backend) -> None:
    locked_backend.put("e", b"x")
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    locked_backend.set_retention("e", Retention("GOVERNANCE", until))
    with pytest.raises(ObjectLockedError):
        locked_backend.delete("e")
    assert locked_backend.stat("e").retain_until is not None
