"""Inventory discovery: every VM in one sweep, as typed :class:`VMRecord` objects.

A sweep costs a fixed handful of round trips plus one per :data:`CHUNK` VMs:

1. one ContainerView + PropertyCollector pass over the *containers* (folders,
   datacenters, clusters, hosts, resource pools, datastores, networks) fetching only
   ``name`` and ``parent``: every inventory path (``/DC0/vm/Production/Web``) is then
   resolved in memory, never by walking parents VM by VM;
2. the custom attribute definitions (one property of the CustomFieldsManager);
3. the list of every VM: the ``view`` property of a ContainerView of VMs, morefs only;
4. the properties a record needs (:data:`VM_PROPERTIES`) of those VMs, in chunks of
   :data:`CHUNK` named explicitly, :data:`IN_FLIGHT` requests at a time;
5. tags, optionally, through the vSphere Automation REST API (:mod:`.tags`), passed in
   as a map so that discovery itself stays one SOAP conversation.

Why chunks rather than one paged pass: a paged retrieval is strictly sequential (each
ContinueRetrievePropertiesEx needs the token out of the previous response), so the
vCenter's generation of a page never overlapped our decoding of the one before, and a
sweep of 5,000 VMs cost their sum. Chunks named by moref are independent requests: while
the sweep's thread decodes a chunk (pyVmomi's decoding holds the GIL), a pool's threads
send the next requests and read their answers, and the vCenter generates them: a sweep
costs about the larger of our decoding and the vCenter's generation. Chunks are decoded
one at a time, in the sweep's thread (:mod:`.prefetch`): pyVmomi decodes inside the call
that reads the response, and two chunks decoded side by side contended for the GIL and
ate the gain (docs/scale.md, "The sweep in chunks"). The stub is safe for concurrent
calls: each takes an HTTP connection of its own from the stub's pool. Where the split
call is not made (``prefetch.supported``: another pyVmomi release or stub), each chunk
is pyVmomi's own call, one after the other.

Invariants: records hold no pyVmomi object; a VM whose properties are partly missing
(vCenter omits unset ones) still yields a record with defaults; names are the names
vSphere shows (``%2f`` for a slash stays as it is). A sweep's records are those of the
VMs listed in step 3, whatever their chunk: the same records one paged pass over the
ContainerView gives (tests/vsphere/test_discovery_chunks.py), sorted by name and moref.
A VM destroyed between the listing and its chunk's retrieval is simply absent: vSphere
refuses a retrieval that names a missing object (ManagedObjectNotFound, naming it), and
the chunk is asked again without it; a fault that names no VM of the chunk fails the
sweep. A VM created after the listing is not in this sweep; the next one sees it.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from vmguard.vsphere import prefetch
from vmguard.vsphere.records import (
    DiskRecord,
    NicRecord,
    SnapshotRecord,
    VMRecord,
    backup_uid_of,
)

PAGE = 500
# VMs per request of a sweep, and requests at a time: 2 chunks of 250 hold fewer of
# pyVmomi's objects at once than the two pages of 500 a paged pass held (docs/scale.md).
CHUNK = 250
IN_FLIGHT = 2

VM_PROPERTIES = [
    "name",
    "parent",
    "config.instanceUuid",
    "config.uuid",
    "config.guestId",
    "config.version",
    "config.template",
    "config.changeTrackingEnabled",
    "config.hardware.device",
    "capability.changeTrackingSupported",
    "runtime.powerState",
    "runtime.host",
    "runtime.consolidationNeeded",
    "resourcePool",
    "datastore",
    "customValue",
    "snapshot",
]

_CONTAINERS = [
    vim.Folder,
    vim.Datacenter,
    vim.ComputeResource,
    vim.HostSystem,
    vim.ResourcePool,
    vim.Datastore,
    vim.Network,
]

_CONTROLLER_KINDS: tuple[tuple[type, str], ...] = (
    (vim.vm.device.ParaVirtualSCSIController, "pvscsi"),
    (vim.vm.device.VirtualLsiLogicSASController, "lsilogic-sas"),
    (vim.vm.device.VirtualLsiLogicController, "lsilogic"),
    (vim.vm.device.VirtualBusLogicController, "buslogic"),
    (vim.vm.device.VirtualAHCIController, "sata"),
    (vim.vm.device.VirtualNVMEController, "nvme"),
    (vim.vm.device.VirtualIDEController, "ide"),
)


def controller_kind(dev: Any) -> str:
    for cls, kind in _CONTROLLER_KINDS:
        if isinstance(dev, cls):
            return kind
    return type(dev).__name__


def moid(ref: Any) -> str:
    return str(ref._moId) if ref is not None else ""


def retrieve(
    si: vim.ServiceInstance,
    types: Sequence[type],
    props: Mapping[type, Sequence[str]],
    page: int = PAGE,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """``(object, {property: value})`` of every object of ``types``, page by page."""
    content = si.RetrieveContent()
    assert content.viewManager is not None, "a vCenter always has a ViewManager"
    view = content.viewManager.CreateContainerView(content.rootFolder, list(types), True)
    q = vmodl.query.PropertyCollector
    try:
        spec = q.FilterSpec(
            objectSet=[
                q.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        q.TraversalSpec(
                            name="view", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[q.PropertySpec(type=t, pathSet=list(p)) for t, p in props.items()],
        )
        pc = content.propertyCollector
        result = pc.RetrievePropertiesEx([spec], q.RetrieveOptions(maxObjects=page))
        while result:
            for obj in result.objects:
                yield obj.obj, {p.name: p.val for p in obj.propSet or ()}
            if not result.token:
                break
            result = pc.ContinueRetrievePropertiesEx(result.token)
    finally:
        view.Destroy()


@dataclass
class _Node:
    name: str
    parent: str
    kind: str


class InventoryTree:
    """Names and parents of every container: inventory paths resolved in memory."""

    def __init__(self, si: vim.ServiceInstance) -> None:
        self.nodes: dict[str, _Node] = {}
        for obj, p in retrieve(si, _CONTAINERS, {vim.ManagedEntity: ["name", "parent"]}):
            self.nodes[moid(obj)] = _Node(
                p.get("name", ""), moid(p.get("parent")), type(obj).__name__
            )
        self._paths: dict[str, str] = {}

    def name(self, ref: str) -> str:
        node = self.nodes.get(ref)
        return node.name if node else ""

    def path(self, ref: str) -> str:
        """``/DC0/vm/Production/Web``: the root folder is left out, as in govc."""
        if ref in self._paths:
            return self._paths[ref]
        node = self.nodes.get(ref)
        out = self.path(node.parent) + "/" + node.name if node and node.parent else ""
        self._paths[ref] = out
        return out

    def ancestor(self, ref: str, kind: str) -> str:
        seen = 0
        while ref and seen < 64:
            node = self.nodes.get(ref)
            if node is None:
                return ""
            if node.kind == kind:
                return ref
            ref, seen = node.parent, seen + 1
        return ""


def _hardware_version(version: str) -> int:
    m = re.fullmatch(r"vmx-(\d+)", version or "")
    return int(m.group(1)) if m else 0


def _disks_and_nics(
    devices: Sequence[Any], tree: InventoryTree
) -> tuple[tuple[DiskRecord, ...], tuple[NicRecord, ...]]:
    controllers = {
        int(d.key): f"{controller_kind(d)}:{d.busNumber}"
        for d in devices
        if isinstance(d, vim.vm.device.VirtualController)
    }
    disks, nics = [], []
    for d in devices:
        label = d.deviceInfo.label if d.deviceInfo else ""
        if isinstance(d, vim.vm.device.VirtualDisk):
            b = d.backing
            disks.append(
                DiskRecord(
                    key=d.key,
                    label=label,
                    capacity=int(d.capacityInBytes or (d.capacityInKB or 0) * 1024),
                    backing_file=str(getattr(b, "fileName", "") or ""),
                    disk_uuid=str(getattr(b, "uuid", "") or ""),
                    mode=str(getattr(b, "diskMode", "") or "persistent"),
                    controller_key=int(d.controllerKey or 0),
                    unit_number=int(d.unitNumber or 0),
                    thin=bool(getattr(b, "thinProvisioned", False)),
                    change_id=str(getattr(b, "changeId", "") or ""),
                    datastore=tree.name(moid(getattr(b, "datastore", None))),
                    controller=controllers.get(int(d.controllerKey or 0), ""),
                )
            )
        elif isinstance(d, vim.vm.device.VirtualEthernetCard):
            nics.append(
                NicRecord(
                    key=d.key,
                    label=label,
                    network=_network_of(d.backing, tree),
                    mac_address=str(d.macAddress or ""),
                    mac_type=str(d.addressType or "generated"),
                )
            )
    return tuple(disks), tuple(nics)


def _network_of(backing: Any, tree: InventoryTree) -> str:
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        # The portgroup key is the portgroup's moref.
        return tree.name(str(backing.port.portgroupKey)) or str(backing.port.portgroupKey)
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
        return tree.name(moid(backing.network)) or str(backing.deviceName or "")
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
        return str(backing.opaqueNetworkId or "")
    return ""


def _snapshots(info: Any) -> tuple[SnapshotRecord, ...]:
    out: list[SnapshotRecord] = []

    def walk(nodes: Sequence[Any], parent: str) -> None:
        for n in nodes or ():
            ref = moid(n.snapshot)
            description = str(n.description or "")
            out.append(
                SnapshotRecord(
                    moref=ref,
                    name=str(n.name),
                    description=description,
                    created=n.createTime.isoformat() if n.createTime else "",
                    quiesced=bool(n.quiesced),
                    parent=parent,
                    backup_uid=backup_uid_of(str(n.name), description),
                )
            )
            walk(n.childSnapshotList, ref)

    if info is not None:
        walk(info.rootSnapshotList, "")
    return tuple(out)


def custom_field_names(si: vim.ServiceInstance) -> dict[int, str]:
    manager = si.RetrieveContent().customFieldsManager
    if manager is None:
        return {}
    return {
        int(f.key): str(f.name)
        for f in manager.field or ()
        if f.managedObjectType in (None, vim.VirtualMachine)
    }


def record_from_properties(
    moref: str,
    p: Mapping[str, Any],
    tree: InventoryTree,
    fields: Mapping[int, str],
    tags: Sequence[str] = (),
) -> VMRecord:
    host = moid(p.get("runtime.host"))
    compute = tree.nodes[host].parent if host in tree.nodes else ""
    cluster = (
        compute
        if tree.nodes.get(compute, _Node("", "", "")).kind.endswith("ClusterComputeResource")
        else ""
    )
    folder = moid(p.get("parent"))
    disks, nics = _disks_and_nics(p.get("config.hardware.device") or (), tree)
    attrs = {
        fields[v.key]: str(v.value)
        for v in p.get("customValue") or ()
        if v.key in fields and getattr(v, "value", None) is not None
    }
    return VMRecord(
        moref=moref,
        name=str(p.get("name", "")),
        instance_uuid=str(p.get("config.instanceUuid") or ""),
        bios_uuid=str(p.get("config.uuid") or ""),
        power_state=str(p.get("runtime.powerState") or "poweredOff"),
        guest_id=str(p.get("config.guestId") or ""),
        hardware_version=_hardware_version(str(p.get("config.version") or "")),
        cbt_supported=bool(p.get("capability.changeTrackingSupported")),
        cbt_enabled=bool(p.get("config.changeTrackingEnabled")),
        template=bool(p.get("config.template")),
        folder_path=tree.path(folder),
        datacenter=tree.name(tree.ancestor(folder, "vim.Datacenter")),
        cluster=tree.name(cluster),
        cluster_path=tree.path(cluster),
        host=tree.name(host),
        resource_pool=tree.path(moid(p.get("resourcePool"))),
        datastores=tuple(sorted(tree.name(moid(d)) for d in p.get("datastore") or ())),
        disks=disks,
        nics=nics,
        custom_attributes=attrs,
        tags=tuple(sorted(tags)),
        snapshots=_snapshots(p.get("snapshot")),
        consolidation_needed=bool(p.get("runtime.consolidationNeeded")),
    )


def vm_objects(si: vim.ServiceInstance) -> list[Any]:
    """Every VM and template, as managed objects and no property: the ``view`` of one
    ContainerView, read in one round trip."""
    content = si.RetrieveContent()
    assert content.viewManager is not None, "a vCenter always has a ViewManager"
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def _chunk_spec(vms: Sequence[Any], props: Sequence[str]) -> Any:
    q = vmodl.query.PropertyCollector
    return q.FilterSpec(
        objectSet=[q.ObjectSpec(obj=vm) for vm in vms],
        propSet=[q.PropertySpec(type=vim.VirtualMachine, pathSet=list(props))],
    )


def _fetch_chunk(pc: Any, vms: Sequence[Any], props: Sequence[str]) -> prefetch.Fetched:
    options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=len(vms))
    return prefetch.fetch(pc, [_chunk_spec(vms, props)], options)


def _retrieve_chunk(
    pc: Any,
    vms: Sequence[Any],
    props: Sequence[str],
    fetched: prefetch.Fetched | None = None,
) -> list[tuple[Any, dict[str, Any]]]:
    """The properties of ``vms`` (``fetched``: the first answer, read already), less
    those that no longer exist: vSphere refuses a retrieval naming a missing object
    (ManagedObjectNotFound, the object in the fault), so the chunk is asked again
    without it."""
    wanted = list(vms)
    while True:
        try:
            if fetched is not None:
                result = prefetch.decode(pc, fetched)
            else:
                options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=len(wanted))
                result = pc.RetrievePropertiesEx([_chunk_spec(wanted, props)], options)
            break
        except vmodl.fault.ManagedObjectNotFound as fault:
            fetched = None
            gone = moid(fault.obj)
            rest = [vm for vm in wanted if moid(vm) != gone]
            if len(rest) == len(wanted):  # not one of ours: a fault to report
                raise
            if not rest:
                return []
            wanted = rest
    out: list[tuple[Any, dict[str, Any]]] = []
    while result:
        out.extend((o.obj, {p.name: p.val for p in o.propSet or ()}) for o in result.objects)
        if not result.token:
            break
        result = pc.ContinueRetrievePropertiesEx(result.token)
    return out


def retrieve_vms(
    si: vim.ServiceInstance,
    props: Sequence[str],
    chunk: int = CHUNK,
    in_flight: int = IN_FLIGHT,
    listed: Callable[[Sequence[str]], None] | None = None,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """``(vm, {property: value})`` of every VM and template, in the order of the listing.
    Up to ``in_flight`` chunks are asked for and read in a pool's threads; each is decoded
    here, one at a time (:mod:`.prefetch`), and the next is asked for once the one
    decoded last is consumed: at most one chunk's objects and ``in_flight`` responses'
    bytes are held at a time."""
    vms = vm_objects(si)
    if listed is not None:
        listed([moid(vm) for vm in vms])
    pc = si.RetrieveContent().propertyCollector
    if not prefetch.supported(pc):  # pyVmomi's own call per chunk, one after the other
        for part in (vms[i : i + chunk] for i in range(0, len(vms), chunk)):
            yield from _retrieve_chunk(pc, part, props)
        return
    chunks = iter([vms[i : i + chunk] for i in range(0, len(vms), chunk)])
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="vmguard-sweep") as pool:
        pending = deque(
            (part, pool.submit(_fetch_chunk, pc, part, props))
            for part in itertools.islice(chunks, in_flight)
        )
        try:
            while pending:
                part, future = pending.popleft()
                found = _retrieve_chunk(pc, part, props, future.result())
                del future
                yield from found
                del found
                for part in itertools.islice(chunks, 1):
                    pending.append((part, pool.submit(_fetch_chunk, pc, part, props)))
        finally:
            for _, future in pending:
                future.cancel()


def discover(
    si: vim.ServiceInstance,
    tags: Mapping[str, Sequence[str]] | None = None,
    *,
    chunk: int = CHUNK,
    in_flight: int = IN_FLIGHT,
    listed: Callable[[Sequence[str]], None] | None = None,
) -> list[VMRecord]:
    """Every VM and template, sorted by name; ``tags`` maps a VM moref to "cat:tag"s.
    ``chunk`` VMs per request, ``in_flight`` requests at a time; ``listed`` is called
    with the listed morefs before any VM's properties are read."""
    tree = InventoryTree(si)
    fields = custom_field_names(si)
    tags = tags or {}
    records = [
        record_from_properties(moid(obj), p, tree, fields, tags.get(moid(obj), ()))
        for obj, p in retrieve_vms(si, VM_PROPERTIES, chunk, in_flight, listed)
    ]
    return sorted(records, key=lambda vm: (vm.name, vm.moref))


