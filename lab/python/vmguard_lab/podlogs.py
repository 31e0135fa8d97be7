"""The part of a kubelet's HTTPS API that ``kubectl logs`` needs: container logs.

Lab only. The apiserver answers ``GET pods/NAME/log`` by calling the node's kubelet at
``/containerLogs/NAMESPACE/POD/CONTAINER`` (with ``tailLines``); this server answers
that from the files the node agent writes (``<pods>/<ns>_<pod>_<uid8>/<container>.log``).
Only the apiserver may ask: TLS with a client certificate the lab CA signed for
``kube-apiserver-kubelet-client``. ``follow`` is not supported (the whole log so far is
returned). Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("vmguard_lab.podlogs")

APISERVER_CN = "kube-apiserver-kubelet-client"


def find_log(pods: Path, namespace: str, pod: str, container: str) -> Path | None:
    """The newest log of ``container`` of ``namespace/pod``, or None."""
    if "/" in namespace + pod + container or ".." in (namespace, pod, container):
        return None
    found = [
        d / f"{container}.log"
        for d in pods.glob(f"{namespace}_{pod}_*")
        if (d / f"{container}.log").is_file()
    ]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


class _Handler(BaseHTTPRequestHandler):
    server: _LogServer

    def do_GET(self) -> None:
        peer = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
        subject = dict(x[0] for x in (peer or {}).get("subject", ()))
        if subject.get("commonName") != APISERVER_CN:
            self.send_error(403, "only the apiserver reads logs here")
            return
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, "only /containerLogs/NAMESPACE/POD/CONTAINER")
            return
        path = find_log(self.server.pods, parts[1], parts[2], parts[3])
        if path is None:
            self.send_error(404, f"no log of {parts[1]}/{parts[2]}/{parts[3]}")
            return
        data = path.read_bytes()
        tail = parse_qs(url.query).get("tailLines")
        if tail and tail[0].isdigit():
            data = b"".join(data.splitlines(keepends=True)[-int(tail[0]) :])
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)


class _LogServer(ThreadingHTTPServer):
    daemon_threads = True
    pods: Path


def serve(port: int, pods: Path, cert: Path, key: Path, client_ca: Path) -> ThreadingHTTPServer:
    """Start the server on 127.0.0.1:``port`` in a daemon thread."""
    server = _LogServer(("127.0.0.1", port), _Handler)
    server.pods = pods
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_ca)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True, name="podlogs").start()
    return server
