"""kopf's peering CRDs (``kopf.dev/v1``), which let replicas of the operator elect one.

With ``vmguard operator --peering NAME`` every replica writes a keep-alive record (its
priority, last-seen time and lifetime) into the status of a peering object called
NAME: a ``KopfPeering`` in each watched namespace, or one ``ClusterKopfPeering`` when
the operator watches the whole cluster. A replica that sees a live peer of higher
priority pauses; one that sees an equal priority pauses too (kopf cannot tell which of
two equals should act), which is why each replica needs a distinct priority.

These are kopf's CRDs, not vmguard's: group ``kopf.dev``, no ``vmguard`` category, no
status subresource (kopf patches ``status`` through the main resource, so a status
subresource would silently drop its keep-alives), and a free-form status because its
keys are the peers' identities. They are rendered next to vmguard's kinds so that
``crds/`` (and the chart, which links it) installs everything the operator needs.
"""

from __future__ import annotations

from typing import Any

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{PEERING_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "vmguard"},
        },
        "spec": {
            "group": PEERING_GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
            },
            "versions": [
                {
                    "name": PEERING_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                f"kopf peering ({scope.lower()}): live operator replicas "
                                "and their priorities; the highest priority acts."
                            ),
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "description": "Peer identity -> {priority, lastseen, "
                                    "lifetime}, written by kopf.",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def peering_crds() -> list[dict[str, Any]]:
    """The namespaced and the cluster-wide peering CRDs, as kopf expects them."""
    return [
        _crd("KopfPeering", "kopfpeerings", "Namespaced"),
        _crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
    ]
