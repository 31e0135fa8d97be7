"""What is inside the built images: the product, nothing of the lab, a non-root user.

The file lists come from the image itself (``podman export`` of a container created from
it, never started), so they show what a node would run.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from typing import Any

import pytest
from images.build import ulimit_flags

from tests.images.conftest import PODMAN

pytestmark = pytest.mark.unit

VERIFY_TOOLS = (
    "nbdkit/plugins/nbdkit-python-plugin.so",
    "bin/nbdfuse",
    "bin/fusermount3",
    "sbin/e2fsck",
    "sbin/xfs_repair",
    "bin/ntfsfix",
    "sbin/fsck.fat",
)


def _files(ref: str) -> list[str]:
    made = subprocess.run([*PODMAN, "create", ref], capture_output=True, text=True, check=True)
    cid = made.stdout.strip()
    try:
        export = subprocess.Popen([*PODMAN, "export", cid], stdout=subprocess.PIPE)
        assert export.stdout is not None
        with tarfile.open(fileobj=export.stdout, mode="r|") as tar:
            names = [m.name for m in tar]
        assert export.wait() == 0
        return names
    finally:
        subprocess.run([*PODMAN, "rm", cid], capture_output=True, check=True)


def _config(ref: str) -> dict[str, Any]:
    out = subprocess.run(
        [*PODMAN, "image", "inspect", ref], capture_output=True, text=True, check=True
    )
    config: dict[str, Any] = json.loads(out.stdout)[0]["Config"]
    return config


def test_product_images_hold_vmguard_and_nothing_of_the_lab(
    built_images: dict[str, dict[str, Any]],
) -> None:
    listed = {
        name: _files(built_images[name]["ref"]) for name in ("operator", "proxy", "proxy-lab")
    }
    for name in ("operator", "proxy", "proxy-lab"):
        d = built_images[name]
        print(f"{name:10} {d['ref']:36} {d['size'] / 1e6:7.1f} MB  {d['digest']}")
        files = listed[name]
        assert any(f.endswith("site-packages/vmguard/cli/main.py") for f in files), name
        assert any(f.endswith("usr/sbin/nbdkit") or f.endswith("usr/bin/nbdkit") for f in files)
        # what a verification's file-system check runs (docs/verification.md)
        for tool in VERIFY_TOOLS:
            assert any(f.endswith(tool) for f in files), (name, tool)
        config = _config(d["ref"])
        assert config["User"] == "65532:65532", (name, config["User"])
        assert config["Entrypoint"] == ["vmguard"], name
    for name in ("operator", "proxy"):
        lab_files = [f for f in listed[name] if "vmguard_lab" in f or "vmguard/lab" in f]
        assert lab_files == [], f"{name} holds lab files: {lab_files[:5]}"
        # Test hooks are lab code (vmguard_lab.run); no test package rides along either.
        assert not [f for f in listed[name] if "/site-packages/tests/" in f], name
        assert not [f for f in listed[name] if f.endswith("vmguard_lab/run.py")], name
    # The lab's layer is where the lab is: the file lists above can show it.
    assert any(f.endswith("site-packages/vmguard_lab/run.py") for f in listed["proxy-lab"])
    assert any(f.endswith("site-packages/vmguard_lab/vsim.py") for f in listed["proxy-lab"])
    # Operator and proxy share their layers: the operator adds only its configuration.
    assert _config(built_images["operator"]["ref"])["Cmd"][0] == "operator"


def test_the_proxy_images_checkers_start_with_what_was_left_out(
    built_images: dict[str, dict[str, Any]],
) -> None:
    """What the base leaves out (images/build.py UNUSED_PYTHON) is nothing a check
    needs: each checker, nbdkit's Python plugin and the NBD client bindings start in the
    proxy image."""
    script = (
        "set -e; e2fsck -V; xfs_repair -V; ntfsfix --help >/dev/null; fsck.fat --help;"
        " nbdfuse --version; fusermount3 --version; nbdkit python --dump-plugin;"
        " python3 -c 'import nbd; print(nbd.NBD().get_version())'"
    )
    ran = subprocess.run(
        [
            *PODMAN,
            "run",
            "--rm",
            "--network=host",
            *ulimit_flags(),
            "--entrypoint",
            "/bin/sh",
            built_images["proxy"]["ref"],
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "xfs_repair version" in ran.stdout, ran.stdout
    assert "python_version=3.11" in ran.stdout, ran.stdout
