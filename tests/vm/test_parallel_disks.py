"""A VM's disks restore in parallel, never more at once than the bound, each bit-exact.

Each disk of a three-disk archive is written by :func:`vmguard.vm.restore.write_disk`
(what the CLI's and the proxy Job's restores run for each disk) through
:func:`~vmguard.vm.restore.write_disks`, into its own real nbdkit whose log filter
records when each connection came and went. The locator here stands in for the
lab's: it serves local files (there is no three-disk VM in the lab's simulator); the
first two disks it opens wait for each other before their writes start, so a restore
that wrote one disk after the other could not pass. From the three logs the test reads
how many disks had a connection open at once.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.engine.helpers import random_disk, sha256_file
from tests.store.helpers import FAST_KDF_N
from vmguard.controller.kube.admission import VCenterLimits, disks_at_once
from vmguard.engine.backup import DiskInput, back_up
from vmguard.store import MasterKey, Repository, ScryptParams, VmIdentity
from vmguard.store.backend.memory import MemoryBackend
from vmguard.transport.file import FileSource
from vmguard.transport.nbd import NbdkitServer
from vmguard.vm.restore import DiskProgress, write_disk, write_disks

MiB = 1 << 20


class _MeetingServer:
    """A served disk whose ``with`` waits, for the first ``meet`` disks, until that many
    are open: they can only meet if they are open at the same time."""

    def __init__(self, server: NbdkitServer, barrier: threading.Barrier | None) -> None:
        self._server, self._barrier = server, barrier

    @property
    def uri(self) -> str:
        return self._server.uri

    def __enter__(self) -> _MeetingServer:
        if self._barrier is not None:
            self._barrier.wait(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()


class _FileLocator:
    """Serves ``targets[key]`` read-write through nbdkit's file plugin with its log filter."""

    def __init__(self, targets: dict[int, Path], meet: int) -> None:
        self.targets = targets
        self.logs = {key: path.with_suffix(".log") for key, path in targets.items()}
        self._barrier = threading.Barrier(meet)
        self._meet = meet
        self._lock = threading.Lock()

    def live_disk(self, vm_moref: str, key: int, file_name: str) -> _MeetingServer:
        server = NbdkitServer(
            "file",
            [f"file={self.targets[key]}", f"logfile={self.logs[key]}"],
            readonly=False,
            filters=["log"],
        )
        with self._lock:
            barrier = self._barrier if self._meet > 0 else None
            self._meet -= 1
        return _MeetingServer(server, barrier)


_EVENT = re.compile(r"^(\S+ \S+) connection=\d+ (Connect|Disconnect)\b", re.M)


def _open_intervals(log: Path) -> tuple[dt.datetime, dt.datetime]:
    """From the first connection of one disk's nbdkit to its last disconnection."""
    events = [(dt.datetime.fromisoformat(t), kind) for t, kind in _EVENT.findall(log.read_text())]
    assert events and events[-1][1] == "Disconnect", log.read_text()[-500:]
    return events[0][0], events[-1][0]


def _most_at_once(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@pytest.mark.lab
def test_three_disks_restore_two_at_a_time_bit_exact(tmp_path: Path) -> None:
    rng = random.Random(33)
    repo = Repository.init(
        MemoryBackend(),
        master_key=MasterKey(b"p" * 20),
        chunk_size=MiB,
        kdf=ScryptParams(n=FAST_KDF_N),
    )
    sources = {key: tmp_path / f"disk{key}.img" for key in (2000, 2001, 2002)}
    for path in sources.values():
        random_disk(path, rng, rng.randrange(6 * MiB, 12 * MiB))
    opened = [FileSource(path) for path in sources.values()]
    try:
        inputs = [DiskInput(str(k), s) for k, s in zip(sources, opened, strict=True)]
        manifest = back_up(repo, VmIdentity(id="vm"), inputs)
    finally:
        for source in opened:
            source.close()
    targets = {key: tmp_path / f"target{key}.img" for key in sources}
    for key, target in targets.items():
        with open(target, "wb") as f:
            f.truncate(sources[key].stat().st_size)
    locator = _FileLocator(targets, meet=2)
    seen: list[int] = []
    progress = DiskProgress(
        lambda done, total: seen.append(done), {k: p.stat().st_size for k, p in sources.items()}
    )

    writes = [
        lambda key=key: write_disk(
            locator,  # type: ignore[arg-type]
            repo,
            manifest,
            "vm-1",
            key,
            key,
            f"[ds] vm/disk{key}.vmdk",
            progress=progress.disk(key),
        )
        for key in sources
    ]
    stats = write_disks(writes, at_once=2)

    for key in sources:
        assert sha256_file(targets[key]) == sha256_file(sources[key]), f"disk {key}"
    assert [s.length for s in stats] == [p.stat().st_size for p in sources.values()]
    most = _most_at_once([_open_intervals(log) for log in locator.logs.values()])
    assert most == 2, f"{most} disks had NBD connections open at once (bound 2)"
    assert seen[-1] == sum(p.stat().st_size for p in sources.values())


def test_a_failing_disk_stops_the_disks_not_started() -> None:
    started: list[int] = []

    def write(n: int) -> Any:
        started.append(n)
        if n == 0:
            raise RuntimeError("disk 0 failed")
        return n

    with pytest.raises(RuntimeError, match="disk 0 failed"):
        write_disks([lambda n=n: write(n) for n in range(5)], at_once=1)
    assert started == [0]


def test_disks_at_once_never_exceeds_a_limit_of_the_vcenter() -> None:
    limits = VCenterLimits.of({"limits": {"nfcDisksPerHost": 3, "disksPerDatastore": 5}})
    assert disks_at_once(8, limits, nfc=True, wanted=4) == 3
    assert disks_at_once(8, limits, nfc=False, wanted=8) == 5
    assert disks_at_once(2, limits, nfc=True, wanted=4) == 2
    assert disks_at_once(0, VCenterLimits(), nfc=True, wanted=4) == 1
