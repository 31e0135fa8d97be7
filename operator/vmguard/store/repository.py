"""The repository: opens a store as a vmguard repository and reads archives from it.

Entry points: :meth:`Repository.init` creates a repository, :meth:`Repository.open`
opens one (checking the master key), :meth:`Repository.upgrade` adds this release's
format features, :meth:`Repository.begin_backup` starts a backup (see
:mod:`vmguard.store.writer`). Reading — listing archives, loading manifests and
indexes, reading chunks — happens here. Invariants:

- A repository object only exists for a config this version can read, opened with
  the right key: a wrong or missing key fails in ``open`` with AuthenticationError,
  not later with garbage. With the ``authenticated-config`` feature the key check
  covers every safety field (object lock, GC policy, features; format §4.3).
- ``init`` creates a repository only over an empty prefix, never over the objects of
  another (a deleted ``config`` must not start a second repository with a new key).
- Every config written (init, key rotation, upgrade) also goes to an immutable copy
  ``configs/<hash>``, under Object Lock when the repository uses it, and a writer
  keeps the copy of the config it opened retained at least until the archive it
  commits (:meth:`retain_config`): deleting ``config`` never makes a locked archive
  unreadable, because ``open`` falls back to the copies (format §2.1, §9).
- Opening costs bounded memory and work whatever the config says (:class:`KdfLimits`,
  checked before any key derivation).
- Every byte returned was verified: chunks against their id, indexes against the
  manifest's ``index_hash``, manifests and indexes by their envelope tag and binding.
- A chunk missing from ``chunks/`` is read from ``fossils/`` (GC may have condemned it
  while a backup still needed it; format §7.3), and one missing from both is looked for
  again a bounded number of times: GC moves chunks with copy-then-delete, so a chunk
  being resurrected can be gone from ``fossils/`` by the time a reader that missed it
  in ``chunks/`` looks there.
- Methods are thread-safe; the object holds no per-backup state.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import blake3

from vmguard.errors import (
    AuthenticationError,
    ChunkMissingError,
    ConfigError,
    CorruptObjectError,
    ObjectNotFoundError,
    RepositoryError,
    RepositoryExistsError,
    RepositoryNotFoundError,
)
from vmguard.store import names
from vmguard.store.archive import ArchiveManifest, DiskRecord, VmIdentity
from vmguard.store.backend import Backend, Retention
from vmguard.store.chunk import ChunkCodec
from vmguard.store.clock import Clock, SystemClock
from vmguard.store.config import (
    CURRENT_FEATURES,
    DEFAULT_CHUNK_SIZE,
    MAX_CONFIG_BYTES,
    EncryptionConfig,
    GcPolicy,
    ObjectLockPolicy,
    RepositoryConfig,
)
from vmguard.store.crypto import (
    DATA_KEY_BYTES,
    DEFAULT_KDF_LIMITS,
    DataKeys,
    KdfLimits,
    MasterKey,
    ScryptParams,
    WrappedKey,
    unwrap_data_key,
    wrap_data_key,
)
from vmguard.store.envelope import Envelope, Kind, Opened
from vmguard.store.index import FixedIndex
from vmguard.store.writer import BackupWriter

MAX_INDEX_BYTES = 1 << 30
MAX_MANIFEST_BYTES = 64 << 20
MAX_COPIES_TRIED = 4
"""Config copies ``open`` tries, newest first, when ``config`` is missing (bounds the
key derivations a bucket full of planted copies could cause)."""
CHUNK_READ_ROUNDS = 3
"""How often a reader looks in ``chunks/`` then ``fossils/`` before a chunk counts as missing."""


@dataclass(frozen=True, order=True)
class ArchiveRef:
    """An archive as a listing shows it, without reading its manifest."""

    started: datetime
    archive_id: str
    vm_tag: str


class Repository:
    """An opened repository. Construct with :meth:`init` or :meth:`open`."""

    def __init__(
        self,
        backend: Backend,
        config: RepositoryConfig,
        data_key: bytes | None,
        clock: Clock,
        *,
        stored: bytes | None = None,
        source: str = names.CONFIG,
        kdf_limits: KdfLimits = DEFAULT_KDF_LIMITS,
    ) -> None:
        self.backend = backend
        self.config = config
        self.clock = clock
        self.kdf_limits = kdf_limits
        self.source = source
        """The object the config was read from: ``config``, or a copy when it is missing."""
        self._data_key = data_key
        self._stored = stored if stored is not None else config.to_json()
        self._copy_lock = threading.Lock()
        self._copy_until: datetime | None = None
        keys = DataKeys(data_key) if data_key else None
        self.envelope = Envelope(keys.aead if keys else None, config.compression_level)
        self.codec = ChunkCodec(self.envelope, keys.id_key if keys else None, config.chunk_size)

    # -- creating and opening ---------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        *,
        master_key: MasterKey | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compression_level: int = 3,
        object_lock: ObjectLockPolicy | None = None,
        gc: GcPolicy | None = None,
        kdf: ScryptParams | None = None,
        clock: Clock | None = None,
    ) -> Repository:
        """Create a repository with every parameter given, over an empty prefix only."""
        clock = clock or SystemClock()
        if object_lock and not backend.capabilities.object_lock:
            raise ConfigError(f"object lock requested but {backend.location} does not support it")
        if kdf is not None:  # never create what a default reader refuses to open
            DEFAULT_KDF_LIMITS.check_params(kdf)
        occupant = next(iter(backend.list()), None)
        if occupant is not None:
            raise RepositoryExistsError(
                f"{backend.location} is not empty (it holds {occupant.name}): a repository is"
                " only created over an empty prefix; if its config was lost, open it from"
                " its retained copy or restore the config, never initialise over it"
            )
        now = names.format_time(clock.now())
        config = RepositoryConfig(
            id=secrets.token_hex(16),
            created=now,
            chunk_size=chunk_size,
            compression_level=compression_level,
            object_lock=object_lock,
            gc=gc or GcPolicy(),
            features=CURRENT_FEATURES,
        )
        data_key = None
        if master_key is not None:
            data_key = secrets.token_bytes(DATA_KEY_BYTES)
            wrapped = wrap_data_key(
                data_key, master_key, config.id, key_id=_key_id(clock), created=now, params=kdf
            )
            config = _sealed(config, data_key, (wrapped,))
        stored = config.to_json()
        if not backend.put_if_absent(names.CONFIG, stored):
            raise RepositoryExistsError(f"a repository already exists at {backend.location}")
        repo = cls(backend, config, data_key, clock, stored=stored)
        repo._write_copy()
        return repo

    @classmethod
    def open(
        cls,
        backend: Backend,
        master_key: MasterKey | None = None,
        *,
        clock: Clock | None = None,
        kdf_limits: KdfLimits = DEFAULT_KDF_LIMITS,
    ) -> Repository:
        """Open with ``master_key``; from the newest readable config copy when ``config``
        itself is missing (format §2.1)."""
        clock = clock or SystemClock()
        try:
            raw = _read_config(backend, names.CONFIG)
        except ObjectNotFoundError:
            return cls._open_copy(backend, master_key, clock, kdf_limits)
        return cls._open_config(backend, raw, master_key, clock, kdf_limits, names.CONFIG)

    @classmethod
    def _open_copy(
        cls, backend: Backend, master_key: MasterKey | None, clock: Clock, limits: KdfLimits
    ) -> Repository:
        copies = sorted(backend.list(names.CONFIG_COPIES), key=lambda i: i.modified, reverse=True)
        if not copies:
            raise RepositoryNotFoundError(f"no vmguard repository at {backend.location}")
        failure: Exception | None = None
        for info in copies[:MAX_COPIES_TRIED]:
            try:
                raw = _read_config(backend, info.name)
                return cls._open_config(backend, raw, master_key, clock, limits, info.name)
            except (AuthenticationError, RepositoryError, ObjectNotFoundError) as exc:
                failure = failure or exc
        assert failure is not None
        raise failure

    @classmethod
    def _open_config(
        cls,
        backend: Backend,
        raw: bytes,
        master_key: MasterKey | None,
        clock: Clock,
        limits: KdfLimits,
        source: str,
    ) -> Repository:
        config = RepositoryConfig.from_json(raw)
        encryption = config.encryption
        where = backend.location if source == names.CONFIG else f"{backend.location} ({source})"
        if encryption is None:
            if master_key is not None:
                raise ConfigError(
                    f"the repository at {where} is not encrypted, but a master key"
                    " was given; refusing to write unencrypted data believed to be encrypted"
                )
            return cls(backend, config, None, clock, stored=raw, source=source, kdf_limits=limits)
        if master_key is None:
            raise AuthenticationError(
                f"the repository at {where} is encrypted: give its master key"
                " (--key-file or VMGUARD_KEY)"
            )
        limits.check(encryption.wrapped_keys)  # before any key derivation
        for wrapped in encryption.wrapped_keys:
            data_key = unwrap_data_key(wrapped, master_key, config.id)
            if data_key is not None:
                break
        else:
            raise AuthenticationError(f"the master key does not open the repository at {where}")
        if not config.authenticated:
            upgraded = next(iter(backend.list(names.AUTHENTICATED_CONFIG_COPIES)), None)
            if upgraded is not None:  # a legacy key check would not cover lock and GC
                raise AuthenticationError(
                    f"the config at {where} lacks authenticated-config, but the repository"
                    f" was upgraded to it ({upgraded.name}): it was replaced by an older"
                    " config; delete it, and `vmguard repo upgrade` opens the repository from"
                    " the retained copies and writes the config back"
                )
        check = DataKeys(data_key).key_check(config.authenticated_parameters())
        if check != encryption.key_check:
            raise AuthenticationError(
                f"the config at {where} failed its key check: it was altered without the"
                " key (its object lock, GC policy, features or format parameters), or its"
                " key belongs to another repository"
            )
        return cls(backend, config, data_key, clock, stored=raw, source=source, kdf_limits=limits)

    def rotate_master_key(
        self, new_key: MasterKey, *, keep_old: bool = False, kdf: ScryptParams | None = None
    ) -> None:
        """Wrap the data key under ``new_key``; drop the old wrapping unless ``keep_old``.

        The data key is unchanged, so every archive stays readable (format §4.4).
        """
        encryption = self.config.encryption
        if encryption is None or self._data_key is None:
            raise ConfigError("the repository is not encrypted; there is no key to rotate")
        if kdf is not None:
            self.kdf_limits.check_params(kdf)
        wrapped = wrap_data_key(
            self._data_key,
            new_key,
            self.config.id,
            key_id=_key_id(self.clock),
            created=names.format_time(self.clock.now()),
            params=kdf,
        )
        keys = (*encryption.wrapped_keys, wrapped) if keep_old else (wrapped,)
        self._rewrite(_sealed(self.config, self._data_key, keys))

    def upgrade(self) -> tuple[str, ...]:
        """Add every format feature this release knows (format §10); the ones added.

        An encrypted repository must have been opened with its key: the key check is
        recomputed over the new config. A missing ``config`` (opened from a copy) is
        written again.
        """
        missing = tuple(f for f in CURRENT_FEATURES if f not in self.config.features)
        if not missing and self.source == names.CONFIG:
            return ()
        config = self.config.with_features(tuple(sorted({*self.config.features, *missing})))
        encryption = config.encryption
        if encryption is not None:
            assert self._data_key is not None
            config = _sealed(config, self._data_key, encryption.wrapped_keys)
        self._rewrite(config)
        return missing

    def _rewrite(self, config: RepositoryConfig) -> None:
        """Replace ``config`` in one PUT, after its retained copy (format §2.1, §4.4)."""
        stored = config.to_json()
        self.config, self._stored, self.source = config, stored, names.CONFIG
        with self._copy_lock:
            self._copy_until = None
        self._write_copy()
        self.backend.put(names.CONFIG, stored)

    # -- the retained config copy (format §2.1, §9) -------------------------------------

    def _write_copy(self) -> None:
        """Store the copy of the current config, locked for two lock periods.

        Every archive committed so far has ``retain_until`` at most ``now + days``, so a
        new copy retained until ``now + 2·days`` covers all of them, and writers extend
        it at most once a period (:meth:`retain_config`).
        """
        lock = self.config.object_lock
        retention = None
        if lock is not None:
            until = self.clock.now().replace(microsecond=0) + timedelta(days=2 * lock.days)
            retention = Retention(lock.mode, until)
        name = names.config_copy_name(self._stored, authenticated=self.config.authenticated)
        if not self.backend.put_if_absent(name, self._stored, retention=retention):
            if retention is not None:
                self._extend_copy(name, retention.until)
        elif retention is not None:
            with self._copy_lock:
                self._copy_until = retention.until

    def retain_config(self, until: datetime) -> None:
        """Keep the copy of this config retained at least ``until`` (an archive's
        ``retain_until``); a writer calls it before its manifest PUT. One HEAD per
        repository object, one retention request per lock period."""
        if self.config.object_lock is None:
            return
        with self._copy_lock:
            if self._copy_until is not None and self._copy_until >= until:
                return
        name = names.config_copy_name(self._stored, authenticated=self.config.authenticated)
        try:
            current = self.backend.stat(name).retain_until
        except ObjectNotFoundError:  # written by an earlier release: make it now
            lock = self.config.object_lock
            retention = Retention(lock.mode, until + timedelta(days=lock.days))
            if self.backend.put_if_absent(name, self._stored, retention=retention):
                with self._copy_lock:
                    self._copy_until = retention.until
                return
            current = self.backend.stat(name).retain_until
        if current is not None and current >= until:
            with self._copy_lock:
                self._copy_until = current
            return
        self._extend_copy(name, until)

    def _extend_copy(self, name: str, until: datetime) -> None:
        lock = self.config.object_lock
        assert lock is not None
        current = self.backend.stat(name).retain_until
        if current is not None and current >= until:
            target = current
        else:
            target = until + timedelta(days=lock.days)
            self.backend.set_retention(name, Retention(lock.mode, target))
        with self._copy_lock:
            self._copy_until = target

    # -- properties ---------------------------------------------------------------------

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @property
    def encrypted(self) -> bool:
        return self.config.encryption is not None

    def server_now(self) -> datetime:
        """The store's clock, read by writing ``gc/clock`` (format §7.3)."""
        self.backend.put(names.GC_CLOCK, b"")
        return self.backend.stat(names.GC_CLOCK).modified

    # -- archives -----------------------------------------------------------------------

    def list_archives(self, vm_id: str | None = None) -> list[ArchiveRef]:
        """Committed archives, oldest first; of one VM when ``vm_id`` is given."""
        prefix = names.ARCHIVES + (names.vm_tag(vm_id) + "/" if vm_id else "")
        refs = []
        for info in self.backend.list(prefix):
            archive_id = names.archive_id_from_manifest_name(info.name)
            if archive_id is None:
                continue
            parts = names.parse_archive_id(archive_id)
            refs.append(ArchiveRef(parts.started, archive_id, parts.vm_tag))
        return sorted(refs)

    def load_archive(self, archive_id: str) -> ArchiveManifest:
        try:
            blob = self.backend.get(names.manifest_name(archive_id))
        except ObjectNotFoundError:
            raise RepositoryError(f"no archive {archive_id} in the repository") from None
        return self.decode_manifest(archive_id, blob)

    def encode_manifest(self, manifest: ArchiveManifest) -> bytes:
        binding = manifest.archive_id.encode()
        return self.envelope.seal(Kind.MANIFEST, manifest.to_json(), binding)

    def decode_manifest(self, archive_id: str, blob: bytes) -> ArchiveManifest:
        try:
            raw = self.envelope.open(Kind.MANIFEST, blob, archive_id.encode(), MAX_MANIFEST_BYTES)
        except CorruptObjectError as exc:
            raise CorruptObjectError(f"manifest of archive {archive_id}: {exc}") from None
        manifest = ArchiveManifest.from_json(raw)
        if manifest.archive_id != archive_id:
            raise CorruptObjectError(f"manifest of {archive_id} names {manifest.archive_id}")
        return manifest

    def load_index(self, manifest: ArchiveManifest, disk: DiskRecord | str) -> FixedIndex:
        """The verified fixed index of one disk (by record or by disk key)."""
        record = manifest.disk(disk) if isinstance(disk, str) else disk
        number = manifest.disks.index(record)
        where = f"index of disk {record.key!r} of archive {manifest.archive_id}"
        try:
            blob = self.backend.get(record.index)
        except ObjectNotFoundError:
            raise CorruptObjectError(f"{where} is missing") from None
        binding = names.index_binding(manifest.archive_id, number)
        try:
            raw = self.envelope.open(Kind.INDEX, blob, binding, MAX_INDEX_BYTES)
        except CorruptObjectError as exc:
            raise CorruptObjectError(f"{where}: {exc}") from None
        if blake3.blake3(raw).hexdigest() != record.index_hash:
            raise CorruptObjectError(f"{where} does not match the manifest's index_hash")
        index = FixedIndex.from_bytes(raw, self.chunk_size)
        if index.length != record.length:
            raise CorruptObjectError(f"{where}: length {index.length} != {record.length}")
        return index

    # -- chunks -------------------------------------------------------------------------

    def read_chunk(self, chunk_id: bytes) -> bytes:
        """The verified plaintext of a chunk; ChunkMissingError or ChunkCorruptError."""
        return self.open_chunk(chunk_id).plaintext

    def open_chunk(self, chunk_id: bytes) -> Opened:
        """:meth:`read_chunk`, also handing back the verified zstd frame (copies reuse it)."""
        # Each GC move copies before it deletes, so between our two GETs the chunk was
        # in the other place; another round finds it unless GC moved it twice meanwhile.
        for _ in range(CHUNK_READ_ROUNDS):
            for name in (names.chunk_name(chunk_id), names.fossil_name(chunk_id)):
                try:
                    blob = self.backend.get(name)
                except ObjectNotFoundError:
                    continue
                return self.codec.open(chunk_id, blob)
        raise ChunkMissingError(chunk_id.hex())

    def begin_backup(
        self, vm: VmIdentity, *, parent: str | None = None, auto_refresh: bool = True
    ) -> BackupWriter:
        """Start a backup of ``vm`` under a fresh lease (format §7.1, step 1)."""
        return BackupWriter.start(self, vm, parent=parent, auto_refresh=auto_refresh)


def _key_id(clock: Clock) -> str:
    return "k-" + names.new_stamped_id(clock.now())


def _sealed(
    config: RepositoryConfig, data_key: bytes, keys: tuple[WrappedKey, ...]
) -> RepositoryConfig:
    """``config`` with ``keys`` and the key check over what will be stored (format §4.3)."""
    unsealed = config.with_encryption(EncryptionConfig("", keys))
    check = DataKeys(data_key).key_check(unsealed.authenticated_parameters())
    return config.with_encryption(EncryptionConfig(check, keys))


def _read_config(backend: Backend, name: str) -> bytes:
    """At most ``MAX_CONFIG_BYTES + 1`` bytes of a config object: a hostile one of a
    gigabyte costs no more memory than a valid one (the parser refuses the excess)."""
    return backend.get_range(name, 0, MAX_CONFIG_BYTES + 1)
