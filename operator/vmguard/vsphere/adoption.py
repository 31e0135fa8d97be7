"""Finding what a restore made, after the operator was interrupted; power and identity.

The restore steps in :mod:`.restore` may be cut short between "make" and "record what
was made". These look-ups find what an earlier attempt made through a *marker* — an
extraConfig key/value set in the same CreateVM or ReconfigVM call (see
:class:`~.restore.NewVMTarget` ``marker`` and :func:`~.restore.add_disk`) — so it is
adopted, never made twice; and a VM is destroyed on failure only when it carries the
marker (a VM we did not make is never destroyed). Markers carry a UID, never a secret.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from vmguard.vsphere.inventory import find_vm, moid, retrieve, vm_record
from vmguard.vsphere.records import DiskRecord
from vmguard.vsphere.restore import CreatedDisk, CreatedVM, paired_disks
from vmguard.vsphere.session import VSphereSession, wait_for
from vmguard.vsphere.vmconfig import VMConfig


def vms_named(session: VSphereSession, name: str) -> list[str]:
    """Morefs of the VMs (and templates) called ``name``."""

    def run(si: vim.ServiceInstance) -> list[str]:
        props: dict[type, list[str]] = {vim.VirtualMachine: ["name"]}
        found = retrieve(si, [vim.VirtualMachine], props)
        return sorted(moid(obj) for obj, props in found if props.get("name") == name)

    return session.call(run)


def _extra(options: Any) -> dict[str, str]:
    return {str(o.key): str(o.value) for o in options or ()}


def find_marked_vm(session: VSphereSession, key: str, value: str) -> str | None:
    """The moref of the VM whose extraConfig holds ``key = value`` (None: no such VM)."""

    def run(si: vim.ServiceInstance) -> str | None:
        props: dict[type, list[str]] = {vim.VirtualMachine: ["config.extraConfig"]}
        for obj, p in retrieve(si, [vim.VirtualMachine], props):
            if _extra(p.get("config.extraConfig")).get(key) == value:
                return moid(obj)
        return None

    return session.call(run)


def find_vm_ref(
    session: VSphereSession, *, moref: str = "", instance_uuid: str = "", name: str = ""
) -> str:
    """The moref of the VM given by any of its ids (all given must agree); LookupError
    when there is none, or when a name alone names several VMs."""

    def run(si: vim.ServiceInstance) -> str:
        props: dict[type, list[str]] = {vim.VirtualMachine: ["name", "config.instanceUuid"]}
        found = [
            moid(obj)
            for obj, p in retrieve(si, [vim.VirtualMachine], props)
            if (not moref or moid(obj) == moref)
            and (not instance_uuid or p.get("config.instanceUuid") == instance_uuid)
            and (not name or p.get("name") == name)
        ]
        wanted = ", ".join(x for x in (moref, instance_uuid, name) if x)
        if not found:
            raise LookupError(f"no VM {wanted}")
        if len(found) > 1:
            raise LookupError(f"{len(found)} VMs match {wanted}: give the moref")
        return found[0]

    return session.call(run)


def created_vm(session: VSphereSession, moref: str, config: VMConfig) -> CreatedVM:
    """What :func:`create_vm` returned, for a VM it made earlier (adopted after a restart)."""

    def run(si: vim.ServiceInstance) -> CreatedVM:
        vm: Any = find_vm(si, moref)
        return CreatedVM(moref, str(vm.name), paired_disks(vm, config))

    return session.call(run)


def find_marked_disk(
    session: VSphereSession, vm_moref: str, marker: str, source_key: int
) -> CreatedDisk | None:
    """The disk :func:`add_disk` made with ``marker`` on this VM, if it made one."""

    def run(si: vim.ServiceInstance) -> CreatedDisk | None:
        vm: Any = find_vm(si, vm_moref)
        slot = _extra(vm.config.extraConfig).get(marker)
        if not slot:
            return None
        ctrl, unit = (int(x) for x in slot.split(":"))
        for d in vm.config.hardware.device:
            if (
                isinstance(d, vim.vm.device.VirtualDisk)
                and d.controllerKey == ctrl
                and d.unitNumber == unit
            ):
                return CreatedDisk(
                    source_key,
                    int(d.key),
                    str(getattr(d.backing, "fileName", "")),
                    int(d.capacityInBytes or 0),
                    bool(getattr(d.backing, "thinProvisioned", False)),
                )
        return None

    return session.call(run)


def power_state(session: VSphereSession, vm_moref: str) -> str:
    """``poweredOn``, ``poweredOff`` or ``suspended``; LookupError when the VM is gone."""

    def run(si: vim.ServiceInstance) -> str:
        try:
            return str(find_vm(si, vm_moref).runtime.powerState)
        except vmodl.fault.ManagedObjectNotFound:
            raise LookupError(f"no VM {vm_moref}") from None

    return session.call(run)


def destroy_marked(session: VSphereSession, vm_moref: str, key: str, value: str) -> bool:
    """Power off and destroy the VM only if it carries the marker; False when it is gone
    or not ours (a VM we did not make is never destroyed)."""

    def run(si: vim.ServiceInstance) -> bool:
        vm: Any = find_vm(si, vm_moref)
        try:
            if _extra(vm.config.extraConfig).get(key) != value:
                return False
            if vm.runtime.powerState == "poweredOn":
                wait_for(vm.PowerOffVM_Task())
            wait_for(vm.Destroy_Task())
        except vmodl.fault.ManagedObjectNotFound:
            return False
        return True

    return session.call(run)


def vm_disks(session: VSphereSession, vm_moref: str) -> tuple[DiskRecord, ...]:
    """The VM's disks as discovery records them (key, capacity, backing file, ...)."""
    try:
        return session.call(lambda si: vm_record(si, vm_moref)).disks
    except LookupError:
        raise LookupError(f"no VM {vm_moref}") from None


def marker_values(session: VSphereSession, morefs: list[str], key: str) -> dict[str, str]:
    """``{moref: value}`` of ``key`` in the extraConfig of each of these VMs that has it
    (VMs gone meanwhile are left out)."""

    def run(si: vim.ServiceInstance) -> dict[str, str]:
        out = {}
        for moref in morefs:
            try:
                vm: Any = find_vm(si, moref)
                value = _extra(vm.config.extraConfig if vm.config else None).get(key)
            except (LookupError, vmodl.fault.ManagedObjectNotFound):
                continue
            if value:
                out[moref] = value
        return out

    return session.call(run)
