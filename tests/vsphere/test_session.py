"""The vCenter session survives what vCenter does to it, within bounds.

- a session that vCenter ends (an admin terminates it, as an idle timeout would) is
  logged in again on the next call, transparently;
- a connection cut under the session is retried on a fresh login;
- a vCenter that cannot be reached makes a call fail with a ``RetryableError`` after
  the configured number of attempts (not forever), and the same session works again
  once vCenter is back.

The cuts are made by a TCP relay on loopback between the session and the lab's vSphere
simulator: the relay is real sockets, the simulator is the real peer behind it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from vmguard.errors import RetryableError
from vmguard.vsphere.session import Endpoint, VSphereSession

pytestmark = pytest.mark.lab

# SO_LINGER on with a zero timeout: close() sends a reset, not an orderly FIN.
RESET = struct.pack("ii", 1, 0)


class Relay:
    """Forwards loopback TCP connections to ``target``; can cut them or refuse new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refusing = False
        self.accepted = 0
        self._live: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            self.accepted += 1
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._live += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Reset every live connection, as a network blip or a vCenter restart would."""
        with self._lock:
            live, self._live = self._live, []
        for s in live:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def relay(vc_endpoint: Endpoint) -> Iterator[Relay]:
    parts = urlsplit(vc_endpoint.url)
    assert parts.hostname and parts.port
    r = Relay((parts.hostname, parts.port))
    yield r
    r.close()


def _through(endpoint: Endpoint, relay: Relay) -> Endpoint:
    parts = urlsplit(endpoint.url)
    url = parts._replace(netloc=f"{parts.hostname}:{relay.port}").geturl()
    return Endpoint(url, endpoint.username, endpoint.password, ca_file=endpoint.ca_file)


def _vm_count(si: Any) -> int:
    from pyVmomi import vim

    view = si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vim.VirtualMachine], True
    )
    try:
        return len(view.view)
    finally:
        view.DestroyView()


def test_a_terminated_session_is_logged_in_again(vc: VSphereSession, vc_endpoint: Endpoint) -> None:
    session = VSphereSession(vc_endpoint)
    try:
        before = session.call(_vm_count)
        assert before > 0 and session.logins == 1
        key = session.si.content.sessionManager.currentSession.key
        # Another administrator ends our session, as vCenter's idle timeout would.
        vc.call(lambda si: si.content.sessionManager.TerminateSession([key]))
        assert session.call(_vm_count) == before
        assert session.logins == 2
        assert session.si.content.sessionManager.currentSession.key != key
    finally:
        session.close()


def test_a_cut_connection_is_retried_and_an_unreachable_vcenter_is_bounded(
    vc_endpoint: Endpoint, relay: Relay
) -> None:
    session = VSphereSession(_through(vc_endpoint, relay), attempts=3, backoff=0.05)
    try:
        count = session.call(_vm_count)
        assert count > 0 and session.logins == 1
        relay.cut()
        assert session.call(_vm_count) == count
        assert relay.accepted >= 2, "the call went through a new connection"

        relay.refusing = True
        relay.cut()
        accepted = relay.accepted
        with pytest.raises(RetryableError, match="unreachable after 3 attempts"):
            session.call(_vm_count)
        assert relay.accepted == accepted, "nothing got through while vCenter was away"

        relay.refusing = False
        assert session.call(_vm_count) == count
        assert session.logins >= 2
    finally:
        session.close()
