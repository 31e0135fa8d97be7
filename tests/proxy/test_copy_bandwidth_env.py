"""The copy Job's bandwidth limit reaches its target repository: with
``VMGUARD_COPY_BANDWIDTH`` the Job's target is opened over a
:class:`~vmguard.store.backend.limiter.LimitedBackend` of that many bytes per second on
its chunks; without it, over the plain backend; a value that is no positive number is a
clear error before anything is opened. (Local directories: the limiter itself is tested
by counting bytes in tests/store/test_copy_bandwidth.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.store.helpers import FAST_KDF_N

from vmguard.errors import VmguardError
from vmguard.proxy import contract
from vmguard.proxy.copy import target_from
from vmguard.store import MasterKey, Repository, ScryptParams
from vmguard.store.backend import LocalBackend
from vmguard.store.backend.limiter import LimitedBackend

pytestmark = pytest.mark.unit


def test_the_jobs_target_is_limited_only_when_the_job_says_so(tmp_path: Path) -> None:
    key = b"target master key, long enough"
    Repository.init(
        LocalBackend(str(tmp_path / "copy")), master_key=MasterKey(key),
        kdf=ScryptParams(n=FAST_KDF_N),
    )  # fmt: skip
    (tmp_path / "dst.key").write_bytes(key)
    to = contract.copy_target_name
    env = {
        to(contract.REPO_ENV): f"file://{tmp_path / 'copy'}",
        to(contract.KEY_FILE_ENV): str(tmp_path / "dst.key"),
    }
    limited = target_from({**env, contract.COPY_BANDWIDTH_ENV: str(25 << 20)}).backend
    assert isinstance(limited, LimitedBackend) and limited.bucket.rate == 25 << 20
    assert not isinstance(target_from(env).backend, LimitedBackend)
    with pytest.raises(VmguardError, match="VMGUARD_COPY_BANDWIDTH must be a positive number"):
        target_from({**env, contract.COPY_BANDWIDTH_ENV: "fast"})
