"""Turn a pod's volumes and environment into files and variables on this machine.

Lab only: this is the part of a kubelet the lab node agent needs. For one pod it
writes Secret, ConfigMap, downward-API and projected service-account-token volumes
into a private directory (mode 0700, files 0644 or the pod's ``defaultMode``),
creates emptyDir directories, resolves a persistentVolumeClaim to the directory of the
PersistentVolume bound to it (``hostPath`` or ``local``; the lab has no other volume
plugins: tests make such PVs themselves), resolves ``env``/``envFrom`` (Secret and ConfigMap key
references, field references) and adds the in-cluster variables that point a client
at the lab's apiserver. Every read goes through the node's own credentials, so the
Node authorizer decides what the node may see, as it does for a real kubelet.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

TOKEN_SECONDS = 3600


@dataclass
class Mount:
    source: str
    target: str
    readOnly: bool


@dataclass
class PodFiles:
    """What was prepared for one pod; tokens are refreshed while it runs."""

    root: Path
    volumes: dict[str, Path] = field(default_factory=dict)
    tokens: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    token_written: float = 0.0


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    if path.startswith("metadata.labels['"):
        return str(meta.get("labels", {}).get(path[len("metadata.labels['") : -2], ""))
    if path.startswith("metadata.annotations['"):
        return str(meta.get("annotations", {}).get(path[len("metadata.annotations['") : -2], ""))
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    return str(values.get(path, ""))


class PodMaterializer:
    def __init__(self, core: client.CoreV1Api, apiserver_port: int, state_dir: Path) -> None:
        self.core = core
        self.port = apiserver_port
        self.state_dir = state_dir

    # -- reads through the node's credentials ---------------------------------------------
    def _secret(self, ns: str, name: str, optional: bool) -> dict[str, bytes]:
        try:
            obj = self.core.read_namespaced_secret(name, ns)
        except client.ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise
        return {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}

    def _configmap(self, ns: str, name: str, optional: bool) -> dict[str, bytes]:
        try:
            obj = self.core.read_namespaced_config_map(name, ns)
        except client.ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise
        data = {k: v.encode() for k, v in (obj.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.binary_data or {}).items()})
        return data

    def _token(self, pod: dict[str, Any], src: dict[str, Any]) -> bytes:
        meta = pod["metadata"]
        spec = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[src["audience"]] if src.get("audience") else [],
                expiration_seconds=max(int(src.get("expirationSeconds", TOKEN_SECONDS)), 600),
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=meta["name"], uid=meta["uid"]
                ),
            )
        )
        sa = pod["spec"].get("serviceAccountName") or "default"
        res = self.core.create_namespaced_service_account_token(sa, meta["namespace"], spec)
        return str(res.status.token).encode()

    def _claimed_path(self, ns: str, claim: str) -> Path:
        """The directory behind a bound claim: its PV's ``hostPath`` or ``local`` path."""
        pvc = self.core.read_namespaced_persistent_volume_claim(claim, ns)
        if pvc.status.phase != "Bound" or not pvc.spec.volume_name:
            raise ValueError(f"PersistentVolumeClaim {ns}/{claim} is not bound")
        pv = self.core.read_persistent_volume(pvc.spec.volume_name)
        source = pv.spec.host_path or pv.spec.local
        if source is None:
            raise ValueError(
                f"PersistentVolume {pv.metadata.name} is neither hostPath nor local:"
                " the lab node agent cannot mount it"
            )
        return Path(source.path)

    # -- volumes --------------------------------------------------------------------------
    def _items(
        self, data: dict[str, bytes], items: list[dict[str, Any]] | None
    ) -> dict[str, bytes]:
        if not items:
            return data
        return {it["path"]: data[it["key"]] for it in items if it["key"] in data}

    def _projected(
        self, pod: dict[str, Any], vol: dict[str, Any], target: Path, pf: PodFiles
    ) -> None:
        ns = pod["metadata"]["namespace"]
        mode = int(vol.get("defaultMode", 0o644))
        for src in vol.get("sources", []):
            if "serviceAccountToken" in src:
                tok = src["serviceAccountToken"]
                path = target / tok["path"]
                _write(path, self._token(pod, tok), 0o600 if mode == 0o644 else mode)
                pf.tokens.append((path, tok))
            elif "configMap" in src:
                c = src["configMap"]
                data = self._configmap(ns, c["name"], bool(c.get("optional")))
                for rel, value in self._items(data, c.get("items")).items():
                    _write(target / rel, value, mode)
            elif "secret" in src:
                s = src["secret"]
                data = self._secret(ns, s["name"], bool(s.get("optional")))
                for rel, value in self._items(data, s.get("items")).items():
                    _write(target / rel, value, mode)
            elif "downwardAPI" in src:
                for it in src["downwardAPI"].get("items", []):
                    if "fieldRef" in it:
                        value = _field(pod, it["fieldRef"]["fieldPath"]).encode()
                        _write(target / it["path"], value, mode)
        pf.token_written = time.time()

    def prepare(self, pod: dict[str, Any]) -> PodFiles:
        meta = pod["metadata"]
        root = self.state_dir / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        pf = PodFiles(root=root)
        ns = meta["namespace"]
        for vol in pod["spec"].get("volumes", []) or []:
            target = root / "volumes" / vol["name"]
            target.mkdir(parents=True, exist_ok=True)
            if "secret" in vol:
                s = vol["secret"]
                data = self._secret(ns, s["secretName"], bool(s.get("optional")))
                for rel, value in self._items(data, s.get("items")).items():
                    _write(target / rel, value, int(s.get("defaultMode", 0o644)))
            elif "configMap" in vol:
                c = vol["configMap"]
                data = self._configmap(ns, c["name"], bool(c.get("optional")))
                for rel, value in self._items(data, c.get("items")).items():
                    _write(target / rel, value, int(c.get("defaultMode", 0o644)))
            elif "projected" in vol:
                self._projected(pod, vol["projected"], target, pf)
            elif "hostPath" in vol:
                target.rmdir()
                pf.volumes[vol["name"]] = Path(vol["hostPath"]["path"])
                continue
            elif "persistentVolumeClaim" in vol:
                target.rmdir()
                claim = vol["persistentVolumeClaim"]["claimName"]
                pf.volumes[vol["name"]] = self._claimed_path(ns, claim)
                continue
            # emptyDir and anything else: an empty private directory
            pf.volumes[vol["name"]] = target
        return pf

    def refresh_tokens(self, pod: dict[str, Any], pf: PodFiles) -> None:
        """Rewrite projected tokens when half their lifetime has passed, like a kubelet."""
        if not pf.tokens or time.time() - pf.token_written < TOKEN_SECONDS / 2:
            return
        for path, src in pf.tokens:
            _write(path, self._token(pod, src), path.stat().st_mode & 0o777)
        pf.token_written = time.time()

    # -- per container --------------------------------------------------------------------
    def mounts(self, pf: PodFiles, container: dict[str, Any]) -> list[Mount]:
        out = []
        for vm in container.get("volumeMounts", []) or []:
            source = pf.volumes.get(vm["name"])
            if source is None:
                continue
            if vm.get("subPath"):
                source = source / vm["subPath"]
            out.append(Mount(str(source), vm["mountPath"], bool(vm.get("readOnly"))))
        return out

    def env(
        self, pod: dict[str, Any], container: dict[str, Any], base: dict[str, str]
    ) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env = dict(base)
        env.update(
            {
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(self.port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.port),
                "HOSTNAME": pod["metadata"]["name"],
            }
        )
        for ef in container.get("envFrom", []) or []:
            prefix = ef.get("prefix", "")
            if "secretRef" in ef:
                ref = ef["secretRef"]
                data = self._secret(ns, ref["name"], bool(ref.get("optional")))
            else:
                ref = ef["configMapRef"]
                data = self._configmap(ns, ref["name"], bool(ref.get("optional")))
            env.update({prefix + k: v.decode() for k, v in data.items()})
        for var in container.get("env", []) or []:
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            src = var.get("valueFrom", {})
            if "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                data = self._secret(ns, ref["name"], bool(ref.get("optional")))
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                data = self._configmap(ns, ref["name"], bool(ref.get("optional")))
            elif "fieldRef" in src:
                env[var["name"]] = _field(pod, src["fieldRef"]["fieldPath"])
                continue
            else:
                env[var["name"]] = ""
                continue
            if ref["key"] in data:
                env[var["name"]] = data[ref["key"]].decode()
            elif not ref.get("optional"):
                raise KeyError(f"key {ref['key']!r} not in {ref['name']!r}")
        return env
