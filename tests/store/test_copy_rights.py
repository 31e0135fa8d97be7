"""A copy needs no delete right on its target (issue 17; docs/copies.md gives the S3
policy): with a user of the lab's second MinIO whose only rights are that policy's, a
full and an incremental copy into an Object Lock target complete, restore bit-exact and
verify deep-clean, while the same user's delete is refused (so the rights are what the
policy says)."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from minio.credentials import StaticProvider
from minio.error import S3Error
from minio.minioadmin import MinioAdmin

from tests.store.helpers import restore
from tests.store.test_copy_s3 import SOURCE_KEY, TARGET_KEY, _backend, _chain, _init
from vmguard.store import MasterKey, ObjectLockPolicy, Repository
from vmguard.store.copy import copy_archives, select_archives
from vmguard.store.verify import verify

pytestmark = pytest.mark.lab
DOC = Path(__file__).parents[2] / "docs" / "copies.md"


def documented_policy(bucket: str, prefix: str) -> str:
    """The S3 policy docs/copies.md gives, for ``bucket`` and ``prefix``."""
    section = DOC.read_text().split("## Credentials: a copy needs no delete right", 1)[1]
    text = re.search(r"```json\n(.*?)```", section, re.S)
    assert text, "docs/copies.md has no S3 policy"
    doc = json.loads(text.group(1).replace("COPY-BUCKET", bucket).replace("PREFIX", prefix))
    actions = {a for s in doc["Statement"] for a in s["Action"]}
    assert not any("Delete" in a for a in actions)
    return json.dumps(doc)


@pytest.fixture
def copy_user(
    lab_state: dict[str, Any], s3_lock_bucket2: dict[str, Any], tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """``s3_lock_bucket2`` as seen by a new user holding only the documented policy."""
    m = lab_state["minio2"]
    admin = MinioAdmin(
        endpoint=m["endpoint"],
        credentials=StaticProvider(m["access_key"], m["secret_key"]),
        secure=False,
    )
    user, secret = f"copier{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    name = f"copy-only-{secrets.token_hex(4)}"
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(documented_policy(s3_lock_bucket2["bucket"], "copy"))
    admin.user_add(user, secret)
    admin.policy_add(name, str(policy_file))
    admin.policy_set(name, user=user)
    try:
        yield {**s3_lock_bucket2, "access_key": user, "secret_key": secret, "secure": False}
    finally:
        admin.user_remove(user)
        admin.policy_remove(name)


def test_a_copy_needs_only_the_documented_rights(
    s3_bucket: dict[str, Any], s3_lock_bucket2: dict[str, Any], copy_user: dict[str, Any]
) -> None:
    source = _init(_backend({**s3_bucket, "secure": False}, "src"), SOURCE_KEY)
    # The target is created with full rights (as the VMGuardRepository controller does).
    _init(
        _backend({**s3_lock_bucket2, "secure": False}, "copy"),
        TARGET_KEY,
        object_lock=ObjectLockPolicy("GOVERNANCE", 1),
    )
    images = _chain(source, "vm-1", 21, 8)
    target = Repository.open(_backend(copy_user, "copy"), MasterKey(TARGET_KEY))

    report = copy_archives(source, target, select_archives(source))

    assert len(report.copies) == 3 and report.copies[1].based_on is not None
    for copy in report.copies:
        manifest = target.load_archive(copy.target_archive)
        assert restore(target, manifest, "d0") == images[copy.source_archive]
    assert verify(target, deep=True).ok
    # The user can write there but not delete: the policy is what it says.
    client = Minio(
        copy_user["endpoint"],
        access_key=copy_user["access_key"],
        secret_key=copy_user["secret_key"],
        secure=False,
    )
    name = next(
        o.object_name
        for o in client.list_objects(copy_user["bucket"], "copy/chunks/", recursive=True)
    )
    with pytest.raises(S3Error) as refused:
        client.remove_object(copy_user["bucket"], name)
    assert refused.value.code == "AccessDenied"
