"""Container mode of the lab node agent: a pod's containers run from their images by
podman with runc, as a kubelet with a CRI runtime would run them (lab only).

A pod annotated ``lab.vmguard.io/runtime: container`` (:data:`ANNOTATION`) runs here;
every other pod keeps the node agent's process mode. For one container this module
turns the pod spec into ``podman create`` flags (:func:`create_argv`, pure):

- the image from the local image store, never pulled (``--pull=never``: there is no
  registry; ``make lab-images`` builds them); ``command`` replaces the image's
  entrypoint, ``args`` its command, ``workingDir`` its working directory;
- the security context, container over pod: ``runAsUser``/``runAsGroup`` (``--user``),
  ``fsGroup`` and ``supplementalGroups`` (``--group-add``), ``runAsNonRoot`` checked
  against the user the container would run as (refused like a kubelet refuses: a
  non-numeric image user cannot be verified), ``readOnlyRootFilesystem`` (``--read-only``
  with no tmpfs added: only the pod's volumes are writable), ``privileged``,
  ``allowPrivilegeEscalation: false`` (``no-new-privileges``), ``capabilities``
  add/drop, ``seccompProfile`` (``Unconfined``, or unset as a kubelet without
  SeccompDefault, runs unconfined; ``RuntimeDefault`` is the runtime's profile);
- the pod's volumes as bind mounts of what :class:`~vmguard_lab.podfiles.PodMaterializer`
  prepared (Secret, ConfigMap, projected service-account token, emptyDir, hostPath,
  PVC), read-only where asked; environment values through podman's own environment
  (``--env NAME``), never on a command line;
- host networking (the lab's peers listen on 127.0.0.1) and explicit ulimits.

The lab's *shares* (the simulator's disk directory) are bind-mounted at the same path
into every container: they stand for the network path to ESXi (NBD/VDDK in production);
the lab's disk locator opens the images there. The user a container runs as gets read
and write access to them by an ACL (:meth:`ContainerRuntime.grant_shares`).

Volumes are made readable as a kubelet makes them (:func:`adapt_volumes`): emptyDirs are
world-writable, projected tokens belong to the pod's single ``runAsUser``, and with an
``fsGroup`` every volume file belongs to that group.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
from pathlib import Path
from typing import Any

from vmguard_lab.podfiles import Mount, PodFiles

ANNOTATION = "lab.vmguard.io/runtime"
CONTAINER = "container"
# What podman reads of its environment for its own configuration (storage, registries,
# runtime directories): kept for the one call that otherwise gets the pod's environment.
PODMAN_ENV = ("HOME", "TMPDIR")
PODMAN_ENV_PREFIXES = ("CONTAINERS_", "XDG_")
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")


class ContainerConfigError(Exception):
    """The pod cannot be run as asked (a kubelet's CreateContainerConfigError)."""


def wants_containers(pod: dict[str, Any]) -> bool:
    annotations = pod["metadata"].get("annotations") or {}
    return annotations.get(ANNOTATION) == CONTAINER


def container_name(pod: dict[str, Any], container: dict[str, Any]) -> str:
    meta = pod["metadata"]
    return f"vmguard-lab-{meta['uid'][:13]}-{container['name']}"


def _ulimits() -> list[str]:
    # Explicit, and no higher than the agent's hard limits: runc cannot raise them.
    out = []
    for name, res, most in (
        ("nofile", resource.RLIMIT_NOFILE, 65536),
        ("nproc", resource.RLIMIT_NPROC, 32768),
    ):
        hard = resource.getrlimit(res)[1]
        value = most if hard == resource.RLIM_INFINITY else min(hard, most)
        out.append(f"--ulimit={name}={value}:{value}")
    return out


def effective_security(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The container's security context with the pod's user settings under it."""
    pod_sc = pod["spec"].get("securityContext") or {}
    sc = dict(container.get("securityContext") or {})
    for key in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile"):
        if key not in sc and key in pod_sc:
            sc[key] = pod_sc[key]
    return sc


def _user(sc: dict[str, Any], image_user: str) -> tuple[str, int | None]:
    """(``--user`` value or "", the uid the process will have, None when unknown)."""
    img_uid_s, _, img_gid = image_user.partition(":")
    uid: int | None
    if "runAsUser" in sc:
        uid = int(sc["runAsUser"])
    elif img_uid_s == "":
        uid = 0
    else:
        uid = int(img_uid_s) if img_uid_s.isdigit() else None
    if sc.get("runAsNonRoot"):
        if uid is None:
            raise ContainerConfigError(
                f"container has runAsNonRoot and image has non-numeric user ({img_uid_s}),"
                " cannot verify user is non-root"
            )
        if uid == 0:
            raise ContainerConfigError("container has runAsNonRoot and image will run as root")
    if "runAsUser" not in sc and "runAsGroup" not in sc:
        return "", uid
    user = str(uid) if uid is not None else img_uid_s
    if "runAsGroup" in sc:
        return f"{user}:{sc['runAsGroup']}", uid
    # runAsUser alone: the group is that user's in the image's /etc/passwd (as with a CRI
    # runtime), not the image's USER group; podman looks it up the same way.
    return (user if "runAsUser" in sc else f"{user}:{img_gid}" if img_gid else user), uid


def create_argv(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    name: str,
    image_user: str,
    env_names: list[str],
    mounts: list[Mount],
    shares: list[Path],
) -> list[str]:
    """The ``podman create`` command for one container of ``pod`` (pure)."""
    sc = effective_security(pod, container)
    pod_sc = pod["spec"].get("securityContext") or {}
    argv = [*PODMAN, "create", "--name", name, "--pull=never", "--network=host", *_ulimits()]
    argv += ["--label", f"io.kubernetes.pod.uid={pod['metadata']['uid']}"]
    user, _ = _user(sc, image_user)
    if user:
        argv += ["--user", user]
    groups = [*(pod_sc.get("supplementalGroups") or [])]
    if "fsGroup" in pod_sc:
        groups.append(pod_sc["fsGroup"])
    argv += [f"--group-add={g}" for g in groups]
    if sc.get("privileged"):
        argv.append("--privileged")
    if sc.get("readOnlyRootFilesystem"):
        argv += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    caps = sc.get("capabilities") or {}
    argv += [f"--cap-drop={c}" for c in caps.get("drop") or []]
    argv += [f"--cap-add={c}" for c in caps.get("add") or []]
    seccomp = (sc.get("seccompProfile") or {}).get("type", "Unconfined")
    if seccomp == "Unconfined":
        argv += ["--security-opt", "seccomp=unconfined"]
    elif seccomp == "Localhost":
        raise ContainerConfigError("seccompProfile Localhost is not supported by the lab")
    for m in mounts:
        opts = f"type=bind,source={m.source},destination={m.target}"
        argv += ["--mount", opts + (",ro=true" if m.readOnly else "")]
    for share in shares:
        argv += ["--mount", f"type=bind,source={share},destination={share}"]
    argv += [f"--env={n}" for n in env_names]
    if container.get("workingDir"):
        argv += ["--workdir", container["workingDir"]]
    if container.get("command"):
        argv += ["--entrypoint", json.dumps(list(container["command"]))]
    argv.append(container["image"])
    argv += list(container.get("args") or [])
    return argv


def adapt_volumes(pod: dict[str, Any], files: PodFiles) -> None:
    """Make prepared volumes usable by a non-root container, as a kubelet does."""
    spec = pod["spec"]
    pod_sc = spec.get("securityContext") or {}
    fs_group = pod_sc.get("fsGroup")
    uids = {effective_security(pod, c).get("runAsUser") for c in spec["containers"]}
    token_uid = next(iter(uids)) if len(uids) == 1 and None not in uids else None
    for vol in spec.get("volumes") or []:
        path = files.volumes.get(vol["name"])
        if path is None or "hostPath" in vol or "persistentVolumeClaim" in vol:
            continue
        if "emptyDir" in vol:
            path.chmod(0o777)
        if fs_group is not None:
            for p in (path, *path.rglob("*")):
                os.chown(p, -1, int(fs_group), follow_symlinks=False)
                p.chmod(p.stat().st_mode | 0o040 | (0o010 if p.is_dir() else 0))
    for token, _ in files.tokens:
        if token_uid is not None:
            os.chown(token, int(token_uid), -1)


class ContainerRuntime:
    """podman, for the node agent: create, run attached, inspect, stop, remove."""

    def __init__(self, shares: list[Path]) -> None:
        self.shares = shares

    def image_present(self, image: str) -> bool:
        """Whether ``image`` is in the node's image store (the lab pulls nothing)."""
        proc = subprocess.run([*PODMAN, "image", "exists", image], capture_output=True)
        return proc.returncode == 0

    def image_user(self, image: str) -> str:
        proc = subprocess.run(
            [*PODMAN, "image", "inspect", "--format", "{{.Config.User}}", image],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ContainerConfigError(
                f"image {image!r} is not in the node's image store (the lab pulls nothing:"
                " make lab-images)"
            )
        return proc.stdout.strip()

    def grant_shares(self, uid: int | None) -> None:
        """Read and write on the shares for ``uid``, and for files made there later."""
        if not uid:
            return
        for share in self.shares:
            subprocess.run(
                ["setfacl", "-R", "-m", f"u:{uid}:rwX", "-m", f"d:u:{uid}:rwX", str(share)],
                check=True,
            )

    def create(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        env: dict[str, str],
        mounts: list[Mount],
    ) -> str:
        name = container_name(pod, container)
        self.remove(name)
        image_user = self.image_user(container["image"])
        sc = effective_security(pod, container)
        self.grant_shares(_user(sc, image_user)[1])
        argv = create_argv(
            pod,
            container,
            name=name,
            image_user=image_user,
            env_names=sorted(env),
            mounts=mounts,
            shares=self.shares,
        )
        # Values reach podman through its environment: no secret on a command line. Its
        # own configuration stays (CONTAINERS_STORAGE_CONF, ...): the create must use the
        # store the image was built into and that start, inspect and rm use.
        penv = {
            k: v
            for k, v in os.environ.items()
            if k in PODMAN_ENV or k.startswith(PODMAN_ENV_PREFIXES)
        }
        penv = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **penv, **env}
        proc = subprocess.run(argv, env=penv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ContainerConfigError(proc.stderr.strip() or f"podman create {name} failed")
        return name

    def start(self, name: str, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*PODMAN, "start", "--attach", name],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def inspect(self, name: str) -> dict[str, Any]:
        """What the runtime reports of the container's identity and confinement (never
        its environment, which holds the pod's secret values)."""
        proc = subprocess.run([*PODMAN, "container", "inspect", name], capture_output=True)
        if proc.returncode != 0:
            return {}
        info = json.loads(proc.stdout)[0]
        host = info.get("HostConfig", {})
        return {
            "Id": info.get("Id"),
            "Name": info.get("Name"),
            "ImageName": info.get("ImageName"),
            "Image": info.get("Image"),
            "OCIRuntime": info.get("OCIRuntime"),
            "User": info.get("Config", {}).get("User"),
            "ExitCode": info.get("State", {}).get("ExitCode"),
            "EffectiveCaps": info.get("EffectiveCaps"),
            "BoundingCaps": info.get("BoundingCaps"),
            **{
                k: host.get(k)
                for k in (
                    "Privileged",
                    "ReadonlyRootfs",
                    "CapAdd",
                    "CapDrop",
                    "SecurityOpt",
                    "GroupAdd",
                    "NetworkMode",
                )
            },
            "Mounts": [
                {"Destination": m.get("Destination"), "RW": m.get("RW")}
                for m in info.get("Mounts") or []
            ],
        }

    def stop(self, name: str, grace: float) -> None:
        subprocess.run(
            [*PODMAN, "stop", "--time", str(max(0, int(grace))), name],
            capture_output=True,
        )

    def remove(self, name: str) -> None:
        subprocess.run([*PODMAN, "rm", "--force", "--ignore", name], capture_output=True)
