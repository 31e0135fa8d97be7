"""Repositories end to end on memory and local backends: init, open, keys, round trips."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import FAST_KDF_N, backup, disk_image, restore
from vmguard.errors import (
    AuthenticationError,
    ChunkCorruptError,
    ConfigError,
    CorruptObjectError,
    RepositoryError,
    RepositoryExistsError,
    RepositoryNotFoundError,
)
from vmguard.store import FixedIndex, MasterKey, Repository, ScryptParams, VmIdentity, names
from vmguard.store.backend import Backend

MakeRepo = Callable[..., Repository]
OTHER_KEY = MasterKey(b"a different master key entirely")


@pytest.mark.parametrize("encrypted", [True, False])
def test_disks_restore_bit_exact(make_repo: MakeRepo, encrypted: bool) -> None:
    repo = make_repo(encrypted=encrypted)
    disks = {
        "2000": disk_image(1, 12, CHUNK, tail=777),
        "2001": disk_image(2, 5, CHUNK),
        "empty": b"",
    }
    manifest = backup(repo, "vm-1", disks)
    for key, data in disks.items():
        assert restore(repo, manifest, key) == data
    assert [a.archive_id for a in repo.list_archives()] == [manifest.archive_id]
    assert repo.load_archive(manifest.archive_id) == manifest


def test_identical_chunks_are_stored_once_across_vms_and_time(make_repo: MakeRepo) -> None:
    repo = make_repo()
    image = disk_image(3, 10, CHUNK)
    first = backup(repo, "template-clone-1", {"d": image})
    stored = {i.name for i in repo.backend.list(names.CHUNKS)}
    second = backup(repo, "template-clone-2", {"d": image})
    assert {i.name for i in repo.backend.list(names.CHUNKS)} == stored
    assert first.stats.chunks_new > 0
    assert second.stats.chunks_new == 0 and second.stats.bytes_stored == 0
    assert restore(repo, second, "d") == image


def test_incremental_reads_only_changed_chunks_and_restores_full(make_repo: MakeRepo) -> None:
    repo = make_repo()
    base = bytearray(disk_image(4, 16, CHUNK, tail=100))
    full = backup(repo, "vm", {"d": bytes(base)})
    base[5 * CHUNK + 10 : 5 * CHUNK + 20] = b"0123456789"
    changed = bytes(base)
    incr = backup(repo, "vm", {"d": changed}, parent=full.archive_id, changed={"d": {5}})
    assert incr.parent == full.archive_id and incr.mode == "incremental"
    assert incr.stats.chunks_new == 1 and incr.disks[0].stats.chunks_reused == 16
    assert restore(repo, incr, "d") == changed
    assert restore(repo, full, "d") != changed  # the old point is still the old point


def test_vm_names_of_any_shape_back_up_and_list(make_repo: MakeRepo) -> None:
    repo = make_repo()
    hostile = ["Ünïcødé 東京 🚀", "../../etc/passwd", "a/b/c", "x" * 255, "é" * 255]
    made = {}
    for i, name in enumerate(hostile):
        vm = VmIdentity(id=f"vc-1/{name}", name=name)
        made[name] = backup(repo, vm, {f"disk/{name}": disk_image(10 + i, 2, CHUNK)})
    for name, manifest in made.items():
        listed = repo.list_archives(f"vc-1/{name}")
        assert [a.archive_id for a in listed] == [manifest.archive_id]
        loaded = repo.load_archive(manifest.archive_id)
        assert loaded.vm.name == name and loaded.disks[0].key == f"disk/{name}"
    assert all(name.isascii() for name in (i.name for i in repo.backend.list()))


def test_init_twice_is_refused_and_open_needs_a_repository(
    store: Backend, make_repo: MakeRepo
) -> None:
    with pytest.raises(RepositoryNotFoundError):
        Repository.open(store)
    make_repo()
    with pytest.raises(RepositoryExistsError):
        make_repo()


def test_wrong_or_missing_key_is_a_clear_authentication_error(
    store: Backend, make_repo: MakeRepo, master_key: MasterKey
) -> None:
    manifest = backup(make_repo(), "vm", {"d": disk_image(5, 3, CHUNK)})
    with pytest.raises(AuthenticationError, match="does not open"):
        Repository.open(store, OTHER_KEY)
    with pytest.raises(AuthenticationError, match="encrypted"):
        Repository.open(store)
    reopened = Repository.open(store, master_key)
    assert restore(reopened, manifest, "d") == disk_image(5, 3, CHUNK)


def test_a_key_for_an_unencrypted_repository_is_refused(
    store: Backend, make_repo: MakeRepo, master_key: MasterKey
) -> None:
    make_repo(encrypted=False)
    with pytest.raises(ConfigError, match="not encrypted"):
        Repository.open(store, master_key)


def test_a_tampered_config_fails_the_key_check(
    store: Backend, make_repo: MakeRepo, master_key: MasterKey
) -> None:
    make_repo()
    doc = json.loads(store.get("config"))
    doc["chunk_size"] = CHUNK * 2
    store.put("config", json.dumps(doc).encode())
    with pytest.raises(AuthenticationError, match="key check"):
        Repository.open(store, master_key)


def test_unknown_versions_and_features_are_refused(store: Backend, make_repo: MakeRepo) -> None:
    make_repo(encrypted=False)
    doc = json.loads(store.get("config"))
    for change, message in (({"version": 2}, "version 2"), ({"features": ["x"]}, "features")):
        store.put("config", json.dumps({**doc, **change}).encode())
        with pytest.raises(RepositoryError, match=message):
            Repository.open(store)


def test_key_rotation_keeps_every_archive_readable(
    store: Backend, make_repo: MakeRepo, master_key: MasterKey
) -> None:
    repo = make_repo()
    old_image = disk_image(6, 4, CHUNK)
    old = backup(repo, "vm", {"d": old_image})
    repo.rotate_master_key(OTHER_KEY, kdf=ScryptParams(n=FAST_KDF_N))
    with pytest.raises(AuthenticationError):
        Repository.open(store, master_key)
    rotated = Repository.open(store, OTHER_KEY)
    new_image = disk_image(7, 4, CHUNK)
    new = backup(rotated, "vm", {"d": new_image})
    assert restore(rotated, old, "d") == old_image
    assert restore(rotated, new, "d") == new_image
    third = MasterKey(b"third key for the hand-over")
    rotated.rotate_master_key(third, keep_old=True, kdf=ScryptParams(n=FAST_KDF_N))
    for key in (OTHER_KEY, third):
        assert restore(Repository.open(store, key), old, "d") == old_image


def test_config_unknown_members_survive_rotation(store: Backend, make_repo: MakeRepo) -> None:
    make_repo()
    doc = json.loads(store.get("config"))
    doc["future_member"] = {"kept": True}
    store.put("config", json.dumps(doc).encode())
    repo = Repository.open(store, MasterKey(b"correct horse battery staple"))
    repo.rotate_master_key(OTHER_KEY, kdf=ScryptParams(n=FAST_KDF_N))
    assert json.loads(store.get("config"))["future_member"] == {"kept": True}


def test_encrypted_objects_reveal_no_plaintext(make_repo: MakeRepo) -> None:
    repo = make_repo()
    text = b"".join(f"customer {i:06d} secret-ish record\n".encode() for i in range(20000))
    image = text[: 6 * CHUNK]
    backup(repo, VmIdentity(id="vm", name="finance-db-01"), {"d": image})
    windows = {image[i : i + 64] for i in range(0, len(image) - 64, 997)}
    for info in repo.backend.list():
        blob = repo.backend.get(info.name)
        assert not any(w in blob for w in windows), info.name
        assert b"finance-db-01" not in blob


def test_damaged_chunks_fail_loudly_on_read(make_repo: MakeRepo) -> None:
    repo = make_repo()
    manifest = backup(repo, "vm", {"d": disk_image(8, 6, CHUNK)})
    chunk_ids = sorted(repo.load_index(manifest, "d").referenced())
    flipped, truncated = chunk_ids[0], chunk_ids[1]
    blob = bytearray(repo.backend.get(names.chunk_name(flipped)))
    blob[len(blob) // 2] ^= 0x10
    repo.backend.put(names.chunk_name(flipped), bytes(blob))
    short = repo.backend.get(names.chunk_name(truncated))[:-100]
    repo.backend.put(names.chunk_name(truncated), short)
    for chunk_id in (flipped, truncated):
        with pytest.raises(ChunkCorruptError):
            repo.read_chunk(chunk_id)
    with pytest.raises(ChunkCorruptError):
        restore(repo, manifest, "d")


def test_a_damaged_index_or_swapped_manifest_is_detected(make_repo: MakeRepo) -> None:
    repo = make_repo(encrypted=False)
    a = backup(repo, "vm-a", {"d": disk_image(9, 3, CHUNK)})
    b = backup(repo, "vm-b", {"d": disk_image(10, 3, CHUNK)})
    repo.backend.put(names.manifest_name(b.archive_id), repo.encode_manifest(a))
    with pytest.raises(CorruptObjectError):
        repo.load_archive(b.archive_id)
    repo.backend.put(a.disks[0].index, repo.backend.get(b.disks[0].index))
    with pytest.raises(CorruptObjectError):
        repo.load_index(a, "d")


def test_indexes_may_only_reference_chunks_the_backup_vouched_for(make_repo: MakeRepo) -> None:
    repo = make_repo()
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        index = FixedIndex(CHUNK, CHUNK)
        index[0] = bytes(range(32))
        with pytest.raises(ValueError, match="never stored"):
            writer.add_disk("d", "d", index)
    assert repo.list_archives() == []
