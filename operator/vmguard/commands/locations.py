"""Where data lives, as the command line names it: repository URLs, sources, targets.

Repository URLs:

- ``file:///PATH`` — a local directory (tests, air-gapped copies);
- ``s3://HOST:PORT/BUCKET[/PREFIX]`` — an S3 bucket over HTTPS; ``s3+http://`` or
  ``--insecure-http`` for a plain-HTTP endpoint such as the lab's MinIO.

Invariants: S3 credentials come only from the environment (``VMGUARD_S3_ACCESS_KEY`` /
``VMGUARD_S3_SECRET_KEY``, or the AWS SDK's ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``), never from a URL or an argument, so they never show up
in a process listing or shell history; a URL carrying ``user:password@`` is refused.
The master key comes from ``--key-file`` or ``VMGUARD_KEY``. No message here prints
a secret.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from vmguard.errors import ConfigError
from vmguard.store import MasterKey
from vmguard.store.backend import Backend, LocalBackend, RetryingBackend
from vmguard.transport.extents import BlockSink, BlockSource

REPO_ENV = "VMGUARD_REPO"
_CREDENTIALS = (
    ("VMGUARD_S3_ACCESS_KEY", "VMGUARD_S3_SECRET_KEY"),
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
)


def s3_credentials() -> tuple[str, str]:
    for access_var, secret_var in _CREDENTIALS:
        access, secret = os.environ.get(access_var), os.environ.get(secret_var)
        if access and secret:
            return access, secret
    raise ConfigError(
        "S3 credentials missing: set VMGUARD_S3_ACCESS_KEY and VMGUARD_S3_SECRET_KEY"
        " (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    )


def open_backend(
    url: str | None, *, insecure_http: bool = False, ca_file: str | None = None
) -> Backend:
    """The backend a repository URL names (see the module docstring)."""
    url = url or os.environ.get(REPO_ENV)
    if not url:
        raise ConfigError(f"no repository given: use --repo URL or set {REPO_ENV}")
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"file URLs name a local path (file:///PATH), not {url!r}")
        return LocalBackend(parsed.path)
    if parsed.scheme in ("s3", "s3+http", "s3+https"):
        if parsed.username or parsed.password:
            raise ConfigError(
                "credentials do not belong in the repository URL; set VMGUARD_S3_ACCESS_KEY"
                " and VMGUARD_S3_SECRET_KEY in the environment"
            )
        bucket, _, prefix = parsed.path.lstrip("/").partition("/")
        if not parsed.netloc or not bucket:
            raise ConfigError(f"S3 URLs look like s3://HOST:PORT/BUCKET/PREFIX, not {url!r}")
        from vmguard.store.backend import S3Backend

        access, secret = s3_credentials()
        secure = parsed.scheme != "s3+http" and not insecure_http
        s3 = S3Backend(
            parsed.netloc,
            bucket,
            access_key=access,
            secret_key=secret,
            prefix=prefix,
            secure=secure,
            ca_file=ca_file,
        )
        return RetryingBackend(s3)
    raise ConfigError(f"unknown repository URL scheme {parsed.scheme!r} (file:// or s3://)")


def master_key(key_file: str | None) -> MasterKey | None:
    """The master key from ``--key-file``, else from ``VMGUARD_KEY``, else None."""
    if key_file:
        return MasterKey.from_file(key_file)
    return MasterKey.from_env()


def new_key_file(path: str) -> MasterKey:
    """Read the key in ``path``, or create the file with a fresh key (mode 0600)."""
    target = Path(path)
    if target.exists():
        return MasterKey.from_file(target)
    key = MasterKey.generate()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.secret)
    return key


def is_nbd_uri(text: str) -> bool:
    return text.startswith(("nbd://", "nbd+unix://", "nbds://", "nbds+unix://"))


def open_source(text: str) -> BlockSource:
    """A block source: an ``nbd://``/``nbd+unix://`` URI, or a file or block device."""
    if is_nbd_uri(text):
        from vmguard.transport.nbd import NbdSource

        return NbdSource(text)
    from vmguard.transport.file import FileSource

    return FileSource(text)


def open_sink(text: str, size: int, *, overwrite: bool) -> tuple[BlockSink, bool]:
    """A block sink for a restore of ``size`` bytes, and whether its holes need zeroing.

    A new (or, with ``overwrite``, re-created) file is sparse and reads as zeros, so
    holes need no writes. An NBD export or a block device may hold old data: its holes
    are zeroed.
    """
    if is_nbd_uri(text):
        from vmguard.transport.nbd import NbdSink

        return NbdSink(text), True
    from vmguard.transport.file import FileSink

    path = Path(text)
    if path.is_block_device():
        return FileSink(path), True
    return FileSink.create(path, size, overwrite=overwrite), False
