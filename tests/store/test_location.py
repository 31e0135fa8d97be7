"""Repository URLs: the one parser every command and the file-restore plugin use."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmguard.errors import ConfigError
from vmguard.store.location import (
    Location,
    open_location,
    parse_location,
    repository_url,
    s3_credentials,
)

pytestmark = pytest.mark.unit

OURS = {"VMGUARD_S3_ACCESS_KEY": "ours-access", "VMGUARD_S3_SECRET_KEY": "ours-secret"}
SDK = {"AWS_ACCESS_KEY_ID": "sdk-access", "AWS_SECRET_ACCESS_KEY": "sdk-secret"}


def test_parses_s3_and_file_urls() -> None:
    assert parse_location("s3://minio:9000/bkt/a/b?region=eu&ca=/etc/ca.pem") == Location(
        "s3",
        endpoint="minio:9000",
        bucket="bkt",
        prefix="a/b",
        secure=True,
        ca_file="/etc/ca.pem",
        region="eu",
    )
    assert not parse_location("s3+http://127.0.0.1:9000/bkt").secure
    assert parse_location("s3+https://h/bkt").secure
    assert parse_location("file:///srv/repo") == Location("file", path="/srv/repo")
    assert parse_location("/srv/repo") == Location("file", path="/srv/repo")
    assert str(parse_location("s3+http://h:1/b/p")) == "s3+http://h:1/b/p"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3://user:pw@h/bkt", "put no credentials"),
        ("s3://h", "needs a bucket"),
        ("s3:///bkt", "needs a host"),
        ("file://elsewhere/x", "local path"),
        ("ftp://h/x", "unknown repository URL scheme"),
        ("s3://h/bkt?acl=x", "unknown repository URL options"),
    ],
)
def test_refuses_bad_urls_without_echoing_secrets(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as failure:
        parse_location(url)
    assert "pw" not in str(failure.value)


def test_credentials_come_from_the_environment_ours_first() -> None:
    assert s3_credentials({**SDK, **OURS}) == ("ours-access", "ours-secret")
    assert s3_credentials(SDK) == ("sdk-access", "sdk-secret")
    half = {"VMGUARD_S3_ACCESS_KEY": "ours-access", **SDK}
    assert s3_credentials(half) == ("sdk-access", "sdk-secret"), "only complete pairs count"
    with pytest.raises(ConfigError, match="VMGUARD_S3_ACCESS_KEY") as failure:
        open_location("s3://h/bkt", {})
    assert "s3://h/bkt" in str(failure.value)


def test_opens_s3_with_the_command_line_transport_options() -> None:
    plain = open_location("s3://h:9000/bkt/pfx", OURS, insecure_http=True)
    assert plain.location == "s3+http://h:9000/bkt/pfx/"
    assert open_location("s3://h:9000/bkt", SDK).location == "s3+https://h:9000/bkt/"


def test_a_local_repository_directory_is_made_only_when_creating(tmp_path: Path) -> None:
    where = tmp_path / "new"
    with pytest.raises(ConfigError, match="no repository directory"):
        open_location(f"file://{where}")
    assert not where.exists()
    open_location(f"file://{where}", create=True)
    assert where.is_dir()


def test_the_url_defaults_to_vmguard_repo() -> None:
    assert repository_url("file:///a", {"VMGUARD_REPO": "file:///b"}) == "file:///a"
    assert repository_url(None, {"VMGUARD_REPO": "file:///b"}) == "file:///b"
    with pytest.raises(ConfigError, match="VMGUARD_REPO"):
        repository_url(None, {})
