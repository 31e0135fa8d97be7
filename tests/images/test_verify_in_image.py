"""``vmguard verify --fsck`` inside the built proxy image (docs/verification.md, "Where
file systems are checked").

In the image vmguard lives in the ``/opt/vmguard`` virtualenv, while nbdkit's Python
plugin embeds the system ``python3``; the plugin imports vmguard from the path the
verifying process hands it. Run as the verification Job's pod runs where file systems
are checked (privileged, as root), on factory points in a file repository mounted
read-only: the clean ext4 point passes, one with a damaged ext4 superblock fails naming
e2fsck's message. Run as a restricted pod runs (the image's non-root user, no
``/dev/fuse``), every check is ``error`` naming the device: why the operator gives the
file-system check a privileged pod or none.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from images.build import ulimit_flags

from tests.files.helpers import back_up_image
from tests.images.conftest import PODMAN
from vmguard.store import Repository
from vmguard.store.backend import LocalBackend
from vmguard_lab import images
from vmguard_lab.images import DiskImageFactory
from vmguard_lab.imaging import damage
from vmguard_lab.paths import LabPaths

pytestmark = pytest.mark.unit

MiB = 1 << 20
SEED = 1818
PRIVILEGED_POD = ("--privileged", "--user", "0")  # build_verify_job with fsck
RESTRICTED_POD = ("--cap-drop", "ALL", "--security-opt", "no-new-privileges")
NO_MATCH = 'rule no_match { strings: $a = "VMGUARD-NOT-IN-ANY-FILE-3b1d" condition: $a }\n'


@pytest.fixture(scope="module")
def points(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """(repository directory, the clean point, the damaged point)."""
    work = tmp_path_factory.mktemp("verify-in-image")
    factory = DiskImageFactory(LabPaths.default().cache / "images")
    repo = Repository.init(LocalBackend(work / "repo"), chunk_size=MiB)
    spec = images.gpt_ext4(64 * MiB)
    clean = factory.build(spec, SEED, work / "clean.img")
    broken = factory.build(spec, SEED, work / "broken.img")
    damage.damage_ext4_superblock(broken.path, broken.partition(2).offset)
    (work / "rules").mkdir()
    (work / "rules" / "none.yar").write_text(NO_MATCH)
    ids = [
        back_up_image(repo, vm, img.path).archive_id for vm, img in (("a", clean), ("b", broken))
    ]
    # the image's non-root user reads the repository too
    for root, dirs, files in os.walk(work):
        for name in [*dirs, *files]:
            os.chmod(Path(root, name), 0o755)
    os.chmod(work, 0o755)
    return work / "repo", ids[0], ids[1]


def _verify_in_image(
    proxy: str, repo: Path, archive: str, pod: tuple[str, ...], *checks: str
) -> tuple[int, dict[str, Any]]:
    ran = subprocess.run(
        [
            *PODMAN,
            "run",
            "--rm",
            "--network=host",
            "--read-only",  # as the Job's pod; podman mounts a tmpfs on /tmp
            *ulimit_flags(),
            *pod,
            "-v",
            f"{repo.parent}:/work:ro",
            proxy,
            *("verify", archive, *(checks or ("--fsck",))),
            *("--repo", "file:///work/repo", "-o", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.stdout.startswith("{"), ran.stdout + ran.stderr[-2000:]
    return ran.returncode, json.loads(ran.stdout)


def _by_volume(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["volume"]: r for r in doc["results"] if r["check"] == "fsck"}


def test_the_proxy_image_checks_file_systems_where_fuse_is_given(
    built_images: dict[str, dict[str, Any]], points: tuple[Path, str, str]
) -> None:
    repo, clean, broken = points
    proxy = built_images["proxy"]["ref"]
    code, doc = _verify_in_image(proxy, repo, clean, PRIVILEGED_POD)
    volumes = _by_volume(doc)
    assert {v: (r["fs"], r["result"]) for v, r in volumes.items()} == {
        "p1": ("fat", "passed"),
        "p2": ("ext4", "passed"),
    }, doc
    assert volumes["p2"]["tool"] == "e2fsck" and volumes["p2"]["bytes_fetched"] > 0, doc
    assert (code, doc["clean"]) == (0, True)

    code, doc = _verify_in_image(proxy, repo, broken, PRIVILEGED_POD)
    volumes = _by_volume(doc)
    assert volumes["p1"]["result"] == "passed", doc  # the ESP is intact
    assert (volumes["p2"]["fs"], volumes["p2"]["result"]) == ("ext4", "failed"), doc
    messages = [f["message"] for f in volumes["p2"]["findings"]]
    assert messages[0] == "e2fsck exited 8", messages
    assert (code, doc["clean"]) == (1, False)


def test_without_fuse_the_proxy_image_gives_no_verdict_naming_the_device_and_still_scans(
    built_images: dict[str, dict[str, Any]], points: tuple[Path, str, str]
) -> None:
    repo, clean, _ = points
    proxy = built_images["proxy"]["ref"]
    checks = ("--fsck", "--yara", "/work/rules")
    code, doc = _verify_in_image(proxy, repo, clean, RESTRICTED_POD, *checks)
    scanned = {r["volume"]: r for r in doc["results"] if r["check"] == "yara"}
    assert {v: r["result"] for v, r in scanned.items()} == {"p1": "passed", "p2": "passed"}, doc
    assert scanned["p2"]["files_scanned"] > 0, doc  # the scan needs no FUSE
    volumes = _by_volume(doc)
    assert {r["result"] for r in volumes.values()} == {"error"}, doc
    for r in volumes.values():
        message = r["findings"][0]["message"]
        assert message.startswith("no FUSE here: /dev/fuse: No such file or directory"), r
        assert "privileged" in message, r
    assert (code, doc["clean"]) == (1, False)
