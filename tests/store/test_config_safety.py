"""The repository config as a safety boundary (issue 11, holes 0, 6 and 9).

- Hole 0: ``init`` never starts a second repository over existing data, and a locked
  repository stays readable when its ``config`` object is deleted (a retained copy).
- Hole 6: a config cannot make opening cost unbounded memory or CPU (KDF bounds, size,
  number of wrapped keys); every safety field is authenticated by the key check; the
  GC grace has the lower bound format §7.5 needs.
- Hole 9: what today's main wrote (``fixtures/main-v1``, made by that code) opens
  unchanged, and ``Repository.upgrade`` / ``vmguard repo upgrade`` bring it to the new
  rules; no new bound blocks reading an existing repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.store.conftest import CHUNK
from tests.store.fixtures.make_main_v1 import KEY as MAIN_V1_KEY
from tests.store.fixtures.make_main_v1 import disk as main_v1_disk
from tests.store.helpers import FAST_KDF_N, backup, disk_image, restore
from vmguard.errors import (
    AuthenticationError,
    ConfigError,
    ObjectLockedError,
    RepositoryError,
    RepositoryExistsError,
)
from vmguard.store import GcPolicy, MasterKey, ObjectLockPolicy, Repository, ScryptParams, names
from vmguard.store.backend import Backend, LocalBackend, MemoryBackend
from vmguard.store.clock import ManualClock

pytestmark = pytest.mark.unit
KEY = MasterKey(b"correct horse battery staple")
FIXTURES = Path(__file__).parent / "fixtures" / "main-v1"
FEATURES = {"authenticated-config", "lease-commit-v2", "lock-horizon"}


def _locked(clock: ManualClock) -> tuple[MemoryBackend, Repository]:
    backend = MemoryBackend(object_lock=True, clock=clock.now)
    repo = Repository.init(
        backend,
        master_key=KEY,
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
        object_lock=ObjectLockPolicy("GOVERNANCE", 14),
        clock=clock,
    )
    return backend, repo


def _edit_config(store: Backend, **changes: object) -> None:
    doc = json.loads(store.get(names.CONFIG))
    doc.update(changes)
    store.put(names.CONFIG, json.dumps(doc).encode())


# -- hole 0 ------------------------------------------------------------------------------


def test_init_refuses_a_prefix_whose_config_was_deleted(store: Backend) -> None:
    repo = Repository.init(store, master_key=KEY, chunk_size=CHUNK, kdf=ScryptParams(n=2**10))
    backup(repo, "vm", {"d": disk_image(1, 3, CHUNK)})
    store.delete(names.CONFIG)
    with pytest.raises(RepositoryExistsError, match="not empty"):
        Repository.init(store, master_key=KEY, chunk_size=CHUNK, kdf=ScryptParams(n=2**10))


def test_locked_archives_restore_after_the_config_is_deleted() -> None:
    clock = ManualClock()
    backend, repo = _locked(clock)
    image = disk_image(2, 4, CHUNK)
    first = backup(repo, "vm", {"d": image})
    clock.advance(20 * 86400)  # the second archive is retained beyond the first horizon
    second = backup(Repository.open(backend, KEY, clock=clock), "vm", {"d": image[::-1]})
    backend.delete(names.CONFIG)  # the config itself is mutable (rotation) and unlocked
    reopened = Repository.open(backend, KEY, clock=clock)
    assert restore(reopened, first, "d") == image
    assert restore(reopened, second, "d") == image[::-1]
    copies = list(backend.list(names.CONFIG_COPIES))
    assert copies
    assert second.retain_until is not None
    for info in copies:
        until = backend.stat(info.name).retain_until
        assert until is not None and until >= second.retain_until
        with pytest.raises(ObjectLockedError):
            backend.delete(info.name)


def test_a_config_copy_is_extended_once_per_period_not_per_backup() -> None:
    clock = ManualClock()
    backend, repo = _locked(clock)
    backup(repo, "vm", {"d": disk_image(3, 2, CHUNK)})
    (copy,) = list(backend.list(names.CONFIG_COPIES))
    initial = backend.stat(copy.name).retain_until
    assert initial is not None
    for _ in range(5):  # many backups inside one period: no extension
        clock.advance(3600)
        manifest = backup(repo, "vm", {"d": disk_image(3, 2, CHUNK)})
        assert manifest.retain_until is not None and manifest.retain_until <= initial
    assert backend.stat(copy.name).retain_until == initial
    clock.advance(30 * 86400)
    late = backup(Repository.open(backend, KEY, clock=clock), "vm", {"d": b"x" * CHUNK})
    extended = backend.stat(copy.name).retain_until
    assert late.retain_until is not None and extended is not None
    assert extended >= late.retain_until + timedelta(days=13)


# -- hole 6 ------------------------------------------------------------------------------


def test_kdf_parameters_above_the_bound_are_refused_before_any_work(store: Backend) -> None:
    Repository.init(store, master_key=KEY, chunk_size=CHUNK, kdf=ScryptParams(n=FAST_KDF_N))
    doc = json.loads(store.get(names.CONFIG))
    doc["encryption"]["wrapped_keys"][0]["kdf"]["n"] = 2**17  # 128 MiB of scrypt memory
    store.put(names.CONFIG, json.dumps(doc).encode())
    with pytest.raises(RepositoryError, match=r"kdf\.n=131072.*128 MiB.*bound of 64 MiB"):
        Repository.open(store, KEY)


def test_a_costly_kdf_of_an_existing_repository_still_opens_when_allowed(
    store: Backend,
) -> None:
    """No new bound blocks restoring: the format's own bound opens what main accepted."""
    from vmguard.store.crypto import FORMAT_KDF_LIMITS

    repo = Repository.init(store, master_key=KEY, chunk_size=CHUNK, kdf=ScryptParams(n=2**10))
    image = disk_image(4, 2, CHUNK)
    manifest = backup(repo, "vm", {"d": image})
    costly = Repository.open(store, KEY, kdf_limits=FORMAT_KDF_LIMITS)
    costly.rotate_master_key(KEY, kdf=ScryptParams(n=2**16, r=9))  # 72 MiB
    with pytest.raises(RepositoryError, match="--allow-costly-kdf"):
        Repository.open(store, KEY)
    assert restore(Repository.open(store, KEY, kdf_limits=FORMAT_KDF_LIMITS), manifest, "d") == (
        image
    )


