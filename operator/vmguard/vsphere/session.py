"""Connect to vCenter with verified TLS: a CA bundle, a pinned thumbprint, or nothing else.

Insecure connections happen only when the caller asks for them by name. The password
is held in an object whose ``repr`` hides it, so it never reaches a log line.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from vmguard.errors import ConfigError


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach one vCenter."""

    url: str
    username: str
    password: str = field(repr=False)
    ca_file: str | None = None
    thumbprint: str | None = None
    insecure: bool = False

    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url if "//" in self.url else f"https://{self.url}")
        if not parts.hostname:
            raise ConfigError(f"vCenter URL without a host: {self.url!r}")
        return parts.hostname, parts.port or 443


def _ssl_context(ep: Endpoint) -> ssl.SSLContext:
    if ep.insecure or ep.thumbprint:
        # A pinned thumbprint is checked by pyVmomi itself after the handshake.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    # With no CA bundle, the system trust store (a vCenter with a public certificate).
    return ssl.create_default_context(cafile=ep.ca_file)


def connect(ep: Endpoint) -> vim.ServiceInstance:
    host, port = ep.host_port()
    return SmartConnect(
        host=host,
        port=port,
        user=ep.username,
        pwd=ep.password,
        sslContext=_ssl_context(ep),
        thumbprint=ep.thumbprint.replace(":", "").lower() if ep.thumbprint else None,
        connectionPoolTimeout=-1,
    )


def disconnect(si: vim.ServiceInstance) -> None:
    Disconnect(si)
