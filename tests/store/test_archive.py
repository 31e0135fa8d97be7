"""Archive manifests: lossless JSON round trips, whatever the VM is called."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from vmguard.errors import CorruptObjectError
from vmguard.store.archive import (
    ArchiveManifest,
    CbtState,
    DiskRecord,
    TransferStats,
    VmIdentity,
)

pytestmark = pytest.mark.unit

T0 = datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)


def _manifest(name: str) -> ArchiveManifest:
    disk = DiskRecord(
        key="2000",
        label="Hard disk 1 / système",
        length=10 * 2**30 + 5,
        index="indexes/x/0",
        index_hash="ab" * 32,
        cbt=CbtState("6000C29a", "[ds 1] vm/vm.vmdk", 10 * 2**30 + 5, "52 7c 2a/42"),
        stats=TransferStats(10, 9, 8, 7, 6, 5, 4, 0.25),
    )
    return ArchiveManifest(
        archive_id="aaaaaaaaaaaaaaaa-20250506T070809Z-bbbbbbbb",
        vm=VmIdentity(id="vc/" + name, name=name, moref="vm-42"),
        disks=(disk,),
        started=T0,
        finished=T0,
        parent=None,
        mode="full-scan",
        mode_reason="CBT was reset",
        config_format="vmx",
        config_blob=b"\x00\xffbinary config",
        retain_until=T0,
        labels={"vmguard.io/policy": "gold", "ünï": "cødé"},
        stats=TransferStats(logical_bytes=1),
    )


@pytest.mark.parametrize(
    "name", ["plain", "a/b/../c", "Ünïcødé 東京 🚀", "x" * 255, 'quote"back\\slash\nnl']
)
def test_manifests_round_trip_for_any_vm_name(name: str) -> None:
    manifest = _manifest(name)
    assert ArchiveManifest.from_json(manifest.to_json()) == manifest


def test_unknown_members_survive_a_round_trip() -> None:
    doc = json.loads(_manifest("vm").to_json())
    doc["added_by_a_newer_writer"] = {"x": [1, 2]}
    doc["vm"]["cluster"] = "new member inside a known object"
    doc["disks"][0]["cbt"]["generation"] = 7
    doc["disks"][0]["stats"]["bytes_deduplicated"] = 1
    again = ArchiveManifest.from_json(json.dumps(doc).encode())
    assert again.vm == _manifest("vm").vm and again.disks == _manifest("vm").disks
    assert json.loads(again.to_json())["added_by_a_newer_writer"] == {"x": [1, 2]}


def test_malformed_manifests_are_corrupt_objects() -> None:
    for raw in (b"not json", b"{}", b'{"version": 2}', b"\xff\xfe"):
        with pytest.raises(CorruptObjectError):
            ArchiveManifest.from_json(raw)


def test_stats_add_up_with_weighted_compressibility() -> None:
    a = TransferStats(bytes_changed=100, compressibility=0.5, chunks_new=1)
    b = TransferStats(bytes_changed=300, compressibility=1.0, chunks_new=2)
    total = a + b
    assert total.chunks_new == 3 and total.bytes_changed == 400
    assert total.compressibility == pytest.approx(0.875)
    assert (TransferStats() + TransferStats()).compressibility is None
