"""Connect to vCenter with verified TLS, and keep the session alive.

Trust is one of: a CA bundle, a pinned certificate thumbprint (SHA-1, SHA-256 or SHA-512,
with or without colons), or — only when asked for by name — none. With none of them the
system trust store applies, as for a vCenter with a publicly trusted certificate.

:class:`VSphereSession` runs calls through :meth:`~VSphereSession.call`: an expired or
terminated session (``NotAuthenticated``) is logged in again transparently, and
transient faults (connection reset, timeouts, ``HostCommunication``) are retried a
bounded number of times with exponential backoff before a :class:`RetryableError`.
The password is held where ``repr`` cannot show it and never reaches a log line or an
error message.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import Security, vim, vmodl

from vmguard import __version__
from vmguard.errors import ConfigError, PermanentError, RetryableError

log = logging.getLogger(__name__)
T = TypeVar("T")

USER_AGENT = f"vmguard/{__version__}"
"""The User-Agent of requests to vCenter (SOAP and REST) when the caller names no
component: vCenter lists it with each session, so an admin can tell vmguard's sessions
apart, and the lab's simulator records it with every call (docs/install.md, "vSphere
privileges")."""


def user_agent(component: str) -> str:
    """``vmguard/<version> (<component>)``: the User-Agent of the operator, a proxy, the CLI."""
    return f"{USER_AGENT} ({component})"


