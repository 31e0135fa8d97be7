"""A VMGuardRepository's spec against its repository's config (pure; issue 11 hole 0).

Creation applies every field the config fixes; any difference later names the field;
the GC policy, which no spec field sets, is checked wherever no key check covers it.
"""

from __future__ import annotations

import pytest

from vmguard.controller.kube.repository_spec import creation_parameters, spec_mismatches
from vmguard.controller.repository.watch import classify
from vmguard.errors import KdfLimitError, RepositoryExistsError
from vmguard.store import GcPolicy, MasterKey, ObjectLockPolicy, Repository, ScryptParams
from vmguard.store.backend import MemoryBackend

pytestmark = pytest.mark.unit
MiB = 1 << 20


def _config(*, key: bool = False, **init: object) -> Repository:
    return Repository.init(
        MemoryBackend(object_lock=True),
        master_key=MasterKey(b"a key of sixteen bytes or more") if key else None,
        kdf=ScryptParams(n=2**10),
        **init,  # type: ignore[arg-type]
    )


def test_creation_applies_every_field_the_config_fixes() -> None:
    spec = {"objectLockDays": 14, "objectLockMode": "COMPLIANCE", "chunkSize": MiB}
    params = creation_parameters(spec)
    assert params == {
        "chunk_size": MiB,
        "object_lock": ObjectLockPolicy("COMPLIANCE", 14),
        "gc": GcPolicy(),
    }
    repo = _config(**params)
    assert spec_mismatches(spec, repo.config) == []
    assert creation_parameters({})["object_lock"] is None
    assert creation_parameters({"objectLockDays": 3})["object_lock"].mode == "GOVERNANCE"


def test_every_difference_names_its_field() -> None:
    repo = _config(chunk_size=4 * MiB, object_lock=ObjectLockPolicy("GOVERNANCE", 14))
    cases = {
        "chunkSize": {"chunkSize": MiB, "objectLockDays": 14},
        "objectLockDays": {"objectLockDays": 30},
        "objectLockMode": {"objectLockDays": 14, "objectLockMode": "COMPLIANCE"},
    }
    for field, spec in cases.items():
        found = spec_mismatches(spec, repo.config)
        assert [f for f, _ in found] == [field], (field, found)
        assert f"spec.{field}" in found[0][1]
    unlocked = spec_mismatches({"objectLockDays": 14}, _config().config)
    assert unlocked[0][0] == "objectLockDays" and "no Object Lock" in unlocked[0][1]


def test_gc_is_checked_where_no_key_check_covers_it() -> None:
    odd = GcPolicy(lease_ttl_seconds=900, grace_seconds=7200)
    plain = _config(gc=odd)
    found = spec_mismatches({}, plain.config)
    assert [f for f, _ in found] == ["gc"] and "unencrypted" in found[0][1]
    # An encrypted repository with authenticated-config: the key check vouches for it.
    assert spec_mismatches({}, _config(key=True, gc=odd).config) == []


def test_conditions_name_the_kdf_parameter_and_an_occupied_prefix() -> None:
    verdict = classify(KdfLimitError("scrypt kdf.n=1048576 kdf.r=64 needs 8192 MiB", "kdf.n"))
    assert (verdict.reachable, verdict.reason) == (True, "KdfParameterOutOfBounds")
    assert "kdf.n" in verdict.message
    occupied = classify(RepositoryExistsError("s3://x/b is not empty"))
    assert occupied.reason == "PrefixNotEmpty"
