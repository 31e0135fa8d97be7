"""RetryingBackend: retries transient faults a bounded number of times, nothing else."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable

import pytest

from vmguard.errors import BackendUnavailableError, ObjectNotFoundError
from vmguard.store.backend import MemoryBackend, RetryingBackend, RetryPolicy, S3Backend

pytestmark = pytest.mark.unit


class FlakyBackend(MemoryBackend):
    """A MemoryBackend whose ``get`` fails transiently ``failures`` times first.

    A fault injector: no real peer fails a fixed number of times on demand.
    """

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def get(self, name: str) -> bytes:
        self.calls += 1
        if self.calls <= self.failures:
            raise BackendUnavailableError("injected transient fault")
        return super().get(name)


def _recorder() -> tuple[list[float], Callable[[float], None]]:
    sleeps: list[float] = []
    return sleeps, sleeps.append


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_transient_faults_are_retried_until_success() -> None:
    inner = FlakyBackend(failures=3)
    inner.put("k", b"value")
    sleeps, sleep = _recorder()
    backend = RetryingBackend(inner, RetryPolicy(attempts=5), sleep=sleep, rng=random.Random(1))
    assert backend.get("k") == b"value"
    assert inner.calls == 4
    assert backend.retries == 3 and len(sleeps) == 3


def test_attempts_are_bounded_and_delays_capped() -> None:
    inner = FlakyBackend(failures=100)
    sleeps, sleep = _recorder()
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=4.0)
    backend = RetryingBackend(inner, policy, sleep=sleep)
    with pytest.raises(BackendUnavailableError):
        backend.get("k")
    assert inner.calls == 6
    caps = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))
    assert sum(sleeps) <= policy.worst_case_delay == 15.0


def test_permanent_errors_are_not_retried() -> None:
    inner = MemoryBackend()
    sleeps, sleep = _recorder()
    backend = RetryingBackend(inner, sleep=sleep)
    with pytest.raises(ObjectNotFoundError):
        backend.get("missing")
    assert sleeps == [] and backend.retries == 0


def test_an_unreachable_s3_endpoint_is_retryable_and_bounded() -> None:
    endpoint = f"127.0.0.1:{_closed_port()}"
    s3 = S3Backend(endpoint, "bucket", access_key="ak", secret_key="sekrit-value", secure=False)
    sleeps, sleep = _recorder()
    backend = RetryingBackend(s3, RetryPolicy(attempts=3), sleep=sleep)
    with pytest.raises(BackendUnavailableError) as caught:
        backend.get("config")
    assert caught.value.retryable
    assert backend.retries == 2 and len(sleeps) == 2
    assert "sekrit-value" not in str(caught.value)