def test_oversized_configs_and_key_lists_are_refused(store: Backend) -> None:
    Repository.init(store, master_key=KEY, chunk_size=CHUNK, kdf=ScryptParams(n=FAST_KDF_N))
    doc = json.loads(store.get(names.CONFIG))
    store.put(names.CONFIG, json.dumps({**doc, "padding": "x" * (2 << 20)}).encode())
    with pytest.raises(RepositoryError, match="config is larger than"):
        Repository.open(store, KEY)
    doc["encryption"]["wrapped_keys"] *= 40
    store.put(names.CONFIG, json.dumps(doc).encode())
    with pytest.raises(RepositoryError, match="40 wrapped keys"):
        Repository.open(store, KEY)


@pytest.mark.parametrize(
    "change",
    [
        {"object_lock": None},
        {"object_lock": {"mode": "GOVERNANCE", "days": 1}},
        {"gc": {"lease_ttl_seconds": 600, "grace_seconds": 300}},
        {"gc": {"lease_ttl_seconds": 60, "grace_seconds": 3600}},
        {"features": []},
    ],
    ids=["lock-removed", "lock-shortened", "grace", "ttl", "features-dropped"],
)
def test_safety_fields_edited_without_the_key_are_refused(
    change: dict[str, object],
) -> None:
    clock = ManualClock()
    backend, _ = _locked(clock)
    _edit_config(backend, **change)
    with pytest.raises(AuthenticationError, match=r"key check|older config"):
        Repository.open(backend, KEY, clock=clock)


