"""Repository locations as URLs, for the command line: ``s3://…`` and ``file://…``.

The CLI must reach a repository when the cluster is gone (BRIEF §2), so a location is
one self-contained string:

- ``s3://HOST[:PORT]/BUCKET[/PREFIX]``: S3 over HTTPS (``s3+http://`` for plain HTTP,
  e.g. a MinIO on loopback); ``?ca=/path/ca.pem`` trusts a private CA, ``?region=`` sets
  the region. Credentials come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
  only, never from the URL: a URL ends up in shell history, logs and process lists.
- ``file:///PATH`` (or a bare absolute path): a repository in a local directory.

Invariants: no credential is ever part of a :class:`Location` or of an error message;
every backend returned is wrapped in :class:`RetryingBackend`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from vmguard.errors import ConfigError
from vmguard.store.backend import Backend, LocalBackend, RetryingBackend

ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class Location:
    scheme: str
    """``s3`` or ``file``."""
    endpoint: str = ""
    bucket: str = ""
    prefix: str = ""
    secure: bool = True
    ca_file: str | None = None
    region: str | None = None
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        scheme = "s3" if self.secure else "s3+http"
        return f"{scheme}://{self.endpoint}/{self.bucket}" + (
            f"/{self.prefix}" if self.prefix else ""
        )


def parse_location(url: str) -> Location:
    """Parse a repository URL; ConfigError says what is wrong with it."""
    if url.startswith("/"):
        return Location("file", path=url)
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"a file:// repository URL names a local path: {url!r}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ConfigError(f"a file:// repository URL needs an absolute path: {url!r}")
        return Location("file", path=path)
    if parts.scheme not in ("s3", "s3+http", "s3+https"):
        raise ConfigError(
            f"unknown repository URL scheme {parts.scheme!r}: use s3://host:port/bucket/prefix,"
            " s3+http://… for plain HTTP, or file:///path"
        )
    if parts.username or parts.password:
        raise ConfigError(
            f"put no credentials in a repository URL: set {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}"
        )
    if not parts.hostname:
        raise ConfigError("an s3:// repository URL needs a host: s3://host:port/bucket/prefix")
    segments = [s for s in unquote(parts.path).split("/") if s]
    if not segments:
        raise ConfigError("an s3:// repository URL needs a bucket: s3://host:port/bucket/prefix")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"ca", "region"}
    if unknown:
        raise ConfigError(f"unknown repository URL options: {', '.join(sorted(unknown))}")
    return Location(
        "s3",
        endpoint=parts.netloc,
        bucket=segments[0],
        prefix="/".join(segments[1:]),
        secure=parts.scheme != "s3+http",
        ca_file=query.get("ca"),
        region=query.get("region"),
    )


def open_location(url: str | Location, env: Mapping[str, str] | None = None) -> Backend:
    """A (retrying) backend for a repository URL; S3 credentials from ``env``."""
    location = url if isinstance(url, Location) else parse_location(url)
    if location.scheme == "file":
        root = Path(location.path)
        if not root.is_dir():
            raise ConfigError(f"no repository directory at {root}")
        return RetryingBackend(LocalBackend(root))
    env = os.environ if env is None else env
    access, secret = env.get(ACCESS_KEY_ENV), env.get(SECRET_KEY_ENV)
    if not access or not secret:
        raise ConfigError(
            f"S3 credentials missing: set {ACCESS_KEY_ENV} and {SECRET_KEY_ENV} for {location}"
        )
    from vmguard.store.backend.s3 import S3Backend

    return RetryingBackend(
        S3Backend(
            location.endpoint,
            location.bucket,
            access_key=access,
            secret_key=secret,
            prefix=location.prefix,
            secure=location.secure,
            region=location.region,
            ca_file=location.ca_file,
        )
    )
