"""The options every command group shares: one meaning of --repo, --key-file, --ca-file.

The master key rule (format §4.3) is checked on real repositories in a temporary
directory: a key written with ``echo`` (one trailing newline) opens what a key written
without it made; anything else (leading blanks, a second newline) is part of the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.store.helpers import FAST_KDF_N

from vmguard.cli.main import build_parser
from vmguard.errors import AuthenticationError, ConfigError, RepositoryNotFoundError
from vmguard.store import Repository, ScryptParams
from vmguard.store.crypto import KEY_ENV
from vmguard.store.location import master_key, open_location, open_repository

pytestmark = pytest.mark.unit

SECRET = "correct horse battery staple"


def _key_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return str(path)


def test_exactly_one_trailing_newline_is_stripped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "repo"
    made = Repository.init(
        open_location(f"file://{root}", create=True),
        master_key=master_key(_key_file(tmp_path, "bare", SECRET)),
        kdf=ScryptParams(n=FAST_KDF_N),
    )
    assert made.encrypted
    echoed = master_key(_key_file(tmp_path, "echo", SECRET + "\n"))
    assert isinstance(open_repository(str(root), echoed), Repository)
    monkeypatch.setenv(KEY_ENV, SECRET + "\n")
    assert isinstance(open_repository(str(root), master_key()), Repository)
    for other in (SECRET + "\n\n", " " + SECRET, SECRET + " \n", SECRET + "\r\n"):
        with pytest.raises(AuthenticationError):
            open_repository(str(root), master_key(_key_file(tmp_path, "other", other)))


def test_opening_a_mistyped_repository_creates_nothing(tmp_path: Path) -> None:
    """A wrong --repo is an error, never a second repository made with defaults:
    open_repository has no way to create one (the `vm backup` path passed create=True)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RepositoryNotFoundError):
        open_repository(f"file://{empty}", None)
    with pytest.raises(ConfigError, match="no repository directory"):
        open_repository(f"file://{tmp_path / 'missing'}", None)
    assert list(empty.iterdir()) == [] and not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["repo", "ls"],
        ["disk", "restore", "a", "t"],
        ["files", "ls", "a"],
        ["vm", "backup", "v", "--vcenter", "https://vc/sdk"],
        ["vm", "restore", "a", "--vcenter", "https://vc/sdk", "--new-name", "n"],
    ],
)
def test_the_repository_options_mean_the_same_in_every_group(argv: list[str]) -> None:
    common = ["--repo", "s3://h:9000/b/p", "--key-file", "k", "--ca-file", "ca.pem"]
    args = build_parser().parse_args([*argv, *common, "--insecure-http"])
    assert (args.repo, args.key_file, args.ca_file, args.insecure_http) == (
        "s3://h:9000/b/p",
        "k",
        "ca.pem",
        True,
    )


def test_vcenter_trust_has_its_own_option() -> None:
    args = build_parser().parse_args(
        ["vm", "ls", "--vcenter", "https://vc/sdk", "--vcenter-ca-file", "vc.pem"]
    )
    assert (args.vcenter_ca_file, args.thumbprint, args.insecure) == ("vc.pem", None, False)
    with pytest.raises(SystemExit):  # one trust option at a time
        build_parser().parse_args(
            ["vm", "ls", "--vcenter", "u", "--vcenter-ca-file", "f", "--insecure"]
        )
