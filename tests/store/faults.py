"""The lab's MinIO behind a real fault proxy, for store tests of slow, failed and ambiguous I/O.

:class:`FaultyS3` (fixture ``faulty_s3``) hands out S3 backends that reach MinIO through
a toxiproxy listener, with client timeouts of :data:`CLIENT_TIMEOUT` (≤ 2 s, so a
stalled request fails fast), and a *direct* backend on the same bucket and prefix that
bypasses the proxy: what the server really holds, whatever the client was told.

Fault modes, each a context manager so the fault ends with its block:

- :meth:`FaultyS3.ambiguous_writes` — the server applies every request, but the client
  never gets a usable answer: ``stall`` holds each response (the client's read timeout
  fires), ``cut`` closes the connection at the response's first byte. Either way the
  write happened and the client raised — the "MinIO answered after the client gave up"
  of BRIEF §9.
- :meth:`FaultyS3.resets` — every connection is reset (TCP RST) as its request arrives:
  the server sees nothing, the client gets a retryable error.
- :meth:`FaultyS3.latency` — each response is delayed; below the client timeout the
  store is slower but works.
- ``faulty_s3.proxy.down()`` — the server is unreachable (connection refused).

Clock skew: :func:`start_skewed_python` runs a Python writer process (the store, the
CLI) under libfaketime with its wall clock moved by a fixed offset; only the child's
clock moves. In-process, a Repository takes ``clock=SkewedClock(...)`` (helpers.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from vmguard.store.backend import RetryingBackend, RetryPolicy, S3Backend

CLIENT_TIMEOUT = 2.0
"""Connect and read timeout of backends behind the proxy (seconds)."""

FAST_RETRIES = RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.2)
"""Retries for fault tests: the faults are injected, so waiting long proves nothing."""


@dataclass
class FaultyS3:
    proxy: Any  # vmguard_lab.faults.FaultProxy
    bucket: dict[str, Any]  # the s3_bucket fixture's endpoint, credentials and name

    def _s3(self, endpoint: str, prefix: str, timeout: float) -> S3Backend:
        backend = S3Backend(
            endpoint,
            self.bucket["bucket"],
            access_key=self.bucket["access_key"],
            secret_key=self.bucket["secret_key"],
            secure=False,
            prefix=prefix,
            timeout=timeout,
            conditional_writes=True,  # MinIO honours If-None-Match; no probe under a fault
        )
        # The SDK asks for the bucket's region once, before its first request; ask now,
        # fault-free, so a toxic added later hits the request the test means.
        assert backend.capabilities.object_lock in (True, False)
        return backend

    def backend(self, prefix: str = "repo", *, timeout: float = CLIENT_TIMEOUT) -> S3Backend:
        """An S3 backend that reaches MinIO through the fault proxy."""
        return self._s3(self.proxy.endpoint, prefix, timeout)

    def retrying(self, prefix: str = "repo", policy: RetryPolicy = FAST_RETRIES) -> Any:
        """:meth:`backend` wrapped in the store's retry policy, with short delays."""
        return RetryingBackend(self.backend(prefix), policy)

    def direct(self, prefix: str = "repo") -> S3Backend:
        """The same bucket and prefix straight from MinIO: what the server holds."""
        return self._s3(self.bucket["endpoint"], prefix, 30.0)

    @contextmanager
    def ambiguous_writes(self, how: Literal["stall", "cut"] = "stall") -> Iterator[None]:
        """Requests reach the server and are applied; their responses never arrive whole."""
        if how == "stall":
            # timeout=0: hold the server's bytes for as long as the toxic exists.
            with self.proxy.toxic("timeout", "downstream", timeout=0):
                yield
        else:
            with self.proxy.toxic("limit_data", "downstream", bytes=0):
                yield

    @contextmanager
    def resets(self) -> Iterator[None]:
        """Each connection is reset (RST) when its request arrives; nothing reaches MinIO."""
        with self.proxy.toxic("reset_peer", "upstream", timeout=0):
            yield

    @contextmanager
    def latency(self, ms: int, jitter: int = 0) -> Iterator[Any]:
        """Every response is delayed by ``ms`` (± ``jitter``) milliseconds."""
        with self.proxy.toxic("latency", "downstream", latency=ms, jitter=jitter) as toxic:
            yield toxic


def start_skewed_python(
    code: str, offset_seconds: float, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """``python -c code`` with its wall clock ``offset_seconds`` off (libfaketime).

    Pipes for stdin, stdout and stderr, text mode. Pass credentials in ``env``, never in
    ``code`` (a command line is readable by every user). Keep the offset under 15 minutes
    for a child that talks to MinIO: S3 refuses requests signed further off.
    """
    from vmguard_lab.faults import skewed_env

    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=skewed_env(offset_seconds, env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
