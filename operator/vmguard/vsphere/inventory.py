"""Inventory queries: every VM in one pass through a ContainerView and PropertyCollector.

Only the properties a caller needs are fetched, in pages, so a sweep of thousands of
VMs costs a handful of round trips rather than one per VM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

_PAGE = 1000


@dataclass(frozen=True)
class VMSummary:
    moref: str
    name: str
    instance_uuid: str
    power_state: str
    hardware_version: str
    cbt_enabled: bool
    template: bool


def _collect(si: vim.ServiceInstance, props: list[str]) -> list[tuple[str, dict[str, Any]]]:
    content = si.RetrieveContent()
    views = content.viewManager
    assert views is not None, "a vCenter always has a ViewManager"
    view = views.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        vmodl.query.PropertyCollector.TraversalSpec(
                            name="view", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=props)
            ],
        )
        pc = content.propertyCollector
        options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=_PAGE)
        result = pc.RetrievePropertiesEx([spec], options)
        out: list[tuple[str, dict[str, Any]]] = []
        while result:
            for obj in result.objects:
                out.append((obj.obj._moId, {p.name: p.val for p in obj.propSet}))
            if not result.token:
                break
            result = pc.ContinueRetrievePropertiesEx(result.token)
        return out
    finally:
        view.Destroy()


def vm_summaries(si: vim.ServiceInstance) -> list[VMSummary]:
    props = [
        "name",
        "config.instanceUuid",
        "runtime.powerState",
        "config.version",
        "config.changeTrackingEnabled",
        "config.template",
    ]
    return sorted(
        (
            VMSummary(
                moref=moref,
                name=p.get("name", ""),
                instance_uuid=p.get("config.instanceUuid", ""),
                power_state=str(p.get("runtime.powerState", "")),
                hardware_version=p.get("config.version", ""),
                cbt_enabled=bool(p.get("config.changeTrackingEnabled")),
                template=bool(p.get("config.template")),
            )
            for moref, p in _collect(si, props)
        ),
        key=lambda vm: vm.name,
    )
