"""Fixtures for the chart's tests: the lab's helm, rendering the chart with given values,
and kubectl against the lab apiserver.

helm comes from the lab's build cache (built from its Go module on first use, see
docs/lab.md); rendering needs no cluster, applying uses the lab's real apiserver.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "vmguard"

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm() -> Path:
    from vmguard_lab import build
    from vmguard_lab.paths import LabPaths

    return build.ensure_built(LabPaths.default(), only=("helm",))["helm"]


def helm_result(
    helm: Path,
    *args: str,
    values: dict[str, Any] | None = None,
    tmp: Path,
    kubeconfig: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run helm (with ``values`` as a values file) and return what it did, failed or not."""
    argv = [str(helm), *args]
    if values is not None:
        path = tmp / f"values-{secrets.token_hex(3)}.yaml"
        path.write_text(yaml.safe_dump(values))
        argv += ["--values", str(path)]
    # helm keeps caches and config under $HOME: point them into the test's directory.
    env = dict(
        os.environ,
        HELM_CACHE_HOME=str(tmp / "helm-cache"),
        HELM_CONFIG_HOME=str(tmp / "helm-config"),
        HELM_DATA_HOME=str(tmp / "helm-data"),
    )
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def run_helm(
    helm: Path,
    *args: str,
    values: dict[str, Any] | None = None,
    tmp: Path,
    kubeconfig: Path | None = None,
) -> str:
    """Run helm; its output, asserting that it succeeded."""
    done = helm_result(helm, *args, values=values, tmp=tmp, kubeconfig=kubeconfig)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def render(helm: Path, tmp_path: Path) -> Render:
    """``render(values, namespace=..., release=...)`` → the chart's objects (crds included)."""

    def render_(
        values: dict[str, Any] | None = None, namespace: str = "vmguard", release: str = "vmguard"
    ) -> list[dict[str, Any]]:
        out = run_helm(
            helm,
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--include-crds",
            values=values or {},
            tmp=tmp_path,
        )
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return render_


@pytest.fixture
def kubectl_run(lab: Any, kubectl: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``kubectl_run(*args, input=...)`` against the lab apiserver, as its admin."""
    env = dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig))

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(kubectl), *args], input=input, capture_output=True, text=True, env=env, timeout=120
        )

    return run


@pytest.fixture
def namespaces(
    kubectl_run: Callable[..., subprocess.CompletedProcess[str]], vmguard_crds: None
) -> Iterator[Callable[[], str]]:
    """``new()`` makes a fresh namespace in the lab; all are deleted after the test."""
    made: list[str] = []

    def new() -> str:
        name = f"chart-{secrets.token_hex(4)}"
        done = kubectl_run("create", "namespace", name)
        assert done.returncode == 0, done.stderr
        made.append(name)
        return name

    yield new
    for name in made:
        kubectl_run("delete", "namespace", name, "--wait=false")
