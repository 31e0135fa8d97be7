"""Client side of the lab's vSphere simulator (``lab/vsphere``, binary ``vmguard-vcsim``).

Two things live here:

- :func:`vsim_command` builds the command line the lab supervisor starts. The program
  writes ``STATE_DIR/ready.json`` (``sdk_url``, ``rest_url``, ``control_url``,
  ``tls_cert``, ``pid``) once both listeners serve, and exits cleanly on SIGTERM. The
  SDK credentials come from the environment variables named by
  :data:`USERNAME_ENV` and :data:`PASSWORD_ENV`, never from the command line.
- :class:`VSimControl` talks to the simulator's control endpoint (plain HTTP JSON on
  loopback), through which tests look at disks and act as the guest or the storage
  admin (guest writes, new disk images, resizes, CBT resets, lost CBT history), and set
  a VM's faults (failing quiesced snapshots, consolidation needed or failing), and read
  the programs the lab guest ran (:meth:`VSimControl.guest_processes`).

Invariants: the control endpoint is for the lab only and carries no credentials; every
error it answers is raised as :class:`VSimRequestError` with the HTTP status and the
simulator's message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from vmguard_lab.errors import LabError

USERNAME_ENV = "VMGUARD_VCSIM_USERNAME"
PASSWORD_ENV = "VMGUARD_VCSIM_PASSWORD"

CBT_BLOCK_SIZE = 64 * 1024
"""Granularity of the areas QueryChangedDiskAreas reports."""

DEFAULT_TIMEOUT = 60.0


class VSimRequestError(LabError):
    """The control endpoint refused a request or failed to carry it out."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"vsim control: HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class VSimDisk:
    """A VM disk as the simulator holds it; ``path`` is the raw image on this machine."""

    key: int
    label: str
    file_name: str
    capacity: int
    path: str
    disk_uuid: str
    change_id: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VSimDisk:
        return cls(
            key=int(d["key"]),
            label=str(d["label"]),
            file_name=str(d["fileName"]),
            capacity=int(d["capacity"]),
            path=str(d["path"]),
            disk_uuid=str(d["diskUuid"]),
            change_id=d.get("changeId"),
        )


@dataclass(frozen=True)
class VSimVM:
    """A VM of the simulated inventory with its CBT state."""

    moref: str
    name: str
    instance_uuid: str
    cbt_enabled: bool
    cbt_active: bool
    hardware_version: str
    power_state: str
    template: bool
    disks: tuple[VSimDisk, ...]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VSimVM:
        return cls(
            moref=str(d["moref"]),
            name=str(d["name"]),
            instance_uuid=str(d["instanceUuid"]),
            cbt_enabled=bool(d["cbtEnabled"]),
            cbt_active=bool(d["cbtActive"]),
            hardware_version=str(d["hardwareVersion"]),
            power_state=str(d["powerState"]),
            template=bool(d.get("template", False)),
            disks=tuple(VSimDisk.from_json(x) for x in d["disks"]),
        )


@dataclass(frozen=True)
class FrozenDisk:
    """A snapshot's point-in-time copy of one disk.

    ``file_name`` is the datastore path the snapshot's config names (what hot-add
    attaches); ``path`` is the raw image on this machine.
    """

    key: int
    file_name: str
    path: str
    capacity: int
    change_id: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FrozenDisk:
        return cls(
            key=int(d["key"]),
            file_name=str(d["fileName"]),
            path=str(d["path"]),
            capacity=int(d["capacity"]),
            change_id=d.get("changeId"),
        )


@dataclass(frozen=True)
class VSimFaults:
    """A VM's fault settings in the simulator (lab/vsphere/README.md, "Faults").

    ``quiesce_fault``: a quiesced snapshot fails with ApplicationQuiesceFault.
    ``consolidation_needed``: the VM's ``runtime.consolidationNeeded``.
    ``consolidate_fault``: ConsolidateVMDisks_Task fails with FileLocked.
    ``tools_down``: the guest's VMware Tools never come up after power-on.
    """

    quiesce_fault: bool
    consolidation_needed: bool
    consolidate_fault: bool
    tools_down: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VSimFaults:
        return cls(
            quiesce_fault=bool(d["quiesceFault"]),
            consolidation_needed=bool(d["consolidationNeeded"]),
            consolidate_fault=bool(d["consolidateFault"]),
            tools_down=bool(d.get("toolsDown")),
        )


@dataclass(frozen=True)
class GuestProcess:
    """One StartProgramInGuest call on a lab VM (refused ones have pid 0 and ``fault``)."""

    vm: str
    pid: int
    program: str
    args: tuple[str, ...]
    user: str
    start_time: datetime
    end_time: datetime | None
    exit_code: int | None
    terminated: bool
    fault: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GuestProcess:
        end = d.get("endTime")
        return cls(
            vm=d["vm"],
            pid=int(d["pid"]),
            program=d["program"],
            args=tuple(d.get("args") or ()),
            user=d["user"],
            start_time=_parse_time(d["startTime"]),
            end_time=_parse_time(end) if end else None,
            exit_code=None if d.get("exitCode") is None else int(d["exitCode"]),
            terminated=bool(d.get("terminated")),
            fault=d.get("fault", ""),
        )


