"""A RetrievePropertiesEx call split in two: sending it and reading the response's bytes
(:func:`fetch`, in any thread), and decoding them (:func:`decode`, in the caller's).

Why: pyVmomi decodes a response inside the call that reads it, so two calls in flight
from two threads are decoded side by side and contend for the GIL (docs/scale.md, "The
sweep in chunks"). A sweep fetches its next chunks in threads, where reading a socket
releases the GIL, and decodes one chunk at a time in its own thread.

Invariants: what :func:`decode` returns or raises is what
``PropertyCollector.RetrievePropertiesEx`` returns or raises for the same arguments: the
request is pyVmomi's own serialisation (``SoapStubAdapter.SerializeRequest``, passed
through the stub's request modifiers), sent with the headers its own call sends (the
session cookie, SOAP action, user agent, the stub's custom headers), a new session
cookie in the answer is kept as its own call keeps it, the response goes through
pyVmomi's own deserialiser, and a SOAP fault (HTTP 500) is raised as the fault it decodes
to. Connections come from and go back to the stub's pool, as its own calls do; a
connection that failed is closed, never returned.

This splits a pyVmomi call with parts of its stub that are not its public API:
:func:`supported` holds it to the pyVmomi releases it was read against
(:data:`PYVMOMI_VERSIONS`) and to a plain ``SoapStubAdapter``; anywhere else the caller
makes pyVmomi's own call (``inventory.retrieve_vms``): slower, never wrong.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from http.client import HTTPException
from http.cookies import SimpleCookie
from typing import Any

from pyVmomi import SoapAdapter, version_info_str, vmodl

PYVMOMI_VERSIONS = ("9.",)
"""pyVmomi releases whose ``SoapStubAdapter.InvokeMethod`` this module was read against."""

_METHOD = vmodl.query.PropertyCollector._GetMethodInfo("RetrievePropertiesEx")


def supported(pc: Any) -> bool:
    """Whether :func:`fetch` may split this PropertyCollector's calls (module docstring)."""
    stub = getattr(pc, "_stub", None)
    return type(stub) is SoapAdapter.SoapStubAdapter and version_info_str.startswith(
        PYVMOMI_VERSIONS
    )


@dataclass(frozen=True)
class Fetched:
    """A response's status and undecoded body."""

    status: int
    body: bytes


def fetch(pc: Any, specs: list[Any], options: Any) -> Fetched:
    """Send ``pc.RetrievePropertiesEx(specs, options)`` and read the whole response."""
    stub = pc._stub
    request = stub.SerializeRequest(pc, _METHOD, [specs, options])
    for modifier in stub.requestModifierList:
        request = modifier(request)
    headers = {
        "Cookie": stub.cookie,
        "SOAPAction": stub.versionId,
        "Content-Type": f"text/xml; charset={SoapAdapter.XML_ENCODING}",
        "User-Agent": f"pyvmomi {version_info_str} vmguard",
        **(stub._customHeaders or {}),
    }
    conn = stub.GetConnection()
    try:
        conn.request("POST", stub.path, request, headers)
        response = conn.getresponse()
        body = response.read()
    except BaseException:
        conn.close()
        raise
    cookie = response.getheader("Set-Cookie") or response.getheader("set-cookie")
    if cookie:  # the session renewed: later calls send the new cookie, as pyVmomi's do
        stub.cookie = cookie
        session = SimpleCookie(cookie).get(SoapAdapter.COOKIE_NAME)
        if session:
            stub.sessionId = session.value
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
