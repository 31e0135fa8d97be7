"""The node agent's container mode turns a pod spec into podman flags as a kubelet would
set up the container (pure: no podman runs here; the end-to-end run is
tests/images/test_install_restricted.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vmguard_lab.containers import ContainerConfigError, adapt_volumes, create_argv
from vmguard_lab.podfiles import Mount, PodFiles

pytestmark = pytest.mark.unit


def _pod(pod_sc: dict[str, Any], sc: dict[str, Any], **container: Any) -> dict[str, Any]:
    c = {"name": "proxy", "image": "localhost/vmguard-proxy:0.1.0", "securityContext": sc}
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "0123456789abcdef"},
        "spec": {"securityContext": pod_sc, "containers": [{**c, **container}]},
    }


def _argv(pod: dict[str, Any], image_user: str = "65532:65532", **kw: Any) -> list[str]:
    args: dict[str, Any] = {"name": "n", "image_user": image_user, "env_names": [],
                            "mounts": [], "shares": []}  # fmt: skip
    args.update(kw)
    return create_argv(pod, pod["spec"]["containers"][0], **args)


RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def test_restricted_context_becomes_user_read_only_no_caps_no_new_privileges() -> None:
    argv = _argv(_pod(RESTRICTED_POD, RESTRICTED), env_names=["S3_SECRET"])
    assert argv[argv.index("--user") + 1] == "65532:65532"
    assert "--group-add=65532" in argv
    assert {"--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL"} <= set(argv)
    assert argv[argv.index("--security-opt") + 1] == "no-new-privileges"
    assert "seccomp=unconfined" not in argv and "--privileged" not in argv
    assert "--network=host" in argv and "--pull=never" in argv
    # The value of an environment variable never appears: podman reads it from its own.
    assert "--env=S3_SECRET" in argv


def test_hotadd_context_becomes_privileged_root() -> None:
    sc = {"privileged": True, "runAsUser": 0, "runAsNonRoot": False}
    argv = _argv(_pod({"seccompProfile": {"type": "RuntimeDefault"}}, sc))
    assert "--privileged" in argv and argv[argv.index("--user") + 1] == "0"
    assert "--read-only" not in argv


@pytest.mark.parametrize(
    ("sc", "image_user", "message"),
    [
        ({"runAsNonRoot": True}, "", "image will run as root"),
        ({"runAsNonRoot": True}, "nonroot", "non-numeric user"),
        ({"runAsNonRoot": True, "runAsUser": 0}, "65532", "image will run as root"),
    ],
)
def test_run_as_non_root_is_checked_against_the_user_it_would_run_as(
    sc: dict[str, Any], image_user: str, message: str
) -> None:
    with pytest.raises(ContainerConfigError, match=message):
        _argv(_pod({}, sc), image_user=image_user)


def test_command_replaces_the_entrypoint_args_the_command_and_mounts_keep_read_only() -> None:
    pod = _pod({}, {}, command=["vmguard"], args=["proxy", "backup"], workingDir="/w")
    mounts = [Mount("/src/a", "/var/run/secrets/x", True), Mount("/src/b", "/scratch", False)]
    argv = _argv(pod, mounts=mounts, shares=[Path("/lab/vsphere")])
    assert json.loads(argv[argv.index("--entrypoint") + 1]) == ["vmguard"]
    assert argv[-3:] == ["localhost/vmguard-proxy:0.1.0", "proxy", "backup"]
    assert argv[argv.index("--workdir") + 1] == "/w"
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "--mount"]
    assert opts == [
        "type=bind,source=/src/a,destination=/var/run/secrets/x,ro=true",
        "type=bind,source=/src/b,destination=/scratch",
        "type=bind,source=/lab/vsphere,destination=/lab/vsphere",
    ]
    # No seccompProfile anywhere: unconfined, as a kubelet without SeccompDefault runs it.
    assert "seccomp=unconfined" in argv


def test_volumes_become_readable_as_a_kubelet_makes_them(tmp_path: Path) -> None:
    key = tmp_path / "key" / "key"
    key.parent.mkdir()
    key.write_text("k")
    key.chmod(0o400)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    token = tmp_path / "token" / "token"
    token.parent.mkdir()
    token.write_text("t")
    token.chmod(0o600)
    pod = _pod(RESTRICTED_POD, RESTRICTED)
    pod["spec"]["volumes"] = [
        {"name": "key", "secret": {"secretName": "k", "defaultMode": 0o400}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "token", "projected": {"sources": []}},
    ]
    files = PodFiles(
        root=tmp_path,
        volumes={"key": key.parent, "scratch": scratch, "token": token.parent},
        tokens=[(token, {})],
    )
    adapt_volumes(pod, files)
    assert (key.stat().st_gid, key.stat().st_mode & 0o777) == (65532, 0o440)
    assert scratch.stat().st_mode & 0o777 == 0o777
    assert (token.stat().st_uid, token.stat().st_mode & 0o777) == (65532, 0o640)
