"""Repository locations as URLs (``s3://…``, ``file://…``), and the one way to open one.

The CLI must reach a repository when the cluster is gone (BRIEF §2), so a location is
one self-contained string. This is the only parser of repository URLs, and
:func:`open_repository` the only opener of repositories: the operator, the proxy Jobs,
``vmguard repo|disk|vm|files|mount`` and the file-restore nbdkit plugin all call it, so
they agree on credentials, on what a CA file means and on the master key
(:func:`master_key`). It lives here, at the bottom of the store, because that is the
lowest layer that may import both the store and ``vmguard.config``: every caller, even
``vmguard.files`` (below the use cases), can reach it.

- ``s3://HOST[:PORT]/BUCKET[/PREFIX]``: S3 over HTTPS (``s3+http://`` or
  ``insecure_http`` for plain HTTP, e.g. a MinIO on loopback); ``?ca=/path/ca.pem``
  (or ``ca_file``) trusts a private CA, ``?region=`` sets the region.
- ``file:///PATH`` (or a bare absolute path): a repository in a local directory, which
  must exist unless the caller is about to create a repository there.
- No URL given: ``VMGUARD_REPO`` (:func:`repository_url`).

- The master key: ``--key-file`` (a file) or ``VMGUARD_KEY``; either way exactly one
  trailing newline is stripped and nothing else (:meth:`MasterKey.from_text`,
  ``docs/repository-format.md`` §4.3), so ``echo KEY > file`` and a Secret written
  without a newline give the same key.
- ``ca_file`` always means the CA bundle of the repository's S3 endpoint (the CLI's
  ``--ca-file``, the VMGuardRepository's ``s3.caBundle``); it overrides ``?ca=``.

Invariants: S3 credentials come only from the environment (``VMGUARD_S3_ACCESS_KEY`` /
``VMGUARD_S3_SECRET_KEY``, else the AWS SDK's ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``), never from the URL or an argument: those end up in shell
history, logs and process lists, so a URL carrying ``user:password@`` is refused. No
credential is ever part of a :class:`Location` or of an error message; every backend
returned is wrapped in :class:`RetryingBackend`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from vmguard.config import REPO_ENV, S3_ACCESS_ENV, S3_SECRET_ENV
from vmguard.errors import ConfigError
from vmguard.store.backend import Backend, LocalBackend, RetryingBackend
from vmguard.store.crypto import DEFAULT_KDF_LIMITS, KEY_ENV, KdfLimits, MasterKey
from vmguard.store.repository import Repository

CREDENTIAL_ENVS = (
    (S3_ACCESS_ENV, S3_SECRET_ENV),
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
)
"""Pairs of (access key, secret key) variables, in order of preference."""
_SET_CREDENTIALS = (
    "set VMGUARD_S3_ACCESS_KEY and VMGUARD_S3_SECRET_KEY"
    " (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
)


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
            f"put no credentials in a repository URL: {_SET_CREDENTIALS} in the environment"
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


def repository_url(given: str | None, env: Mapping[str, str] | None = None) -> str:
    """``given``, else ``VMGUARD_REPO`` from ``env``; ConfigError when neither is set."""
    url = given or (os.environ if env is None else env).get(REPO_ENV)
    if not url:
        raise ConfigError(f"no repository given: use --repo URL or set {REPO_ENV}")
    return url


def s3_credentials(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(access key, secret key) from the first complete pair of :data:`CREDENTIAL_ENVS`."""
    env = os.environ if env is None else env
    for access_var, secret_var in CREDENTIAL_ENVS:
        access, secret = env.get(access_var), env.get(secret_var)
        if access and secret:
            return access, secret
    raise ConfigError(f"S3 credentials missing: {_SET_CREDENTIALS}")


def open_location(
    url: str | Location,
    env: Mapping[str, str] | None = None,
    *,
    create: bool = False,
    insecure_http: bool = False,
    ca_file: str | None = None,
) -> Backend:
    """A (retrying) backend for a repository URL; S3 credentials from ``env``.

    ``create``: a local directory may be made (``repo init``); otherwise
    a missing one is an error rather than a new empty directory. ``insecure_http`` and
    ``ca_file`` are the command line's ``--insecure-http`` and ``--ca-file``, equivalent
    to ``s3+http://`` and ``?ca=``.
    """
    location = url if isinstance(url, Location) else parse_location(url)
    if location.scheme == "file":
        root = Path(location.path)
        if not create and not root.is_dir():
            raise ConfigError(f"no repository directory at {root}")
        return RetryingBackend(LocalBackend(root))
    try:
        access, secret = s3_credentials(env)
    except ConfigError as exc:
        raise ConfigError(f"{exc} for {location}") from None
    from vmguard.store.backend.s3 import S3Backend

    return RetryingBackend(
        S3Backend(
            location.endpoint,
            location.bucket,
            access_key=access,
            secret_key=secret,
            prefix=location.prefix,
            secure=location.secure and not insecure_http,
            region=location.region,
            ca_file=ca_file or location.ca_file,
        )
    )


def master_key(
    key_file: str | None = None, env: Mapping[str, str] | None = None
) -> MasterKey | None:
    """The master key in ``key_file``, else in ``VMGUARD_KEY`` (from ``env``), else None.

    Both are normalised by :meth:`MasterKey.from_text`, the one rule: exactly one
    trailing newline is stripped (format §4.3).
    """
    if key_file:
        return MasterKey.from_file(key_file)
    text = (os.environ if env is None else env).get(KEY_ENV)
    return MasterKey.from_text(text) if text else None


def open_repository(
    url: str | Location | None,
    key: MasterKey | None,
    env: Mapping[str, str] | None = None,
    *,
    insecure_http: bool = False,
    ca_file: str | None = None,
    kdf_limits: KdfLimits = DEFAULT_KDF_LIMITS,
    wrap: Callable[[Backend], Backend] | None = None,
) -> Repository:
    """Open the repository at ``url`` (None: ``VMGUARD_REPO`` from ``env``) with ``key``.

    S3 credentials come from ``env`` (default: the process environment). Never creates
    a repository: one that does not exist is :class:`RepositoryNotFoundError`, so a
    mistyped URL cannot start a second repository with defaults (``Repository.init``,
    reached through ``vmguard repo init`` or the VMGuardRepository controller, creates).
    ``kdf_limits`` bounds the key derivation a config may ask for (format §4.3).
    ``wrap`` decorates the backend before the repository is opened over it (a copy's
    bandwidth limit: :class:`~vmguard.store.backend.limiter.LimitedBackend`).
    """
    target = url if isinstance(url, Location) else repository_url(url, env)
    backend = open_location(target, env, insecure_http=insecure_http, ca_file=ca_file)
    return Repository.open(wrap(backend) if wrap else backend, key, kdf_limits=kdf_limits)
