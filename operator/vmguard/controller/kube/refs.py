"""References to VCenters and VMGuardRepositories, in the referring namespace or another.

A ``vcenterRef`` or ``repositoryRef`` is ``{name}`` (the object in the referring object's
own namespace, as it always was) or ``{name, namespace}``. A reference into another
namespace is honoured only when the referenced object's ``spec.allowedNamespaces`` — a
field of the platform team's object, in the platform team's namespace — names the
referring namespace; otherwise :class:`ReferenceNotAllowed` (reason
``ReferenceNotAllowed``), which the controllers turn into a condition. This is how
credentials stay in a platform namespace that tenants cannot read (docs/tenancy.md).

Where a proxy Job runs (:func:`job_namespace`): in the namespace of the Secrets it is
given, because a ``secretKeyRef`` names a Secret of the pod's own namespace only. So the
objects whose credentials one Job needs (VCenter and VMGuardRepository of a backup or a
VMGuardRestore) must sit in one namespace; a split is :class:`ReferencesSplit`.

Invariants: nothing here reads a Secret; a same-namespace reference never looks at
``allowedNamespaces`` (no behaviour change for objects that do not reach across).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmguard.api.kinds import KindNames
from vmguard.controller.kube.kubeapi import KubeAPI

REFERENCE_NOT_ALLOWED = "ReferenceNotAllowed"
REFERENCES_SPLIT = "ReferencesSplit"
ALLOWED_NAMESPACES = "allowedNamespaces"


class RefusedReference(Exception):
    """A reference that is refused; ``reason`` is the condition's reason."""

    reason = REFERENCE_NOT_ALLOWED

    def __init__(self, message: str) -> None:
        super().__init__(message)


class ReferenceNotAllowed(RefusedReference):
    """The referenced object's ``spec.allowedNamespaces`` does not name the referrer."""

    reason = REFERENCE_NOT_ALLOWED


class ReferencesSplit(RefusedReference):
    """A proxy Job would need Secrets from two namespaces."""

    reason = REFERENCES_SPLIT


def ref_namespace(ref: Mapping[str, Any] | None, referring_namespace: str) -> str:
    """The namespace a reference points into: its ``namespace``, else the referrer's."""
    return str((ref or {}).get("namespace") or referring_namespace)


def shown(ref: Mapping[str, Any], referring_namespace: str) -> str:
    """A reference as messages name it: ``name`` in the same namespace, ``ns/name`` across."""
    where = ref_namespace(ref, referring_namespace)
    name = str(ref.get("name") or "(none named)")
    return name if where == referring_namespace else f"{where}/{name}"


def admits(obj: Mapping[str, Any], referring_namespace: str) -> bool:
    """Whether ``obj`` (a VCenter or VMGuardRepository) may be used from
    ``referring_namespace``: always from its own; from another only when its
    ``spec.allowedNamespaces`` names it (exact names: no patterns, no selector)."""
    if obj["metadata"]["namespace"] == referring_namespace:
        return True
    allowed = (obj.get("spec") or {}).get(ALLOWED_NAMESPACES) or []
    return referring_namespace in allowed


def check_admitted(obj: Mapping[str, Any], kind: KindNames, referring_namespace: str) -> None:
    """:class:`ReferenceNotAllowed` unless :func:`admits`."""
    if not admits(obj, referring_namespace):
        meta = obj["metadata"]
        raise ReferenceNotAllowed(
            f"{kind.kind} {meta['namespace']}/{meta['name']} does not list namespace "
            f"{referring_namespace} in spec.{ALLOWED_NAMESPACES}"
        )


async def get_referenced(
    api: KubeAPI, kind: KindNames, referring_namespace: str, ref: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The object ``ref`` names, seen from ``referring_namespace``: None when it does not
    exist (or ``ref`` names none), :class:`ReferenceNotAllowed` when it exists in another
    namespace that does not admit the referrer."""
    name = (ref or {}).get("name")
    if not name:
        return None
    obj = await api.get_object(kind.plural, ref_namespace(ref, referring_namespace), name)
    if obj is not None:
        check_admitted(obj, kind, referring_namespace)
    return obj


def namespace_of(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["namespace"])


def job_namespace(own_namespace: str, *credentialed: Mapping[str, Any] | None) -> str:
    """Where the proxy Job of an object in ``own_namespace`` runs: the namespace of the
    objects whose Secrets it is given (``credentialed``; None entries are ignored). The
    object's own namespace when they are all there (as always); :class:`ReferencesSplit`
    when they are in more than one namespace."""
    spaces = {namespace_of(o) for o in credentialed if o is not None}
    if len(spaces) > 1:
        listed = ", ".join(sorted(spaces))
        raise ReferencesSplit(
            f"the vCenter and repository credentials are in different namespaces ({listed}): "
            "a proxy Job is given Secrets of its own namespace only, so both must be in one"
        )
    return spaces.pop() if spaces else own_namespace


def ref_to(obj: Mapping[str, Any], referring_namespace: str) -> dict[str, str]:
    """The reference to ``obj`` as written from ``referring_namespace``: ``{name}`` in the
    same namespace, ``{name, namespace}`` across."""
    meta = obj["metadata"]
    if meta["namespace"] == referring_namespace:
        return {"name": meta["name"]}
    return {"name": meta["name"], "namespace": meta["namespace"]}
