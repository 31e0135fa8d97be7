"""The repository: opens a store as a vmguard repository and reads archives from it.

Entry points: :meth:`Repository.init` creates a repository, :meth:`Repository.open`
opens one (checking the master key), :meth:`Repository.begin_backup` starts a backup
(see :mod:`vmguard.store.writer`). Reading — listing archives, loading manifests and
indexes, reading chunks — happens here. Invariants:

- A repository object only exists for a config this version can read, opened with
  the right key: a wrong or missing key fails in ``open`` with AuthenticationError,
  not later with garbage.
- Every byte returned was verified: chunks against their id, indexes against the
  manifest's ``index_hash``, manifests and indexes by their envelope tag and binding.
- A chunk missing from ``chunks/`` is read from ``fossils/`` (GC may have condemned it
  while a backup still needed it; format §7.3).
- Methods are thread-safe; the object holds no per-backup state.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

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
from vmguard.store.backend import Backend
from vmguard.store.chunk import ChunkCodec
from vmguard.store.clock import Clock, SystemClock
from vmguard.store.config import (
    DEFAULT_CHUNK_SIZE,
    EncryptionConfig,
    GcPolicy,
    ObjectLockPolicy,
    RepositoryConfig,
)
from vmguard.store.crypto import (
    DATA_KEY_BYTES,
    DataKeys,
    MasterKey,
    ScryptParams,
    unwrap_data_key,
    wrap_data_key,
)
from vmguard.store.envelope import Envelope, Kind
from vmguard.store.index import FixedIndex

if TYPE_CHECKING:
    from vmguard.store.writer import BackupWriter

MAX_INDEX_BYTES = 1 << 30
MAX_MANIFEST_BYTES = 64 << 20


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
    ) -> None:
        self.backend = backend
        self.config = config
        self.clock = clock
        self._data_key = data_key
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
        clock = clock or SystemClock()
        if object_lock and not backend.capabilities.object_lock:
            raise ConfigError(f"object lock requested but {backend.location} does not support it")
        now = names.format_time(clock.now())
        config = RepositoryConfig(
            id=secrets.token_hex(16),
            created=now,
            chunk_size=chunk_size,
            compression_level=compression_level,
            object_lock=object_lock,
            gc=gc or GcPolicy(),
        )
        data_key = None
        if master_key is not None:
            data_key = secrets.token_bytes(DATA_KEY_BYTES)
            wrapped = wrap_data_key(
                data_key, master_key, config.id, key_id=_key_id(clock), created=now, params=kdf
            )
            check = DataKeys(data_key).key_check(
                config.with_encryption(EncryptionConfig("", (wrapped,))).immutable_parameters()
            )
            config = config.with_encryption(EncryptionConfig(check, (wrapped,)))
        if not backend.put_if_absent(names.CONFIG, config.to_json()):
            raise RepositoryExistsError(f"a repository already exists at {backend.location}")
        return cls(backend, config, data_key, clock)

    @classmethod
    def open(
        cls, backend: Backend, master_key: MasterKey | None = None, *, clock: Clock | None = None
    ) -> Repository:
        try:
            raw = backend.get(names.CONFIG)
        except ObjectNotFoundError:
            raise RepositoryNotFoundError(f"no vmguard repository at {backend.location}") from None
        config = RepositoryConfig.from_json(raw)
        encryption = config.encryption
        if encryption is None:
            if master_key is not None:
                raise ConfigError(
                    f"the repository at {backend.location} is not encrypted, but a master key"
                    " was given; refusing to write unencrypted data believed to be encrypted"
                )
            return cls(backend, config, None, clock or SystemClock())
        if master_key is None:
            raise AuthenticationError(
                f"the repository at {backend.location} is encrypted: give its master key"
                " (--key-file or VMGUARD_KEY)"
            )
        for wrapped in encryption.wrapped_keys:
            data_key = unwrap_data_key(wrapped, master_key, config.id)
            if data_key is not None:
                break
        else:
            raise AuthenticationError(
                f"the master key does not open the repository at {backend.location}"
            )
        if DataKeys(data_key).key_check(config.immutable_parameters()) != encryption.key_check:
            raise AuthenticationError(
                f"the config at {backend.location} failed its key check: it was altered, or"
                " its key belongs to another repository"
            )
        return cls(backend, config, data_key, clock or SystemClock())

    def rotate_master_key(
        self, new_key: MasterKey, *, keep_old: bool = False, kdf: ScryptParams | None = None
    ) -> None:
        """Wrap the data key under ``new_key``; drop the old wrapping unless ``keep_old``.

        The data key is unchanged, so every archive stays readable (format §4.4).
        """
        encryption = self.config.encryption
        if encryption is None or self._data_key is None:
            raise ConfigError("the repository is not encrypted; there is no key to rotate")
        wrapped = wrap_data_key(
            self._data_key,
            new_key,
            self.config.id,
            key_id=_key_id(self.clock),
            created=names.format_time(self.clock.now()),
            params=kdf,
        )
        keys = (*encryption.wrapped_keys, wrapped) if keep_old else (wrapped,)
        config = self.config.with_encryption(EncryptionConfig(encryption.key_check, keys))
        self.backend.put(names.CONFIG, config.to_json())
        self.config = config

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
        for name in (names.chunk_name(chunk_id), names.fossil_name(chunk_id)):
            try:
                blob = self.backend.get(name)
            except ObjectNotFoundError:
                continue
            return self.codec.decode(chunk_id, blob)
        raise ChunkMissingError(chunk_id.hex())

    def begin_backup(
        self, vm: VmIdentity, *, parent: str | None = None, auto_refresh: bool = True
    ) -> BackupWriter:
        """Start a backup of ``vm`` under a fresh lease (format §7.1, step 1)."""
        from vmguard.store.writer import BackupWriter

        return BackupWriter.start(self, vm, parent=parent, auto_refresh=auto_refresh)


def _key_id(clock: Clock) -> str:
    return "k-" + names.new_stamped_id(clock.now())