def find_vm(si: vim.ServiceInstance, moref: str) -> vim.VirtualMachine:
    """The managed object of a VM by moref (no round trip until a property is read)."""
    return vim.VirtualMachine(moref, si._stub)


def vm_record(si: vim.ServiceInstance, moref: str) -> VMRecord:
    """One VM's record, fetched directly (after a reconfigure, say)."""
    q = vmodl.query.PropertyCollector
    vm = find_vm(si, moref)
    spec = q.FilterSpec(
        objectSet=[q.ObjectSpec(obj=vm)],
        propSet=[q.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PROPERTIES)],
    )
    found = si.RetrieveContent().propertyCollector.RetrieveContents([spec])
    if not found:
        raise LookupError(f"no VM {moref}")
    props = {p.name: p.val for p in found[0].propSet or ()}
    return record_from_properties(moref, props, InventoryTree(si), custom_field_names(si))


def vm_by_instance_uuid(si: vim.ServiceInstance, instance_uuid: str) -> str:
    """The moref of the VM (or template) with this instance UUID, or "" when vCenter
    knows none: one ``SearchIndex.FindByUuid`` call, whatever the size of the estate."""
    index: Any = si.RetrieveContent().searchIndex
    return moid(index.FindByUuid(None, instance_uuid, True, True))


def vm_record_if_any(si: vim.ServiceInstance, moref: str) -> VMRecord | None:
    """One VM's record, or None when there is no such VM (any more)."""
    try:
        return vm_record(si, moref)
    except (LookupError, vmodl.fault.ManagedObjectNotFound):
        return None


def find_by_name(records: Sequence[VMRecord], name_or_moref: str) -> VMRecord:
    """A VM by moref, instance UUID or exact name (a name must be unique)."""
    for r in records:
        if name_or_moref in (r.moref, r.instance_uuid):
            return r
    named = [r for r in records if r.name == name_or_moref]
    if len(named) == 1:
        return named[0]
    if named:
        raise LookupError(f"{len(named)} VMs are named {name_or_moref!r}: give the moref")
    raise LookupError(f"no VM {name_or_moref!r}")
