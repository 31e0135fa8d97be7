"""Object naming: any VM name is safe, because no VM name reaches an object name."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vmguard.errors import ConfigError
from vmguard.store import names
from vmguard.store.backend import check_name

pytestmark = pytest.mark.unit

HOSTILE = [
    "web-01",
    "../../etc/passwd",
    "/absolute/path",
    "a/b/c//d",
    "Ünïcødé VM — 東京 🚀",
    "x" * 255,
    "é" * 255,
    "name with\nnewline and\ttab",
    "CON",
    ".",
    "%2e%2e",
]


@pytest.mark.parametrize("vm_id", HOSTILE)
def test_names_built_from_any_vm_id_are_valid(vm_id: str) -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    archive_id = names.new_archive_id(vm_id, when)
    for name in (names.manifest_name(archive_id), names.index_name(archive_id, 3)):
        assert check_name(name) == name
        assert len(name.encode()) < 120
    parts = names.parse_archive_id(archive_id)
    assert parts.vm_tag == names.vm_tag(vm_id) and parts.started == when


def test_vm_tags_are_stable_and_distinct() -> None:
    tags = {names.vm_tag(v) for v in HOSTILE}
    assert len(tags) == len(HOSTILE)
    assert names.vm_tag("web-01") == names.vm_tag("web-01")
    with pytest.raises(ConfigError):
        names.vm_tag("")


def test_archive_ids_sort_by_time_and_are_unique() -> None:
    early = names.new_archive_id("vm", datetime(2025, 1, 1, tzinfo=UTC))
    late = names.new_archive_id("vm", datetime(2025, 1, 2, tzinfo=UTC))
    assert early < late
    same = {names.new_archive_id("vm", datetime(2025, 1, 1, tzinfo=UTC)) for _ in range(100)}
    assert len(same) == 100


def test_malformed_archive_ids_are_refused() -> None:
    for bad in ("", "x", "../archives/x", names.new_archive_id("vm", datetime.now(UTC)) + "/"):
        with pytest.raises(ConfigError):
            names.parse_archive_id(bad)
        with pytest.raises(ConfigError):
            names.manifest_name(bad)


def test_chunk_names_fan_out_and_parse_back() -> None:
    chunk_id = bytes(range(32))
    assert names.chunk_name(chunk_id) == f"chunks/00/{chunk_id.hex()}"
    assert names.fossil_name(chunk_id) == f"fossils/00/{chunk_id.hex()}"
    assert names.chunk_id_from_name(names.chunk_name(chunk_id)) == chunk_id
    assert names.chunk_id_from_name("chunks/00/nothex") is None