_TRANSIENT = (
    ConnectionError,
    socket.timeout,
    http.client.HTTPException,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    vmodl.fault.HostCommunication,
)


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach one vCenter."""

    url: str
    username: str
    password: str = field(repr=False)
    ca_file: str | None = None
    thumbprint: str | None = None
    insecure: bool = False
    user_agent: str = USER_AGENT
    """Sent with every request (SOAP and REST); see :func:`user_agent`."""

    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url if "//" in self.url else f"https://{self.url}")
        if not parts.hostname:
            raise ConfigError(f"vCenter URL without a host: {self.url!r}")
        return parts.hostname, parts.port or 443

    def normalised_thumbprint(self) -> str | None:
        if not self.thumbprint:
            return None
        digits = self.thumbprint.replace(":", "").strip().lower()
        if len(digits) not in (40, 64, 128) or any(c not in "0123456789abcdef" for c in digits):
            raise ConfigError(
                "the pinned thumbprint must be a SHA-1, SHA-256 or SHA-512 hex digest"
            )
        return digits


def _digest(der: bytes, length: int) -> str:
    algorithm = {40: "sha1", 64: "sha256", 128: "sha512"}[length]
    return hashlib.new(algorithm, der).hexdigest()


def _pinned_context(ep: Endpoint, pin: str) -> ssl.SSLContext:
    """A context that accepts exactly the certificate whose digest is pinned.

    The server's certificate is fetched and compared with the pin; it then becomes the
    context's only trust anchor (partial chains allowed, host name not checked), so
    every later connection of the session — pyVmomi reconnects on its own — must
    present that same certificate. (pyVmomi's own ``thumbprint`` check runs only when
    normal verification fails, and then disables verification for the connections
    that follow: not a pin.)
    """
    host, port = ep.host_port()
    try:
        pem = ssl.get_server_certificate((host, port), timeout=30)
    except (OSError, ssl.SSLError) as exc:
        raise RetryableError(f"vCenter {host}:{port} unreachable: {type(exc).__name__}") from exc
    actual = _digest(ssl.PEM_cert_to_DER_cert(pem), len(pin))
    if actual != pin:
        raise PermanentError(
            f"vCenter {host}:{port} presented a certificate whose thumbprint is {actual}, "
            f"not the pinned one"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=pem)
    return ctx


def _ssl_context(ep: Endpoint) -> ssl.SSLContext:
    pin = ep.normalised_thumbprint()
    if pin:
        return _pinned_context(ep, pin)
    if ep.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    # With no CA bundle, the system trust store.
    return ssl.create_default_context(cafile=ep.ca_file)


def connect(ep: Endpoint) -> vim.ServiceInstance:
    """Log in once; trust and authentication failures are permanent errors."""
    host, port = ep.host_port()
    try:
        return SmartConnect(
            host=host,
            port=port,
            user=ep.username,
            pwd=ep.password,
            sslContext=_ssl_context(ep),
            connectionPoolTimeout=-1,
            customHeaders={"User-Agent": ep.user_agent},
        )
    except vim.fault.InvalidLogin as exc:
        raise PermanentError(f"vCenter {host}:{port} refused the login of {ep.username!r}") from exc
    except Security.ThumbprintMismatchException as exc:
        raise PermanentError(
            f"vCenter {host}:{port} presented a certificate whose thumbprint is {exc.actual}, "
            f"not the pinned one"
        ) from exc
    except ssl.SSLCertVerificationError as exc:
        raise PermanentError(
            f"vCenter {host}:{port}: certificate not trusted ({exc.verify_message})"
        ) from exc
    except _TRANSIENT as exc:
        raise RetryableError(f"vCenter {host}:{port} unreachable: {type(exc).__name__}") from exc


def disconnect(si: vim.ServiceInstance) -> None:
    Disconnect(si)


class VSphereSession:
    """A logged-in session that re-authenticates and retries on its own."""

    def __init__(self, endpoint: Endpoint, attempts: int = 4, backoff: float = 0.5) -> None:
        self.endpoint = endpoint
        self.attempts = attempts
        self.backoff = backoff
        self._si: vim.ServiceInstance | None = None
        self._lock = threading.Lock()
        self.logins = 0

    @property
    def si(self) -> vim.ServiceInstance:
        with self._lock:
            if self._si is None:
                self._si = connect(self.endpoint)
                self.logins += 1
            return self._si

    def _drop(self) -> None:
        with self._lock:
            self._si = None

    def call(self, fn: Callable[[vim.ServiceInstance], T]) -> T:
        """Run ``fn(si)``; re-login on ``NotAuthenticated``, back off on transient faults.

        A fault that cuts the connection drops the session, and the next attempt logs in
        again; a login that cannot reach vCenter counts as an attempt too, so a vCenter
        that is down for a moment is waited out with the same bounded backoff. Faults
        ``fn`` raises itself (a task's fault, a task timeout) are not retried here: ``fn``
        may have changed vCenter, and only its caller knows whether it may run twice.
        """
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                si = self.si
            except RetryableError as exc:  # the login itself could not reach vCenter
                why = str(exc)
            else:
                try:
                    return fn(si)
                except vim.fault.NotAuthenticated:
                    log.info("vCenter session expired; logging in again")
                    self._drop()
                    if attempt == self.attempts:
                        raise RetryableError(
                            "vCenter session could not be re-established"
                        ) from None
                    continue  # a new login needs no backoff
                except _TRANSIENT as exc:
                    self._drop()
                    why = type(exc).__name__
            if attempt == self.attempts:
                raise RetryableError(f"vCenter unreachable after {attempt} attempts: {why}")
            time.sleep(delay * (1 + random.random() / 2))
            delay *= 2
        raise AssertionError("unreachable")

    def keepalive(self) -> str:
        """A cheap call that keeps the session from idling out; returns the server time."""
        return str(self.call(lambda si: si.CurrentTime()))

    def close(self) -> None:
        with self._lock:
            si, self._si = self._si, None
        if si is not None:
            with contextlib.suppress(*_TRANSIENT):
                Disconnect(si)


def wait_for(task: vim.Task, timeout: float = 600.0, poll: float = 0.1) -> object:
    """Wait for a vSphere task; return its result or raise its fault (the vim fault).

    Polls ``info`` rather than using a PropertyCollector filter, so that no server-side
    filter is left behind by a process that dies while waiting.
    """
    deadline = time.monotonic() + timeout
    while True:
        info = task.info
        if info.state == vim.TaskInfo.State.success:
            return info.result
        if info.state == vim.TaskInfo.State.error:
            fault: BaseException = info.error  # type: ignore[assignment]
            raise fault
        if time.monotonic() > deadline:
            raise RetryableError(f"vSphere task {info.descriptionId or info.key} timed out")
        time.sleep(poll)
        poll = min(poll * 1.5, 2.0)


def sha1_thumbprint(ep: Endpoint) -> str:
    """SHA-1 of the server's certificate, ``AA:BB:...``: what VDDK wants as thumbprint.

    Only fetched after :func:`connect` verified the server with the configured trust.
    """
    host, port = ep.host_port()
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host, port)))
    digest = hashlib.sha1(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
