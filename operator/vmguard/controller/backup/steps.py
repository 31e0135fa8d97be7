"""What the VMGuardBackup controller needs besides its state machine: refs, hooks, vSphere.

- :func:`resolve_refs`: a VMGuardBackup names a policy, or a vCenter and a repository (both
  may also override the policy's). A missing object is a :class:`MissingRef` — the
  backup waits with a condition saying which, it does not fail: GitOps may apply the
  policy a moment later. A vCenter or repository in another namespace
  (:mod:`vmguard.controller.kube.refs`) that does not admit this one, or a vCenter and a
  repository in two namespaces, is a :class:`MissingRef` too (``ReferenceNotAllowed``,
  ``ReferencesSplit``): the platform team may fix its allow-list.
- :func:`hook_plan`: the policy's guest hooks and the guest account from the Secret
  ``hooks.guestCredentialsSecretRef`` names; a Secret that is missing or lacks a key is
  a :class:`MissingRef` (reason ``GuestCredentialsMissing``), so the backup waits.
  :func:`hooks_condition` (pure) turns what ran into the ``HooksRan`` condition.
- Blocking calls, each run in a thread by the controller: resolve the VM, prepare,
  finish (:mod:`vmguard.vm.cycle`). The repository is opened by
  :func:`vmguard.controller.kube.access.open_for_backup` (a backup never creates one: it
  waits for the VMGuardRepository controller, and refuses a repository whose config
  differs from its spec).

Secrets are read into memory for the call and never logged or stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmguard.api import BackupStatus, VMIdentity, parse_duration
from vmguard.api.kinds import POLICY, REPOSITORY, VCENTER
from vmguard.controller.kube import refs as references
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.errors import ConfigError
from vmguard.store import Repository
from vmguard.vm.cycle import Finished, Prepared, finish, prepare, resolve_vm
from vmguard.vsphere.guestops import GuestCredentials, Hook, HookPlan, HookResult
from vmguard.vsphere.hotadd import hotadd_nodes
from vmguard.vsphere.inventory import vm_record
from vmguard.vsphere.records import VMRecord
from vmguard.vsphere.session import Endpoint, VSphereSession


class MissingRef(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Refs:
    vcenter_name: str
    repository_name: str
    vcenter: dict[str, Any]
    repository: dict[str, Any]
    policy: dict[str, Any] | None = None
    job_namespace: str = ""
    """Where the proxy Jobs run: the namespace of the vCenter and repository (and their
    Secrets), the backup's own unless they are referenced across namespaces."""

    @property
    def policy_spec(self) -> dict[str, Any]:
        return dict((self.policy or {}).get("spec") or {})

    def across(self, own_namespace: str) -> BackupStatus:
        """The status fields naming the namespaces of what is not in ``own_namespace``."""
        out: BackupStatus = {}
        if references.namespace_of(self.vcenter) != own_namespace:
            out["vcenterNamespace"] = references.namespace_of(self.vcenter)
        if references.namespace_of(self.repository) != own_namespace:
            out["repositoryNamespace"] = references.namespace_of(self.repository)
        if self.job_namespace != own_namespace:
            out["jobNamespace"] = self.job_namespace
        return out


async def resolve_refs(api: KubeAPI, namespace: str, spec: Mapping[str, Any]) -> Refs:
    policy = None
    policy_name = (spec.get("policyRef") or {}).get("name")
    if policy_name:
        policy = await api.get_object(POLICY.plural, namespace, policy_name)
        if policy is None:
            raise MissingRef("PolicyNotFound", f"VMProtectionPolicy {policy_name} does not exist")
    pspec = (policy or {}).get("spec") or {}
    vc_ref = spec.get("vcenterRef") or pspec.get("vcenterRef") or {}
    repo_ref = spec.get("repositoryRef") or pspec.get("repositoryRef") or {}
    vc_name, repo_name = vc_ref.get("name"), repo_ref.get("name")
    if not vc_name or not repo_name:
        raise MissingRef("RefsIncomplete", "no vCenter or repository: give policyRef or both refs")
    try:
        vcenter = await references.get_referenced(api, VCENTER, namespace, vc_ref)
        if vcenter is None:
            named = references.shown(vc_ref, namespace)
            raise MissingRef("VCenterNotFound", f"VCenter {named} does not exist")
        repository = await references.get_referenced(api, REPOSITORY, namespace, repo_ref)
        if repository is None:
            named = references.shown(repo_ref, namespace)
            message = f"VMGuardRepository {named} does not exist"
            raise MissingRef("RepositoryNotFound", message)
        job_namespace = references.job_namespace(namespace, vcenter, repository)
    except references.RefusedReference as exc:
        raise MissingRef(exc.reason, str(exc)) from None
    return Refs(vc_name, repo_name, vcenter, repository, policy, job_namespace)