def test_gc_grace_below_the_lease_bound_is_refused() -> None:
    for grace in (0, 60, 128):
        with pytest.raises(ConfigError, match="grace"):
            GcPolicy(grace_seconds=grace)
    assert GcPolicy(grace_seconds=300).grace_seconds == 300


def test_an_old_config_with_a_short_grace_opens_and_uses_the_minimum(store: Backend) -> None:
    repo = Repository.init(store, chunk_size=CHUNK)
    image = disk_image(5, 2, CHUNK)
    manifest = backup(repo, "vm", {"d": image})
    _edit_config(store, gc={"lease_ttl_seconds": 600, "grace_seconds": 0}, features=[])
    reopened = Repository.open(store)
    assert reopened.config.gc.grace_seconds == 300
    assert restore(reopened, manifest, "d") == image


# -- hole 9 ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["encrypted", "plain"])
def test_a_repository_of_main_opens_unchanged_and_upgrades(which: str, tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / which, tmp_path / "repo")
    store = LocalBackend(tmp_path / "repo")
    key = MasterKey(MAIN_V1_KEY) if which == "encrypted" else None
    before = store.get(names.CONFIG)
    repo = Repository.open(store, key)
    assert repo.config.features == ()
    (ref,) = repo.list_archives()
    manifest = repo.load_archive(ref.archive_id)
    assert restore(repo, manifest, "2000") == main_v1_disk()
    assert store.get(names.CONFIG) == before  # opening changes nothing

    assert set(repo.upgrade()) == FEATURES
    upgraded = Repository.open(store, key)
    assert set(upgraded.config.features) == FEATURES
    assert restore(upgraded, manifest, "2000") == main_v1_disk()
    assert upgraded.upgrade() == ()  # idempotent
    if key is not None:  # now the key check covers the safety fields
        _edit_config(store, gc={"lease_ttl_seconds": 600, "grace_seconds": 7200})
        with pytest.raises(AuthenticationError, match="key check"):
            Repository.open(store, key)


def test_an_upgraded_repository_refuses_a_rolled_back_config(tmp_path: Path) -> None:
    """Putting the pre-upgrade config back (its legacy key check is still valid) would let
    Object Lock and GC be edited unnoticed again: the retained copy of the upgraded config
    says the repository was upgraded, and the reader refuses."""
    shutil.copytree(FIXTURES / "encrypted", tmp_path / "repo")
    store = LocalBackend(tmp_path / "repo")
    key = MasterKey(MAIN_V1_KEY)
    old = store.get(names.CONFIG)
    Repository.open(store, key).upgrade()
    doc = json.loads(old)
    doc["gc"] = {"lease_ttl_seconds": 60, "grace_seconds": 300}
    store.put(names.CONFIG, json.dumps(doc).encode())
    with pytest.raises(AuthenticationError, match="older config"):
        Repository.open(store, key)
    store.delete(names.CONFIG)  # the way back the message gives
    assert Repository.open(store, key).upgrade() == ()
    assert Repository.open(store, key).config.authenticated


def test_repo_upgrade_command_needs_the_key_and_reports_the_features(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "encrypted", tmp_path / "repo")
    key_file = tmp_path / "key"
    key_file.write_bytes(MAIN_V1_KEY)
    env = {k: v for k, v in os.environ.items() if k != "VMGUARD_KEY"}
    argv = [
        sys.executable,
        "-m",
        "vmguard.cli",
        "repo",
        "upgrade",
        "--repo",
        str(tmp_path / "repo"),
    ]
    keyless = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert keyless.returncode == 1 and "master key" in keyless.stderr
    done = subprocess.run(
        [*argv, "--key-file", str(key_file), "--json"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["added"]) == FEATURES
    config = json.loads((tmp_path / "repo" / "config").read_text())
    assert set(config["features"]) == FEATURES


def test_new_repositories_use_every_feature_this_release_knows(store: Backend) -> None:
    repo = Repository.init(store, chunk_size=CHUNK)
    assert set(repo.config.features) == FEATURES
    assert set(json.loads(store.get(names.CONFIG))["features"]) == FEATURES
