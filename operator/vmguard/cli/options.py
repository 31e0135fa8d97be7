"""Options every command group shares, declared once, and what they resolve to.

One ``--repo``, one key option and one set of TLS options per peer, so that a flag means
the same in ``repo``, ``disk``, ``vm``, ``files`` and ``mount``:

- the repository: ``--repo URL`` (else ``VMGUARD_REPO``; URLs as
  :mod:`vmguard.store.location` reads them), ``--key-file`` (else ``VMGUARD_KEY``;
  exactly one trailing newline is stripped, format §4.3), and the S3 endpoint's TLS:
  ``--ca-file`` (its CA bundle) and ``--insecure-http`` (plain HTTP);
- vCenter: ``--vcenter URL`` with one of ``--thumbprint``, ``--vcenter-ca-file`` or
  ``--insecure`` (only when asked for by name); user and password only from
  ``VMGUARD_VC_USER`` / ``VMGUARD_VC_PASSWORD``.

Repositories are opened only through :func:`vmguard.store.location.open_repository`.
S3 credentials come only from the environment there. No message here prints a secret.

Also here, because every group shares them: ``-o/--output table|json|yaml`` and
:func:`emit` (one document per command for scripts: JSON or YAML of the same data);
:class:`UsageError`, a mistake on the command line (exit code 2, like argparse's own),
as opposed to every other :class:`~vmguard.errors.VmguardError`, a failure at run time
(exit code 1).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmguard.config import REPO_ENV, VC_PASSWORD_ENV, VC_USER_ENV
from vmguard.errors import ConfigError, RepositoryNotFoundError
from vmguard.store import MasterKey, Repository
from vmguard.store.crypto import DEFAULT_KDF_LIMITS, FORMAT_KDF_LIMITS, KEY_ENV
from vmguard.store.location import master_key, open_repository

if TYPE_CHECKING:
    from vmguard.vsphere.session import Endpoint

OUTPUTS = ("table", "json", "yaml")


class UsageError(ConfigError):
    """The command line is wrong (a missing or conflicting option): exit code 2, as for
    argparse's own errors. Everything else that fails is a run-time failure: exit 1."""


def add_output_option(parser: argparse.ArgumentParser, choices: tuple[str, ...] = OUTPUTS) -> None:
    """``-o/--output`` (default ``table``, text for people) and ``--json``, a hidden,
    deprecated alias of ``-o json`` that scripts written before ``-o`` still use."""
    parser.add_argument(
        "-o",
        "--output",
        choices=choices,
        default="table",
        help=f"output format: {', '.join(choices)} (default: table)",
    )
    parser.add_argument(
        "--json", dest="output", action="store_const", const="json", help=argparse.SUPPRESS
    )


def render(doc: Any, output: str) -> str:
    """``doc`` as a JSON or YAML document (``output`` ``json`` or ``yaml``)."""
    if output == "yaml":
        import yaml  # PyYAML: only when asked for

        # Through JSON first: dates and other non-plain values become strings, as in -o json.
        plain = json.loads(json.dumps(doc, default=str))
        return str(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)).rstrip("\n")
    return json.dumps(doc, default=str, indent=1, ensure_ascii=False)


def emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    """Print ``text`` for ``-o table``, else ``doc`` as the document asked for."""
    output = getattr(args, "output", "table") or "table"
    print(text if output in ("table", "wide") else render(doc, output))


KEY_HELP = (
    f"file holding the repository's master key (else ${KEY_ENV});"
    " exactly one trailing newline is stripped"
)


def add_repository_options(
    parser: argparse.ArgumentParser, *, required: bool = False, tls: bool = True
) -> None:
    """``--repo``, ``--key-file``, and with ``tls`` ``--ca-file`` and ``--insecure-http``
    (``vmguard mount`` hands only a URL to nbdkit: ``?ca=`` and ``s3+http://`` do there)."""
    parser.add_argument(
        "--repo",
        required=required,
        metavar="URL",
        help="s3://HOST:PORT/BUCKET/PREFIX, s3+http://…, or file:///PATH"
        + ("" if required else f" (else ${REPO_ENV})"),
    )
    parser.add_argument("--key-file", help=KEY_HELP)
    parser.add_argument(
        "--allow-costly-kdf",
        action="store_true",
        help="open a config whose key derivation is above the default bound, up to the"
        " format's (format §4.3; then `repo rotate-key` re-wraps it cheaply)",
    )
    if not tls:
        return
    parser.add_argument(
        "--ca-file", help="CA bundle of the repository's S3 endpoint (as the URL's ?ca=)"
    )
    parser.add_argument(
        "--insecure-http", action="store_true", help="plain-HTTP S3 endpoint (as s3+http://)"
    )


def repository_key(args: argparse.Namespace) -> MasterKey | None:
    """The master key ``--key-file`` or ``VMGUARD_KEY`` gives (None: unencrypted)."""
    return master_key(args.key_file)


def open_repository_from(args: argparse.Namespace) -> Repository:
    """The repository the shared options name, with its key. Never creates one: a
    mistyped ``--repo`` is RepositoryNotFoundError (``repo init`` creates)."""
    if not (args.repo or os.environ.get(REPO_ENV)):
        raise UsageError(f"no repository given: use --repo URL or set {REPO_ENV}")
    costly = getattr(args, "allow_costly_kdf", False)
    try:
        return open_repository(
            args.repo,
            repository_key(args),
            insecure_http=getattr(args, "insecure_http", False),
            ca_file=getattr(args, "ca_file", None),
            kdf_limits=FORMAT_KDF_LIMITS if costly else DEFAULT_KDF_LIMITS,
        )
    except RepositoryNotFoundError as exc:
        raise RepositoryNotFoundError(
            f"{exc} (check --repo; `vmguard repo init` creates one)"
        ) from None


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


def add_vcenter_options(parser: argparse.ArgumentParser) -> None:
    """``--vcenter`` and its TLS trust: ``--thumbprint | --vcenter-ca-file | --insecure``."""
    parser.add_argument("--vcenter", required=True, metavar="URL", help="https://vcenter/sdk")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--thumbprint", help="pinned SHA-1/SHA-256 certificate thumbprint")
    trust.add_argument(
        "--vcenter-ca-file", metavar="FILE", help="CA bundle that signed vCenter's certificate"
    )
    trust.add_argument("--insecure", action="store_true", help="do not verify TLS (never in prod)")


def vcenter_endpoint(args: argparse.Namespace) -> Endpoint:
    """vCenter as the options name it; credentials from the environment only."""
    from vmguard.vsphere.session import Endpoint, user_agent  # pyVmomi: only when a vm command runs

    user, password = os.environ.get(VC_USER_ENV), os.environ.get(VC_PASSWORD_ENV)
    if not user or not password:
        raise ConfigError(f"set {VC_USER_ENV} and {VC_PASSWORD_ENV} to the vCenter credentials")
    return Endpoint(
        args.vcenter,
        user,
        password,
        ca_file=args.vcenter_ca_file,
        thumbprint=args.thumbprint,
        insecure=args.insecure,
        user_agent=user_agent("cli"),
    )