def resolve_vm_blocking(ep: Endpoint, vm: VMIdentity) -> VMRecord:
    session = VSphereSession(ep)
    try:
        return resolve_vm(
            session,
            moref=vm.get("moref", ""),
            instance_uuid=vm.get("instanceUuid", ""),
            name=vm.get("name", ""),
        )
    finally:
        session.close()


def hotadd_nodes_blocking(
    ep: Endpoint, vm_moref: str, node_uuids: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The nodes whose VM could hot-add this VM's disks, and why not for the others."""
    session = VSphereSession(ep)
    try:
        vm = session.call(lambda si: vm_record(si, vm_moref))
        return hotadd_nodes(session, vm, node_uuids)
    finally:
        session.close()


def prepare_blocking(
    ep: Endpoint, repo: Repository, vm_moref: str, uid: str, **kw: Any
) -> Prepared:
    session = VSphereSession(ep)
    try:
        return prepare(session, repo, vm_moref, uid, **kw)
    finally:
        session.close()


def finish_blocking(
    ep: Endpoint, vm_moref: str, uid: str, *, allow_consolidate: bool = True
) -> Finished:
    session = VSphereSession(ep)
    try:
        return finish(session, vm_moref, uid, allow_consolidate=allow_consolidate)
    finally:
        session.close()


def _hook(spec: Mapping[str, Any]) -> Hook:
    command = spec["command"]
    return Hook(
        name=spec.get("name") or command.replace("\\", "/").rsplit("/", 1)[-1],
        command=command,
        args=tuple(spec.get("args") or ()),
        timeout=parse_duration(spec.get("timeout"), 300.0),
        on_error="continue" if spec.get("onError") == "continue" else "fail",
    )


async def hook_plan(
    api: KubeAPI, namespace: str, policy_spec: Mapping[str, Any]
) -> HookPlan | None:
    """The policy's ``spec.hooks`` with the guest account read from its Secret, or None.

    A Secret that does not exist or lacks a key is :class:`MissingRef`
    (``GuestCredentialsMissing``): the backup waits for it like for a missing ref.
    """
    spec = policy_spec.get("hooks") or {}
    pre = tuple(_hook(h) for h in spec.get("preSnapshot") or ())
    post = tuple(_hook(h) for h in spec.get("postSnapshot") or ())
    if not (pre or post):
        return None
    ref = spec.get("guestCredentialsSecretRef") or {}
    name = ref.get("name", "")
    try:
        keys = await api.secret_keys(
            namespace,
            name,
            {
                "username": ref.get("usernameKey", "username"),
                "password": ref.get("passwordKey", "password"),
            },
        )
    except ConfigError as exc:
        raise MissingRef("GuestCredentialsMissing", f"guest hooks: {exc}") from None
    return HookPlan(GuestCredentials(keys["username"], keys["password"]), pre, post)


def hooks_condition(results: Sequence[HookResult]) -> tuple[bool, str, str]:
    """``(status, reason, message)`` of the ``HooksRan`` condition for hooks that ran."""
    parts = []
    for r in results:
        what = f"exit code {r.exit_code}" if r.exit_code is not None else r.error
        parts.append(f"{r.phase} {r.name}: {what} ({r.seconds:.1f} s)")
    warnings = [r.warning for r in results if r.warning]
    if warnings:
        return True, "HookWarning", "; ".join(warnings) + " | ran: " + "; ".join(parts)
    return True, "Succeeded", "; ".join(parts) or "no hook ran"
