"""The VMGuardBackup controller's calls on Jobs and RBAC, off kopf's event loop.

Jobs are found by their deterministic name (:func:`vmguard.controller.kube.proxyjob.job_name`),
so a restarted operator adopts the Job its predecessor created instead of starting a
second one: creating a Job that exists is "adopt it" (AlreadyExists is not an error).
The proxy's ServiceAccount, Role and RoleBinding are applied idempotently before the
first proxy Job of a namespace (create, or replace the Role's rules if they drifted).
:meth:`JobAPI.proxy_trouble` reads an active Job's pods and events, because a Job's own
conditions stay silent while its pod cannot start (see :mod:`.proxypods`).
:meth:`JobAPI.sweep_foreign` removes the Jobs of a namespace that work for an object of
another namespace that is gone (cross-namespace references: no ownerReference, so no
garbage collector removes them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from vmguard.api import LABEL_OWNER_NAMESPACE, LABEL_OWNER_UID, parse_time
from vmguard.controller.kube.kubeapi import read_or_none
from vmguard.controller.kube.proxypods import ProxyTrouble, classify
from vmguard.errors import RetryableError


@dataclass(frozen=True)
class JobState:
    name: str
    active: bool
    succeeded: bool
    failed: bool
    reason: str = ""
    message: str = ""
    finished_at: dt.datetime | None = None


def job_state(job: dict[str, Any]) -> JobState:
    """What a Job's status says (pure): running, succeeded, or failed and why."""
    status = job.get("status") or {}
    name = job["metadata"]["name"]
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        when = cond.get("lastTransitionTime")
        at = parse_time(str(when)) if when else None
        if cond.get("type") == "Complete":
            return JobState(name, False, True, False, finished_at=at)
        if cond.get("type") == "Failed":
            return JobState(
                name, False, False, True, cond.get("reason", ""), cond.get("message", ""), at
            )
    return JobState(name, True, False, False)


class JobAPI:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or client.ApiClient()
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)

    async def create_job(self, job: dict[str, Any]) -> bool:
        """Create ``job``; False when it existed already (adopted)."""

        def create() -> bool:
            try:
                self.batch.create_namespaced_job(job["metadata"]["namespace"], job)
            except client.ApiException as exc:
                if exc.status == 409:
                    return False
                raise RetryableError(
                    f"creating Job {job['metadata']['name']}: {exc.status}"
                ) from None
            return True

        return await asyncio.to_thread(create)

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        job = await read_or_none(
            lambda: self.batch.read_namespaced_job(name, namespace), f"Job {namespace}/{name}"
        )
        return None if job is None else dict(self.api.sanitize_for_serialization(job))

    async def proxy_trouble(self, namespace: str, job_name: str) -> ProxyTrouble | None:
        """What the Job's pods and its events say keeps the proxy from running, if anything.

        Pods are found by the ``job-name`` label the Job controller sets on them, events by
        their involved object (the Job). See :mod:`vmguard.controller.kube.proxypods`.
        """

        def read() -> ProxyTrouble | None:
            try:
                pods = self.core.list_namespaced_pod(
                    namespace, label_selector=f"job-name={job_name}"
                ).items
                events = self.core.list_namespaced_event(
                    namespace,
                    field_selector=f"involvedObject.kind=Job,involvedObject.name={job_name}",
                ).items
            except client.ApiException as exc:
                raise RetryableError(f"reading pods of Job {job_name}: {exc.status}") from None
            as_dicts = self.api.sanitize_for_serialization
            return classify(as_dicts(pods), as_dicts(events))

        return await asyncio.to_thread(read)

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete one Job and its pods (gone already is fine)."""

        def delete() -> None:
            try:
                self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
            except client.ApiException as exc:
                if exc.status != 404:
                    raise RetryableError(f"deleting Job {namespace}/{name}: {exc.status}") from None

        await asyncio.to_thread(delete)

    async def delete_jobs(self, namespace: str, selector: str) -> int:
        """Delete the Jobs (and their pods) matching ``selector``; how many there were."""

        def delete() -> int:
            jobs = self.batch.list_namespaced_job(namespace, label_selector=selector).items
            for job in jobs:
                try:
                    self.batch.delete_namespaced_job(
                        job.metadata.name, namespace, propagation_policy="Background"
                    )
                except client.ApiException as exc:
                    if exc.status != 404:
                        raise
            return len(jobs)

        return await asyncio.to_thread(delete)

    async def sweep_foreign(
        self, namespace: str, live_uids: Callable[[str], Awaitable[set[str]]]
    ) -> list[str]:
        """Delete the Jobs in ``namespace`` whose object (by :data:`LABEL_OWNER_UID`, in the
        namespace :data:`LABEL_OWNER_NAMESPACE` names) is not among ``live_uids(that
        namespace)``; their names. Only Jobs that carry both labels are looked at."""
        jobs = await asyncio.to_thread(
            lambda: (
                self.batch.list_namespaced_job(
                    namespace, label_selector=f"{LABEL_OWNER_NAMESPACE},{LABEL_OWNER_UID}"
                ).items
            )
        )
        live: dict[str, set[str]] = {}
        gone = []
        for job in jobs:
            labels = job.metadata.labels or {}
            owner_ns = labels[LABEL_OWNER_NAMESPACE]
            if owner_ns not in live:
                live[owner_ns] = await live_uids(owner_ns)
            if labels[LABEL_OWNER_UID] not in live[owner_ns]:
                await self.delete_job(namespace, job.metadata.name)
                gone.append(job.metadata.name)
        return gone

    async def ensure_rbac(self, objects: list[dict[str, Any]]) -> None:
        """Apply ServiceAccount, Role, RoleBinding: create, or bring a Role's rules back."""

        def apply() -> None:
            for obj in objects:
                ns, name, kind = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["kind"]
                create, replace = {
                    "ServiceAccount": (self.core.create_namespaced_service_account, None),
                    "Role": (self.rbac.create_namespaced_role, self.rbac.replace_namespaced_role),
                    "RoleBinding": (self.rbac.create_namespaced_role_binding, None),
                }[kind]
                try:
                    create(ns, obj)
                except client.ApiException as exc:
                    if exc.status != 409:
                        raise RetryableError(f"creating {kind} {ns}/{name}: {exc.status}") from None
                    if replace is not None:
                        replace(name, ns, obj)

        await asyncio.to_thread(apply)
