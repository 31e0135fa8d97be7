"""Keys of an encrypted repository: master keys, data-key wrapping, derived working keys.

Implements ``docs/repository-format.md`` §4.2 to §4.4. Invariants:

- The data key never leaves memory unwrapped; the config only holds it wrapped under a
  key-encryption key stretched from the user's master key with scrypt.
- A wrong master key is detected by the AES-GCM tag of the wrapped key and reported
  as :class:`~vmguard.errors.AuthenticationError`, never as garbage data later.
- No secret appears in a ``repr``, a log line or an exception message.
- scrypt parameters read from a config are bounded twice: structurally by the format
  (:meth:`ScryptParams.check`, what every release accepted), and before any key is
  derived by :class:`KdfLimits` (memory per entry, summed work over all entries), so
  a foreign or hostile config cannot make opening a repository cost more than
  :data:`DEFAULT_KDF_LIMITS` — well inside the operator's 512 MiB. The format bound
  (:data:`FORMAT_KDF_LIMITS`) stays available on request, so no repository an earlier
  release wrote becomes unreadable.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from vmguard.errors import ConfigError, KdfLimitError, RepositoryError

DATA_KEY_BYTES = 32
MIN_MASTER_KEY_BYTES = 16
KEY_ENV = "VMGUARD_KEY"
MiB = 1 << 20

_CONTEXT_ENC = "vmguard repository v1 aes-256-gcm"
_CONTEXT_ID = "vmguard repository v1 chunk id"
_CONTEXT_CHECK = "vmguard repository v1 key check"
_WRAP_AAD = b"vmguard data key v1:"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise RepositoryError(f"config: {what} is not valid base64") from exc


class MasterKey:
    """The user's secret. Holds bytes; prints as ``MasterKey(<redacted>)``."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_MASTER_KEY_BYTES:
            raise ConfigError(f"the master key must be at least {MIN_MASTER_KEY_BYTES} bytes long")
        self._secret = bytes(secret)

    @classmethod
    def from_text(cls, text: str | bytes) -> MasterKey:
        raw = text.encode() if isinstance(text, str) else text
        return cls(raw[:-1] if raw.endswith(b"\n") else raw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MasterKey:
        try:
            return cls.from_text(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None

    @classmethod
    def from_env(cls, variable: str = KEY_ENV) -> MasterKey | None:
        value = os.environ.get(variable)
        return cls.from_text(value) if value else None

    @classmethod
    def generate(cls) -> MasterKey:
        """A fresh random key (as text, so that it can be stored in a file or Secret)."""
        return cls(base64.b64encode(secrets.token_bytes(32)))

    @property
    def secret(self) -> bytes:
        return self._secret

    def __repr__(self) -> str:
        return "MasterKey(<redacted>)"


@dataclass(frozen=True)
class ScryptParams:
    n: int = 2**15
    r: int = 8
    p: int = 1

    def check(self) -> ScryptParams:
        if self.n < 2**10 or self.n > 2**20 or self.n & (self.n - 1):
            raise RepositoryError(f"config: scrypt n={self.n} is out of bounds")
        if self.r < 1 or self.p < 1 or self.r * self.p > 64:
            raise RepositoryError(f"config: scrypt r={self.r} p={self.p} out of bounds")
        return self

    @property
    def memory(self) -> int:
        """Bytes scrypt allocates for these parameters (128 · n · r)."""
        return 128 * self.n * self.r

    @property
    def work(self) -> int:
        """Relative CPU cost, n · r · p (the default costs 2^18, about 0.1 s)."""
        return self.n * self.r * self.p


@dataclass(frozen=True)
class KdfLimits:
    """How much opening a repository may spend on key derivation (format §4.3)."""

    max_memory: int = 64 * MiB
    """Per wrapped key: twice the default's 32 MiB."""
    max_work: int = 2**20
    """Summed over all wrapped keys a reader may try: four times the default's work."""
    max_keys: int = 16

    def check_params(self, params: ScryptParams) -> None:
        """ConfigError when new parameters exceed what a default reader opens."""
        params.check()
        if params.memory > self.max_memory or params.work > self.max_work:
            raise ConfigError(
                f"scrypt n={params.n} r={params.r} p={params.p} is above the bound readers"
                f" apply ({self.max_memory // MiB} MiB, work {self.max_work})"
            )

    def check(self, entries: tuple[WrappedKey, ...]) -> None:
        """RepositoryError naming the parameter when ``entries`` cost more than allowed."""
        hint = (
            "; an earlier vmguard accepted it: if you trust this config, pass"
            " --allow-costly-kdf for the command, and `vmguard repo rotate-key` re-wraps"
            " the key under default parameters"
        )
        if len(entries) > self.max_keys:
            raise KdfLimitError(
                f"config has {len(entries)} wrapped keys, above the bound of {self.max_keys}"
                + hint,
                "wrapped_keys",
            )
        total = 0
        for entry in entries:
            kdf = entry.kdf
            if kdf.memory > self.max_memory:
                raise KdfLimitError(
                    f"config: wrapped key {entry.id}: scrypt kdf.n={kdf.n} kdf.r={kdf.r} needs"
                    f" {kdf.memory // MiB} MiB, above the bound of {self.max_memory // MiB} MiB"
                    + hint,
                    "kdf.n" if kdf.n > ScryptParams.n else "kdf.r",
                )
            total += kdf.work
        if total > self.max_work:
            raise KdfLimitError(
                f"config: scrypt work n·r·p summed over {len(entries)} wrapped key(s) is"
                f" {total}, above the bound of {self.max_work}" + hint,
                "kdf.p",
            )


DEFAULT_KDF_LIMITS = KdfLimits()
FORMAT_KDF_LIMITS = KdfLimits(max_memory=128 * 2**20 * 64, max_work=2**26 * 64, max_keys=16)
"""What :meth:`ScryptParams.check` lets through, for every entry a config may hold."""


@dataclass(frozen=True)
class WrappedKey:
    """One entry of ``config.encryption.wrapped_keys``."""

    id: str
    created: str
    kdf: ScryptParams
    salt: bytes
    nonce: bytes
    ciphertext: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "kdf": {
                "name": "scrypt",
                "n": self.kdf.n,
                "r": self.kdf.r,
                "p": self.kdf.p,
                "salt": b64(self.salt),
            },
            "nonce": b64(self.nonce),
            "ciphertext": b64(self.ciphertext),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> WrappedKey:
        try:
            kdf = raw["kdf"]
            if kdf["name"] != "scrypt":
                raise RepositoryError(f"config: unknown key derivation {kdf['name']!r}")
            params = ScryptParams(int(kdf["n"]), int(kdf["r"]), int(kdf["p"])).check()
            return cls(
                id=str(raw["id"]),
                created=str(raw.get("created", "")),
                kdf=params,
                salt=unb64(kdf["salt"], "salt"),
                nonce=unb64(raw["nonce"], "nonce"),
                ciphertext=unb64(raw["ciphertext"], "wrapped key"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RepositoryError(f"config: malformed wrapped key entry ({exc})") from exc


def _kek(master: MasterKey, salt: bytes, params: ScryptParams) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p)
    return kdf.derive(master.secret)


def wrap_data_key(
    data_key: bytes,
    master: MasterKey,
    repository_id: str,
    *,
    key_id: str,
    created: str,
    params: ScryptParams | None = None,
) -> WrappedKey:
    params = (params or ScryptParams()).check()
    salt = secrets.token_bytes(16)
    nonce = secrets.token_bytes(12)
    aad = _WRAP_AAD + repository_id.encode()
    ciphertext = AESGCM(_kek(master, salt, params)).encrypt(nonce, data_key, aad)
    return WrappedKey(key_id, created, params, salt, nonce, ciphertext)


def unwrap_data_key(wrapped: WrappedKey, master: MasterKey, repository_id: str) -> bytes | None:
    """The data key if ``master`` opens this entry, else None."""
    aad = _WRAP_AAD + repository_id.encode()
    try:
        key = AESGCM(_kek(master, wrapped.salt, wrapped.kdf)).decrypt(
            wrapped.nonce, wrapped.ciphertext, aad
        )
    except InvalidTag:
        return None
    return key if len(key) == DATA_KEY_BYTES else None


class DataKeys:
    """Working keys derived from one data key (format §4.2)."""

    __slots__ = ("_check", "_id", "aead")

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError("data key must be 32 bytes")
        self.aead = AESGCM(blake3.blake3(data_key, derive_key_context=_CONTEXT_ENC).digest())
        self._id = blake3.blake3(data_key, derive_key_context=_CONTEXT_ID).digest()
        self._check = blake3.blake3(data_key, derive_key_context=_CONTEXT_CHECK).digest()

    @property
    def id_key(self) -> bytes:
        return self._id

    def key_check(self, parameters: dict[str, Any]) -> str:
        """Keyed hash of the repository's immutable parameters (format §4.3)."""
        canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":")).encode()
        return blake3.blake3(canonical, key=self._check).hexdigest()

    def __repr__(self) -> str:
        return "DataKeys(<redacted>)"
