"""A RetrievePropertiesEx call split in two: sending it and reading the response's bytes
(:func:`fetch`, in any thread), and decoding them (:func:`decode`, in the caller's).

Why: pyVmomi decodes a response inside the call that reads it, so two calls in flight
from two threads are decoded side by side and contend for the GIL (docs/scale.md, "The
sweep in chunks"). A sweep fetches its next chunks in threads, where reading a socket
releases the GIL, and decodes one chunk at a time in its own thread.

Invariants: what :func:`decode` returns or raises is what
``PropertyCollector.RetrievePropertiesEx`` returns or raises for the same arguments: the
request is pyVmomi's own serialisation (``SoapStubAdapter.SerializeRequest``), the
response goes through pyVmomi's own deserialiser, a SOAP fault (HTTP 500) is raised as
the fault it decodes to. Connections come from and go back to the stub's pool, as its
own calls do; a connection that failed is closed, never returned.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

from pyVmomi import SoapAdapter, vmodl

_METHOD = vmodl.query.PropertyCollector._GetMethodInfo("RetrievePropertiesEx")


@dataclass(frozen=True)
class Fetched:
    """A response's status and undecoded body."""

    status: int
    body: bytes


def fetch(pc: Any, specs: list[Any], options: Any) -> Fetched:
    """Send ``pc.RetrievePropertiesEx(specs, options)`` and read the whole response."""
    stub = pc._stub
    request = stub.SerializeRequest(pc, _METHOD, [specs, options])
    headers = {
        "Cookie": stub.cookie,
        "SOAPAction": stub.versionId,
        "Content-Type": f"text/xml; charset={SoapAdapter.XML_ENCODING}",
    }
    conn = stub.GetConnection()
    try:
        conn.request("POST", stub.path, request, headers)
        response = conn.getresponse()
        body = response.read()
    except BaseException:
        conn.close()
        raise
    if response.status in (200, 500):
        stub.ReturnConnection(conn)
    else:
        conn.close()
    return Fetched(response.status, body)


def decode(pc: Any, fetched: Fetched) -> Any:
    """The RetrieveResult of a fetched response, or the fault it carries, raised."""
    if fetched.status not in (200, 500):
        raise HTTPException(f"{fetched.status} from the PropertyCollector")
    result = SoapAdapter.SoapResponseDeserializer(pc._stub).Deserialize(
        io.BytesIO(fetched.body), _METHOD.result
    )
    if fetched.status == 500:
        if isinstance(result, BaseException):
            raise result
        raise HTTPException(f"500 from the PropertyCollector: {result!r}")
    return result
