"""At start, the operator reports installed CRDs that are not the ones it was built with.

Helm never upgrades a chart's ``crds/`` directory, and a chart installed with
``crds.enabled: false`` leaves the CRDs to someone else: an operator can end up running
against an older schema, whose admission rules and status fields do not match what it
writes (a status field the old schema prunes is silently lost). Every vmguard CRD
carries :data:`~vmguard.api.ANNOTATION_SCHEMA_HASH`, a hash of its definition written
when it is generated (:func:`vmguard.crds.definition.schema_hash`); the operator
computes the same hash from the definitions it was built with and compares.

For each CRD that is missing, unannotated (generated before the hash existed) or
annotated with another hash, the operator logs a warning that says what to do, sets
``vmguard_crd_outdated{crd}`` to 1 (0 for a CRD that matches), and posts a Warning
Event ``CRDOutdated`` about the CRD. A hash cannot tell older from newer: an operator
rolled back past its CRDs is reported the same way, and the remedy is the same (the
CRDs of the operator's own release).

Invariants: the check never stops the operator (an API error is logged and the check
skipped); it reads CRDs with ``list`` only (the chart grants ``list``/``watch``, not
``get``); Events about a cluster-scoped object live in the ``default`` namespace (the
apiserver refuses any other), where the chart lets the operator create Events.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vmguard.api import ANNOTATION_SCHEMA_HASH
from vmguard.crds import KINDS

OUTDATED_REASON = "CRDOutdated"
EVENT_NAMESPACE = "default"
"""Where Events about cluster-scoped objects go: the apiserver accepts no other namespace."""
REMEDY = (
    "apply the CRDs of this operator's release: `helm upgrade` with crds.enabled, "
    "or `kubectl apply --server-side -f crds/`"
)

logger = logging.getLogger(__name__)


def expected_hashes() -> dict[str, str]:
    """CRD name → the schema hash this operator was built with."""
    return {kind.name: kind.schema_hash() for kind in KINDS}


@dataclass(frozen=True)
class CRDState:
    """One CRD as installed, next to what the operator expects.

    ``installed`` is the CRD's schema hash, ``""`` when it has none, None when the CRD
    is not installed.
    """

    name: str
    expected: str
    installed: str | None

    @property
    def outdated(self) -> bool:
        return self.installed != self.expected

    def message(self) -> str:
        if self.installed is None:
            return f"CRD {self.name} is not installed: {REMEDY}"
        if not self.installed:
            return (
                f"CRD {self.name} has no {ANNOTATION_SCHEMA_HASH} annotation: it is older "
                f"than this operator, which expects schema {self.expected}; {REMEDY}"
            )
        return (
            f"CRD {self.name} has schema {self.installed}, this operator expects "
            f"{self.expected}: the installed CRD is older (or newer) than the operator; "
            f"{REMEDY}"
        )


def compare(installed: Mapping[str, Mapping[str, Any]]) -> list[CRDState]:
    """The state of every vmguard CRD, from ``installed`` (CRD name → CRD object, as the
    apiserver returns it; a name absent: not installed)."""
    states = []
    for name, expected in expected_hashes().items():
        crd = installed.get(name)
        found = None
        if crd is not None:
            annotations = (crd.get("metadata") or {}).get("annotations") or {}
            found = annotations.get(ANNOTATION_SCHEMA_HASH, "")
        states.append(CRDState(name, expected, found))
    return states


def outdated_event(
    state: CRDState, crd: Mapping[str, Any] | None, now: dt.datetime
) -> dict[str, Any]:
    """The Warning Event about an outdated ``crd`` (None: not installed)."""
    meta = (crd or {}).get("metadata") or {}
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    involved: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "name": state.name,
    }
    if meta.get("uid"):
        involved["uid"] = meta["uid"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{state.name}.", "namespace": EVENT_NAMESPACE},
        "involvedObject": involved,
        "type": "Warning",
        "reason": OUTDATED_REASON,
        "message": state.message(),
        "source": {"component": "vmguard-operator"},
        "reportingComponent": "vmguard-operator",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def check_crds(
    api_client: Any, set_outdated: Callable[[str, bool], None], now: dt.datetime
) -> list[CRDState]:
    """Compare the installed CRDs with this operator's, and report those that differ
    (log, ``set_outdated(crd, outdated)`` for every CRD, an Event for each outdated one).
    Returns the states; an empty list when the CRDs could not be read."""
    from kubernetes import client

    extensions = client.ApiextensionsV1Api(api_client)
    installed: dict[str, dict[str, Any]] = {}
    try:
        for name in expected_hashes():
            found = extensions.list_custom_resource_definition(
                field_selector=f"metadata.name={name}"
            )
            for item in found.items:
                installed[name] = api_client.sanitize_for_serialization(item)
    except client.ApiException as exc:
        logger.warning("cannot read the CRDs to compare them with this operator's: %s", exc.reason)
        return []
    states = compare(installed)
    core = client.CoreV1Api(api_client)
    for state in states:
        set_outdated(state.name, state.outdated)
        if not state.outdated:
            continue
        logger.warning("%s", state.message())
        try:
            core.create_namespaced_event(
                EVENT_NAMESPACE, outdated_event(state, installed.get(state.name), now)
            )
        except client.ApiException as exc:
            logger.warning(
                "cannot post the %s event for %s: %s", OUTDATED_REASON, state.name, exc.reason
            )
    return states