def _parse_time(text: str) -> datetime:
    """An RFC 3339 time from Go (nanoseconds cut to microseconds), timezone-aware."""
    m = re.fullmatch(r"([^.]+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if m is None:
        raise LabError(f"vsim control: bad time {text!r}")
    frac = f".{m.group(2)[:6]}" if m.group(2) else ""
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + frac + zone)


class VSimControl:
    """Small client of the simulator's control endpoint."""

    def __init__(self, control_url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base = control_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.session.request(method, self.base + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as e:
            raise LabError(f"vsim control: {method} {path}: {e}") from e
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400:
            msg = body.get("error") if isinstance(body, dict) else resp.text
            raise VSimRequestError(resp.status_code, str(msg))
        return body

    @staticmethod
    def _disk_path(moref: str, key: int) -> str:
        return f"/vms/{quote(moref, safe='')}/disks/{int(key)}"

    def healthy(self) -> bool:
        try:
            return bool(self._call("GET", "/healthz").get("status") == "ok")
        except LabError:
            return False

    def vms(self) -> list[VSimVM]:
        return [VSimVM.from_json(x) for x in self._call("GET", "/vms")]

    def vm(self, moref: str) -> VSimVM:
        return VSimVM.from_json(self._call("GET", f"/vms/{quote(moref, safe='')}"))

    def disk(self, moref: str, key: int) -> VSimDisk:
        return VSimDisk.from_json(self._call("GET", self._disk_path(moref, key)))

    def write(self, moref: str, key: int, offset: int, data: bytes) -> VSimDisk:
        """Write ``data`` into the live disk at ``offset`` as the guest would."""
        body = self._call(
            "POST",
            self._disk_path(moref, key) + "/write",
            params={"offset": str(offset)},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return VSimDisk.from_json(body)

    def put_image(self, moref: str, key: int, path: str) -> VSimDisk:
        """Put the raw image at ``path`` behind the disk (capacity follows; new CBT epoch)."""
        body = self._call("PUT", self._disk_path(moref, key) + "/image", json={"path": path})
        return VSimDisk.from_json(body)

    def resize(self, moref: str, key: int, capacity: int) -> VSimDisk:
        """Grow the disk to ``capacity`` bytes; this breaks the CBT chain."""
        body = self._call(
            "POST", self._disk_path(moref, key) + "/resize", json={"capacity": capacity}
        )
        return VSimDisk.from_json(body)

    def reset_cbt(self, moref: str, key: int) -> VSimDisk:
        """Start a new CBT epoch on the disk, as a CBT reset on ESXi does."""
        return VSimDisk.from_json(self._call("POST", self._disk_path(moref, key) + "/reset-cbt"))

    def lose_cbt_history(self, moref: str, key: int) -> VSimDisk:
        """Keep the disk's CBT epoch but make every change id issued so far unknown."""
        body = self._call("POST", self._disk_path(moref, key) + "/lose-cbt-history")
        return VSimDisk.from_json(body)

    def faults(self, moref: str) -> VSimFaults:
        return VSimFaults.from_json(self._call("GET", f"/vms/{quote(moref, safe='')}/faults"))

    def set_faults(
        self,
        moref: str,
        *,
        quiesce_fault: bool | None = None,
        consolidation_needed: bool | None = None,
        consolidate_fault: bool | None = None,
        tools_down: bool | None = None,
    ) -> VSimFaults:
        """Set the settings given (None leaves one as it is); returns them all."""
        given = {
            "quiesceFault": quiesce_fault,
            "consolidationNeeded": consolidation_needed,
            "consolidateFault": consolidate_fault,
            "toolsDown": tools_down,
        }
        body = {k: v for k, v in given.items() if v is not None}
        path = f"/vms/{quote(moref, safe='')}/faults"
        return VSimFaults.from_json(self._call("POST", path, json=body))

    def guest_processes(self, moref: str) -> list[GuestProcess]:
        """Every StartProgramInGuest call on the VM, in call order (lab only)."""
        body = self._call("GET", f"/vms/{quote(moref, safe='')}/guest/processes")
        return [GuestProcess.from_json(x) for x in body]

    def snapshot_disks(self, snapshot_moref: str) -> list[FrozenDisk]:
        body = self._call("GET", f"/snapshots/{quote(snapshot_moref, safe='')}/disks")
        return [FrozenDisk.from_json(x) for x in body]


def vsim_command(
    binary: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    sdk_port: int,
    control_port: int,
    vms: int,
    seed: int,
    disk_capacity: int,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The command line of ``vmguard-vcsim``; both servers listen on 127.0.0.1 only.

    Without ``cert`` and ``key`` the simulator makes a self-signed certificate and names
    its file in ready.json (``tls_cert``).
    """
    if (cert is None) != (key is None):
        raise LabError("vsim: a TLS certificate and its key go together")
    cmd = [
        os.fspath(binary),
        "-dir", os.fspath(state_dir),
        "-sdk-addr", f"127.0.0.1:{int(sdk_port)}",
        "-control-addr", f"127.0.0.1:{int(control_port)}",
        "-vms", str(int(vms)),
        "-seed", str(int(seed)),
        "-disk-capacity", str(int(disk_capacity)),
    ]  # fmt: skip
    if cert is not None and key is not None:
        cmd += ["-tls-cert", os.fspath(cert), "-tls-key", os.fspath(key)]
    return cmd


class LabDiskLocator:
    """The lab's :class:`vmguard.vm.access.DiskLocator`: paths from the simulator.

    Where production runs nbdkit's VDDK plugin against vCenter, the lab serves the raw
    image the simulator reports with nbdkit's ``file`` plugin; a hot-added disk's
    "device" is the image behind the proxy VM's new disk. Writes into a live disk bypass
    the simulator's CBT. With ``cbt="reset"`` (the default) the disk's CBT is reset after
    writing (a new epoch: every later backup sees a broken chain). With ``cbt="keep"``
    CBT is left alone, as a restore through VDDK may leave it: the disk's change id does
    not move although its bytes changed, which is what vmguard itself must notice
    (docs/cbt-chain.md, "After an in-place restore").
    ``proxy_uuid`` is the BIOS UUID the "proxy" claims (a lab VM's, or "" for none).
    """

    CBT_MODES = ("reset", "keep")

    def __init__(self, control: VSimControl, proxy_uuid: str = "", cbt: str = "reset") -> None:
        if cbt not in self.CBT_MODES:
            raise LabError(f"lab locator: cbt must be one of {', '.join(self.CBT_MODES)}")
        self.control = control
        self.proxy_uuid = proxy_uuid
        self.cbt = cbt

    def snapshot_disk(self, vm_moref: str, snapshot_moref: str, key: int, file_name: str) -> Any:
        from vmguard.transport.nbd import NbdkitServer

        frozen = {d.key: d for d in self.control.snapshot_disks(snapshot_moref)}
        return NbdkitServer.file(Path(frozen[key].path))

    def live_disk(self, vm_moref: str, key: int, file_name: str) -> Any:
        from vmguard.transport.nbd import NbdkitServer

        control, disk = self.control, self.control.disk(vm_moref, key)
        if self.cbt == "keep":
            return NbdkitServer("file", [f"file={disk.path}"], readonly=False)

        class _Tracked(NbdkitServer):
            def close(self) -> None:
                super().close()
                if control.disk(vm_moref, key).change_id is not None:
                    control.reset_cbt(vm_moref, key)

        server = _Tracked("file", [f"file={disk.path}"], readonly=False)
        return server

    def attached_device(self, proxy_moref: str, disk: Any) -> str:
        for d in self.control.vm(proxy_moref).disks:
            if d.file_name == disk.file_name:
                return d.path
        raise LabError(f"disk {disk.file_name} is not attached to {proxy_moref}")

    def proxy_bios_uuid(self) -> str:
        return self.proxy_uuid


def disk_locator(arg: str, endpoint: Any) -> LabDiskLocator:
    """The ``lab`` disk locator, registered in the product's entry-point group
    ``vmguard.disk_locators`` (lab/python/pyproject.toml): a proxy Job of the lab runs with
    ``VMGUARD_PROXY_LOCATOR=lab:<control URL>``, ``vmguard vm`` with ``--locator lab``.

    ``arg`` is a comma-separated list of: the simulator's control URL (``http://...``;
    default: the running lab's, from ``$VMGUARD_LAB_DIR``) and ``proxy=<BIOS UUID>``, the
    lab VM the caller claims to run on (what hot-add needs; default: none), and
    ``cbt=reset|keep``, what writes into a live disk do to its CBT (default ``reset``; see
    :class:`LabDiskLocator`). ``endpoint`` is unused: the simulator's control API says
    where each disk's image is.
    """
    control_url, proxy_uuid, cbt = "", "", "reset"
    for item in filter(None, (part.strip() for part in arg.split(","))):
        if item.startswith("proxy="):
            proxy_uuid = item.removeprefix("proxy=")
        elif item.startswith("cbt="):
            cbt = item.removeprefix("cbt=")
        elif item.startswith(("http://", "https://")):
            control_url = item
        else:
            raise LabError(
                f"lab locator: {item!r} is neither a control URL, proxy=<uuid> nor cbt=<mode>"
            )
    if not control_url:
        from vmguard_lab.lab import Lab

        control_url = Lab().state().data["vsphere"]["control_url"]
    return LabDiskLocator(VSimControl(control_url), proxy_uuid=proxy_uuid, cbt=cbt)
