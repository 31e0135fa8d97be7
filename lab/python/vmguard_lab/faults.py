"""The lab's fault injectors: a network fault proxy (toxiproxy) and clock skew (libfaketime).

Safety tests must reach the failure modes of real storage — slow, failed and ambiguous
writes, and clocks that disagree — not only instant in-memory calls. Two real tools do
that here:

- **toxiproxy** (its Go module, pinned in ``lab/toxiproxy/go.mod``, built and cached by
  :mod:`vmguard_lab.build` like MinIO). :func:`start_toxiproxy` runs one server on a
  free loopback port under the lab's :class:`~vmguard_lab.procs.Supervisor` (pid file,
  own session), and :class:`Toxiproxy` drives its HTTP API: a :class:`FaultProxy` is
  a TCP listener on 127.0.0.1 in front of one upstream (the lab's MinIO), and *toxics*
  on it add latency, cap bandwidth, stall, cut or reset connections, in either
  direction. ``lab up`` does not start it; the test fixtures do, and stop it by pid.
- **libfaketime** (a Debian package): :func:`skewed_env` is the environment that runs a
  child process with its wall clock moved by a fixed offset. Only that process's
  clock moves; the servers it talks to keep theirs.

Invariants: every listener binds 127.0.0.1; a toxic added through :meth:`FaultProxy.toxic`
is removed when its ``with`` block ends, also on failure, so one test's fault never
leaks into the next; the client never follows redirects and never retries (a fault
test must see exactly what it asked for).

Why our own client: the one Python client on the package index (toxiproxy-python)
has had two releases, the last in 2019, and no type hints; the API is six routes
over JSON, and ``requests`` is already a dependency (docs/dependencies.md).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import requests

from vmguard_lab.errors import LabError
from vmguard_lab.procs import Supervisor, Tracked, free_port, wait_until

TOXIPROXY_VERSION = "v2.12.0"
"""Equal to the pin in lab/toxiproxy/go.mod (and the -X version in build.py)."""

Stream = Literal["upstream", "downstream"]
"""``upstream``: client → server (requests); ``downstream``: server → client (responses)."""

ToxicType = Literal[
    "latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data"
]


class ToxiproxyError(LabError):
    """The toxiproxy API refused a request (the message says which and why)."""


@dataclass(frozen=True)
class Toxic:
    """One toxic as the server reports it."""

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, Any]


class Toxiproxy:
    """A client for one toxiproxy server's HTTP API (``http://127.0.0.1:<port>``)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._http = requests.Session()
        # The server refuses browsers (a User-Agent starting "Mozilla/"); say who we are.
        self._http.headers["User-Agent"] = "vmguard-lab"

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        try:
            resp = self._http.request(
                method,
                self.url + path,
                json=body,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise ToxiproxyError(f"toxiproxy at {self.url}: {method} {path}: {exc}") from exc
        if resp.status_code >= 300:
            try:
                detail = resp.json().get("error", resp.text)
            except ValueError:
                detail = resp.text
            raise ToxiproxyError(f"toxiproxy {method} {path}: {resp.status_code} {detail}")
        return resp.json() if resp.content else None

    def version(self) -> str:
        try:
            resp = self._http.get(self.url + "/version", timeout=self._timeout)
        except requests.RequestException as exc:
            raise ToxiproxyError(f"toxiproxy at {self.url}: {exc}") from exc
        try:
            return str(resp.json()["version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ToxiproxyError(f"toxiproxy at {self.url}: /version said {resp.text!r}") from exc

    def create_proxy(self, name: str, upstream: str, listen: str = "127.0.0.1:0") -> FaultProxy:
        """A new proxy listening on ``listen`` (a free port by default) → ``upstream``."""
        data = self._call(
            "POST",
            "/proxies",
            {"name": name, "listen": listen, "upstream": upstream, "enabled": True},
        )
        return FaultProxy(self, name, str(data["listen"]), upstream)

    def proxies(self) -> dict[str, Any]:
        return dict(self._call("GET", "/proxies"))

    def delete_proxy(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{name}")

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call("POST", "/reset")

    def close(self) -> None:
        self._http.close()


@dataclass
class FaultProxy:
    """One proxy: clients connect to :attr:`listen` and reach :attr:`upstream`."""

    api: Toxiproxy
    name: str
    listen: str
    upstream: str

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>``, the form the S3 backend and the minio SDK take."""
        return f"127.0.0.1:{self.port}"

    def add_toxic(
        self,
        type: ToxicType,
        stream: Stream = "downstream",
        *,
        name: str | None = None,
        toxicity: float = 1.0,
        **attributes: int,
    ) -> Toxic:
        """Add a toxic to every connection, open or new. Attributes by type:

        ``latency``: ``latency``, ``jitter`` (ms); ``bandwidth``: ``rate`` (KiB/s);
        ``slow_close``: ``delay`` (ms); ``timeout``: ``timeout`` (ms; 0 = hold the data
        until the toxic is removed, then the connection stays open but silent);
        ``reset_peer``: ``timeout`` (ms before the TCP RST); ``limit_data``: ``bytes``
        (close the connection after that many bytes); ``slicer``: ``average_size``,
        ``size_variation``, ``delay``.
        """
        return self._add(type, stream, name or f"{type}_{stream}", toxicity, attributes)

    def _add(
        self, type: str, stream: str, name: str, toxicity: float, attributes: dict[str, int]
    ) -> Toxic:
        body = {
            "name": name,
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
        }
        data = self.api._call("POST", f"/proxies/{self.name}/toxics", body)
        return Toxic(
            str(data["name"]),
            str(data["type"]),
            str(data["stream"]),
            float(data["toxicity"]),
            dict(data["attributes"]),
        )

    def update_toxic(self, name: str, **attributes: int) -> None:
        self.api._call("PATCH", f"/proxies/{self.name}/toxics/{name}", {"attributes": attributes})

    def remove_toxic(self, name: str) -> None:
        self.api._call("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def toxics(self) -> list[Toxic]:
        return [
            Toxic(t["name"], t["type"], t["stream"], float(t["toxicity"]), dict(t["attributes"]))
            for t in self.api._call("GET", f"/proxies/{self.name}/toxics")
        ]

    @contextmanager
    def toxic(
        self,
        type: ToxicType,
        stream: Stream = "downstream",
        *,
        toxicity: float = 1.0,
        **attributes: int,
    ) -> Iterator[Toxic]:
        """``with proxy.toxic("latency", latency=300):`` — the toxic for the block only."""
        added = self._add(type, stream, f"{type}_{stream}", toxicity, attributes)
        try:
            yield added
        finally:
            self.remove_toxic(added.name)

    def set_enabled(self, enabled: bool) -> None:
        """Disabled: the listener is closed and open connections are cut (server down)."""
        self.api._call("PATCH", f"/proxies/{self.name}", {"enabled": enabled})

    @contextmanager
    def down(self) -> Iterator[None]:
        """The upstream looks down (connection refused) for the block."""
        self.set_enabled(False)
        try:
            yield
        finally:
            self.set_enabled(True)

    def delete(self) -> None:
        self.api.delete_proxy(self.name)


@dataclass(frozen=True)
class ToxiproxyServer:
    """A running toxiproxy server of this process, and its API client."""

    process: Tracked
    api: Toxiproxy


def start_toxiproxy(sup: Supervisor, binary: Path, name: str = "toxiproxy") -> ToxiproxyServer:
    """Start a toxiproxy server on a free 127.0.0.1 port; stop it with ``sup.stop(name)``.

    ``name`` is the pid file's name: give each test session its own (a server already
    recorded under that name is stopped first, since its port is not known here).
    """
    sup.stop(name)
    port = free_port()
    proc = sup.start(name, [str(binary), "-host", "127.0.0.1", "-port", str(port)])
    api = Toxiproxy(f"http://127.0.0.1:{port}")
    wait_until(
        "toxiproxy",
        lambda: api.version() == TOXIPROXY_VERSION,
        timeout=30,
        alive=proc.alive,
        diagnose=lambda: sup.log_tail(name),
    )
    return ToxiproxyServer(proc, api)


# -- clock skew ---------------------------------------------------------------------------


def faketime_library() -> Path:
    """libfaketime's multi-threaded preload library (Python runs threads: leases, I/O)."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        raise LabError("libfaketime is missing: apt-get install libfaketime")
    return Path(found[0])


def skewed_env(offset_seconds: float, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment in which a child process's wall clock runs ``offset_seconds`` off.

    Only ``time()``/``clock_gettime(CLOCK_REALTIME)`` and friends move; the monotonic
    clock stays real so timeouts and lease refresh intervals behave. S3 servers refuse
    requests signed more than 15 minutes off their clock (RequestTimeTooSkewed): keep
    the offset below that for a child that must reach MinIO.
    """
    env = dict(os.environ if base is None else base)
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{faketime_library()}{':' + preload if preload else ''}"
    env["FAKETIME"] = f"{offset_seconds:+.0f}s"
    env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    return env
