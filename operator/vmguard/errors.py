"""The one exception hierarchy of vmguard.

Every error we raise on purpose derives from :class:`VmguardError`. The split that
matters to callers is *retryable* (a peer is down or slow: try again later) versus
*permanent* (the input is wrong: say so and wait for a new input). The operator maps
the first to ``kopf.TemporaryError`` and the second to ``kopf.PermanentError`` plus a
status condition; the CLI prints the message and exits non-zero.

Messages never contain secret values: they name the Secret, never its content.
"""

from __future__ import annotations


class VmguardError(Exception):
    """Base of every error vmguard raises on purpose."""

    retryable: bool = False


class RetryableError(VmguardError):
    """A peer (vCenter, S3, the apiserver) failed in a way that may pass."""

    retryable = True


class PermanentError(VmguardError):
    """The request cannot succeed as given; retrying changes nothing."""


class ConfigError(PermanentError):
    """Configuration or input is invalid."""


class RestoreRejected(PermanentError):
    """A VMGuardRestore cannot proceed as asked; ``reason`` is its status condition's reason
    (``TargetExists``, ``InvalidTarget``, ``TargetInsideRepository``, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ProxySettingsNotAllowed(ConfigError):
    """A policy's ``spec.proxy`` names a priority class, node label or taint the chart's
    ``proxy.policyMay`` does not allow; the backup fails with this class's name as reason."""


class VMNotFoundError(PermanentError):
    """The VM a request names does not exist in the vCenter (or is ambiguous)."""


# --- repository engine (vmguard.store) -------------------------------------------------


class BackendUnavailableError(RetryableError):
    """The object store did not answer, or answered with a transient failure."""


class ObjectNotFoundError(PermanentError):
    """The named object does not exist in the backend."""

    def __init__(self, name: str) -> None:
        super().__init__(f"object not found: {name}")
        self.name = name


class ObjectLockedError(PermanentError):
    """The object is under S3 Object Lock retention (or legal hold) and cannot be deleted."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"object is locked: {name}" + (f" ({detail})" if detail else ""))
        self.name = name


class RepositoryError(PermanentError):
    """The repository is missing, malformed, or of a format this version cannot read."""


class RepositoryNotFoundError(RepositoryError):
    """No repository config exists at the given location."""


class BucketNotFoundError(RepositoryError):
    """The S3 bucket the repository should live in does not exist."""


class CredentialsRefusedError(ConfigError):
    """The object store refused the access key pair (unknown key, bad secret, denied)."""


class RepositoryExistsError(RepositoryError):
    """A repository already exists where a new one was to be created."""


class KdfLimitError(RepositoryError):
    """A config asks for more key-derivation memory or work than this reader allows."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class RepositorySpecMismatchError(ConfigError):
    """A repository's config differs from what its VMGuardRepository declares."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class AuthenticationError(PermanentError):
    """The master key does not open the repository, or the config was tampered with."""


class CorruptObjectError(RepositoryError):
    """A stored object failed its integrity check (tag, length, hash or structure)."""


class ChunkCorruptError(CorruptObjectError):
    """A chunk failed authentication, decompression or its id (hash) check."""

    def __init__(self, chunk_id_hex: str, reason: str) -> None:
        super().__init__(f"chunk {chunk_id_hex} is corrupt: {reason}")
        self.chunk_id_hex = chunk_id_hex
        self.reason = reason


class ChunkMissingError(RepositoryError):
    """An index references a chunk that is stored neither as chunk nor as fossil."""

    def __init__(self, chunk_id_hex: str) -> None:
        super().__init__(f"chunk {chunk_id_hex} is missing from the repository")
        self.chunk_id_hex = chunk_id_hex


class LeaseLostError(RetryableError):
    """A backup could not keep its lease alive; it must not commit and must start again."""


class GcBusyError(RetryableError):
    """Another garbage collection holds the repository's GC lock."""


# --- file-level restore and instant access (vmguard.files) -----------------------------


class DiskReadError(RepositoryError):
    """A range of an archived disk cannot be read: the chunk under it is corrupt or missing."""

    def __init__(
        self,
        archive_id: str,
        disk_key: str,
        chunk_number: int,
        chunk_id_hex: str,
        offset: int,
        reason: str,
    ) -> None:
        super().__init__(
            f"archive {archive_id}, disk {disk_key!r}: chunk {chunk_id_hex} (number"
            f" {chunk_number}, disk offset {offset}) cannot be read: {reason}"
        )
        self.archive_id = archive_id
        self.disk_key = disk_key
        self.chunk_number = chunk_number
        self.chunk_id_hex = chunk_id_hex
        self.offset = offset
        self.reason = reason


class FilesystemError(PermanentError):
    """A volume holds no filesystem we can read, or a path does not exist in it."""


class FileRestoreError(PermanentError):
    """One file could not be restored; the message names the file and the cause."""

    def __init__(self, path: str, cause: Exception) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = path
        self.cause = cause


# --- policies and schedules (vmguard.controller) ---------------------------------------


class ScheduleError(ConfigError):
    """A policy's schedule cannot be run: the message says why, ``reason`` names it.

    Reasons (CamelCase, used as condition reasons): ``InvalidCron``, ``UpwardRange``,
    ``NeverOccurs``, ``UnknownTimeZone``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
