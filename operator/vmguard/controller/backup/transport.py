"""Which transport a backup's proxy Job gets, decided before the Job exists.

Hot-add reads the snapshot's disks as block devices of the proxy's node, so a proxy that
may hot-add runs privileged, as root; an NBD proxy meets the Pod Security ``restricted``
profile. A privileged pod is created only where the platform team said so: the Job's
namespace carries :data:`~vmguard.api.LABEL_PRIVILEGED_PROXIES` ``=true`` and its Pod
Security admission level (``pod-security.kubernetes.io/enforce``) admits privileged pods.
Elsewhere ``auto`` becomes ``nbd`` (a restricted proxy, which never asks for hot-add), and
a policy that demands ``hotadd`` fails before any snapshot is taken, with the reason —
never a Job that admission refuses and a VM left on a snapshot until a deadline.

Where privileged proxies may run, :func:`on_nodes` narrows further, just before the Job:
only nodes whose VM can hot-add the VM's disks (same vCenter and datacenter, sees the
datastores) get it, by node affinity; with none, ``auto`` is NBD again and ``hotadd``
fails (``NoHotAddNode``), so no privileged pod runs where it cannot hot-add.

Pure: labels in, decision out (tests/controller/test_proxy_transport.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from vmguard.api import LABEL_PRIVILEGED_PROXIES
from vmguard.controller.kube.podsecurity import privileged_refused


@dataclass(frozen=True)
class TransportChoice:
    transport: str
    """What the Job gets: ``nbd`` (restricted pod), ``hotadd`` or ``auto`` (privileged pod)."""
    reason: str
    refused: str = ""
    """When the policy demands hot-add and it cannot be had: the reason for the backup's
    failure (``PodSecurity``, ``PrivilegedProxiesNotAllowed`` or ``NoHotAddNode``)."""
    nodes: tuple[str, ...] = ()
    """A privileged proxy runs only on these nodes: those whose VM can hot-add the disks."""


def choose_transport(requested: str, namespace: str, labels: Mapping[str, str]) -> TransportChoice:
    """The transport a proxy Job in ``namespace`` (with these labels) runs with."""
    if requested == "nbd":
        return TransportChoice("nbd", "the policy asks for NBD")
    refusal = privileged_refused(namespace, labels)
    if refusal is None:
        return TransportChoice(
            requested,
            f"namespace {namespace} allows privileged hot-add proxies "
            f"({LABEL_PRIVILEGED_PROXIES}=true)",
        )
    why, message = refusal
    if requested == "hotadd":
        return TransportChoice(
            "hotadd", f"hot-add needs a privileged proxy pod, and {message}", refused=why
        )
    return TransportChoice("nbd", f"NBD: hot-add needs a privileged proxy pod, and {message}")


def on_nodes(
    choice: TransportChoice, able: Sequence[str], why_not: Mapping[str, str]
) -> TransportChoice:
    """``choice`` narrowed to the nodes that can hot-add (:func:`vmguard.vsphere.hotadd.
    hotadd_nodes`): a privileged proxy only where hot-add is possible, and pinned there."""
    if choice.transport == "nbd" or choice.refused:
        return choice
    if able:
        return replace(
            choice,
            reason=f"{choice.reason}; hot-add possible from node(s) {', '.join(able)}",
            nodes=tuple(able),
        )
    shown = sorted(why_not.items())[:3]
    more = f" and {len(why_not) - 3} more" if len(why_not) > 3 else ""
    summary = "; ".join(f"{node}: {why}" for node, why in shown) + more
    summary = summary or "the cluster lists no node"
    if choice.transport == "hotadd":
        return TransportChoice(
            "hotadd", f"no node can hot-add this VM's disks ({summary})", refused="NoHotAddNode"
        )
    return TransportChoice("nbd", f"NBD: no node can hot-add this VM's disks ({summary})")
