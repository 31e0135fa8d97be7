"""Keys of an encrypted repository: master keys, data-key wrapping, derived working keys.

Implements ``docs/repository-format.md`` §4.2 to §4.4. Invariants:

- The data key never leaves memory unwrapped; the config only holds it wrapped under a
  key-encryption key stretched from the user's master key with scrypt.
- A wrong master key is detected by the AES-GCM tag of the wrapped key and reported
  as :class:`~vmguard.errors.AuthenticationError`, never as garbage data later.
- No secret appears in a ``repr``, a log line or an exception message.
- scrypt parameters read from a config are bounded, so a hostile config cannot make
  opening a repository take unbounded memory or time.
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

from vmguard.errors import ConfigError, RepositoryError

DATA_KEY_BYTES = 32
MIN_MASTER_KEY_BYTES = 16
KEY_ENV = "VMGUARD_KEY"

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
