"""Fixed index geometry and serialisation."""

from __future__ import annotations

import os

import pytest

from vmguard.errors import CorruptObjectError
from vmguard.store.chunk import HOLE
from vmguard.store.index import FixedIndex

pytestmark = pytest.mark.unit


def test_geometry_covers_a_length_that_is_not_a_multiple() -> None:
    index = FixedIndex(4096, 3 * 4096 + 100)
    assert len(index) == 4
    assert [index.extent(n) for n in range(4)] == [
        (0, 4096),
        (4096, 4096),
        (8192, 4096),
        (12288, 100),
    ]
    assert all(index.is_hole(n) for n in range(4))
    assert len(FixedIndex(4096, 0)) == 0 and len(FixedIndex(4096, 4096)) == 1


def test_entries_round_trip_through_bytes() -> None:
    index = FixedIndex(65536, 10 * 65536 - 1)
    ids = [os.urandom(32) for _ in range(10)]
    for n, chunk_id in enumerate(ids):
        if n % 3:
            index[n] = chunk_id
    again = FixedIndex.from_bytes(index.to_bytes(), 65536)
    assert again == index
    assert again[0] == HOLE and again[1] == ids[1]
    assert again.referenced() == {ids[n] for n in range(10) if n % 3}


def test_malformed_index_bytes_are_rejected() -> None:
    raw = FixedIndex(65536, 3 * 65536).to_bytes()
    with pytest.raises(CorruptObjectError, match="chunk size"):
        FixedIndex.from_bytes(raw, 4 * 1024 * 1024)
    with pytest.raises(CorruptObjectError, match="entry count"):
        FixedIndex.from_bytes(raw[:-1], 65536)
    with pytest.raises(CorruptObjectError, match="entry count"):
        FixedIndex.from_bytes(raw + bytes(32), 65536)
    with pytest.raises(CorruptObjectError):
        FixedIndex.from_bytes(raw[:10], 65536)


def test_out_of_range_entries_and_bad_ids_raise() -> None:
    index = FixedIndex(65536, 65536)
    with pytest.raises(IndexError):
        index[1] = bytes(32)
    with pytest.raises(ValueError):
        index[0] = b"short"
