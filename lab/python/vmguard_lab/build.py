"""Build the lab's Go components from pinned module versions, once, with progress.

Each component is a small Go module of ours under ``lab/<name>/`` whose ``go.mod`` and
``go.sum`` pin what is built (Kubernetes and etcd, MinIO, the vSphere simulator, Helm,
toxiproxy, the GitOps health judge). The binaries land in the versioned build cache; a
stamp next to them records a hash of the module's files and the Go version, so a build
happens again only when the pin, our sources or the toolchain changed — never twice for
the same inputs.

Progress: ``go build -v`` names each package as it is compiled; we count those
against ``go list -deps`` and print a line every few seconds (a terminal is not
assumed: CI has none).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmguard_lab.errors import LabError
from vmguard_lab.paths import LabPaths


@dataclass(frozen=True)
class GoComponent:
    """A Go module under ``lab/<module_dir>`` and the binaries built from it."""

    name: str
    module_dir: str
    # binary name -> Go package path (a main package)
    binaries: dict[str, str] = field(default_factory=dict)
    # extra -X settings, e.g. the version string a release build would stamp in
    ldflags: tuple[str, ...] = ()


COMPONENTS: tuple[GoComponent, ...] = (
    GoComponent(
        "kubernetes",
        "kube",
        {
            "etcd": "go.etcd.io/etcd/server/v3",
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
        },
    ),
    GoComponent("minio", "minio", {"minio": "github.com/minio/minio"}),
    GoComponent("vsphere", "vsphere", {"vmguard-vcsim": "."}),
    # The chart's tests lint and render with it; keep the -X version equal to go.mod's pin.
    GoComponent(
        "helm",
        "helm",
        {"helm": "helm.sh/helm/v4/cmd/helm"},
        ("-X helm.sh/helm/v4/internal/version.version=v4.3.1",),
    ),
    # VMware's govc from govmomi's command packages at the simulator's pin (the same
    # module, so its download is shared): the vSphere role script's tool
    # (deploy/vsphere/create-role.sh, docs/install.md). Keep the -X version equal to the pin.
    GoComponent(
        "govc",
        "govc",
        {"govc": "."},
        ("-X github.com/vmware/govmomi/cli/flags.BuildVersion=v0.56.0",),
    ),
    # The fault proxy of the store's network tests (vmguard_lab.faults); not started
    # by `lab up`. Keep the -X version equal to go.mod's pin.
    GoComponent(
        "toxiproxy",
        "toxiproxy",
        {"toxiproxy-server": "github.com/Shopify/toxiproxy/v2/cmd/server"},
        ("-X github.com/Shopify/toxiproxy/v2.Version=v2.12.0",),
    ),
    # kstatus (sigs.k8s.io/cli-utils), Argo CD's Lua health checks (gopher-lua) and Flux's
    # healthCheckExprs (cel-go) over vmguard objects, for tests/gitops; never started.
    GoComponent("health", "health", {"vmguard-health": "."}),
)


def go_command() -> str:
    go = shutil.which("go")
    if not go:
        raise LabError("the Go toolchain is needed to build the lab: install Go ≥ 1.24")
    return go


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Never download a different toolchain behind the user's back.
    env.setdefault("GOTOOLCHAIN", "local")
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return env


def _inputs_hash(module: Path, go_version: str) -> str:
    h = hashlib.sha256(go_version.encode())
    for path in sorted(module.rglob("*")):
        if path.is_file() and path.suffix in {".go", ".mod", ".sum"}:
            if "_test" in path.stem:
                continue
            h.update(str(path.relative_to(module)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _say(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


def _build_with_progress(
    comp: GoComponent, module: Path, out_dir: Path, env: dict[str, str]
) -> None:
    pkgs = list(comp.binaries.values())
    listed = subprocess.run(
        [go_command(), "list", "-deps", *pkgs], cwd=module, env=env, capture_output=True, text=True
    )
    total = len(listed.stdout.split()) if listed.returncode == 0 else 0
    ldflags = " ".join(("-s -w", *comp.ldflags))
    cmd = [
        go_command(),
        "build",
        "-v",
        "-trimpath",
        f"-ldflags={ldflags}",
        "-o",
        str(out_dir) + "/",
        *pkgs,
    ]
    proc = subprocess.Popen(
        cmd, cwd=module, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    done, last = 0, 0.0
    tail: list[str] = []
    for line in proc.stdout:
        tail = [*tail[-30:], line.rstrip()]
        if not line.startswith((" ", "#", "go:")):
            done += 1
        now = time.monotonic()
        if now - last >= 5:
            pct = f" ({min(99, 100 * done // total)}%)" if total else ""
            _say(f"building {comp.name}: {done}/{total or '?'} packages{pct}")
            last = now
    if proc.wait() != 0:
        raise LabError(f"building {comp.name} failed:\n" + "\n".join(tail))


def ensure_built(paths: LabPaths, only: tuple[str, ...] = ()) -> dict[str, Path]:
    """Build every component whose inputs changed; return binary name -> path."""
    env = go_env()
    go_version = subprocess.run(
        [go_command(), "env", "GOVERSION"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    paths.bin.mkdir(parents=True, exist_ok=True)
    stamps = paths.cache / "stamps"
    stamps.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    for comp in COMPONENTS:
        if only and comp.name not in only:
            continue
        module = paths.repo / "lab" / comp.module_dir
        # ldflags are inputs too (empty for most components: their digests stay as they were)
        digest = _inputs_hash(module, go_version + "".join(comp.ldflags))
        stamp = stamps / f"{comp.name}.json"
        bins = {name: paths.bin / name for name in comp.binaries}
        result.update(bins)
        try:
            cached = json.loads(stamp.read_text()).get("inputs") == digest
        except (OSError, ValueError):
            cached = False
        if cached and all(p.is_file() for p in bins.values()):
            continue
        _say(f"building {comp.name} ({go_version}); cached in {paths.bin} afterwards")
        started = time.monotonic()
        staging = paths.cache / f"build-{comp.name}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _build_with_progress(comp, module, staging, env)
        for name, pkg in comp.binaries.items():
            built = staging / (pkg.rstrip("/").rsplit("/", 1)[-1] if pkg != "." else name)
            if pkg == ".":
                built = next(p for p in staging.iterdir() if p.is_file())
            elif pkg.rsplit("/", 1)[-1].startswith("v") and not built.exists():
                # A major-version suffix (".../server/v3") names the binary after its parent.
                built = staging / pkg.rsplit("/", 2)[-2]
            os.replace(built, bins[name])
        shutil.rmtree(staging, ignore_errors=True)
        stamp.write_text(json.dumps({"inputs": digest, "go": go_version}))
        _say(f"built {comp.name} in {time.monotonic() - started:.0f}s")
    return result
