"""vSphere tags through the vSphere Automation REST API (``/rest/com/vmware/cis/...``).

Tags are not in the SOAP API, so discovery asks the REST endpoint of the same vCenter,
with the same credentials and the same TLS trust as the SOAP session (CA bundle,
pinned thumbprint, or insecure only when asked). A sweep costs a fixed number of
calls, whatever the number of VMs: list categories and tags (one call each plus one
per category/tag to name it), then one ``list-attached-objects-on-tags`` for every tag
at once.

Invariants: the password goes only into the session login's basic-auth header; the
session token is deleted on :meth:`TagClient.close`; errors name the endpoint and the
HTTP status, never a credential.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from vmguard.errors import ConfigError, PermanentError, RetryableError
from vmguard.vsphere.session import Endpoint

log = logging.getLogger(__name__)

_SESSION = "/com/vmware/cis/session"
_CATEGORY = "/com/vmware/cis/tagging/category"
_TAG = "/com/vmware/cis/tagging/tag"
_ASSOCIATION = "/com/vmware/cis/tagging/tag-association"


class _PinnedAdapter(HTTPAdapter):
    """Accepts exactly the certificate with the pinned fingerprint (urllib3 checks it)."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self.fingerprint
        kwargs["cert_reqs"] = "CERT_NONE"
        super().init_poolmanager(*args, **kwargs)


def rest_base(ep: Endpoint) -> str:
    host, port = ep.host_port()
    scheme = urlsplit(ep.url).scheme or "https"
    return f"{scheme}://{host}:{port}/rest"


class TagClient:
    """A logged-in REST session that answers "which tags does each VM carry"."""

    def __init__(self, ep: Endpoint, timeout: float = 60.0) -> None:
        self.base = rest_base(ep)
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["User-Agent"] = ep.user_agent
        thumbprint = ep.normalised_thumbprint()
        # Given with every request: a session-level ``verify`` loses to REQUESTS_CA_BUNDLE.
        self.verify: bool | str = True
        if ep.insecure:
            self.verify = False
        elif thumbprint:
            if len(thumbprint) == 128:
                raise ConfigError("tags over REST: pin a SHA-1 or SHA-256 thumbprint")
            self.verify = False
            self.http.mount("https://", _PinnedAdapter(thumbprint))
        elif ep.ca_file:
            self.verify = ep.ca_file
        try:
            resp = self.http.post(
                self.base + _SESSION,
                auth=(ep.username, ep.password),
                timeout=timeout,
                verify=self.verify,
            )
        except requests.exceptions.SSLError as exc:
            why = "not the pinned one" if thumbprint else "not trusted"
            raise PermanentError(f"vCenter REST {self.base}: certificate {why}") from exc
        except requests.RequestException as exc:
            raise RetryableError(f"vCenter REST {self.base}: {type(exc).__name__}") from exc
        if resp.status_code in (401, 403):
            raise PermanentError(f"vCenter REST {self.base} refused the login of {ep.username!r}")
        self._check(resp, "login")
        self.http.headers["vmware-api-session-id"] = str(resp.json()["value"])

    def _check(self, resp: requests.Response, what: str) -> None:
        if resp.status_code >= 500:
            raise RetryableError(f"vCenter REST {what}: HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise PermanentError(f"vCenter REST {what}: HTTP {resp.status_code}")

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(
                method, self.base + path, timeout=self.timeout, verify=self.verify, **kwargs
            )
        except requests.RequestException as exc:
            raise RetryableError(f"vCenter REST {path}: {type(exc).__name__}") from exc
        self._check(resp, path)
        return resp.json().get("value") if resp.content else None

    def vm_tags(self) -> dict[str, tuple[str, ...]]:
        """VM moref → sorted ``"category:tag"`` strings, for every tagged VM."""
        categories = {
            cid: self._call("GET", f"{_CATEGORY}/id:{cid}")["name"]
            for cid in self._call("GET", _CATEGORY) or ()
        }
        tags = {}
        for tid in self._call("GET", _TAG) or ():
            tag = self._call("GET", f"{_TAG}/id:{tid}")
            tags[tid] = f"{categories.get(tag.get('category_id'), '')}:{tag['name']}"
        if not tags:
            return {}
        attached = self._call(
            "POST",
            _ASSOCIATION,
            params={"~action": "list-attached-objects-on-tags"},
            json={"tag_ids": sorted(tags)},
        )
        out: dict[str, set[str]] = defaultdict(set)
        for entry in attached or ():
            for obj in entry.get("object_ids") or ():
                if obj.get("type") == "VirtualMachine":
                    out[obj["id"]].add(tags[entry["tag_id"]])
        return {moref: tuple(sorted(names)) for moref, names in out.items()}

    def close(self) -> None:
        try:
            self.http.delete(self.base + _SESSION, timeout=self.timeout, verify=self.verify)
        except requests.RequestException:
            log.debug("vCenter REST logout failed; the session will time out")
        self.http.close()

    def __enter__(self) -> TagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
