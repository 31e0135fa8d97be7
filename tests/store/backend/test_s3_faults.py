"""The S3 backend against the lab's MinIO through a real fault proxy (toxiproxy).

Each test proves one fault mode of ``tests.store.faults.py`` does what safety tests
rely on, by comparing what the client was told with what the server holds (read
straight from MinIO, bypassing the proxy):

- an ambiguous PUT: the client raised a retryable error, the server stored the object;
- a reset connection: a retryable error, nothing stored, and a retry goes through;
- latency below the client timeout: slower, same bytes; the same toxic beyond it fails;
- the server down: a retryable error, the client recovers when it is back.
"""

from __future__ import annotations

import pytest

from tests.store.faults import CLIENT_TIMEOUT, FAST_RETRIES, FaultyS3
from vmguard.errors import BackendUnavailableError, ObjectNotFoundError
from vmguard.store.backend import Backend, RetryingBackend
from vmguard_lab.procs import eventually

pytestmark = pytest.mark.lab

PAYLOAD = bytes(range(256)) * 64  # 16 KiB, one PutObject


def _held(backend: Backend, name: str) -> bytes | None:
    try:
        return backend.get(name)
    except ObjectNotFoundError:
        return None


@pytest.mark.parametrize("how", ["stall", "cut"])
def test_an_ambiguous_put_is_stored_on_the_server_while_the_client_raised(
    faulty_s3: FaultyS3, how: str
) -> None:
    client, server = faulty_s3.backend(), faulty_s3.direct()
    with faulty_s3.ambiguous_writes(how), pytest.raises(BackendUnavailableError) as raised:
        client.put("chunks/ab/ambiguous", PAYLOAD)
    assert raised.value.retryable
    # The client gave up; the server applied the write (at once, or soon after).
    assert eventually(lambda: _held(server, "chunks/ab/ambiguous"), 30) == PAYLOAD
    # The fault is gone with its block: the same client reads the object it "failed" to write.
    assert client.get("chunks/ab/ambiguous") == PAYLOAD


def test_a_reset_connection_is_a_retryable_error_and_the_server_saw_nothing(
    faulty_s3: FaultyS3,
) -> None:
    client, server = faulty_s3.backend(), faulty_s3.direct()
    with faulty_s3.resets(), pytest.raises(BackendUnavailableError) as raised:
        client.put("leases/reset", PAYLOAD)
    assert raised.value.retryable
    with pytest.raises(ObjectNotFoundError):
        server.stat("leases/reset")


def test_the_retry_policy_carries_a_put_over_a_reset(faulty_s3: FaultyS3) -> None:
    client, server = faulty_s3.backend(), faulty_s3.direct()
    toxic = faulty_s3.proxy.add_toxic("reset_peer", "upstream", timeout=0)

    def heal(_delay: float) -> None:
        # The retry's back-off is where the fault ends: the next attempt reaches MinIO.
        faulty_s3.proxy.remove_toxic(toxic.name)

    retrying = RetryingBackend(client, FAST_RETRIES, sleep=heal)
    retrying.put("leases/retried", PAYLOAD)
    assert retrying.retries == 1
    assert server.get("leases/retried") == PAYLOAD


def test_latency_below_the_client_timeout_slows_but_succeeds(faulty_s3: FaultyS3) -> None:
    client, server = faulty_s3.backend(), faulty_s3.direct()
    below = int(CLIENT_TIMEOUT * 1000 / 4)
    with faulty_s3.latency(below) as toxic:
        client.put("indexes/slow", PAYLOAD)
        assert client.get("indexes/slow") == PAYLOAD
        assert server.get("indexes/slow") == PAYLOAD
        # The same toxic beyond the client's timeout: the read fails, so it was in the path.
        faulty_s3.proxy.update_toxic(toxic.name, latency=int(CLIENT_TIMEOUT * 1000 * 2))
        with pytest.raises(BackendUnavailableError):
            client.get("indexes/slow")


def test_a_server_that_is_down_is_retryable_and_the_client_recovers(faulty_s3: FaultyS3) -> None:
    client = faulty_s3.backend()
    client.put("config", b"present")
    with faulty_s3.proxy.down(), pytest.raises(BackendUnavailableError) as raised:
        client.get("config")
    assert raised.value.retryable
    assert client.get("config") == b"present"
