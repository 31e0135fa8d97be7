"""A vmguard kind as data, and its rendering into a CustomResourceDefinition.

:class:`Kind` holds what differs between the kinds (names, schemas, printer
columns); :meth:`Kind.crd` adds what is the same for all of them, so the conventions
are written once: the group and version of :mod:`vmguard.api` (served and stored),
namespaced, its category, a status subresource, an ``Age`` column last, and the
annotation :data:`~vmguard.api.ANNOTATION_SCHEMA_HASH`: a hash of everything else in
the CRD, by which the operator tells whether the installed CRD is the one it was built
with (:mod:`vmguard.controller.kube.crdcheck`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmguard.api import ANNOTATION_SCHEMA_HASH, CATEGORY, GROUP, VERSION
from vmguard.api.kinds import KindNames
from vmguard.crds.schema import Schema, obj, rule, string


def column(
    name: str,
    json_path: str,
    description: str,
    *,
    type_: str = "string",
    priority: int = 0,
    fmt: str | None = None,
) -> dict[str, Any]:
    """One ``additionalPrinterColumns`` entry; ``priority`` 1 shows only with ``-o wide``."""
    out: dict[str, Any] = {
        "name": name,
        "type": type_,
        "jsonPath": json_path,
        "description": description,
    }
    if fmt is not None:
        out["format"] = fmt
    if priority:
        out["priority"] = priority
    return out


def ready_column() -> dict[str, Any]:
    return column(
        "Ready",
        '.status.conditions[?(@.type=="Ready")].status',
        "Status of the Ready condition.",
    )


def ready_reason_column() -> dict[str, Any]:
    return column(
        "Reason",
        '.status.conditions[?(@.type=="Ready")].reason',
        "Reason of the Ready condition: the phase at work, Completed, or why it failed.",
    )


@dataclass(frozen=True)
class Kind:
    """One custom resource kind of vmguard."""

    names: KindNames
    description: str
    spec: Schema
    status: Schema
    columns: Sequence[dict[str, Any]] = ()
    # Rules on the whole object; the only place CEL can see metadata.name.
    root_rules: Sequence[Schema] = field(default_factory=tuple)

    @property
    def kind(self) -> str:
        return self.names.kind

    @property
    def plural(self) -> str:
        return self.names.plural

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"

    def crd(self) -> dict[str, Any]:
        """The CustomResourceDefinition, annotated with :meth:`schema_hash`."""
        crd = self._definition()
        crd["metadata"]["annotations"] = {ANNOTATION_SCHEMA_HASH: schema_hash(crd)}
        return crd

    def schema_hash(self) -> str:
        return schema_hash(self._definition())

    def _definition(self) -> dict[str, Any]:
        schema = obj(
            self.description,
            {
                "apiVersion": string(max_length=253),
                "kind": string(max_length=63),
                "metadata": {"type": "object"},
                "spec": self.spec,
                "status": self.status,
            },
            required=["spec"],
            rules=list(self.root_rules),
        )
        age = column("Age", ".metadata.creationTimestamp", "Time since creation.", type_="date")
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": self.name,
                "labels": {"app.kubernetes.io/part-of": "vmguard"},
            },
            "spec": {
                "group": GROUP,
                "scope": "Namespaced",
                "names": {
                    "kind": self.kind,
                    "listKind": f"{self.kind}List",
                    "plural": self.plural,
                    "singular": self.names.singular,
                    "shortNames": list(self.names.short_names),
                    "categories": [CATEGORY],
                },
                "versions": [
                    {
                        "name": VERSION,
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "additionalPrinterColumns": [*self.columns, age],
                        "schema": {"openAPIV3Schema": schema},
                    }
                ],
            },
        }


def schema_hash(crd: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the CRD's names and versions (schemas, columns,
    subresources) as canonical JSON: equal exactly when the definitions are equal,
    whatever the YAML's layout or the CRD's labels and annotations."""
    spec = json.dumps(crd["spec"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def name_is_label(kind: str, why: str) -> Schema:
    """A root rule: the object's own name must be a DNS-1123 label (≤ 63 characters)."""
    return rule(
        "size(self.metadata.name) <= 63 && "
        "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        f"metadata.name: a {kind} name must be a DNS-1123 label (at most 63 characters, "
        f"no dots): {why}",
    )
