"""The typed specs (vmguard.api.spec) say what the CRDs' spec schemas say.

The controllers read specs through these TypedDicts; a field added to (or dropped from)
the CRD and not the TypedDict fails here, as tests/api/test_status.py does for statuses.
"""

from __future__ import annotations

import typing

import pytest

from tests.api.test_status import mismatches
from vmguard.api import BackupSpec, LocalRef
from vmguard.crds import backup

pytestmark = pytest.mark.unit


def test_typed_backup_spec_matches_the_crd() -> None:
    assert mismatches(BackupSpec, backup.spec, "spec") == []


def test_required_keys_match_the_crd() -> None:
    assert set(BackupSpec.__required_keys__) == set(backup.spec["required"])
    ref = backup.spec["properties"]["policyRef"]
    assert set(LocalRef.__required_keys__) == set(ref["required"])


def test_modes_match_the_crd() -> None:
    modes = list(typing.get_args(typing.get_type_hints(BackupSpec)["mode"]))
    assert modes == backup.spec["properties"]["mode"]["enum"]
