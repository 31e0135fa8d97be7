"""Where the operator may create a privileged proxy pod, read from the namespace's labels
(pure; docs/transports.md "Pod Security", docs/verification.md "Where file systems are
checked").

Two kinds of proxy need a privileged pod: one that may hot-add (it opens the node's
block devices) and a verification that checks file systems (it mounts each volume with
FUSE: ``/dev/fuse`` and the ``mount`` system call, which Kubernetes grants a container
only by ``privileged: true``). Both are created only where the platform team said so:
the namespace carries :data:`~vmguard.api.LABEL_PRIVILEGED_PROXIES` ``=true`` and its
Pod Security admission level admits privileged pods. Elsewhere the operator decides
before it creates a Job — never a pod that admission refuses.
"""

from __future__ import annotations

from collections.abc import Mapping

from vmguard.api import LABEL_PRIVILEGED_PROXIES

PSS_ENFORCE = "pod-security.kubernetes.io/enforce"
"""Kubernetes' Pod Security admission label: the level a namespace enforces."""
PSS_REFUSING_PRIVILEGED = ("baseline", "restricted")
"""The Pod Security levels that refuse a privileged container."""


def privileged_refused(namespace: str, labels: Mapping[str, str]) -> tuple[str, str] | None:
    """(reason, message) why no privileged proxy may run in ``namespace``, or None.
    Reasons: ``PodSecurity`` (the namespace enforces ``baseline`` or ``restricted``),
    ``PrivilegedProxiesNotAllowed`` (the platform's consent label is missing)."""
    level = labels.get(PSS_ENFORCE, "")
    if level in PSS_REFUSING_PRIVILEGED:
        return "PodSecurity", (
            f"Pod Security admission refuses privileged pods in namespace {namespace} "
            f"(it enforces the {level!r} level, label {PSS_ENFORCE})"
        )
    if labels.get(LABEL_PRIVILEGED_PROXIES) != "true":
        return "PrivilegedProxiesNotAllowed", (
            f"namespace {namespace} is not labelled {LABEL_PRIVILEGED_PROXIES}=true "
            "(the platform's consent to privileged proxies)"
        )
    return None


def fsck_refused(namespace: str, labels: Mapping[str, str]) -> tuple[str, str] | None:
    """(reason, message) why a verification Job in ``namespace`` may not check file
    systems, or None. The message says what to change."""
    refusal = privileged_refused(namespace, labels)
    if refusal is None:
        return None
    reason, why = refusal
    return reason, (
        "file-system checks mount each volume with FUSE, which needs a privileged pod, "
        f"and {why}: label the namespace for privileged proxies (docs/verification.md) "
        "or set spec.verification.fsck: false"
    )


__all__ = ["PSS_ENFORCE", "PSS_REFUSING_PRIVILEGED", "fsck_refused", "privileged_refused"]
